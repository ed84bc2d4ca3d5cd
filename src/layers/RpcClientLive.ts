/**
 * RpcClientLive: `@effect/rpc`'s client of `AgentRpcs` over a QUIC connection, through a
 * `RpcClient.Protocol` of our own (frames of `RpcWire`).
 *
 * Two ways to carry calls (`RpcOptions.rpcStreamMode`):
 * - `per-call`: every call opens its own bidirectional stream, sends its request, reads its
 *   answer and ends the stream. A failure (oversized or malformed answer, reset) concerns
 *   that call alone; cancelling a call resets its stream, which interrupts the handler.
 * - `multiplexed`: one stream, opened on first use, carries every call of the client; when
 *   it fails, the calls in flight on it fail and the next call opens a new one.
 *
 * A request larger than `rpcParserBufferSize` is not sent: it fails at once with
 * `RpcMessageTooLargeError`. Every call is bounded by `rpcCallTimeoutTime`.
 */
import { Socket } from "@effect/platform"
import { RpcClient, RpcClientError } from "@effect/rpc"
import type { FromClientEncoded, FromServerEncoded } from "@effect/rpc/RpcMessage"
import { Duration, Effect, ExecutionStrategy, Exit, Match, Predicate, Scope, Stream } from "effect"
import {
  encodeFrame,
  exitOfDefect,
  failureExit,
  type ReadEnd,
  readMessages,
  type TaggedMessage
} from "../internal/rpcWire.js"
import {
  AgentRpcs,
  type AgentRpcWireError,
  RpcMalformedMessageError,
  RpcMessageTooLargeError,
  RpcStreamError,
  RpcTimeoutError
} from "../services/AgentRpc.js"
import type { QuicConnection } from "../services/QuicTransport.js"
import { type AgentClient, RpcConfig, type RpcOptions } from "../services/RpcServer.js"

type WriteResponse = (message: FromServerEncoded) => Effect.Effect<void>

/** Why the calls still waiting on a stream fail when reading it ends. */
const errorOfEnd: (end: ReadEnd) => AgentRpcWireError = Match.type<ReadEnd>().pipe(
  Match.tagsExhaustive({
    Refused: (end): AgentRpcWireError => end.error,
    Reset: (end) => new RpcStreamError({ detail: end.detail }),
    Eof: () => new RpcStreamError({ detail: "the stream ended before an answer" }),
    Stopped: () => new RpcStreamError({ detail: "the stream ended before an answer" })
  })
)

const isRefused = (end: ReadEnd) => Predicate.isTagged(end, "Refused")

const resetEvent = new Socket.CloseEvent(4000, "rpc call abandoned")

const malformed = (detail: string) => Effect.fail(new RpcMalformedMessageError({ detail }))

/** One stream per call. */
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

const perCallProtocol = (connection: QuicConnection, limit: number, writeResponse: WriteResponse) => {
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
      const socket = yield* connection.openStream
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
const multiplexedProtocol = Effect.fnUntraced(function* (
  connection: QuicConnection,
  limit: number,
  writeResponse: WriteResponse
) {
  const scope = yield* Effect.scope
  const lock = yield* Effect.makeSemaphore(1)
  let current: Carrier | undefined

  const failAll = (carrier: Carrier, error: AgentRpcWireError) =>
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
    const socket = yield* connection.openStream.pipe(Scope.extend(streamScope))
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

/** The Protocol of one client on `connection`. */
export const makeProtocol = (connection: QuicConnection, options: RpcOptions) =>
  RpcClient.Protocol.make((writeResponse) =>
    Effect.map(
      options.rpcStreamMode === "multiplexed"
        ? multiplexedProtocol(connection, options.rpcParserBufferSize, writeResponse)
        : Effect.succeed(perCallProtocol(connection, options.rpcParserBufferSize, writeResponse)),
      (send) => ({ send, supportsAck: false, supportsTransferables: false })
    )
  )

const fromClientError = (error: RpcClientError.RpcClientError) =>
  new RpcStreamError({ detail: error.message })

const isRpcClientError = (u: unknown): u is RpcClientError.RpcClientError =>
  Predicate.hasProperty(u, RpcClientError.TypeId)

/** A client for calls to the peer of `connection`; its streams close with the scope. */
export const make = (
  connection: QuicConnection,
  options: RpcOptions = RpcConfig.defaults
): Effect.Effect<AgentClient, never, Scope.Scope> =>
  Effect.gen(function* () {
    const protocol = yield* makeProtocol(connection, options)
    const client = yield* RpcClient.make(AgentRpcs, { disableTracing: true }).pipe(
      Effect.provideService(RpcClient.Protocol, protocol)
    )
    const timeout = options.rpcCallTimeoutTime
    const timeoutMillis = Duration.toMillis(timeout)
    const bound = <A, E>(method: string, effect: Effect.Effect<A, E | RpcClientError.RpcClientError>) =>
      effect.pipe(
        Effect.catchIf(isRpcClientError, (e) => Effect.fail(fromClientError(e))),
        Effect.timeoutFail({
          duration: timeout,
          onTimeout: () => new RpcTimeoutError({ method, timeoutMillis })
        })
      )
    return {
      nodesPing: (payload) => bound("nodesPing", client.nodesPing(payload)),
      nodesHolePunchSignal: (payload) => bound("nodesHolePunchSignal", client.nodesHolePunchSignal(payload)),
      nodesClosestLocalNodesGet: (payload) =>
        client.nodesClosestLocalNodesGet(payload).pipe(
          Stream.catchTag("RpcClientError", (e) => Stream.fail(fromClientError(e))),
          Stream.interruptWhen(
            Effect.sleep(timeout).pipe(
              Effect.zipRight(
                Effect.fail(new RpcTimeoutError({ method: "nodesClosestLocalNodesGet", timeoutMillis }))
              )
            )
          )
        )
    } satisfies AgentClient
  })

/** `make` with the limits of the `RpcConfig` service. */
export const makeWithConfig = (
  connection: QuicConnection
): Effect.Effect<AgentClient, never, Scope.Scope | RpcConfig> =>
  Effect.flatMap(RpcConfig, (options) => make(connection, options))
