/**
 * PeerRpcSim: the `PeerRpc` service directly over SimNetwork connections, for simulations.
 *
 * The live layer encodes every call as @effect/rpc frames on QUIC streams; across thousands of
 * simulated nodes that framing (servers, clients, parsers and fibers per connection) is most
 * of the cost. Here a call is a message on the connection's `SimChannel` instead:
 *
 * - `serve` puts the node's handlers on its end of the connection;
 * - a client call goes to the other end after the link's one-way delay (in order with the
 *   rest of the connection's traffic, held across partitions, lost with the connection), runs
 *   the remote handler there with the `Contact` that end's connection proves, and the answer
 *   comes back the same way;
 * - failures are the live layer's `PeerCallError`s: "timeout" after `rpcCallTimeoutTime`,
 *   "connection" when our end closes during the call, "remote" when the handler fails.
 *
 * The connection manager, its handlers and the NodeGraph are unchanged: only this layer is
 * swapped. It only serves connections of the SimNetwork world it is given.
 */

import { Cause, Duration, Effect, Exit, type Fiber, Layer, Option, Runtime, Scope, Stream } from "effect"
import * as StreamRouter from "../internal/streamRouter.js"
import type { Contact, WireContact } from "../services/Contact.js"
import type { NodeId } from "../services/NodeId.js"
import {
  type AgentHandlers,
  type HolePunchMessage,
  type HolePunchRefused,
  PeerCallError,
  type PeerClient,
  PeerRpc,
  type PeerRpcService
} from "../services/PeerRpc.js"
import { Protocols, type ProtocolsService } from "../services/Protocols.js"
import type { QuicConnection } from "../services/QuicTransport.js"
import type {
  DialBackOrder,
  DialBackRefused,
  DialBackRequest,
  IdentifyMessage,
  ReachabilityHandlers
} from "../services/Reachability.js"
import { RpcConfig } from "../services/RpcServer.js"
import { type SimChannel, SimNetwork, type SimNetworkService } from "../services/SimNetwork.js"

type Forker = <A, E>(effect: Effect.Effect<A, E>) => Fiber.RuntimeFiber<A, E>

/** A request that reached an end: run it with that end's handlers. */
type Request = (server: Served) => void

/** What serves one end of a connection (kept in its channel's `state`). */
class Served {
  handlers: AgentHandlers | undefined = undefined
  /** How handler fibers start while the end is served (the node's runtime), else undefined. */
  fork: Forker | undefined = undefined
  /** Requests that arrived before `serve` (the wire would hold them as unaccepted streams). */
  queue: Array<Request> | undefined = undefined
  /** Handler fibers still running, interrupted when the end closes (made on the first). */
  running: Set<Fiber.RuntimeFiber<unknown, unknown>> | undefined = undefined
  // Who calls on this end: the peer, as this end's connection proves it.
  constructor(readonly caller: Contact) {}

  run<A, E>(effect: Effect.Effect<A, E>, onExit: (exit: Exit.Exit<A, E>) => void) {
    const fiber = this.fork!(effect)
    this.running ??= new Set()
    this.running.add(fiber)
    fiber.addObserver((exit) => {
      this.running?.delete(fiber)
      onExit(exit)
    })
  }

  /** Serving stops; the handlers still running stop with it (as the wire server's would). */
  stop() {
    this.fork = undefined
    this.queue = undefined
    const running = this.running
    this.running = undefined
    if (running) for (const fiber of running) fiber.unsafeInterruptAsFork(fiber.id())
  }
}

const servedOf = (channel: SimChannel): Served => {
  const existing = channel.state as Served | undefined
  if (existing !== undefined) return existing
  const served = new Served({
    nodeId: channel.remoteNodeId,
    host: channel.remoteHost,
    port: channel.remotePort
  })
  channel.state = served
  return served
}

const touchOnly = (h: AgentHandlers, caller: Contact) => h.touch(caller)

/** Runs a reachability handler as the wire server would: touch, then the handler (else "unknown method"). */
const reachable =
  <A>(f: (r: ReachabilityHandlers, caller: Contact) => Effect.Effect<A, DialBackRefused>) =>
  (h: AgentHandlers, caller: Contact): Effect.Effect<A, DialBackRefused> =>
    h.reachability === undefined
      ? Effect.dieMessage("unknown method: this node keeps no reachability")
      : Effect.zipRight(h.touch(caller), f(h.reachability, caller))

const callError = (method: string, reason: PeerCallError["reason"], detail: string) =>
  new PeerCallError({ method, reason, detail })

/** A handler's typed refusal reads as its detail, as on the wire; anything else in full. */
const describe = (cause: Cause.Cause<HolePunchRefused | DialBackRefused>) =>
  Cause.isFailType(cause) ? cause.error.detail : Cause.pretty(cause)

/**
 * PeerRpc over the channels of `sim`; calls time out after `callTimeout`. With `protocols`,
 * the streams peers open on a served connection go to the stream router (application
 * protocols; the agent is not on streams here); without, streams are not served at all.
 */
export const make = (
  sim: SimNetworkService,
  callTimeout: Duration.Duration,
  protocols?: ProtocolsService
): PeerRpcService => {
  /**
   * One call: `f` runs at the peer end with its handlers and caller; its success comes back.
   * The request and the answer each cross the link once.
   */
  const call = <A>(
    connection: QuicConnection,
    method: string,
    f: (handlers: AgentHandlers, caller: Contact) => Effect.Effect<A, HolePunchRefused | DialBackRefused>,
    timeout: Duration.Duration = callTimeout
  ): Effect.Effect<A, PeerCallError> =>
    Effect.async<A, PeerCallError>((resume) => {
      const channel = sim.channel(connection)
      if (channel === undefined) {
        resume(Effect.fail(callError(method, "connection", "not a connection of this simulated network")))
        return
      }
      let done = false
      const finish = (exit: Exit.Exit<A, PeerCallError>) => {
        if (done) return
        done = true
        stopWatching()
        resume(exit)
      }
      const stopWatching = channel.onClose(() =>
        finish(Exit.fail(callError(method, "connection", "the connection closed during the call")))
      )
      const peer = channel.peer
      const sent = channel.send(() => {
        const request: Request = (served) =>
          served.run(f(served.handlers!, served.caller), (exit) => {
            // The answer goes back on the same connection (dropped if our end closed meanwhile).
            peer.send(() =>
              finish(
                Exit.isSuccess(exit)
                  ? Exit.succeed(exit.value)
                  : Exit.fail(
                      Cause.isInterruptedOnly(exit.cause)
                        ? callError(method, "connection", "the peer stopped serving the connection")
                        : new PeerCallError({
                            method,
                            reason: "remote",
                            detail: describe(exit.cause),
                            cause: Cause.squash(exit.cause)
                          })
                    )
              )
            )
          })
        const served = servedOf(peer)
        if (served.fork !== undefined) request(served)
        else if (served.queue === undefined) served.queue = [request]
        else served.queue.push(request)
      })
      if (!sent) {
        finish(Exit.fail(callError(method, "connection", "the connection is closed")))
        return
      }
      const within = Duration.min(timeout, callTimeout)
      const withinMs = Math.max(0, Duration.toMillis(within))
      if (withinMs > 0 && Number.isFinite(withinMs))
        sim.schedule(withinMs, () => {
          if (!done)
            finish(Exit.fail(callError(method, "timeout", `no answer within ${Duration.format(within)}`)))
        })
      // The caller gave up (interrupted, or its own timeout): forget the answer.
      return Effect.sync(() => {
        done = true
        stopWatching()
      })
    })

  const closestNodes = (
    connection: QuicConnection,
    target: NodeId,
    limit: number,
    timeout?: Duration.Duration
  ) =>
    call(
      connection,
      "nodesClosestLocalNodesGet",
      (h, caller) =>
        h.touch(caller).pipe(
          Effect.zipRight(h.closestNodes(caller, target)),
          Effect.map((contacts) => (contacts.length > limit ? contacts.slice(0, limit) : contacts))
        ),
      timeout
    )

  /** A reachability call: `f` runs at the peer end with its reachability handlers. */
  const reach = <A>(
    connection: QuicConnection,
    method: string,
    f: (r: ReachabilityHandlers, caller: Contact) => Effect.Effect<A, DialBackRefused>
  ) => call(connection, method, reachable(f))

  // A class, not an object of closures: a simulated world holds a client per connection end.
  class Client implements PeerClient {
    constructor(readonly connection: QuicConnection) {}
    get ping() {
      return call(this.connection, "nodesPing", touchOnly)
    }
    closestNodes(target: NodeId) {
      return Stream.fromIterableEffect(
        closestNodes(this.connection, target, Number.POSITIVE_INFINITY)
      ) as Stream.Stream<WireContact, PeerCallError>
    }
    closestNodesUpTo(target: NodeId, limit: number, timeout?: Duration.Duration) {
      return closestNodes(this.connection, target, limit, timeout)
    }
    identify(m: IdentifyMessage) {
      return reach(this.connection, "nodesIdentify", (r, c) => r.identify(c, m))
    }
    dialBackRequest(m: DialBackRequest) {
      return reach(this.connection, "nodesDialBackRequest", (r, c) => r.dialBackRequest(c, m))
    }
    dialBack(m: DialBackOrder) {
      return reach(this.connection, "nodesDialBack", (r, c) => r.dialBack(c, m))
    }
    dialBackProof(nonce: string) {
      return reach(this.connection, "nodesDialBackProof", (r, c) => r.dialBackProof(c, nonce))
    }
    holePunchSignal(message: HolePunchMessage) {
      return call(this.connection, "nodesHolePunchSignal", (h, caller) =>
        h.touch(caller).pipe(Effect.zipRight(h.holePunchSignal(caller, message)))
      )
    }
  }

  // One way to start handler fibers per node (its handlers object), not one per connection.
  const forkers = new WeakMap<AgentHandlers, Forker>()

  const serve = (
    connection: QuicConnection,
    handlers: AgentHandlers
  ): Effect.Effect<void, never, Scope.Scope> =>
    Effect.gen(function* () {
      const channel = sim.channel(connection)
      if (channel === undefined || !channel.isOpen) return
      let fork = forkers.get(handlers)
      if (fork === undefined) {
        fork = Runtime.runFork(yield* Effect.runtime<never>())
        forkers.set(handlers, fork)
      }
      const served = servedOf(channel)
      served.handlers = handlers
      served.fork = fork
      // Serving stops when the end closes or the scope does.
      const stopWatching = channel.onClose(() => served.stop())
      // Scope.addFinalizer, not Effect.addFinalizer: the latter would keep this fiber's FiberRefs.
      yield* Scope.addFinalizer(
        yield* Effect.scope,
        Effect.sync(() => {
          stopWatching()
          if (served.handlers === handlers) served.stop()
        })
      )
      const queued = served.queue
      served.queue = undefined
      if (queued !== undefined) for (const request of queued) request(served)
      if (protocols !== undefined)
        yield* connection.handleStreams((socket) =>
          StreamRouter.route(socket, connection, undefined, protocols, callTimeout)
        )
    })

  return PeerRpc.of({
    serve,
    client: (connection) => Effect.succeed(new Client(connection))
  })
}

/**
 * PeerRpc for one node of the world in `SimNetwork`, with the call timeout of `RpcConfig`; it
 * serves the application protocols of `Protocols` when the layer is made with one.
 */
export const layer: Layer.Layer<PeerRpc, never, SimNetwork | RpcConfig> = Layer.effect(
  PeerRpc,
  Effect.gen(function* () {
    const sim = yield* SimNetwork
    const config = yield* RpcConfig
    const protocols = yield* Effect.serviceOption(Protocols)
    return make(sim, config.rpcCallTimeoutTime, Option.getOrUndefined(protocols))
  })
)
