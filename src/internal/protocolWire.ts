/**
 * How an application protocol is named at the start of a stream, and how the acceptor answers.
 *
 * - Header (opener → acceptor): `[PROTOCOL_MAGIC][len: 1..255][len bytes UTF-8 protocol id]`,
 *   then the protocol's own bytes.
 * - Status (acceptor → opener), before anything else: `[STATUS_ACCEPTED]`, then the protocol's
 *   bytes; or `[STATUS_REFUSED][len][UTF-8 reason]`, then the end of the stream.
 *
 * Both are read with `readPrefix` on a `ChunkReader` socket: chunk by chunk until the prefix is
 * complete (bounded by its largest size and a deadline), the bytes after it put back for the
 * socket's `run`. `statusChecked` is the opener's socket that reads the status on its first
 * chunks instead (optimistic opening).
 */
import { Socket } from "@effect/platform"
import { type Duration, Effect, Option, Predicate } from "effect"
import type { ChunkReader } from "./quicStreamSocket.js"

/** The first byte of a stream that names an application protocol. */
export const PROTOCOL_MAGIC = 0xa7
/** The first byte of every agent RPC frame (a 4-byte length below 16 MiB). */
export const AGENT_FIRST_BYTE = 0x00
export const STATUS_ACCEPTED = 0x00
export const STATUS_REFUSED = 0x01
/** The longest header: magic, length and 255 bytes of protocol id. */
export const MAX_HEADER_BYTES = 257

const encoder = new TextEncoder()
const decoder = new TextDecoder("utf-8", { fatal: true })

/** `bytes` as text, at most 255 bytes of it (cut on a character boundary). */
const boundedUtf8 = (text: string): Uint8Array => {
  let bytes = encoder.encode(text)
  let cut = text.length
  while (bytes.length > 255) {
    cut = Math.floor(cut * 0.9)
    bytes = encoder.encode(text.slice(0, cut))
  }
  return bytes
}

/** `[tag][len][bytes]`. */
const withLength = (tag: number, bytes: Uint8Array): Uint8Array => {
  const out = new Uint8Array(2 + bytes.length)
  out[0] = tag
  out[1] = bytes.length
  out.set(bytes, 2)
  return out
}

/** The header naming `protocol` (a valid id: 1..255 bytes). */
export const encodeHeader = (protocol: string): Uint8Array =>
  withLength(PROTOCOL_MAGIC, encoder.encode(protocol))

export const accepted: Uint8Array = new Uint8Array([STATUS_ACCEPTED])

/** A refusal with its reason (cut to 255 bytes). */
export const encodeRefusal = (reason: string): Uint8Array => withLength(STATUS_REFUSED, boundedUtf8(reason))

/** What a prefix parser makes of the bytes so far. */
export type Parsed<A> =
  | { readonly _tag: "More" }
  | { readonly _tag: "Done"; readonly value: A; readonly rest: Uint8Array | undefined }
  | { readonly _tag: "Invalid"; readonly detail: string }

const more: Parsed<never> = { _tag: "More" }
const isDone = <A>(parsed: Parsed<A>): parsed is Extract<Parsed<A>, { readonly _tag: "Done" }> =>
  Predicate.isTagged(parsed, "Done")
const needsMore = <A>(parsed: Parsed<A>): boolean => Predicate.isTagged(parsed, "More")
const invalid = (detail: string): Parsed<never> => ({ _tag: "Invalid", detail })

/** `[tag][len][len bytes]` once complete: the bytes' text (len 0 refused when `nonEmpty`). */
const parseWithLength = (bytes: Uint8Array, what: string, nonEmpty: boolean): Parsed<string> => {
  if (bytes.length < 2) return more
  const length = bytes[1]!
  if (nonEmpty && length === 0) return invalid(`empty ${what}`)
  if (bytes.length < 2 + length) return more
  let text: string
  try {
    text = decoder.decode(bytes.subarray(2, 2 + length))
  } catch {
    return invalid(`${what} is not UTF-8`)
  }
  return {
    _tag: "Done",
    value: text,
    rest: bytes.length > 2 + length ? bytes.subarray(2 + length) : undefined
  }
}

/** A stream header: the protocol id named (not yet checked as a ProtocolId). */
export const parseHeader = (bytes: Uint8Array): Parsed<string> => {
  if (bytes[0] !== PROTOCOL_MAGIC) return invalid(`first byte 0x${bytes[0]!.toString(16)} names no protocol`)
  return parseWithLength(bytes, "protocol id", true)
}

/** The acceptor's status: `Option.none()` accepted, `Option.some(reason)` refused. */
export const parseStatus = (bytes: Uint8Array): Parsed<Option.Option<string>> => {
  switch (bytes[0]) {
    case STATUS_ACCEPTED:
      return { _tag: "Done", value: Option.none(), rest: bytes.length > 1 ? bytes.subarray(1) : undefined }
    case STATUS_REFUSED: {
      const parsed = parseWithLength(bytes, "refusal reason", false)
      return isDone(parsed) ? { ...parsed, value: Option.some(parsed.value) } : parsed
    }
    default:
      return invalid(`the peer answered 0x${bytes[0]!.toString(16)}, not a protocol status`)
  }
}

/** Sockets that the transports make can be read chunk by chunk before their `run`. */
export const isChunkReader = (socket: Socket.Socket): socket is Socket.Socket & ChunkReader =>
  "readChunk" in socket && "unread" in socket

const concat = (a: Uint8Array, b: Uint8Array): Uint8Array => {
  const out = new Uint8Array(a.length + b.length)
  out.set(a)
  out.set(b, a.length)
  return out
}

/**
 * Reads `socket` until `parse` is done with its prefix, starting from `first` (bytes already
 * read) if given; the bytes after the prefix are put back. Invalid once more than `maxBytes`
 * are needed, when the stream ends first, or when the prefix is not complete within `timeout`
 * (counted from the first chunk that does not complete it).
 */
export const readPrefix = <A>(
  socket: ChunkReader,
  parse: (bytes: Uint8Array) => Parsed<A>,
  options: {
    readonly maxBytes: number
    readonly timeout: Duration.DurationInput
    readonly first?: Uint8Array | undefined
  }
): Effect.Effect<Parsed<A>, Socket.SocketError> => {
  const ended: Parsed<never> = invalid("the stream ended before its prefix")
  const step = (bytes: Uint8Array): Effect.Effect<Parsed<A>, Socket.SocketError> => {
    const parsed = parse(bytes)
    if (isDone(parsed) && parsed.rest !== undefined) socket.unread(parsed.rest)
    if (!needsMore(parsed)) return Effect.succeed(parsed)
    if (bytes.length >= options.maxBytes)
      return Effect.succeed(invalid(`prefix longer than ${options.maxBytes} bytes`))
    return Effect.flatMap(socket.readChunk, (chunk) =>
      chunk === undefined ? Effect.succeed(ended) : step(concat(bytes, chunk))
    )
  }
  const start = (chunk: Uint8Array | undefined): Effect.Effect<Parsed<A>, Socket.SocketError> => {
    if (chunk === undefined) return Effect.succeed(ended)
    const parsed = parse(chunk)
    if (!needsMore(parsed)) return step(chunk)
    return step(chunk).pipe(
      Effect.timeoutTo({
        duration: options.timeout,
        onTimeout: () => invalid("the prefix did not arrive in time"),
        onSuccess: (p) => p
      })
    )
  }
  return options.first !== undefined ? start(options.first) : Effect.flatMap(socket.readChunk, start)
}

/**
 * The opener's socket when it does not wait for the status: its `run` reads the status from
 * the first chunks, then hands the protocol's bytes on; a refusal (or no status) fails the run
 * with `SocketGenericError("Read")` whose `cause` is `refused(reason)`.
 */
export const statusChecked = (socket: Socket.Socket, refused: (reason: string) => unknown): Socket.Socket => {
  let status: Uint8Array | undefined = new Uint8Array(0)
  const fail = (reason: string) =>
    Effect.fail(new Socket.SocketGenericError({ reason: "Read", cause: refused(reason) }))
  const runRaw = <_, E = never, R = never>(
    // biome-ignore lint/suspicious/noConfusingVoidType: the signature of Socket.runRaw
    handler: (_: string | Uint8Array) => Effect.Effect<_, E, R> | void,
    options?: { readonly onOpen?: Effect.Effect<void> | undefined }
  ): Effect.Effect<void, Socket.SocketError | E, R> =>
    // biome-ignore lint/suspicious/noConfusingVoidType: the signature of Socket.runRaw
    socket.runRaw((data): Effect.Effect<unknown, E | Socket.SocketError, R> | void => {
      if (status === undefined) return handler(data)
      const bytes = concat(status, typeof data === "string" ? encoder.encode(data) : data)
      const parsed = parseStatus(bytes)
      switch (parsed._tag) {
        case "More":
          status = bytes.length >= MAX_HEADER_BYTES ? undefined : bytes
          return status === undefined ? fail("status longer than its limit") : undefined
        case "Invalid":
          status = undefined
          return fail(parsed.detail)
        case "Done":
          status = undefined
          if (Option.isSome(parsed.value)) return fail(parsed.value.value)
          return parsed.rest === undefined ? undefined : handler(parsed.rest)
      }
    }, options)
  const run = <_, E = never, R = never>(
    // biome-ignore lint/suspicious/noConfusingVoidType: the signature of Socket.run
    handler: (_: Uint8Array) => Effect.Effect<_, E, R> | void,
    options?: { readonly onOpen?: Effect.Effect<void> | undefined }
  ) => runRaw((data) => (typeof data === "string" ? handler(encoder.encode(data)) : handler(data)), options)
  return { [Socket.TypeId]: Socket.TypeId, run, runRaw, writer: socket.writer }
}
