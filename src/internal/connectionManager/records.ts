/**
 * Connection records: what runs on one QUIC connection (an agent RPC client, the agent methods
 * served to the peer, the close handler), made for a dialled or an accepted connection, and
 * room for it under the connection limit.
 */
import { type Duration, Effect, Exit, Predicate, Scope } from "effect"
import type * as Address from "../../services/Address.js"
import type { ConnectionPath, NodeConnectionError } from "../../services/ConnectionManager.js"
import * as NodeId from "../../services/NodeId.js"
import type { AgentHandlers, PeerClient, PeerRpcService } from "../../services/PeerRpc.js"
import type {
  DialError,
  DialOptions,
  QuicConnection,
  QuicTransportService
} from "../../services/QuicTransport.js"
import type { Gating } from "./gating.js"
import type { ConnRecord, ManagerState } from "./state.js"

// The functions a held record keeps (its close finalizer, its close handler) are made by
// these, so that each holds only what it names, not the set-up's other variables.
const closeOnRelease = (connection: QuicConnection) => () => connection.close("connection released")
const closedHandler = (map: ManagerState["map"], record: ConnRecord) => () => map.closedEffect(record)

export interface Records {
  /**
   * Sets up what runs on a connection, in `scope` (which the caller provides as the Scope
   * service, once for the whole set-up: each provision copies the fiber's context).
   */
  readonly setupRecord: (
    connection: QuicConnection,
    scope: Scope.CloseableScope,
    hostname?: string,
    path?: ConnectionPath
  ) => Effect.Effect<ConnRecord, never, Scope.Scope>
  /**
   * Dials `address` expecting one of `expected`, and sets the connection up (not yet in the
   * map). What the connection gate refuses fails with reason "denied", before any packet.
   */
  readonly dialRecord: (
    expected: ReadonlyArray<NodeId.NodeId>,
    address: Address.Address,
    timeout: Duration.Duration,
    hostname?: string,
    whenSlow?: DialOptions["whenSlow"],
    /** How the connection came about, asked once it is made (default "direct"). */
    pathOf?: () => ConnectionPath
  ) => Effect.Effect<ConnRecord, DialError | NodeConnectionError>
  /** Room for one more connection: prune idle non-seed connections (LRU) if at the limit. */
  readonly ensureCapacity: (nodeId: NodeId.NodeId) => Effect.Effect<void, NodeConnectionError>
}

export const make = (
  state: ManagerState,
  deps: {
    readonly transport: QuicTransportService
    readonly rpc: PeerRpcService
    /** What we answer the peer on every connection. */
    readonly handlers: AgentHandlers
    readonly gating: Gating
    /** Told of the NodeId a peer renewed its key from (its chain shows it). */
    readonly renewedFrom: (previous: NodeId.NodeId) => void
    /** Starts the identify exchange on a connection we dialled (`reachability/`). */
    readonly identifyDialled?: (
      connection: QuicConnection,
      client: PeerClient
    ) => Effect.Effect<void, never, Scope.Scope>
  }
): Records => {
  const { config, map, pending, fail } = state
  const { transport, rpc, handlers, gating } = deps

  const setupRecord = (
    connection: QuicConnection,
    scope: Scope.CloseableScope,
    hostname?: string,
    path?: ConnectionPath
  ) =>
    Effect.gen(function* () {
      // A dialled connection is already closed with this scope (the dial's contract).
      if (connection.direction === "reverse") yield* Scope.addFinalizerExit(scope, closeOnRelease(connection))
      const client = yield* rpc.client(connection)
      const record: ConnRecord = {
        connection,
        client,
        scope,
        hostname,
        path: connection.relay !== undefined ? "relayed" : (path ?? "direct"),
        users: 0,
        retired: false,
        closing: false
      }
      const previous = connection.remoteRenewedFrom
      if (previous !== undefined) deps.renewedFrom(previous)
      // No fiber waits on an idle connection: calls and the close each start one when they come.
      yield* rpc.serve(connection, handlers)
      if (connection.direction === "forward" && deps.identifyDialled)
        yield* deps.identifyDialled(connection, client)
      yield* connection.whenClosed(closedHandler(map, record))
      return record
    })

  const dialRecord: Records["dialRecord"] = (expected, address, timeout, hostname, whenSlow, pathOf) =>
    Effect.gen(function* () {
      const targets = gating.dialTargets(expected, address.host)
      if (Predicate.isTagged(targets, "NodeConnectionError")) return yield* Effect.fail(targets)
      const scope = yield* Scope.make()
      const who = expected.length === 1 ? NodeId.encode(expected[0]!) : `one of ${expected.length} nodes`
      yield* Effect.logDebug(`dialling ${who} at ${address.host}:${address.port}`)
      return yield* transport
        .dial({ host: address.host, port: address.port, expectedNodeIds: targets, timeout, whenSlow })
        .pipe(
          Effect.tapError((e) =>
            Effect.logDebug(`dial ${who} at ${address.host}:${address.port} failed: ${e.message}`)
          ),
          // Refused once made (a hostname that resolved into a denied range): closed unused.
          Effect.flatMap((connection) => {
            const refused = gating.refuseConnection(connection)
            return refused === undefined
              ? setupRecord(connection, scope, hostname, pathOf?.())
              : Effect.fail(refused)
          }),
          Scope.extend(scope),
          Effect.onError(() => Scope.close(scope, Exit.void))
        )
    })

  const ensureCapacity = (nodeId: NodeId.NodeId): Effect.Effect<void, NodeConnectionError> =>
    Effect.suspend(() => {
      if (map.get(nodeId)) return Effect.void
      // Dials in progress count, except the one asking for room.
      const dialling = pending.size - (pending.has(NodeId.encode(nodeId)) ? 1 : 0)
      if (map.entries.size + dialling < config.maxConnections) return Effect.void
      return map.pruneOne.pipe(
        Effect.flatMap((pruned) =>
          pruned
            ? Effect.void
            : Effect.fail(
                fail(nodeId, "limit", `connection limit of ${config.maxConnections} reached and none is idle`)
              )
        )
      )
    })

  return { setupRecord, dialRecord, ensureCapacity }
}
