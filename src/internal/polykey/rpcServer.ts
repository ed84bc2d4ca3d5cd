/**
 * rpcServer: answers one Polykey call on a stream a peer opened (the wire: jsonRpc.ts).
 *
 * `servePolykeyStream` reads the call's header (within the server's timeout, 15 s by
 * default, as Polykey's), runs the method's handler within the shorter of that timeout and
 * the caller's metadata timeout, and writes what the call gets:
 * - a unary method's result, or a server-stream method's results, one message each;
 * - an error message for everything else: a method it does not serve (-32601: claims,
 *   notifications, vaults, anything unknown), the handler's own `PolykeyRpcError` (its code),
 *   a handler that dies (-32006), no answer in time (-32008), a malformed or oversized header
 *   (-32700 / -32003), a stream that ended before its header (-32014), and a call still in
 *   flight when the server stops (-32001). A unary method with an `insteadOfError` result
 *   answers that in place of any error of its own (failure, death, timeout, stop).
 * It then waits (briefly) for the caller to end its side, and ends the stream with FIN. It never
 * resets a stream: Polykey's relay exits on a reset of a call it forwards.
 *
 * The serving fiber's interruption (the node stopping) interrupts the handler and the waits;
 * the answer and the FIN are still written, each bounded by `WRITE_GRACE`.
 */
import { Socket } from "@effect/platform"
import { Cause, Clock, Duration, Effect, Either, Exit, Option, Predicate } from "effect"
import type { Contact } from "../../services/Contact.js"
import { isChunkReader } from "../protocolWire.js"
import type { ChunkReader } from "../quicStreamSocket.js"
import * as JsonRpc from "./jsonRpc.js"

/** A unary method: one result for the call's params. */
export interface UnaryMethod {
  readonly _tag: "Unary"
  readonly handle: (caller: Contact, params: unknown) => Effect.Effect<unknown, JsonRpc.PolykeyRpcError>
  /**
   * The result answered in place of any error of the method's own (its failure or death, its
   * timeout, the server stopping): for a method whose callers must never get an error (a
   * Polykey relay exits on one from `nodesConnectionSignalFinal`).
   */
  readonly insteadOfError?: unknown
}

/** A server-stream method: the results for the call's params, one message each. */
export interface ServerStreamMethod {
  readonly _tag: "ServerStream"
  readonly handle: (
    caller: Contact,
    params: unknown
  ) => Effect.Effect<ReadonlyArray<unknown>, JsonRpc.PolykeyRpcError>
}

export type PolykeyMethod = UnaryMethod | ServerStreamMethod

/** The methods served, by name; any other name is answered with an error. */
export type PolykeyMethods = Readonly<Record<string, PolykeyMethod>>

export const unaryMethod = (
  handle: UnaryMethod["handle"],
  options?: { readonly insteadOfError?: unknown }
): UnaryMethod =>
  options !== undefined && "insteadOfError" in options
    ? { _tag: "Unary", handle, insteadOfError: options.insteadOfError }
    : { _tag: "Unary", handle }

export const serverStreamMethod = (handle: ServerStreamMethod["handle"]): ServerStreamMethod => ({
  _tag: "ServerStream",
  handle
})

export interface ServeOptions {
  /** The call timeout: for the header, and for the handler when the caller asks for no less. 15 s by default. */
  readonly timeout?: Duration.DurationInput
  /** The longest header accepted; 64 KiB (`MAX_MESSAGE_BYTES`) by default. */
  readonly maxMessageBytes?: number
}

/** The longest the answer's write, or the stream's end, may take (the peer not reading). */
const WRITE_GRACE = Duration.seconds(2)
/** The longest the server waits, after its answer, for the caller to end its side. */
const DRAIN_GRACE = Duration.seconds(2)

const finished = new Socket.CloseEvent(1000)

type Header =
  | { readonly _tag: "Request"; readonly request: JsonRpc.JsonRpcRequest }
  /** The call gets this error and nothing else. */
  | { readonly _tag: "Refused"; readonly code: number; readonly detail: string }
  /** The stream broke: nothing can be answered. */
  | { readonly _tag: "Broken" }

const refused = (code: number, detail: string): Header => ({ _tag: "Refused", code, detail })

/** Reads the first JSON value of the stream as the call's header; the bytes after it are left unread. */
const readHeader = (socket: ChunkReader, maxMessageBytes: number): Effect.Effect<Header> =>
  Effect.gen(function* () {
    const parser = new JsonRpc.JsonValueParser(maxMessageBytes)
    while (true) {
      const chunk = yield* Effect.either(socket.readChunk)
      if (Either.isLeft(chunk)) return { _tag: "Broken" } as const
      const values = chunk.right === undefined ? parser.end() : parser.push(chunk.right)
      if (Either.isLeft(values))
        return refused(
          Predicate.isTagged(values.left, "JsonRpcMessageTooLarge")
            ? JsonRpc.ErrorCode.RPCMessageLength
            : JsonRpc.ErrorCode.ParseError,
          values.left.message
        )
      const first = values.right[0]
      if (values.right.length > 0) {
        const request = JsonRpc.parseRequest(first)
        return Either.isLeft(request)
          ? refused(JsonRpc.ErrorCode.ParseError, request.left.message)
          : ({ _tag: "Request", request: request.right } as const)
      }
      if (chunk.right === undefined)
        return refused(JsonRpc.ErrorCode.MissingHeader, "the stream ended before the call's header")
    }
  })

/** Reads until the caller ends its side (or the stream breaks), dropping what it sends. */
const drain = (socket: ChunkReader): Effect.Effect<void> =>
  Effect.flatMap(Effect.either(socket.readChunk), (chunk) =>
    Either.isRight(chunk) && chunk.right !== undefined ? drain(socket) : Effect.void
  )

/** The call's answer, as the messages written before FIN. */
const answer = (
  method: PolykeyMethod,
  exit: Exit.Exit<unknown, JsonRpc.PolykeyRpcError | Cause.TimeoutException>,
  name: string,
  timeout: Duration.Duration
): Effect.Effect<ReadonlyArray<unknown>> =>
  Effect.map(Clock.currentTimeMillis, (now) => {
    const error = (code: number, detail: string) => [JsonRpc.errorMessage(code, detail, now)]
    if (Exit.isSuccess(exit))
      return Predicate.isTagged(method, "Unary")
        ? [JsonRpc.resultMessage(exit.value)]
        : (exit.value as ReadonlyArray<unknown>).map(JsonRpc.resultMessage)
    if (Predicate.isTagged(method, "Unary") && "insteadOfError" in method)
      return [JsonRpc.resultMessage(method.insteadOfError)]
    const failure = Cause.failureOption(exit.cause)
    if (Option.isSome(failure))
      return Predicate.isTagged(failure.value, "PolykeyRpcError")
        ? error(failure.value.code, failure.value.detail)
        : error(JsonRpc.ErrorCode.RPCTimedOut, `${name} did not answer within ${Duration.format(timeout)}`)
    if (Cause.isInterruptedOnly(exit.cause))
      return error(JsonRpc.ErrorCode.RPCStopping, "the node is stopping")
    return error(JsonRpc.ErrorCode.RPCRemote, `${name} failed on the node`)
  })

/**
 * Writes `messages` (back to back, in one write), then waits for the caller's end (unless the
 * fiber was interrupted) and ends the stream (FIN, reading stopped). Each step is bounded; a
 * write that fails (the caller is gone) leaves only the end to do.
 */
const finish = (
  socket: Socket.Socket & ChunkReader,
  messages: ReadonlyArray<unknown>,
  restore: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
): Effect.Effect<void> =>
  Effect.scoped(
    Effect.gen(function* () {
      const write = yield* socket.writer
      const bounded = (effect: Effect.Effect<void, Socket.SocketError>) =>
        Effect.interruptible(effect).pipe(Effect.timeoutOption(WRITE_GRACE), Effect.ignore)
      if (messages.length > 0) yield* bounded(write(JsonRpc.encodeAll(messages)))
      yield* restore(drain(socket)).pipe(Effect.timeoutOption(DRAIN_GRACE), Effect.exit)
      yield* bounded(write(finished))
    })
  )

/**
 * Serves one Polykey call on `socket`, a stream `caller` opened (the stream router hands it
 * over with its first chunk put back), with `methods`. Returns once the stream has ended.
 */
export const servePolykeyStream = (
  socket: Socket.Socket,
  caller: Contact,
  methods: PolykeyMethods,
  options: ServeOptions = {}
): Effect.Effect<void> => {
  if (!isChunkReader(socket))
    return Effect.scoped(Effect.flatMap(socket.writer, (write) => Effect.ignore(write(finished))))
  const timeout = Duration.decode(options.timeout ?? JsonRpc.DEFAULT_CALL_TIMEOUT)
  const maxMessageBytes = options.maxMessageBytes ?? JsonRpc.MAX_MESSAGE_BYTES
  return Effect.uninterruptibleMask((restore) =>
    Effect.gen(function* () {
      const header = yield* restore(readHeader(socket, maxMessageBytes)).pipe(
        Effect.timeoutTo({
          duration: timeout,
          onSuccess: (h): Header => h,
          onTimeout: () => refused(JsonRpc.ErrorCode.RPCTimedOut, "no call header in time")
        }),
        Effect.exit
      )
      const messages = yield* Exit.match(header, {
        onFailure: () => errorNow(JsonRpc.ErrorCode.RPCStopping, "the node is stopping"),
        onSuccess: (h) => {
          switch (h._tag) {
            case "Broken":
              return Effect.succeed([])
            case "Refused":
              return errorNow(h.code, h.detail)
            case "Request":
              return call(h.request, caller, methods, timeout, restore)
          }
        }
      })
      return yield* finish(socket, messages, restore)
    })
  )
}

/** One error message, stamped now. */
const errorNow = (code: number, detail: string): Effect.Effect<ReadonlyArray<unknown>> =>
  Effect.map(Clock.currentTimeMillis, (now) => [JsonRpc.errorMessage(code, detail, now)])

/** Runs the call's method (interruptible, within its deadline): the messages it gets. */
const call = (
  request: JsonRpc.JsonRpcRequest,
  caller: Contact,
  methods: PolykeyMethods,
  timeout: Duration.Duration,
  restore: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
): Effect.Effect<ReadonlyArray<unknown>> => {
  const method = Object.hasOwn(methods, request.method) ? methods[request.method] : undefined
  if (method === undefined)
    return errorNow(
      JsonRpc.ErrorCode.MethodNotFound,
      `method "${request.method.slice(0, 80)}" is not served by this node`
    )
  const callerTimeout = JsonRpc.requestTimeout(request)
  const deadline = callerTimeout === undefined ? timeout : Duration.min(timeout, callerTimeout)
  return restore(
    Effect.suspend(() => method.handle(caller, request.params)).pipe(Effect.timeout(deadline))
  ).pipe(
    Effect.tapDefect((cause) =>
      Cause.isDie(cause) ? Effect.logWarning(`Polykey method ${request.method} died`, cause) : Effect.void
    ),
    Effect.exit,
    Effect.flatMap((exit) => answer(method, exit, request.method, deadline))
  )
}
