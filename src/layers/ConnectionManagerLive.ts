/**
 * The connection manager over any QuicTransport (live QUIC or the simulated network), the
 * NodeGraph, the agent RPC (PeerRpc) and a resolver (Dns). `makeWithDiagnostics` wires its
 * parts, each a module of `internal/connectionManager/` over the shared state; `make` is the
 * manager alone; `layer` provides it as `ConnectionManager`, with
 * `ConnectionManagerDiagnostics` beside it.
 */
import { Clock, Context, Deferred, Effect, FiberSet, Layer, Option, type Scope } from "effect"
import * as Dialing from "../internal/connectionManager/dialing.js"
import * as Gating from "../internal/connectionManager/gating.js"
import * as GraphUpkeep from "../internal/connectionManager/graphUpkeep.js"
import * as HolePunch from "../internal/connectionManager/holePunch.js"
import * as Inbound from "../internal/connectionManager/inbound.js"
import * as Join from "../internal/connectionManager/join.js"
import * as Lookup from "../internal/connectionManager/lookup.js"
import * as MultiConnection from "../internal/connectionManager/multiConnection.js"
import * as Ping from "../internal/connectionManager/ping.js"
import * as Reachability from "../internal/connectionManager/reachability/index.js"
import * as Records from "../internal/connectionManager/records.js"
import * as Relaying from "../internal/connectionManager/relaying.js"
import * as Renewal from "../internal/connectionManager/renewal.js"
import * as SeedKeepAlive from "../internal/connectionManager/seedKeepAlive.js"
import * as State from "../internal/connectionManager/state.js"
import { POLYKEY_RELAY_REFILL_PER_SECOND } from "../internal/polykey/signallingRoles.js"
import { RateWindows } from "../internal/rateWindows.js"
import { ConnectionGater } from "../services/ConnectionGater.js"
import {
  ConnectionManager,
  ConnectionManagerDiagnostics,
  type ConnectionManagerService
} from "../services/ConnectionManager.js"
import { ConnectionManagerConfig } from "../services/ConnectionManagerConfig.js"
import { Dns } from "../services/Dns.js"
import { KeyRing } from "../services/KeyRing.js"
import { NodeGraph } from "../services/NodeGraph.js"
import * as NodeId from "../services/NodeId.js"
import { PeerRpc } from "../services/PeerRpc.js"
import { Protocols } from "../services/Protocols.js"
import { QuicTransport } from "../services/QuicTransport.js"
import { RelayTap } from "../services/Relay.js"

/** Another wire's signalling requests one source may make of us as relay per second, and sources tracked. */
const SIGNAL_RELAY_PER_SECOND = POLYKEY_RELAY_REFILL_PER_SECOND
const SIGNAL_RELAY_SOURCES = 4096

/** Everything the manager stands on. */
export type Dependencies =
  | ConnectionManagerConfig
  | KeyRing
  | NodeGraph
  | QuicTransport
  | PeerRpc
  | Dns
  | ConnectionGater

/** The manager and its diagnostics, running in the current scope. */
export const makeWithDiagnostics: Effect.Effect<
  { readonly manager: ConnectionManagerService; readonly diagnostics: ConnectionManagerDiagnostics["Type"] },
  never,
  Dependencies | Scope.Scope
> = Effect.gen(function* () {
  const config = yield* ConnectionManagerConfig
  const keyRing = yield* KeyRing
  const graph = yield* NodeGraph
  const transport = yield* QuicTransport
  const rpc = yield* PeerRpc
  const dns = yield* Dns
  const state = yield* State.make(config, yield* keyRing.nodeId, graph.k)
  const gating = Gating.make(state, yield* ConnectionGater)
  const reachability = yield* Reachability.make(state, () => records.dialRecord)
  // Dials and hole punches go through it: whom we sent packets to cannot prove us reachable.
  const sending = reachability.watchSends(transport)

  // The parts call each other in cycles (a dial adds its node to the graph, which may ping the
  // bucket's oldest node, which may dial; a dial of an unknown node looks it up, and a lookup
  // dials; every connection answers the peer's lookups and hole-punch signals). The arrows
  // below reach parts made further down: they run only once everything is made.
  // Requests of each source to us as its relay in another wire's signalling (Polykey's rate).
  const signalWindows = new RateWindows(SIGNAL_RELAY_PER_SECOND, 1000, SIGNAL_RELAY_SOURCES)
  const records = Records.make(state, {
    transport: sending,
    rpc,
    handlers: {
      touch: (caller) => state.map.touch(caller.nodeId),
      reachability: reachability.handlers,
      closestNodes: (caller, target) => lookup.answerClosest(caller, target),
      holePunchSignal: (caller, message) => holePunch.handleHolePunchSignal(caller, message),
      signalling: {
        self: () => state.self,
        sign: keyRing.sign,
        punch: (host, port) =>
          Effect.asVoid(FiberSet.run(state.background, holePunch.holePunchReverse(host, port))),
        connectionTo: (target) => Option.fromNullable(state.map.get(target)?.record.connection),
        connections: () => Array.from(state.map.entries.values(), (entry) => entry.record.connection),
        admit: (source) =>
          Effect.map(Clock.currentTimeMillis, (now) => !signalWindows.exceeded(NodeId.encode(source), now))
      }
    },
    gating,
    renewedFrom: (previous) => renewal.forgetPrevious(previous),
    identifyDialled: reachability.identifyDialled
  })
  const { addToGraph } = GraphUpkeep.make(state, {
    graph,
    pingNode: (nodeId, address) => ping.pingNode(nodeId, address)
  })
  const dialing = Dialing.make(state, {
    graph,
    records,
    gating,
    addToGraph,
    slowDialSignal: (target, timeout) => holePunch.slowDialSignal(target, timeout),
    getClosestGlobalNodes: (target, options) => lookup.getClosestGlobalNodes(target, options),
    relaying: () => relaying
  })
  const relaying = Relaying.make(state, {
    transport,
    protocols: yield* Effect.serviceOption(Protocols),
    tap: Option.getOrUndefined(yield* Effect.serviceOption(RelayTap)),
    gating,
    records,
    dialing: () => dialing,
    signalOver: (nodeId, timeout) =>
      Effect.ignore(holePunch.sendSignalingMessage(nodeId, state.self, nodeId, undefined, { timeout })),
    announced: (nodeId) => reachability.announced(nodeId)
  })
  const holePunch = HolePunch.make(state, {
    transport: sending,
    gating,
    sign: keyRing.sign,
    withConnection: dialing.withConnection,
    dialBack: {
      wanted: () => state.selfAddresses.nat() === "symmetric",
      // A plain dial (no signalling of its own, or the two sides would signal each other on and
      // on), unless we hold a direct connection to the source or are making one already (a
      // relayed one is what the dial-back upgrades).
      dial: (source, address) =>
        Effect.suspend(() =>
          (state.map.get(source) !== undefined &&
            state.map.get(source)?.record.connection.relay === undefined) ||
          state.pending.has(NodeId.encode(source))
            ? Effect.void
            : records
                .dialRecord([source], address, state.connectTimeout, undefined, undefined, () => "punched")
                .pipe(Effect.flatMap(state.map.adopt), Effect.ignore)
        )
    }
  })
  const multi = MultiConnection.make(state, { dns, dialRecord: records.dialRecord, addToGraph })
  const ping = Ping.make(state, { getEntry: dialing.getEntry, dialRecord: records.dialRecord })
  const lookup = Lookup.make(state, { graph, dialing, addToGraph, announced: reachability.announced })
  const join = Join.make(state, {
    graph,
    getMultiConnection: multi.getMultiConnection,
    getConnectionWithAddress: dialing.getConnectionWithAddress,
    lookup
  })
  const inbound = Inbound.make(state, {
    transport,
    records,
    addToGraph,
    gating,
    isPunching: (host, port) => holePunch.isPunching(host, port)
  })
  const renewal = Renewal.make(state, { keyRing, graph, rejoin: Effect.suspend(() => join.syncNodeGraph()) })

  yield* renewal.follow
  yield* gating.closeRefusedOnChange
  yield* inbound.serveIncoming
  // In the background: a reservation that ends as the manager stops must not wait on peers.
  relaying.onReservationsChanged(() => Effect.asVoid(FiberSet.run(state.background, reachability.announce)))
  yield* relaying.start
  yield* SeedKeepAlive.start(state)
  yield* inbound.stopOnTransportFailure
  yield* reachability.start

  const { map, pending, background } = state
  const manager: ConnectionManagerService = {
    host: transport.host,
    port: transport.port,
    // The current NodeId (a key renewal changes it): a getter, as cheap as a field.
    get nodeId() {
      return state.self
    },
    acquireConnection: dialing.acquireConnection,
    withConnection: dialing.withConnection,
    withConnectionStream: dialing.withConnectionStream,
    openStream: dialing.openStream,
    getConnection: dialing.getConnection,
    getConnectionWithAddress: dialing.getConnectionWithAddress,
    getMultiConnection: multi.getMultiConnection,
    destroyConnection: dialing.destroyConnection,
    listConnections: Effect.sync(() => [...map.entries.values()].map(map.info)),
    hasConnection: (nodeId: NodeId.NodeId) => Effect.sync(() => map.get(nodeId) !== undefined),
    getSeedNodes: state.seeds,
    isSeedNode: state.isSeedNode,
    pingNode: ping.pingNode,
    findNode: lookup.findNode,
    getClosestGlobalNodes: lookup.getClosestGlobalNodes,
    getRemoteNodeClosestNodes: lookup.getRemoteNodeClosestNodes,
    syncNodeGraph: join.syncNodeGraph,
    refreshBuckets: join.refreshBuckets,
    holePunchReverse: holePunch.holePunchReverse,
    sendSignalingMessage: holePunch.sendSignalingMessage,
    relaySignalingMessage: holePunch.relaySignalingMessage,
    reachability: reachability.current,
    relays: relaying.status,
    events: state.subscribe,
    failure: Deferred.await(state.stopped)
  }
  const diagnostics: ConnectionManagerDiagnostics["Type"] = {
    snapshot: Effect.gen(function* () {
      const entries = [...map.entries.values()]
      return {
        connections: entries.length,
        standbyConnections: entries.reduce((n, e) => n + (e.standby?.size ?? 0), 0),
        pendingDials: pending.size,
        inboundInProgress: inbound.inProgress(),
        backgroundFibers: yield* FiberSet.size(background),
        idleTimers: map.idleCount()
      }
    })
  }
  return { manager, diagnostics }
})

/** The manager running in the current scope. */
export const make: Effect.Effect<ConnectionManagerService, never, Dependencies | Scope.Scope> = Effect.map(
  makeWithDiagnostics,
  ({ manager }) => manager
)

export const layer: Layer.Layer<ConnectionManager | ConnectionManagerDiagnostics, never, Dependencies> =
  Layer.scopedContext(
    Effect.map(makeWithDiagnostics, ({ manager, diagnostics }) =>
      Context.make(ConnectionManager, manager).pipe(Context.add(ConnectionManagerDiagnostics, diagnostics))
    )
  )
