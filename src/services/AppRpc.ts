/**
 * AppRpc: an application's own `@effect/rpc` group served and called over the node's
 * connections, as the application protocol `name/version` (see `Protocols`).
 *
 * `make(group, { protocol, … })` is a definition, made once (a module constant):
 * - `layer` serves the group on every connection while it lives: it takes the group's
 *   handlers from its requirements (`group.toLayer(...)`; only this group's are used), makes
 *   the group server with the definition's limits (else `RpcConfig`'s) and registers it in
 *   the node's `Protocols` under the protocol id. Handlers see the calling peer as `Caller`
 *   (NodeId from the handshake, observed address; the group needs `WireMiddleware` for its
 *   handlers to ask for it); a handler running longer than `rpcCallTimeoutTime` is
 *   interrupted. Give each group's `layer` its own handlers: `@effect/rpc` keys handlers by
 *   method name, so two groups' handlers in one context share same-named methods.
 * - `withClient(nodeId, f)` gets or makes the connection like `ConnectionManager.withConnection`
 *   (it counts as used while `f` runs) and hands `f` a typed client of the group. The client
 *   is kept per connection (until it closes) and reused by the next calls; in the default
 *   `multiplexed` mode all its calls share one stream. `withClientStream` is the same for a
 *   `Stream`.
 * - A peer that does not serve the protocol (or not that version) refuses the stream: every
 *   call fails with `Protocols.UnsupportedProtocolError` after one round trip, and the next
 *   `withClient` makes a new client (the peer may serve it by then).
 *
 * Calls fail with the group's own errors, the wire errors (`AgentRpc.RpcWireError`: too large,
 * timeout, invalid request, …) and `UnsupportedProtocolError`.
 */
import type { Socket } from "@effect/platform"
import { type Rpc, type RpcGroup, RpcSchema } from "@effect/rpc"
import { Context, Duration, Effect, Exit, Layer, Option, Predicate, Scope, Stream } from "effect"
import { type GroupClient, makeGroupClient } from "../internal/groupClient.js"
import { makeGroupServer } from "../internal/groupServer.js"
import { ConnectionManager, type NodeConnectionError, type OperationOptions } from "./ConnectionManager.js"
import type { NodeId } from "./NodeId.js"
import {
  openOptimistic,
  ProtocolId,
  Protocols,
  refusalOf,
  type UnsupportedProtocolError
} from "./Protocols.js"
import type { QuicConnection } from "./QuicTransport.js"
import { RpcConfig, type RpcOptions, type RpcStreamMode } from "./RpcServer.js"

/**
 * Add to a group (`RpcGroup.make(...).middleware(WireMiddleware)`) whose handlers use `Caller`:
 * the server provides it to every call.
 */
export { WireMiddleware } from "./AgentRpc.js"

export interface AppRpcOptions {
  /** The protocol id, "name/version" (see `Protocols.ProtocolId`). */
  readonly protocol: string
  /** Largest message accepted or sent (default: `RpcConfig`'s). */
  readonly rpcParserBufferSize?: number
  /** Handlers are interrupted, and callers stop waiting, after this (default: `RpcConfig`'s). */
  readonly rpcCallTimeoutTime?: Duration.DurationInput
  /** How clients carry their calls (default: `RpcConfig`'s, `multiplexed`). */
  readonly rpcStreamMode?: RpcStreamMode
}

/** A method of a group client, failing also with `UnsupportedProtocolError` (an Effect is a Stream too: it is tested first). */
export type AppMethod<M> = M extends (payload: infer P) => Effect.Effect<infer A, infer E, infer R>
  ? (payload: P) => Effect.Effect<A, E | UnsupportedProtocolError, R>
  : M extends (payload: infer P) => Stream.Stream<infer A, infer E, infer R>
    ? (payload: P) => Stream.Stream<A, E | UnsupportedProtocolError, R>
    : never

/** Typed calls of a group to one peer, one method per request tag. */
export type AppClient<Rpcs extends Rpc.Any> = {
  readonly [K in keyof GroupClient<Rpcs>]: AppMethod<GroupClient<Rpcs>[K]>
}

export interface AppRpc<Rpcs extends Rpc.Any> {
  readonly group: RpcGroup.RpcGroup<Rpcs>
  readonly protocol: ProtocolId
  /** Serves the group on every connection of the node while the layer lives. */
  readonly layer: Layer.Layer<never, never, Protocols | RpcConfig | Rpc.ToHandler<Rpcs>>
  /** Runs `f` with a client of the group on `nodeId`'s connection (got or made; in use while `f` runs). */
  readonly withClient: <A, E, R>(
    nodeId: NodeId,
    f: (client: AppClient<Rpcs>) => Effect.Effect<A, E, R>,
    options?: OperationOptions
  ) => Effect.Effect<A, E | NodeConnectionError, R | ConnectionManager | RpcConfig>
  /** `withClient` for a stream: the connection is in use until the stream ends. */
  readonly withClientStream: <A, E, R>(
    nodeId: NodeId,
    f: (client: AppClient<Rpcs>) => Stream.Stream<A, E, R>,
    options?: OperationOptions
  ) => Stream.Stream<A, E | NodeConnectionError, R | ConnectionManager | RpcConfig>
}

/** A client on one connection, with the calls using it now. */
interface Held<Rpcs extends Rpc.Any> {
  client: AppClient<Rpcs>
  readonly scope: Scope.CloseableScope
  users: number
  /** No longer handed out (refused, or the connection closed): closed once unused. */
  dropped: boolean
  /** The peer's refusal, once it came: the client's broken-stream failures are this. */
  refused: UnsupportedProtocolError | undefined
}

/** The client handed out on one connection, if any. */
interface Slot<Rpcs extends Rpc.Any> {
  current: Held<Rpcs> | undefined
}

/** The socket with the refusal that fails its reads, if one does, given to `onRefused`. */
const watchRefusal = (socket: Socket.Socket, onRefused: (error: UnsupportedProtocolError) => void) => {
  const tap = (error: unknown) =>
    Effect.sync(() => {
      const refusal = refusalOf(error)
      if (Option.isSome(refusal)) onRefused(refusal.value)
    })
  const watched: Socket.Socket = {
    ...socket,
    run: (handler, options) => Effect.tapError(socket.run(handler, options), tap),
    runRaw: (handler, options) => Effect.tapError(socket.runRaw(handler, options), tap)
  }
  return watched
}

const isStreamError = Predicate.isTagged("RpcStreamError")

/** This group's handlers from `context` (and nothing else: two groups may share a method name). */
const handlersOf = <Rpcs extends Rpc.Any>(
  group: RpcGroup.RpcGroup<Rpcs>,
  context: Context.Context<Rpc.ToHandler<Rpcs>>
): Context.Context<Rpc.ToHandler<Rpcs>> => {
  const own = new Map<string, unknown>()
  for (const rpc of group.requests.values()) {
    const key = (rpc as unknown as Rpc.AnyWithProps).key
    own.set(key, context.unsafeMap.get(key))
  }
  return Context.unsafeMake(own)
}

/**
 * A definition of `group` as protocol `options.protocol`. Throws `InvalidProtocolIdError` when
 * the id is not one (a programmer's error, found where the definition is made).
 */
export const make = <Rpcs extends Rpc.Any>(
  group: RpcGroup.RpcGroup<Rpcs>,
  options: AppRpcOptions
): AppRpc<Rpcs> => {
  const protocol = ProtocolId.unsafeMake(options.protocol)
  const timeout =
    options.rpcCallTimeoutTime === undefined ? undefined : Duration.decode(options.rpcCallTimeoutTime)
  const limitsOf = (config: RpcOptions): RpcOptions => ({
    rpcParserBufferSize: options.rpcParserBufferSize ?? config.rpcParserBufferSize,
    rpcCallTimeoutTime: timeout ?? config.rpcCallTimeoutTime,
    rpcStreamMode: options.rpcStreamMode ?? config.rpcStreamMode
  })
  const streamed = new Set<string>()
  for (const [tag, rpc] of group.requests)
    if (RpcSchema.isStreamSchema((rpc as unknown as Rpc.AnyWithProps).successSchema)) streamed.add(tag)

  const layer = Layer.scopedDiscard(
    Effect.gen(function* () {
      const context = yield* Effect.context<Rpc.ToHandler<Rpcs> | Protocols | RpcConfig>()
      const server = yield* makeGroupServer(
        group,
        handlersOf(group, context),
        limitsOf(Context.get(context, RpcConfig))
      )
      yield* Context.get(context, Protocols).handle(protocol, server.handler)
    })
  )

  // ---- Clients, one per connection -------------------------------------------------------

  const slots = new Map<QuicConnection, Slot<Rpcs>>()

  const closeIfUnused = (held: Held<Rpcs>) =>
    held.dropped && held.users === 0 ? Scope.close(held.scope, Exit.void) : Effect.void

  const drop = (slot: Slot<Rpcs>, held: Held<Rpcs>) => {
    if (slot.current === held) slot.current = undefined
    held.dropped = true
  }

  /** The connection's slot, forgotten (and its client closed once unused) when it closes. */
  const slotOf = (connection: QuicConnection): Effect.Effect<Slot<Rpcs>> =>
    Effect.suspend(() => {
      const known = slots.get(connection)
      if (known !== undefined) return Effect.succeed(known)
      const slot: Slot<Rpcs> = { current: undefined }
      slots.set(connection, slot)
      return Effect.as(
        connection.whenClosed(() => {
          slots.delete(connection)
          const held = slot.current
          if (held === undefined) return Effect.void
          drop(slot, held)
          return closeIfUnused(held)
        }),
        slot
      )
    })

  /** Calls failing because the stream broke fail with the refusal once there was one. */
  const refusing = (raw: GroupClient<Rpcs>, held: Held<Rpcs>): AppClient<Rpcs> => {
    const orRefusal = (error: unknown) =>
      held.refused !== undefined && isStreamError(error) ? held.refused : error
    const client: Record<string, (payload: unknown) => unknown> = {}
    for (const [tag, call] of Object.entries(raw as Record<string, (payload: unknown) => unknown>))
      client[tag] = streamed.has(tag)
        ? (payload) => Stream.mapError(call(payload) as Stream.Stream<unknown, unknown>, orRefusal)
        : (payload) => Effect.mapError(call(payload) as Effect.Effect<unknown, unknown>, orRefusal)
    return client as AppClient<Rpcs>
  }

  const makeHeld = (connection: QuicConnection, slot: Slot<Rpcs>) =>
    Effect.gen(function* () {
      const config = yield* RpcConfig
      const scope = yield* Scope.make()
      const held: Held<Rpcs> = {
        client: undefined as unknown as AppClient<Rpcs>,
        scope,
        users: 0,
        dropped: false,
        refused: undefined
      }
      // The refusal is noted by the stream's reader before the calls on it fail.
      const open = Effect.map(openOptimistic(connection, protocol), (socket) =>
        watchRefusal(socket, (refusal) => {
          held.refused = refusal
          drop(slot, held)
        })
      )
      const raw = yield* Scope.extend(makeGroupClient(group, open, limitsOf(config)), scope)
      held.client = refusing(raw, held)
      return held
    })

  const use = (held: Held<Rpcs>) => {
    held.users++
    return held
  }

  /** The connection's first client, or the one another call made meanwhile. */
  const makeFirst = (connection: QuicConnection) =>
    Effect.flatMap(slotOf(connection), (slot) =>
      Effect.flatMap(makeHeld(connection, slot), (made) => {
        if (slot.current !== undefined)
          return Effect.as(Scope.close(made.scope, Exit.void), use(slot.current))
        if (slots.get(connection) === slot) slot.current = made
        else made.dropped = true
        return Effect.succeed(use(made))
      })
    )

  /** The connection's client (made on first use), counted as used until `release`. */
  const take = (connection: QuicConnection): Effect.Effect<Held<Rpcs>, never, RpcConfig> =>
    Effect.suspend(() => {
      const held = slots.get(connection)?.current
      return held !== undefined ? Effect.succeed(use(held)) : makeFirst(connection)
    })

  const release = (held: Held<Rpcs>) =>
    Effect.suspend(() => {
      held.users--
      return closeIfUnused(held)
    })

  const withClient: AppRpc<Rpcs>["withClient"] = (nodeId, f, operation) =>
    Effect.flatMap(ConnectionManager, (cm) =>
      cm.withConnection(
        nodeId,
        (handle) => Effect.acquireUseRelease(take(handle.connection), (held) => f(held.client), release),
        operation
      )
    )

  const withClientStream: AppRpc<Rpcs>["withClientStream"] = (nodeId, f, operation) =>
    Stream.unwrap(
      Effect.map(ConnectionManager, (cm) =>
        cm.withConnectionStream(
          nodeId,
          (handle) =>
            Stream.unwrapScoped(
              Effect.map(Effect.acquireRelease(take(handle.connection), release), (held) => f(held.client))
            ),
          operation
        )
      )
    )

  return { group, protocol, layer, withClient, withClientStream }
}
