/**
 * jsonRpc: the messages of Polykey's agent RPC (`@matrixai/rpc` 0.5, as Polykey 1.15.1 runs
 * it) and how they travel: JSON-RPC 2.0 objects written back to back on one QUIC stream per
 * call, with no separator and no length prefix.
 *
 * - A call opens a stream and writes its header `{"jsonrpc":"2.0","method":…,"params":{…,
 *   "metadata":{"timeout":…}},"id":null}`. The header is the request: for a unary or a
 *   server-stream method its `params` are the call's input (nothing else follows).
 *   `metadata.timeout` is the caller's timeout in milliseconds (`null` when it has none); a
 *   server lowers its own (15 s by default) to it.
 * - Answers are `{"jsonrpc":"2.0","result":…,"id":null}`: one for a unary method, any number
 *   for a server stream; the server ends the stream (FIN) after the last. A failure is an error
 *   message `{"jsonrpc":"2.0","error":{"code":…,"message":…,"data":…},"id":null}` after which
 *   the server ends the stream too. `data` is the error as Polykey serialises it:
 *   `{"type":"Error","message":…,"data":{"stack":…,"timestamp":…}}` for a plain error (the
 *   shape Polykey's client rebuilds into an `ErrorPolykeyRemote`), `{"type":"ErrorX","data":
 *   {"message":…,"timestamp":…,"data":{…},"stack":…}}` for its own error classes.
 * - Ends: Polykey's own client ends its side (FIN) right after the header of a server-stream
 *   call, and after reading the result of a unary one. Its server ends its side after the
 *   answer; for a unary method only once the caller's side has ended too (it reads the
 *   caller's stream to its end first). The timeouts bound the wait for the first answer only
 *   (each side's timer stops at the first message), and the server's is advisory (the
 *   handler gets an abort signal).
 * - A method Polykey does not serve is refused with a stream reset (RESET_STREAM and
 *   STOP_SENDING, code 1 = `ErrorRPCHandlerFailed`), no message.
 * - Polykey's server refuses a request once 64 KiB (`rpcParserBufferSize`, 65,536 bytes) are
 *   buffered without completing a message (counted per chunk read); its client allows 1 MiB.
 *   `JsonValueParser` refuses any value longer than its limit, however the bytes are split.
 *
 * `JsonValueParser` splits a byte stream into JSON values whatever way the bytes are cut into
 * chunks; the rest of the module builds and reads the messages.
 */
import { Data, Duration, Either, Predicate, Schema } from "effect"

/** The most bytes one message may take (Polykey's `rpcParserBufferSize`). */
export const MAX_MESSAGE_BYTES = 65_536

/** The first byte of every Polykey call stream: the header's `{`. */
export const POLYKEY_FIRST_BYTE = 0x7b

/** Polykey's call timeout when the caller says none (`rpcCallTimeoutTime`). */
export const DEFAULT_CALL_TIMEOUT = Duration.seconds(15)

/** The JSON-RPC error codes `@matrixai/rpc` uses (`JSONRPCResponseErrorCode`). */
export const ErrorCode = {
  ParseError: -32700,
  InvalidParams: -32602,
  MethodNotFound: -32601,
  RPCStopping: -32001,
  RPCMessageLength: -32003,
  RPCRemote: -32006,
  RPCTimedOut: -32008,
  MissingHeader: -32014
} as const

/** Bytes that do not form JSON values (the detail says where). */
export class JsonRpcParseError extends Data.TaggedError("JsonRpcParseError")<{
  readonly detail: string
  readonly cause?: unknown
}> {
  override get message() {
    return `malformed JSON-RPC input: ${this.detail}`
  }
}

/** A message longer than the limit; refused before more of it is buffered. */
export class JsonRpcMessageTooLarge extends Data.TaggedError("JsonRpcMessageTooLarge")<{
  readonly limit: number
}> {
  override get message() {
    return `a JSON-RPC message is longer than ${this.limit} bytes`
  }
}

export type JsonRpcInputError = JsonRpcParseError | JsonRpcMessageTooLarge

/** An error a handler answers with: its JSON-RPC code and a one-line message. */
export class PolykeyRpcError extends Data.TaggedError("PolykeyRpcError")<{
  readonly code: number
  readonly detail: string
  readonly cause?: unknown
}> {
  override get message() {
    return this.detail
  }
}

const JsonRpcVersion = Schema.Literal("2.0")
const JsonRpcId = Schema.NullOr(Schema.Union(Schema.String, Schema.Number))

/** A call's first message: the method and its input. */
export const JsonRpcRequest = Schema.Struct({
  jsonrpc: JsonRpcVersion,
  method: Schema.String,
  params: Schema.optional(Schema.Unknown),
  id: Schema.optional(JsonRpcId)
})
export type JsonRpcRequest = typeof JsonRpcRequest.Type

/** The metadata a Polykey caller adds to `params`. */
export const RequestMetadata = Schema.Struct({
  timeout: Schema.optional(Schema.NullOr(Schema.Number))
})

export const JsonRpcErrorObject = Schema.Struct({
  code: Schema.Int,
  message: Schema.String,
  data: Schema.optional(Schema.Unknown)
})
export type JsonRpcErrorObject = typeof JsonRpcErrorObject.Type

/** How `@matrixai/rpc` serialises an error in `data` (`fromError`): the fields readers look at. */
export const PolykeyErrorData = Schema.Struct({
  type: Schema.String,
  message: Schema.optional(Schema.String),
  data: Schema.optional(
    Schema.Struct({
      message: Schema.optional(Schema.String),
      stack: Schema.optional(Schema.String),
      timestamp: Schema.optional(Schema.String)
    })
  )
})

const ResultFields = Schema.Struct({ jsonrpc: JsonRpcVersion, id: JsonRpcId })
const ErrorFields = Schema.Struct({ jsonrpc: JsonRpcVersion, error: JsonRpcErrorObject, id: JsonRpcId })

/** An answer as read: a result, or an error object. */
export type JsonRpcResponse =
  | { readonly _tag: "Result"; readonly result: unknown }
  | { readonly _tag: "Error"; readonly error: JsonRpcErrorObject }

const decodeRequest = Schema.decodeUnknownEither(JsonRpcRequest)
const decodeMetadata = Schema.decodeUnknownEither(RequestMetadata)
const decodeResultFields = Schema.decodeUnknownEither(ResultFields)
const decodeErrorFields = Schema.decodeUnknownEither(ErrorFields)
const decodeErrorData = Schema.decodeUnknownEither(PolykeyErrorData)

const malformed = (detail: string) => new JsonRpcParseError({ detail })

/** A value read from the stream as a call's header. */
export const parseRequest = (value: unknown): Either.Either<JsonRpcRequest, JsonRpcParseError> =>
  Either.mapLeft(decodeRequest(value), () => malformed("not a JSON-RPC request"))

/**
 * A value read from the stream as an answer: exactly one of `result` and `error`, as
 * `@matrixai/rpc` requires.
 */
export const parseResponse = (value: unknown): Either.Either<JsonRpcResponse, JsonRpcParseError> => {
  if (!Predicate.isRecord(value)) return Either.left(malformed("an answer must be a JSON object"))
  const hasResult = "result" in value
  if (hasResult === "error" in value)
    return Either.left(malformed("an answer must hold exactly one of `result` and `error`"))
  if (hasResult)
    return Either.map(
      Either.mapLeft(decodeResultFields(value), () => malformed("not a JSON-RPC result")),
      () => ({ _tag: "Result" as const, result: value.result })
    )
  return Either.map(
    Either.mapLeft(decodeErrorFields(value), () => malformed("not a JSON-RPC error")),
    (m) => ({ _tag: "Error" as const, error: m.error })
  )
}

/**
 * The caller's timeout from a request's `params.metadata.timeout`: milliseconds, `null` for
 * none (infinite); undefined when the request does not say.
 */
export const requestTimeout = (request: JsonRpcRequest): Duration.Duration | undefined => {
  const params = request.params
  if (!Predicate.isRecord(params)) return undefined
  const metadata = decodeMetadata(params.metadata)
  if (Either.isLeft(metadata)) return undefined
  const timeout = metadata.right.timeout
  if (timeout === null) return Duration.infinity
  return timeout === undefined || !(timeout >= 0) ? undefined : Duration.millis(timeout)
}

/** A call's header: `params` with the caller's timeout added as Polykey's metadata. */
export const request = (
  method: string,
  params: Readonly<Record<string, unknown>>,
  timeout: Duration.Duration
) => ({
  jsonrpc: "2.0" as const,
  method,
  params: {
    ...params,
    metadata: { timeout: Duration.isFinite(timeout) ? Math.round(Duration.toMillis(timeout)) : null }
  },
  id: null
})

export const resultMessage = (result: unknown) => ({ jsonrpc: "2.0" as const, result, id: null })

/**
 * An error message Polykey's client reads as a remote error: `data` is a plain `Error` in
 * `fromError`'s shape (the `stack` is the message alone: no stack of ours leaves the node).
 */
export const errorMessage = (code: number, message: string, timestampMillis: number) => ({
  jsonrpc: "2.0" as const,
  error: {
    code,
    message,
    data: {
      type: "Error",
      message,
      data: { stack: `Error: ${message}`, timestamp: new Date(timestampMillis).toISOString() }
    }
  },
  id: null
})

/** A one-line account of a peer's error object: its message and, where it says, the error's class. */
export const describeError = (error: JsonRpcErrorObject): string => {
  const data = decodeErrorData(error.data)
  if (Either.isLeft(data)) return `${error.message} (code ${error.code})`
  const inner = data.right.data?.message ?? data.right.message
  const text = inner !== undefined && inner !== "" ? inner : error.message
  return `${data.right.type}: ${text} (code ${error.code})`
}

const encoder = new TextEncoder()

/** A message as the bytes written on the stream. */
export const encode = (message: unknown): Uint8Array => encoder.encode(JSON.stringify(message))

/** Messages back to back, as one write. */
export const encodeAll = (messages: ReadonlyArray<unknown>): Uint8Array =>
  encoder.encode(messages.map((m) => JSON.stringify(m)).join(""))

// ---------------------------------------------------------------------------------------
// Splitting a byte stream into JSON values

/** The bytes that tell where a JSON value ends. */
const Byte = {
  openBrace: 0x7b,
  closeBrace: 0x7d,
  openBracket: 0x5b,
  closeBracket: 0x5d,
  quote: 0x22,
  backslash: 0x5c
} as const

const isWhitespace = (b: number) => b === 0x20 || b === 0x0a || b === 0x0d || b === 0x09
/** A byte of a number or of `true`/`false`/`null`. */
const isLiteralByte = (b: number) =>
  (b >= 0x30 && b <= 0x39) ||
  (b >= 0x61 && b <= 0x7a) ||
  (b >= 0x41 && b <= 0x5a) ||
  b === 0x2b ||
  b === 0x2d ||
  b === 0x2e

type Kind = "none" | "container" | "string" | "literal"

/**
 * Splits a stream's bytes into JSON values written back to back. It tracks only where each
 * value ends (nesting, strings and their escapes); `JSON.parse` then checks the value itself.
 * A value longer than `limit` bytes is refused as soon as its bytes pass the limit, complete
 * or not. After an error the parser is spent.
 */
export class JsonValueParser {
  private readonly decoder = new TextDecoder("utf-8", { fatal: true })
  /** The bytes of the value being read, from its first byte: `buffer[0, length)`. */
  private buffer: Uint8Array = new Uint8Array(0)
  private length = 0
  private kind: Kind = "none"
  /** The closing bytes the open containers expect, innermost last. */
  private closers: Array<number> = []
  private inString = false
  private escaped = false

  constructor(readonly limit: number = MAX_MESSAGE_BYTES) {}

  /** The values `chunk` completes, in order. */
  push(chunk: Uint8Array): Either.Either<ReadonlyArray<unknown>, JsonRpcInputError> {
    const values: Array<unknown> = []
    /** Where the current value's bytes in `chunk` start. */
    let from = 0
    let i = 0
    while (i < chunk.length) {
      const b = chunk[i]!
      if (this.kind === "none") {
        if (isWhitespace(b)) {
          i++
          continue
        }
        if (b === Byte.openBrace || b === Byte.openBracket) this.kind = "container"
        else if (b === Byte.quote) this.kind = "string"
        else if (isLiteralByte(b)) this.kind = "literal"
        else return Either.left(malformed(`unexpected byte 0x${b.toString(16)} where a value starts`))
        from = i
      }
      const ended = this.step(b)
      if (Either.isLeft(ended)) return Either.left(ended.left)
      // A literal ends at the byte after it: that byte is read again as the next value's.
      const end = ended.right === "before" ? i : i + 1
      if (ended.right !== "before" && this.length + end - from > this.limit)
        return Either.left(new JsonRpcMessageTooLarge({ limit: this.limit }))
      if (ended.right !== "more") {
        const value = this.complete(chunk.subarray(from, end))
        if (Either.isLeft(value)) return Either.left(value.left)
        values.push(value.right)
      }
      i = end
    }
    // Kept (copied: `chunk` may be a view its reader reuses) until the value ends.
    if (this.kind !== "none") this.append(chunk.subarray(from))
    return Either.right(values)
  }

  /** The stream ended: a number or literal still open is complete; anything else open is truncated. */
  end(): Either.Either<ReadonlyArray<unknown>, JsonRpcInputError> {
    if (this.kind === "none") return Either.right([])
    if (this.kind !== "literal") return Either.left(malformed("the stream ended inside a JSON value"))
    return Either.map(this.complete(new Uint8Array(0)), (value) => [value])
  }

  /** Reads byte `b` of the current value: whether the value ends after it, before it, or goes on. */
  private step(b: number): Either.Either<"after" | "before" | "more", JsonRpcParseError> {
    if (this.kind === "literal") return Either.right(isLiteralByte(b) ? "more" : "before")
    if (this.inString) {
      if (this.escaped) this.escaped = false
      else if (b === Byte.backslash) this.escaped = true
      else if (b === Byte.quote) {
        this.inString = false
        if (this.kind === "string") return Either.right("after")
      }
      return Either.right("more")
    }
    if (b === Byte.quote) this.inString = true
    else if (b === Byte.openBrace) this.closers.push(Byte.closeBrace)
    else if (b === Byte.openBracket) this.closers.push(Byte.closeBracket)
    else if (b === Byte.closeBrace || b === Byte.closeBracket) {
      if (this.closers.pop() !== b)
        return Either.left(malformed("a closing bracket does not match its opening one"))
      if (this.closers.length === 0) return Either.right("after")
    }
    return Either.right("more")
  }

  private append(bytes: Uint8Array): void {
    const needed = this.length + bytes.length
    if (needed > this.buffer.length) {
      const grown = new Uint8Array(Math.max(needed, Math.min(this.limit, this.buffer.length * 2)))
      grown.set(this.buffer.subarray(0, this.length))
      this.buffer = grown
    }
    this.buffer.set(bytes, this.length)
    this.length = needed
  }

  /** Parses the value whose last bytes are `tail`; the parser is ready for the next. */
  private complete(tail: Uint8Array): Either.Either<unknown, JsonRpcParseError> {
    let bytes = tail
    if (this.length > 0) {
      this.append(tail)
      bytes = this.buffer.subarray(0, this.length)
    }
    this.length = 0
    this.kind = "none"
    this.closers = []
    this.inString = false
    this.escaped = false
    return Either.try({
      try: () => JSON.parse(this.decoder.decode(bytes)) as unknown,
      catch: (cause) => new JsonRpcParseError({ detail: "not valid JSON", cause })
    })
  }
}
