/**
 * PeerRpc over the agent RPC: the connection manager's view of `RpcServer` and the agent
 * client. `serve(connection, handlers)` serves the RPC server on `connection` with `handlers`
 * in the context of its calls; the server's handlers (`handlersLayer`) delegate to them. Each
 * connection also serves Polykey's agent RPC with the same handlers, and a peer that speaks
 * Polykey (`QuicConnection.speaks`) is called in Polykey's wire (`internal/polykeyPeer.ts`).
 */
import {
  Cause,
  Chunk,
  Context,
  Deferred,
  Duration,
  Effect,
  Either,
  ExecutionStrategy,
  Exit,
  FiberId,
  Layer,
  Match,
  Scope,
  Stream
} from "effect"
import { wireCalls, wireHandlers } from "../internal/connectionManager/reachability/wire.js"
import { type PolykeyMethods, servePolykeyStream } from "../internal/polykey/rpcServer.js"
import * as PolykeyPeer from "../internal/polykeyPeer.js"
import { AgentRpcs, type HolePunchRefused } from "../services/AgentRpc.js"
import { Caller, type WireContact } from "../services/Contact.js"
import * as NodeId from "../services/NodeId.js"
import {
  type AgentHandlers,
  type HolePunchMessage,
  PeerCallError,
  type PeerClient,
  PeerRpc
} from "../services/PeerRpc.js"
import type { QuicConnection } from "../services/QuicTransport.js"
import type { DialBackOrder, DialBackRequest, IdentifyMessage } from "../services/Reachability.js"
import {
  type AgentCallError,
  type AgentClient,
  type RpcConfig,
  RpcServer,
  type RpcServerService
} from "../services/RpcServer.js"
import * as RpcServerLive from "./RpcServerLive.js"

/** The peer of `connection` as its calls see it. */
const callerOf = (connection: QuicConnection) => ({
  nodeId: connection.remoteNodeId,
  host: connection.remoteHost,
  port: connection.remotePort
})

/** The handlers `serve` was given for the connection a call arrived on. */
export class ServedHandlers extends Context.Tag("quicmesh/PeerRpcLive/ServedHandlers")<
  ServedHandlers,
  AgentHandlers
>() {}

const servedHandlers = Effect.orDieWith(
  Effect.serviceOptional(ServedHandlers),
  () => new Error("a connection served without agent handlers (serve it with PeerRpc.serve)")
)

/** The agent RPC handlers, delegating to the ones served on the call's connection. */
export const handlersLayer = AgentRpcs.toLayer({
  ...wireHandlers(servedHandlers),
  nodesPing: ({ nonce }) =>
    Effect.gen(function* () {
      const h = yield* servedHandlers
      yield* h.touch(yield* Caller)
      return { nonce }
    }),
  nodesClosestLocalNodesGet: ({ nodeIdEncoded }) =>
    Stream.unwrap(
      Effect.gen(function* () {
        const caller = yield* Caller
        const h = yield* servedHandlers
        yield* h.touch(caller)
        const target = NodeId.decode(nodeIdEncoded)
        if (Either.isLeft(target)) return Stream.empty
        const contacts = yield* h.closestNodes(caller, target.right)
        return Stream.fromIterable(contacts as ReadonlyArray<WireContact>)
      })
    ),
  nodesHolePunchSignal: (payload) =>
    Effect.gen(function* () {
      const caller = yield* Caller
      const h = yield* servedHandlers
      yield* h.touch(caller)
      // The refusal crosses the wire as it is: the caller reads its reason.
      yield* h.holePunchSignal(caller, payload)
    })
})

/** What a failed call reads as: timeouts and broken streams are ours, the rest the peer's. */
const reasonOf = Match.type<AgentCallError | HolePunchRefused>().pipe(
  Match.tags({
    RpcTimeoutError: () => "timeout" as const,
    RpcStreamError: () => "connection" as const
  }),
  Match.orElse(() => "remote" as const)
)

const callError =
  (method: string) =>
  (e: AgentCallError | HolePunchRefused): PeerCallError =>
    new PeerCallError({ method, reason: reasonOf(e), detail: e.message, cause: e })

/**
 * A call whose connection closes under it is interrupted by the client's own scope, not by
 * the caller: that reaches the caller as a typed connection error. (A caller that is itself
 * interrupted stays interrupted.)
 */
const closedUnderneath = (method: string) => (cause: Cause.Cause<PeerCallError>) =>
  Cause.isInterruptedOnly(cause)
    ? Effect.fail(
        new PeerCallError({ method, reason: "connection", detail: "the connection closed during the call" })
      )
    : Effect.failCause(cause)

const adapt = (client: AgentClient): PeerClient => {
  // Per client, so that a simulation replays byte for byte.
  let nonceCounter = 0
  const closestNodes = (target: NodeId.NodeId) =>
    client.nodesClosestLocalNodesGet({ nodeIdEncoded: NodeId.encode(target) }).pipe(
      Stream.mapError(callError("nodesClosestLocalNodesGet")),
      Stream.catchAllCause((cause) => Stream.fromEffect(closedUnderneath("nodesClosestLocalNodesGet")(cause)))
    ) as Stream.Stream<WireContact, PeerCallError>
  return {
    ...wireCalls(client, closedUnderneath),
    ping: Effect.suspend(() => {
      const nonce = `${++nonceCounter}`
      return client.nodesPing({ nonce }).pipe(
        Effect.mapError(callError("nodesPing")),
        Effect.catchAllCause(closedUnderneath("nodesPing")),
        Effect.flatMap((r) =>
          r.nonce === nonce
            ? Effect.void
            : Effect.fail(
                new PeerCallError({ method: "nodesPing", reason: "invalid-response", detail: "wrong nonce" })
              )
        )
      )
    }),
    closestNodes,
    closestNodesUpTo: (target, limit, timeout) =>
      Stream.runCollect(Stream.take(closestNodes(target), limit)).pipe(
        Effect.timeoutFail({
          duration: timeout,
          onTimeout: () =>
            new PeerCallError({
              method: "nodesClosestLocalNodesGet",
              reason: "timeout",
              detail: `no answer within ${Duration.format(timeout)}`
            })
        }),
        Effect.map(Chunk.toReadonlyArray)
      ),
    holePunchSignal: (message: HolePunchMessage) =>
      client
        .nodesHolePunchSignal(
          message.observed
            ? {
                request: message.request,
                observed: { host: message.observed.host, port: message.observed.port }
              }
            : { request: message.request }
        )
        .pipe(
          Effect.mapError(callError("nodesHolePunchSignal")),
          Effect.catchAllCause(closedUnderneath("nodesHolePunchSignal"))
        )
  }
}

/**
 * How long a built RPC client stays after its last call ends. Then its stream closes (and
 * with it the fibers and buffers on both ends), and the next call builds a new one: a node
 * that has called each of its thousand peers once does not keep a thousand idle clients.
 */
export const CLIENT_IDLE_CLOSE = Duration.seconds(1)

interface Built {
  readonly client: Deferred.Deferred<PeerClient>
  /** Calls running on this client. */
  inflight: number
  /** Calls started on it so far (a call since the idle timer started keeps it). */
  uses: number
  /** An idle timer is running. */
  lingering: boolean
  started: boolean
  /** Where the client lives; closed when it has been idle for `CLIENT_IDLE_CLOSE`. */
  scope: Scope.CloseableScope | undefined
}

/**
 * A client that costs nothing until a call: most held connections are never called on. A
 * call builds the RPC client (once, whoever calls first) in a scope of its own inside the
 * connection's; `CLIENT_IDLE_CLOSE` after the last call ends, that scope is closed again.
 */
class LazyClient implements PeerClient {
  private built: Built | undefined
  constructor(
    private readonly server: RpcServerService,
    private readonly connection: QuicConnection,
    private readonly scope: Scope.Scope
  ) {}

  /** Takes the current client (or a new one) for one call. */
  private enter(): Effect.Effect<Built> {
    return Effect.sync((): Built => {
      const b: Built = this.built ?? {
        client: Deferred.unsafeMake<PeerClient>(FiberId.none),
        inflight: 0,
        uses: 0,
        lingering: false,
        started: false,
        scope: undefined
      }
      this.built = b
      b.inflight++
      b.uses++
      return b
    })
  }

  /** The client of `b`, built by the first caller. */
  private clientOf(b: Built): Effect.Effect<PeerClient> {
    return Effect.suspend(() => {
      if (b.started) return Deferred.await(b.client)
      b.started = true
      return Scope.fork(this.scope, ExecutionStrategy.sequential).pipe(
        Effect.flatMap((scope) =>
          this.server.makeClient(this.connection).pipe(
            Scope.extend(scope),
            Effect.map((client): PeerClient => {
              b.scope = scope
              return adapt(client)
            })
          )
        ),
        Effect.exit,
        Effect.flatMap((exit) => Deferred.done(b.client, exit)),
        Effect.uninterruptible,
        Effect.zipRight(Deferred.await(b.client))
      )
    })
  }

  /** One call on `b` ended; the last one starts the idle timer. */
  private leave(b: Built): Effect.Effect<void> {
    return Effect.suspend(() => {
      b.inflight--
      if (b.inflight > 0 || b.lingering || this.built !== b) return Effect.void
      b.lingering = true
      // Interruptible: this runs in a call's release, and a fiber forked there would inherit
      // its uninterruptibility (closing the connection would then wait out the timer).
      return Effect.asVoid(Effect.forkIn(Effect.interruptible(this.linger(b)), this.scope))
    })
  }

  private linger(b: Built): Effect.Effect<void> {
    return Effect.suspend(() => {
      const seen = b.uses
      return Effect.sleep(CLIENT_IDLE_CLOSE).pipe(
        Effect.zipRight(
          Effect.suspend(() => {
            if (this.built !== b) return Effect.void
            if (b.inflight > 0) {
              // The call running now starts the timer again when it ends.
              b.lingering = false
              return Effect.void
            }
            if (b.uses !== seen) return this.linger(b)
            this.built = undefined
            return b.scope ? Scope.close(b.scope, Exit.void) : Effect.void
          })
        )
      )
    })
  }

  private call<A, E>(f: (client: PeerClient) => Effect.Effect<A, E>): Effect.Effect<A, E> {
    return Effect.acquireUseRelease(
      this.enter(),
      (b) => Effect.flatMap(this.clientOf(b), f),
      (b) => this.leave(b)
    )
  }

  get ping(): Effect.Effect<void, PeerCallError> {
    return this.call((c) => c.ping)
  }
  closestNodes(target: NodeId.NodeId): Stream.Stream<WireContact, PeerCallError> {
    return Stream.unwrapScoped(
      Effect.acquireRelease(this.enter(), (b) => this.leave(b)).pipe(
        Effect.flatMap((b) => this.clientOf(b)),
        Effect.map((c) => c.closestNodes(target))
      )
    )
  }
  closestNodesUpTo(
    target: NodeId.NodeId,
    limit: number,
    timeout: Duration.Duration
  ): Effect.Effect<ReadonlyArray<WireContact>, PeerCallError> {
    return this.call((c) => c.closestNodesUpTo(target, limit, timeout))
  }
  identify(message: IdentifyMessage): Effect.Effect<IdentifyMessage, PeerCallError> {
    return this.call((c) => c.identify!(message))
  }
  dialBackRequest(request: DialBackRequest): Effect.Effect<void, PeerCallError> {
    return this.call((c) => c.dialBackRequest!(request))
  }
  dialBack(order: DialBackOrder): Effect.Effect<void, PeerCallError> {
    return this.call((c) => c.dialBack!(order))
  }
  dialBackProof(nonce: string): Effect.Effect<void, PeerCallError> {
    return this.call((c) => c.dialBackProof!(nonce))
  }
  holePunchSignal(message: HolePunchMessage): Effect.Effect<void, PeerCallError> {
    return this.call((c) => c.holePunchSignal(message))
  }
}

export const make = Effect.gen(function* () {
  const server = yield* RpcServer
  // The context made for the last handlers served: a node serves every connection with the
  // same handlers, so a connection costs no context of its own.
  let served: Context.Context<ServedHandlers> | undefined
  const contextOf = (handlers: AgentHandlers) => {
    if (served === undefined || Context.get(served, ServedHandlers) !== handlers)
      served = Context.make(ServedHandlers, handlers)
    return served
  }
  // Likewise Polykey's methods for the last handlers served.
  let polykeyServed: { readonly handlers: AgentHandlers; readonly methods: PolykeyMethods } | undefined
  const polykeyMethodsOf = (handlers: AgentHandlers) => {
    if (polykeyServed === undefined || polykeyServed.handlers !== handlers)
      polykeyServed = { handlers, methods: PolykeyPeer.methods(handlers) }
    return polykeyServed.methods
  }
  return PeerRpc.of({
    // Both wires on every connection: the stream router tells a Polykey call by its first byte.
    serve: (connection, handlers) => {
      const methods = polykeyMethodsOf(handlers)
      return server.serve(connection, contextOf(handlers), (socket) =>
        servePolykeyStream(socket, callerOf(connection), methods)
      )
    },
    client: (connection) =>
      connection.speaks === "polykey"
        ? Effect.succeed(PolykeyPeer.client(connection, () => polykeyServed?.handlers.signalling))
        : Effect.map(Effect.scope, (scope) => new LazyClient(server, connection, scope))
  })
})

/** PeerRpc alone, over an RpcServer whose handlers come from `handlersLayer`. */
export const layerWithoutServer: Layer.Layer<PeerRpc, never, RpcServer> = Layer.effect(PeerRpc, make)

/** The whole agent RPC stack: RpcServer (with the delegating handlers) and PeerRpc over it. */
export const layer: Layer.Layer<PeerRpc | RpcServer, never, RpcConfig> = layerWithoutServer.pipe(
  Layer.provideMerge(RpcServerLive.layer.pipe(Layer.provide(handlersLayer)))
)
