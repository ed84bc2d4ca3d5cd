/**
 * PeerRpc: what the connection manager needs from the agent RPC, in its own terms:
 * serve the agent methods on a connection, and call them on a peer. PeerRpcLive adapts the
 * @effect/rpc server and client (RpcServer / AgentRpc) to this; PeerRpcSim carries the calls
 * as messages on simulated connections.
 */
import { Context, Data, type Duration, type Effect, type Option, type Scope, type Stream } from "effect"
import type { Address } from "./Address.js"
import { HolePunchRefused, type SignedHolePunchRequest } from "./AgentRpc.js"
import type { Contact, WireContact } from "./Contact.js"
import type { NodeId } from "./NodeId.js"
import type { QuicConnection } from "./QuicTransport.js"
import type { ReachabilityCalls, ReachabilityHandlers } from "./Reachability.js"

/**
 * A hole-punch signal: the source's signed request and, once a relay passes it on, the
 * address the relay observed for the source.
 */
export interface HolePunchMessage {
  readonly request: SignedHolePunchRequest
  /** Set by the relay: the address it observed for the source. */
  readonly observed?: Address | undefined
}

/** A hole-punch signal the node would not act on: the typed error the caller gets back. */
export { HolePunchRefused }

/** A call to a peer failed: transport, timeout, or the peer's typed error. */
export class PeerCallError extends Data.TaggedError("PeerCallError")<{
  readonly method: string
  readonly reason: "timeout" | "connection" | "remote" | "invalid-response"
  readonly detail: string
  /** The RPC layer's error, when the call failed with one. */
  readonly cause?: unknown
}> {
  override get message() {
    return `${this.method}: ${this.reason}: ${this.detail}`
  }
}

/** Typed calls on one connection (the reachability calls optional: a stand-in may leave them out). */
export interface PeerClient extends Partial<ReachabilityCalls> {
  readonly ping: Effect.Effect<void, PeerCallError>
  readonly closestNodes: (target: NodeId) => Stream.Stream<WireContact, PeerCallError>
  /**
   * The first `limit` contacts `closestNodes` streams, as one effect: what a lookup query
   * needs, without running a stream (a layer may answer it more cheaply). Fails with reason
   * "timeout" when the answer takes longer than `timeout` (or the layer's call timeout).
   */
  readonly closestNodesUpTo: (
    target: NodeId,
    limit: number,
    timeout: Duration.Duration
  ) => Effect.Effect<ReadonlyArray<WireContact>, PeerCallError>
  readonly holePunchSignal: (message: HolePunchMessage) => Effect.Effect<void, PeerCallError>
}

/**
 * Hole-punch signalling with peers of another wire (Polykey's two-step signalling): what the
 * node signs with, and what it does as a target and as a relay.
 */
export interface SignallingHandlers {
  /** Our NodeId now. */
  readonly self: () => NodeId
  readonly sign: (data: Uint8Array) => Effect.Effect<Uint8Array>
  /** Starts punching toward host:port in the background and returns at once. */
  readonly punch: (host: string, port: number) => Effect.Effect<void>
  /** The connection held to `target`, if any (a relay never dials for a source). */
  readonly connectionTo: (target: NodeId) => Option.Option<QuicConnection>
  /** The connections held now, any order: the nodes the node can signal for. */
  readonly connections: () => ReadonlyArray<QuicConnection>
  /** Counts one request of `source` to us as its relay: false when it is over its rate. */
  readonly admit: (source: NodeId) => Effect.Effect<boolean>
}

/** What the node answers; the manager provides these. */
export interface AgentHandlers {
  /** Signalling in other wires; without it the node neither relays nor punches for them. */
  readonly signalling?: SignallingHandlers
  /** The reachability methods (`Reachability`); without them, identify answers only what it sees. */
  readonly reachability?: ReachabilityHandlers
  /** Every call the peer makes counts as use of the connection (restarts its idle timer). */
  readonly touch: (caller: Contact) => Effect.Effect<void>
  readonly closestNodes: (caller: Contact, target: NodeId) => Effect.Effect<ReadonlyArray<WireContact>>
  readonly holePunchSignal: (
    caller: Contact,
    message: HolePunchMessage
  ) => Effect.Effect<void, HolePunchRefused>
}

export interface PeerRpcService {
  /**
   * Serves the agent methods on `connection` with `handlers` from now until it (or the scope)
   * closes, and returns at once: calls run in fibers started when they arrive. Each
   * connection is answered by the handlers it was served with.
   */
  readonly serve: (
    connection: QuicConnection,
    handlers: AgentHandlers
  ) => Effect.Effect<void, never, Scope.Scope>
  /** A client for calls on `connection`; released with the scope. */
  readonly client: (connection: QuicConnection) => Effect.Effect<PeerClient, never, Scope.Scope>
}

export class PeerRpc extends Context.Tag("quicmesh/PeerRpc")<PeerRpc, PeerRpcService>() {}
