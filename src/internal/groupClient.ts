/**
 * groupClient: `@effect/rpc`'s client of any group over streams of one connection, through a
 * `RpcClient.Protocol` of our own (frames of `rpcWire`). The agent's client is one; an
 * application's clients are others (over streams opened for their protocol).
 *
 * Two ways to carry calls (`RpcOptions.rpcStreamMode`):
 * - `per-call`: every call opens its own bidirectional stream, sends its request, reads its
 *   answer and ends the stream. A failure (oversized or malformed answer, reset) concerns
 *   that call alone; cancelling a call resets its stream, which interrupts the handler.
 * - `multiplexed`: one stream, opened on first use, carries every call of the client; when
 *   it fails, the calls in flight on it fail and the next call opens a new one.
 *
 * A request larger than `rpcParserBufferSize` is not sent: it fails at once with
 * `RpcMessageTooLargeError`. Every call is bounded by `rpcCallTimeoutTime`. The group's
 * calls fail with the typed wire errors (`RpcWireError`) besides their own; an answer that
 * does not match the method's schema (`@effect/rpc` makes it a defect) fails the call with
 * `RpcMalformedMessageError`.
 */
import { Socket } from "@effect/platform"
import { type Rpc, RpcClient, RpcClientError, type RpcGroup, RpcSchema } from "@effect/rpc"
import type { FromClientEncoded, FromServerEncoded } from "@effect/rpc/RpcMessage"
import {
  Cause,
  Duration,
  Effect,
  ExecutionStrategy,
  Exit,
  Match,
  Option,
  ParseResult,
  Predicate,
  Scope,
  Stream
} from "effect"
import {
  RpcMalformedMessageError,
  RpcMessageTooLargeError,
  RpcStreamError,
  RpcTimeoutError,
  type RpcWireError
} from "../services/AgentRpc.js"
import type { RpcOptions } from "../services/RpcServer.js"
import { wiredGroup } from "./groupServer.js"
import {
  encodeFrame,
  exitOfDefect,
  failureExit,
  type ReadEnd,
  readMessages,
  type TaggedMessage
} from "./rpcWire.js"

/** Why opening a stream failed: its message becomes the call's `RpcStreamError`. */
export type StreamOpenError = { readonly message: string }

/** Opens one stream to the serving peer (closed with the scope). */
export type OpenStream<E extends StreamOpenError> = Effect.Effect<Socket.Socket, E, Scope.Scope>

type WriteResponse = (message: FromServerEncoded) => Effect.Effect<void>

/** Why the calls still waiting on a stream fail when reading it ends. */
const errorOfEnd: (end: ReadEnd) => RpcWireError = Match.type<ReadEnd>().pipe(
  Match.tagsExhaustive({
    Refused: (end): RpcWireError => end.error,
    Reset: (end) => new RpcStreamError({ detail: end.detail }),
    Eof: () => new RpcStreamError({ detail: "the stream ended before an answer" }),
    Stopped: () => new RpcStreamError({ detail: "the stream ended before an answer" })
  })
)

const isRefused = (end: ReadEnd) => Predicate.isTagged(end, "Refused")

const resetEvent = new Socket.CloseEvent(4000, "rpc call abandoned")

const malformed = (detail: string) => Effect.fail(new RpcMalformedMessageError({ detail }))

/**
 * Sends a request's frame with `send`; over the size limit the call fails at once with
 * `RpcMessageTooLargeError` instead, and nothing is sent.
 */
const sendRequest = (
  request: Extract<FromClientEncoded, { readonly _tag: "Request" }>,
  limit: number,
  writeResponse: WriteResponse,
  send: (frame: Uint8Array) => Effect.Effect<void>
): Effect.Effect<void> => {
  const { frame, size } = encodeFrame(request)
  return size > limit
    ? writeResponse(failureExit(request.id, new RpcMessageTooLargeError({ size, limit })))
    : send(frame)
}

/** One stream per call. */
const perCallProtocol = <E extends StreamOpenError>(
  openStream: OpenStream<E>,
  limit: number,
  writeResponse: WriteResponse
) => {
  /** Calls in flight: how to reset each one's stream. */
  const active = new Map<string, Effect.Effect<void>>()

  const call = (id: string, frame: Uint8Array) => {
    let answered = false
    const onMessage = (message: TaggedMessage) => {
      const m = message as FromServerEncoded
      switch (m._tag) {
        case "Chunk":
          return m.requestId === id ? Effect.as(writeResponse(m), true) : malformed("answer to another call")
        case "Exit":
          if (m.requestId !== id) return malformed("answer to another call")
          answered = true
          return Effect.as(writeResponse(m), false)
        case "Defect":
          answered = true
          return Effect.as(writeResponse(exitOfDefect(id, m.defect)), false)
        case "Pong":
          return Effect.succeed(true)
        default:
          return malformed(`unexpected message ${String(m._tag).slice(0, 100)}`)
      }
    }
    return Effect.gen(function* () {
      const socket = yield* openStream
      const write = yield* Effect.acquireRelease(socket.writer, (write, exit) =>
        !answered && Exit.isInterrupted(exit) ? Effect.ignore(write(resetEvent)) : Effect.void
      )
      active.set(id, Effect.ignore(write(resetEvent)))
      yield* write(frame)
      const end = yield* readMessages(socket, limit, onMessage)
      if (!answered) {
        if (isRefused(end)) yield* Effect.ignore(write(resetEvent))
        yield* writeResponse(failureExit(id, errorOfEnd(end)))
      }
    }).pipe(
      Effect.scoped,
      Effect.catchAll((error) =>
        writeResponse(failureExit(id, new RpcStreamError({ detail: error.message })))
      ),
      Effect.ensuring(Effect.sync(() => active.delete(id)))
    )
  }

  return (request: FromClientEncoded): Effect.Effect<void> => {
    switch (request._tag) {
      case "Request":
        return sendRequest(request, limit, writeResponse, (frame) => call(request.id, frame))
      case "Interrupt":
        return active.get(request.requestId) ?? Effect.void
      default:
        return Effect.void
    }
  }
}

interface Carrier {
  readonly write: (frame: Uint8Array | Socket.CloseEvent) => Effect.Effect<void, Socket.SocketError>
  readonly inFlight: Set<string>
}

/** One stream for every call, reopened after a failure. */
const multiplexedProtocol = Effect.fnUntraced(function* <E extends StreamOpenError>(
  openStream: OpenStream<E>,
  limit: number,
  writeResponse: WriteResponse
) {
  const scope = yield* Effect.scope
  const lock = yield* Effect.makeSemaphore(1)
  let current: Carrier | undefined

  const failAll = (carrier: Carrier, error: RpcWireError) =>
    Effect.forEach(
      Array.from(carrier.inFlight),
      (id) => {
        carrier.inFlight.delete(id)
        return writeResponse(failureExit(id, error))
      },
      { discard: true }
    )

  const open = Effect.gen(function* () {
    const streamScope = yield* Scope.fork(scope, ExecutionStrategy.sequential)
    const socket = yield* openStream.pipe(Scope.extend(streamScope))
    const write = yield* socket.writer.pipe(Scope.extend(streamScope))
    const carrier: Carrier = { write, inFlight: new Set() }
    const onMessage = (message: TaggedMessage) => {
      const m = message as FromServerEncoded
      switch (m._tag) {
        case "Chunk":
          return Effect.as(writeResponse(m), true)
        case "Exit":
          carrier.inFlight.delete(m.requestId)
          return Effect.as(writeResponse(m), true)
        case "Defect":
          // The server is ending this stream: calls made from now on open a new one.
          if (current === carrier) current = undefined
          return Effect.as(
            Effect.forEach(
              Array.from(carrier.inFlight),
              (id) => {
                carrier.inFlight.delete(id)
                return writeResponse(exitOfDefect(id, m.defect))
              },
              { discard: true }
            ),
            false
          )
        case "Pong":
          return Effect.succeed(true)
        default:
          return malformed(`unexpected message ${String(m._tag).slice(0, 100)}`)
      }
    }
    yield* readMessages(socket, limit, onMessage).pipe(
      Effect.flatMap((end) =>
        Effect.gen(function* () {
          if (current === carrier) current = undefined
          yield* failAll(carrier, errorOfEnd(end))
          if (isRefused(end)) yield* Effect.ignore(write(resetEvent))
        })
      ),
      Effect.ensuring(Scope.close(streamScope, Exit.void)),
      Effect.forkIn(streamScope)
    )
    current = carrier
    return carrier
  })

  const carrier = lock.withPermits(1)(Effect.suspend(() => (current ? Effect.succeed(current) : open)))

  return (request: FromClientEncoded): Effect.Effect<void> => {
    switch (request._tag) {
      case "Request":
        return sendRequest(request, limit, writeResponse, (frame) =>
          carrier.pipe(
            Effect.flatMap((c) => {
              c.inFlight.add(request.id)
              return Effect.tapError(c.write(frame), () => Effect.sync(() => c.inFlight.delete(request.id)))
            }),
            Effect.catchAll((error) =>
              writeResponse(failureExit(request.id, new RpcStreamError({ detail: error.message })))
            )
          )
        )
      case "Interrupt": {
        const c = current
        if (c === undefined || !c.inFlight.delete(request.requestId)) return Effect.void
        return Effect.ignore(c.write(encodeFrame(request).frame))
      }
      default:
        return Effect.void
    }
  }
})

/** The Protocol of one client whose streams `openStream` opens. */
export const makeGroupProtocol = <E extends StreamOpenError>(
  openStream: OpenStream<E>,
  options: RpcOptions
) =>
  RpcClient.Protocol.make((writeResponse) =>
    Effect.map(
      options.rpcStreamMode === "multiplexed"
        ? multiplexedProtocol(openStream, options.rpcParserBufferSize, writeResponse)
        : Effect.succeed(perCallProtocol(openStream, options.rpcParserBufferSize, writeResponse)),
      (send) => ({ send, supportsAck: false, supportsTransferables: false })
    )
  )

/** One method of a `GroupClient`: a call, or a stream of answers. */
export type GroupMethod<R> =
  R extends Rpc.Rpc<infer _Tag, infer _Payload, infer _Success, infer _Error, infer _Middleware>
    ? [_Success] extends [RpcSchema.Stream<infer _A, infer _E>]
      ? (
          payload: Rpc.PayloadConstructor<R>
        ) => Stream.Stream<
          _A["Type"],
          _E["Type"] | _Error["Type"] | _Middleware["failure"]["Type"] | RpcWireError,
          _Payload["Context"] | _Success["Context"] | _Error["Context"]
        >
      : (
          payload: Rpc.PayloadConstructor<R>
        ) => Effect.Effect<
          _Success["Type"],
          _Error["Type"] | _Middleware["failure"]["Type"] | RpcWireError,
          _Payload["Context"] | _Success["Context"] | _Error["Context"]
        >
    : never

/** Typed calls of a group, one method per request tag (a prefixed tag keeps its "prefix.name"). */
export type GroupClient<Rpcs extends Rpc.Any> = {
  readonly [R in Rpcs as R["_tag"]]: GroupMethod<R>
}

const fromClientError = (error: RpcClientError.RpcClientError) =>
  new RpcStreamError({ detail: error.message })

const isRpcClientError = (u: unknown): u is RpcClientError.RpcClientError =>
  Predicate.hasProperty(u, RpcClientError.TypeId)

/** An answer `@effect/rpc` could not decode (a peer's, so possibly hostile: its text is cut short). */
const undecodable = (defect: ParseResult.ParseError) =>
  new RpcMalformedMessageError({
    detail: `the answer does not match its schema: ${defect.message.slice(0, 200)}`
  })

const undecodableAnswer = (defect: unknown) =>
  ParseResult.isParseError(defect) ? Option.some(Effect.fail(undecodable(defect))) : Option.none()

const undecodableStream = <E>(cause: Cause.Cause<E>): Stream.Stream<never, E | RpcMalformedMessageError> => {
  const defect = Cause.dieOption(cause)
  return Option.isSome(defect) && ParseResult.isParseError(defect.value)
    ? Stream.fail(undecodable(defect.value))
    : Stream.failCause(cause)
}

type RawCall = (payload: unknown) => unknown

/** `@effect/rpc`'s function for `tag` in its (nested by prefix) client object. */
const rawCallOf = (client: Record<string, unknown>, tag: string): RawCall => {
  const dot = tag.indexOf(".")
  return (
    dot === -1 ? client[tag] : (client[tag.slice(0, dot)] as Record<string, unknown>)[tag.slice(dot + 1)]
  ) as RawCall
}

/**
 * A client of `group` whose calls go on streams `openStream` opens (every call, or one
 * stream reopened after a failure: `rpcStreamMode`); its streams close with the scope.
 */
export const makeGroupClient = <Rpcs extends Rpc.Any, E extends StreamOpenError>(
  group: RpcGroup.RpcGroup<Rpcs>,
  openStream: OpenStream<E>,
  options: RpcOptions
): Effect.Effect<GroupClient<Rpcs>, never, Scope.Scope> =>
  Effect.gen(function* () {
    const wired = wiredGroup(group)
    const protocol = yield* makeGroupProtocol(openStream, options)
    const raw = yield* RpcClient.make(wired, { disableTracing: true }).pipe(
      Effect.provideService(RpcClient.Protocol, protocol)
    )
    const timeout = options.rpcCallTimeoutTime
    const timeoutMillis = Duration.toMillis(timeout)
    const bound = (method: string, effect: Effect.Effect<unknown, unknown>) =>
      effect.pipe(
        Effect.catchIf(isRpcClientError, (e) => Effect.fail(fromClientError(e))),
        Effect.catchSomeDefect(undecodableAnswer),
        Effect.timeoutFail({
          duration: timeout,
          onTimeout: () => new RpcTimeoutError({ method, timeoutMillis })
        })
      )
    const boundStream = (method: string, stream: Stream.Stream<unknown, RpcClientError.RpcClientError>) =>
      stream.pipe(
        Stream.catchTag("RpcClientError", (e) => Stream.fail(fromClientError(e))),
        Stream.catchAllCause(undecodableStream),
        Stream.interruptWhen(
          Effect.sleep(timeout).pipe(
            Effect.zipRight(Effect.fail(new RpcTimeoutError({ method, timeoutMillis })))
          )
        )
      )
    const client: Record<string, (payload: unknown) => unknown> = {}
    for (const [tag, rpc] of wired.requests) {
      const call = rawCallOf(raw as unknown as Record<string, unknown>, tag)
      client[tag] = RpcSchema.isStreamSchema((rpc as unknown as Rpc.AnyWithProps).successSchema)
        ? (payload) =>
            boundStream(tag, call(payload) as Stream.Stream<unknown, RpcClientError.RpcClientError>)
        : (payload) => bound(tag, call(payload) as Effect.Effect<unknown, unknown>)
    }
    return client as GroupClient<Rpcs>
  })
