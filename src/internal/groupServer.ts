/**
 * groupServer: serves one `@effect/rpc` group on QUIC streams with `@effect/rpc`'s server
 * core (`RpcServer.makeNoSerialization`: handler dispatch, streams, interrupts, middleware).
 * The agent RPC is one such group; an application's own groups are others.
 *
 * Each stream is one `@effect/rpc` client (its own clientId): it may carry one call
 * (per-call clients) or many (multiplexed clients); calls run in parallel.
 * - Every call on a stream sees the context the stream was served with (its `Caller`, from
 *   the connection) through `WireMiddleware`, which the server adds to the group.
 * - The handlers are the ones of the `Context` given to `makeGroupServer`: each group's
 *   handlers live in a context of their own, so two groups may share a method name.
 * - A frame longer than `rpcParserBufferSize` is refused from its header: the stream gets a
 *   `RpcMessageTooLargeError` and is closed; the connection and its other streams go on.
 * - Bytes that are not a message: `RpcMalformedMessageError`, then the stream is closed.
 * - An unknown method or a payload that fails its schema: a typed failure of that call.
 * - A handler running longer than `rpcCallTimeoutTime` is interrupted; the call fails with
 *   `RpcTimeoutError`.
 * - An answer too large to send fails that call with `RpcMessageTooLargeError` instead.
 * - The peer ending the stream (FIN) lets its calls finish; a reset interrupts them.
 */

import { Headers, Socket } from "@effect/platform"
import { RpcServer as EffectRpcServer, Rpc, type RpcGroup, RpcSchema } from "@effect/rpc"
import type { FromServer, FromServerEncoded } from "@effect/rpc/RpcMessage"
import { RequestId } from "@effect/rpc/RpcMessage"
import type { RpcMiddlewareWrap } from "@effect/rpc/RpcMiddleware"
import {
  Context,
  Deferred,
  Duration,
  Effect,
  Option,
  ParseResult,
  Predicate,
  Schema,
  type Scope
} from "effect"
import {
  RpcInvalidRequestError,
  RpcMalformedMessageError,
  RpcMessageTooLargeError,
  RpcTimeoutError,
  RpcUnknownMethodError,
  type RpcWireError,
  WireMiddleware
} from "../services/AgentRpc.js"
import { Caller, type Contact } from "../services/Contact.js"
import type { RpcOptions } from "../services/RpcServer.js"
import {
  encodeFrame,
  failureExit,
  parseRequestId,
  readMessages,
  streamDefect,
  type TaggedMessage
} from "./rpcWire.js"

interface Schemas {
  readonly rpc: Rpc.AnyWithProps
  readonly decodePayload: (u: unknown) => Effect.Effect<unknown, ParseResult.ParseError>
  readonly encodeExit: (exit: unknown) => Effect.Effect<unknown, ParseResult.ParseError>
  readonly encodeChunk: (values: ReadonlyArray<unknown>) => Effect.Effect<unknown, ParseResult.ParseError>
}

const schemasOf = (rpc: Rpc.AnyWithProps): Schemas => {
  const stream = RpcSchema.getStreamSchemas(rpc.successSchema.ast)
  return {
    rpc,
    decodePayload: Schema.decodeUnknown(rpc.payloadSchema as Schema.Schema<unknown, unknown>),
    encodeExit: Schema.encodeUnknown(
      Rpc.exitSchema(rpc as never) as unknown as Schema.Schema<unknown, unknown>
    ),
    encodeChunk: Schema.encodeUnknown(
      Schema.Array(
        Option.isSome(stream) ? (stream.value.success as Schema.Schema<unknown, unknown>) : Schema.Any
      )
    )
  }
}

/** What the server knows about one stream (one `@effect/rpc` client). */
interface Session {
  /** What every call on the stream sees: its `Caller`, and the services it was served with. */
  readonly context: Context.Context<Caller>
  /** Requests in flight: their schemas, for encoding their answers. */
  readonly requests: Map<bigint, Schemas>
  /** Writes one frame; a failed write is ignored (the reading side notices the stream's end). */
  readonly send: (frame: Uint8Array) => Effect.Effect<void>
  readonly ended: Deferred.Deferred<void>
}

const wiredGroups = new WeakMap<object, RpcGroup.RpcGroup<Rpc.Any>>()

/**
 * `group` with `WireMiddleware` on every method (what server and client decode answers
 * with): the group itself when it has it already, else a copy made once per group.
 */
export const wiredGroup = <Rpcs extends Rpc.Any>(
  group: RpcGroup.RpcGroup<Rpcs>
): RpcGroup.RpcGroup<Rpc.Any> => {
  let wired = wiredGroups.get(group)
  if (wired === undefined) {
    const has = Array.from(group.requests.values(), (rpc) =>
      (rpc as unknown as Rpc.AnyWithProps).middlewares.has(WireMiddleware)
    ).every(Boolean)
    wired = has
      ? (group as unknown as RpcGroup.RpcGroup<Rpc.Any>)
      : (group.middleware(WireMiddleware) as unknown as RpcGroup.RpcGroup<Rpc.Any>)
    wiredGroups.set(group, wired)
  }
  return wired
}

/** The limits a group is served with. */
export type GroupServerOptions = Pick<RpcOptions, "rpcParserBufferSize" | "rpcCallTimeoutTime">

export interface GroupServer {
  /**
   * Serves one stream until the peer ends it (its calls then finish) or it fails; every call
   * on it sees `context` (which holds its `Caller`).
   */
  readonly serveStream: (
    socket: Socket.Socket,
    context: Context.Context<Caller>
  ) => Effect.Effect<void, Socket.SocketError>
  /** Serves one stream opened by `caller` (a stream handler: failures end that stream only). */
  readonly handler: (socket: Socket.Socket, caller: Contact) => Effect.Effect<void>
}

/**
 * A server of `group` answering with the handlers of `handlers` (e.g. built by
 * `group.toHandlersContext(...)`, or the context of `group.toLayer(...)`); it stops serving
 * when the scope closes (calls in progress are interrupted).
 */
export const makeGroupServer = <Rpcs extends Rpc.Any>(
  group: RpcGroup.RpcGroup<Rpcs>,
  handlers: Context.Context<Rpc.ToHandler<Rpcs>>,
  options: GroupServerOptions
): Effect.Effect<GroupServer, never, Scope.Scope> =>
  Effect.gen(function* () {
    const limit = options.rpcParserBufferSize
    const timeout = options.rpcCallTimeoutTime
    const timeoutMillis = Duration.toMillis(timeout)
    const wired = wiredGroup(group)
    const schemas = new Map<string, Schemas>()
    for (const [tag, rpc] of wired.requests) schemas.set(tag, schemasOf(rpc as unknown as Rpc.AnyWithProps))

    const sessions = new Map<number, Session>()
    let nextClientId = 0

    const middleware: RpcMiddlewareWrap<Caller, RpcWireError> = ({ clientId, next, rpc }) => {
      const session = sessions.get(clientId)
      if (session === undefined) return Effect.dieMessage(`no session for client ${clientId}`)
      return next.pipe(
        Effect.provide(session.context),
        Effect.timeoutFail({
          duration: timeout,
          onTimeout: () => new RpcTimeoutError({ method: rpc._tag, timeoutMillis })
        })
      )
    }

    /**
     * Sends `message` on the session's stream. One too large to send fails its call with a
     * typed error instead, and the call's handler (a stream still producing) is interrupted.
     */
    const sendChecked = (
      session: Session,
      clientId: number,
      requestId: bigint,
      message: FromServerEncoded
    ) => {
      const { frame, size } = encodeFrame(message)
      if (size <= limit) return session.send(frame)
      const refused = sendEncoded(
        session,
        failureExit(String(requestId), new RpcMessageTooLargeError({ size, limit }))
      )
      if (Predicate.isTagged(message, "Exit")) return refused
      session.requests.delete(requestId)
      return Effect.zipRight(
        refused,
        server.write(clientId, { _tag: "Interrupt", requestId: RequestId(requestId), interruptors: [] })
      )
    }

    /** A handler's answer that does not encode with its schema ends the call as a defect. */
    const invalidAnswer = (session: Session, requestId: unknown, e: { readonly message: string }) =>
      sendEncoded(session, {
        _tag: "Exit",
        requestId: String(requestId),
        exit: { _tag: "Failure", cause: { _tag: "Die", defect: `invalid answer: ${e.message}` } }
      })

    /** Sends a call's chunk or exit once `encoded` (with the call's schema) succeeds. */
    const answer = (
      session: Session,
      response: { readonly clientId: number; readonly requestId: bigint },
      encoded: Effect.Effect<unknown, ParseResult.ParseError>,
      message: (encoded: unknown) => FromServerEncoded
    ) =>
      encoded.pipe(
        Effect.matchEffect({
          onFailure: (e) => invalidAnswer(session, response.requestId, e),
          onSuccess: (value) => sendChecked(session, response.clientId, response.requestId, message(value))
        })
      )

    const onFromServer = (response: FromServer<Rpc.Any>): Effect.Effect<void> => {
      const session = sessions.get(response.clientId)
      if (session === undefined) return Effect.void
      switch (response._tag) {
        case "Chunk": {
          const s = session.requests.get(response.requestId)
          if (s === undefined) return Effect.void
          return answer(session, response, s.encodeChunk(response.values), (values) => ({
            _tag: "Chunk",
            requestId: String(response.requestId),
            values: values as never
          }))
        }
        case "Exit": {
          const s = session.requests.get(response.requestId)
          if (s === undefined) return Effect.void
          session.requests.delete(response.requestId)
          return answer(session, response, s.encodeExit(response.exit), (exit) => ({
            _tag: "Exit",
            requestId: String(response.requestId),
            exit: exit as never
          }))
        }
        case "Defect":
          return sendEncoded(session, {
            _tag: "Defect",
            defect: String(response.defect).slice(0, 1000)
          })
        case "ClientEnd":
          return Deferred.succeed(session.ended, undefined)
      }
    }

    const sendEncoded = (session: Session, message: FromServerEncoded) =>
      session.send(encodeFrame(message).frame)

    const server = yield* EffectRpcServer.makeNoSerialization(wired, {
      onFromServer,
      disableTracing: true,
      disableClientAcks: true,
      disableFatalDefects: true,
      concurrency: "unbounded"
    }).pipe(Effect.provide(handlers), Effect.provideService(WireMiddleware, middleware)) as Effect.Effect<
      EffectRpcServer.RpcServer<Rpc.Any>,
      never,
      Scope.Scope
    >

    /** Handles one decoded message from the peer; fails to stop the stream. */
    const onMessage = (
      clientId: number,
      session: Session,
      message: TaggedMessage
    ): Effect.Effect<void, RpcMalformedMessageError> => {
      const m = message as Record<string, unknown>
      switch (message._tag) {
        case "Request": {
          const id = parseRequestId(m.id)
          if (id === undefined)
            return Effect.fail(new RpcMalformedMessageError({ detail: "invalid request id" }))
          const tag = typeof m.tag === "string" ? m.tag : ""
          const s = schemas.get(tag)
          if (s === undefined)
            return sendEncoded(
              session,
              failureExit(String(id), new RpcUnknownMethodError({ method: tag.slice(0, 200) }))
            )
          return s.decodePayload(m.payload).pipe(
            Effect.matchEffect({
              onFailure: (e) =>
                sendEncoded(
                  session,
                  failureExit(
                    String(id),
                    new RpcInvalidRequestError({
                      method: tag,
                      detail: ParseResult.TreeFormatter.formatErrorSync(e).slice(0, 1000)
                    })
                  )
                ),
              onSuccess: (payload) => {
                session.requests.set(id, s)
                return server.write(clientId, {
                  _tag: "Request",
                  id: RequestId(id),
                  tag: tag as never,
                  payload: payload as never,
                  headers: Headers.empty
                })
              }
            })
          )
        }
        case "Interrupt": {
          const id = parseRequestId(m.requestId)
          if (id === undefined)
            return Effect.fail(new RpcMalformedMessageError({ detail: "invalid request id" }))
          return server.write(clientId, { _tag: "Interrupt", requestId: RequestId(id), interruptors: [] })
        }
        case "Ping":
          return sendEncoded(session, { _tag: "Pong" })
        case "Ack":
        case "Eof":
          return Effect.void
        default:
          return Effect.fail(
            new RpcMalformedMessageError({ detail: `unknown message ${message._tag.slice(0, 100)}` })
          )
      }
    }

    const serveStream = (socket: Socket.Socket, context: Context.Context<Caller>) =>
      Effect.gen(function* () {
        const clientId = nextClientId++
        const write = yield* socket.writer
        const session: Session = {
          context,
          requests: new Map(),
          send: (frame) => Effect.ignore(write(frame)),
          ended: yield* Deferred.make<void>()
        }
        sessions.set(clientId, session)
        yield* Effect.addFinalizer(() =>
          Effect.zipRight(
            server.disconnect(clientId),
            Effect.sync(() => sessions.delete(clientId))
          )
        )
        const end = yield* readMessages(socket, limit, (message) =>
          Effect.as(onMessage(clientId, session, message), true)
        )
        switch (end._tag) {
          case "Refused":
            // Tell the peer why, then end the stream; the connection and other streams go on.
            yield* sendEncoded(session, streamDefect(end.error))
            return yield* Effect.ignore(write(new Socket.CloseEvent(1000)))
          case "Eof":
            // The peer ended its side: its calls finish, then ours ends (the writer's release).
            yield* server.write(clientId, { _tag: "Eof" })
            return yield* Deferred.await(session.ended)
          default:
            // Reset or closed: the finalizer interrupts the stream's calls.
            return
        }
      }).pipe(Effect.scoped)

    return {
      serveStream,
      handler: (socket, caller) => Effect.ignore(serveStream(socket, Context.make(Caller, caller)))
    } satisfies GroupServer
  })
