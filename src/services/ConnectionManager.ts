/**
 * ConnectionManager: authenticated connections to other nodes keyed by NodeId, Kademlia
 * lookups over the agent RPC, joining through seed nodes and hole-punch signalling.
 * The Effect counterpart of Polykey's NodeConnectionManager (see README for the mapping).
 */
import type { Socket } from "@effect/platform"
import { Context, Data, type Duration, type Effect, type Option, type Scope, type Stream } from "effect"
import type { Address } from "./Address.js"
import type { SignedHolePunchRequest } from "./AgentRpc.js"
import type { Contact } from "./Contact.js"
import type { NodeAddress } from "./NodeGraph.js"
import type { NodeId, NodeIdEncoded } from "./NodeId.js"
import type { PeerCallError, PeerClient } from "./PeerRpc.js"
import type { ProtocolId, UnsupportedProtocolError } from "./Protocols.js"
import type { ConnectionError, QuicConnection } from "./QuicTransport.js"
import type { Reachability } from "./Reachability.js"
import type { RelayStats } from "./Relay.js"

/**
 * Options every operation takes. `timeout` (default `connectionConnectTimeoutTime`) is the
 * operation's one deadline: its steps (finding an address, dialling, the peer's answer) share
 * it, each getting what the ones before left. For the `…Connection` operations it bounds
 * getting the connection, not the caller's work on it.
 */
export interface OperationOptions {
  readonly timeout?: Duration.DurationInput
}

export interface ConnectionInfo {
  readonly nodeId: NodeIdEncoded
  readonly host: string
  readonly port: number
  /** The hostname the address was resolved from, when it came from one. */
  readonly hostname: string | undefined
  readonly usageCount: number
  /** Milliseconds left before the idle timer destroys it; undefined while in use or for seeds. */
  readonly timeout: number | undefined
  readonly direction: "forward" | "reverse"
  /**
   * How the connection's packets travel: `direct` (dialled or accepted at the peer's address),
   * `punched` (a hole punch opened the way: we dialled while the peer was signalled, or it came
   * in from an address we were punching toward) or `relayed` (through `relay`'s circuit).
   */
  readonly path: ConnectionPath
  /** The relay carrying a `relayed` connection. */
  readonly relay: NodeIdEncoded | undefined
}

export type ConnectionPath = "direct" | "punched" | "relayed"

/** The node's relaying now (`ConnectionManager.relays`). */
export interface RelayStatus {
  /** The relays we hold reservations with (announced as "reachable via relay R"). */
  readonly reservations: ReadonlyArray<NodeIdEncoded>
  /** Our connections that run through a relay. */
  readonly relayedConnections: number
  /** Our relay's figures when we serve as one (`relay` option), else undefined. */
  readonly server: RelayStats | undefined
}

export type ConnectionEvent =
  | {
      readonly _tag: "ConnectionAdded"
      readonly nodeId: NodeId
      readonly host: string
      readonly port: number
      readonly direction: "forward" | "reverse"
    }
  | { readonly _tag: "ConnectionRemoved"; readonly nodeId: NodeId; readonly reason: string }
  | { readonly _tag: "ManagerError"; readonly error: ConnectionManagerStopped }
  /** Our NAT class or our confirmed external addresses changed (`reachability`). */
  | { readonly _tag: "ReachabilityChanged"; readonly reachability: Reachability }

/** A connection could not be had. */
export class NodeConnectionError extends Data.TaggedError("NodeConnectionError")<{
  readonly nodeId: NodeIdEncoded
  readonly reason:
    | "not-found"
    | "unreachable"
    | "timeout"
    | "mismatch"
    | "limit"
    | "stopped"
    | "closed"
    | "invalid-address"
    /** The connection gate refuses the node or its address (`ConnectionGater`); nothing was sent. */
    | "denied"
    /** Every relay the node is reachable through refused the circuit (limits, no reservation). */
    | "relay-refused"
  readonly detail: string
  /** What failed underneath, when something did (the transport's DialError, a PeerCallError). */
  readonly cause?: unknown
}> {
  override get message() {
    return `node ${this.nodeId}: ${this.reason}: ${this.detail}`
  }
}

/** getMultiConnection connected to none of the wanted nodes. */
export class MultiConnectionError extends Data.TaggedError("MultiConnectionError")<{
  readonly nodeIds: ReadonlyArray<NodeIdEncoded>
  readonly addresses: ReadonlyArray<string>
  readonly detail: string
}> {
  override get message() {
    return `none of ${this.nodeIds.length} node(s) reachable at ${this.addresses.join(", ")}: ${this.detail}`
  }
}

/** A remote node answered a lookup query badly, or the query failed. */
export class RemoteQueryError extends Data.TaggedError("RemoteQueryError")<{
  readonly nodeId: NodeIdEncoded
  readonly detail: string
  /** The failed call (a PeerCallError). */
  readonly cause?: unknown
}> {
  override get message() {
    return `query to ${this.nodeId} failed: ${this.detail}`
  }
}

/** The transport or RPC server stopped unexpectedly: the manager stopped with it. */
export class ConnectionManagerStopped extends Data.TaggedError("ConnectionManagerStopped")<{
  readonly detail: string
  readonly cause?: unknown
}> {
  override get message() {
    return `connection manager stopped: ${this.detail}`
  }
}

/** Figures from one iterative lookup. */
export interface LookupStats {
  readonly rounds: number
  readonly queries: number
  readonly contacted: number
}

export interface LookupResult {
  readonly address: Option.Option<NodeAddress>
  readonly stats: LookupStats
}

/** Counts for tests and soak runs: what the manager holds and runs right now. */
export interface ManagerDiagnostics {
  readonly connections: number
  /** Open connections kept beside the one in use (simultaneous open, duplicates). */
  readonly standbyConnections: number
  readonly pendingDials: number
  readonly inboundInProgress: number
  /**
   * Fibers the manager runs in the background (dials, evictions, punches). Held connections
   * have none: their calls and their close start fibers when they happen.
   */
  readonly backgroundFibers: number
  readonly idleTimers: number
}

/** What `acquireConnection` hands out: the connection and an agent RPC client on it. */
export interface NodeConnectionHandle {
  readonly nodeId: NodeId
  readonly connection: QuicConnection
  readonly client: PeerClient
}

export interface ConnectionManagerService {
  readonly host: string
  readonly port: number
  /** Our NodeId now: after a `KeyRing.renew` it is the new one (read it where it is used). */
  readonly nodeId: NodeId
  /** Get or create; usage +1 while the scope is open; at zero the idle timer starts. */
  readonly acquireConnection: (
    nodeId: NodeId,
    options?: OperationOptions
  ) => Effect.Effect<NodeConnectionHandle, NodeConnectionError, Scope.Scope>
  readonly withConnection: <A, E, R>(
    nodeId: NodeId,
    f: (handle: NodeConnectionHandle) => Effect.Effect<A, E, R>,
    options?: OperationOptions
  ) => Effect.Effect<A, E | NodeConnectionError, R>
  readonly withConnectionStream: <A, E, R>(
    nodeId: NodeId,
    f: (handle: NodeConnectionHandle) => Stream.Stream<A, E, R>,
    options?: OperationOptions
  ) => Stream.Stream<A, E | NodeConnectionError, R>
  /**
   * A stream of application `protocol` to `nodeId`, once the peer accepted it: the connection is
   * got or made as by `acquireConnection` and counts as used while the scope is open (which
   * ends the stream). Getting the connection and the peer's answer share the timeout.
   */
  readonly openStream: (
    nodeId: NodeId,
    protocol: ProtocolId,
    options?: OperationOptions
  ) => Effect.Effect<
    Socket.Socket,
    NodeConnectionError | UnsupportedProtocolError | ConnectionError,
    Scope.Scope
  >
  /** Existing connection, else find the node's address, else dial. */
  readonly getConnection: (
    nodeId: NodeId,
    options?: OperationOptions & { readonly address?: Address }
  ) => Effect.Effect<NodeConnectionHandle, NodeConnectionError>
  readonly getConnectionWithAddress: (
    nodeId: NodeId,
    address: Address,
    options?: OperationOptions
  ) => Effect.Effect<NodeConnectionHandle, NodeConnectionError>
  /**
   * Dial every address (hostnames resolved to all their IPs) for any of `nodeIds`; ends once
   * all are connected, or at the timeout (resolving included) with those connected by then.
   */
  readonly getMultiConnection: (
    nodeIds: ReadonlyArray<NodeId>,
    addresses: ReadonlyArray<Address>,
    options?: OperationOptions
  ) => Effect.Effect<ReadonlyArray<NodeId>, MultiConnectionError>
  readonly destroyConnection: (nodeId: NodeId, reason?: string) => Effect.Effect<void>
  readonly listConnections: Effect.Effect<ReadonlyArray<ConnectionInfo>>
  readonly hasConnection: (nodeId: NodeId) => Effect.Effect<boolean>
  readonly getSeedNodes: ReadonlyArray<Contact>
  readonly isSeedNode: (nodeId: NodeId) => boolean
  /**
   * Liveness now: true once the peer accepted us and answered a round trip on the connection
   * (given an address, a connection to exactly that address; else the one held, or one got as
   * `getConnection` does), all within the timeout. Never fails.
   */
  readonly pingNode: (nodeId: NodeId, address?: Address, options?: OperationOptions) => Effect.Effect<boolean>
  readonly findNode: (nodeId: NodeId, options?: OperationOptions) => Effect.Effect<Option.Option<NodeAddress>>
  readonly getClosestGlobalNodes: (target: NodeId, options?: OperationOptions) => Effect.Effect<LookupResult>
  readonly getRemoteNodeClosestNodes: (
    nodeId: NodeId,
    target: NodeId,
    options?: OperationOptions
  ) => Effect.Effect<ReadonlyArray<Contact>, NodeConnectionError | RemoteQueryError>
  /**
   * Connect to the seeds and look up our own NodeId to fill the table; ends by the timeout
   * with what it joined by then (fails only when no seed connects).
   */
  readonly syncNodeGraph: (options?: OperationOptions) => Effect.Effect<void, MultiConnectionError>
  /**
   * Look up a random id in every bucket not refreshed within `bucketRefreshInterval`, one
   * after the other, all within the timeout; returns how many it looked up (those the
   * deadline leaves stay stale for the next refresh).
   */
  readonly refreshBuckets: (options?: OperationOptions) => Effect.Effect<number>
  /** 32 random bytes to host:port, waiting the punch interval, doubling, until timeout/interruption. */
  readonly holePunchReverse: (host: string, port: number, options?: OperationOptions) => Effect.Effect<void>
  /**
   * Asks `relay` to pass a hole-punch request for `target` on (to ourselves: nothing is sent),
   * signed with our node key: `source` must be our own NodeId (else "mismatch"); `address`, if
   * given, is signed beside what the relay observed for us and our confirmed addresses. Fails
   * when the relay cannot be reached or refuses (a PeerCallError whose cause is the relay's
   * `HolePunchRefused`).
   */
  readonly sendSignalingMessage: (
    relay: NodeId,
    source: NodeId,
    target: NodeId,
    address?: Address,
    options?: OperationOptions
  ) => Effect.Effect<void, NodeConnectionError | PeerCallError>
  /**
   * Passes a signed hole-punch request on to its target with the source's observed address,
   * over a connection we already hold (never dials: without one it fails with "not-found");
   * fails with "timeout" when the target does not answer within the timeout, and with the
   * target's `HolePunchRefused` (as a PeerCallError's cause) when it refuses.
   */
  readonly relaySignalingMessage: (
    request: SignedHolePunchRequest,
    sourceAddress: Address,
    options?: OperationOptions
  ) => Effect.Effect<void, NodeConnectionError | PeerCallError>
  /**
   * How the world sees us now: the NAT class (`public` once a node we never contacted reached
   * us, `cone`/`symmetric` from what peers on different IPs observe, else `unknown`) and our
   * external addresses confirmed by peers on two different IPs. Kept current by the manager.
   */
  readonly reachability: Effect.Effect<Reachability>
  /** Our relay reservations and relayed connections, and our relay's figures when we serve as one. */
  readonly relays: Effect.Effect<RelayStatus>
  /** Connection added/removed, reachability changes and manager errors; subscribe within a scope. */
  readonly events: Effect.Effect<Stream.Stream<ConnectionEvent>, never, Scope.Scope>
  /** Fails when the transport or RPC server stops unexpectedly. */
  readonly failure: Effect.Effect<never, ConnectionManagerStopped>
}

export class ConnectionManager extends Context.Tag("quicmesh/ConnectionManager")<
  ConnectionManager,
  ConnectionManagerService
>() {}

/**
 * What the manager holds and runs right now, for tests and soak runs (not for applications).
 * `ConnectionManagerLive.layer` provides it beside `ConnectionManager`.
 */
export class ConnectionManagerDiagnostics extends Context.Tag("quicmesh/ConnectionManagerDiagnostics")<
  ConnectionManagerDiagnostics,
  { readonly snapshot: Effect.Effect<ManagerDiagnostics> }
>() {}
