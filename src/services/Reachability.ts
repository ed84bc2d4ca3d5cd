/**
 * Reachability: how the world sees a node. Peers tell it the address they observe for it on
 * every connection (`nodesIdentify`); an address counts once peers on two different IP
 * addresses agree on it; a dial-back through a helper node (one the node never contacted)
 * tells whether its address is reachable from anywhere. From these the node classifies itself
 * (`NatClass`), kept by the connection manager (`ConnectionManager.reachability`).
 */
import { Data, type Effect, Schema } from "effect"
import { type Address, WireAddress } from "./Address.js"
import { type Contact, RELAYS_ANNOUNCED, WireRelay } from "./Contact.js"
import { NodeIdEncodedSchema } from "./NodeId.js"
import type { PeerCallError } from "./PeerRpc.js"

/**
 * - `public`: a node we never contacted reached our address (a dial-back succeeded);
 * - `cone`: peers on different IPs observe the same external address (endpoint-independent mapping);
 * - `symmetric`: they observe different ports (endpoint-dependent mapping);
 * - `unknown`: too few peers (on different IPs) told us yet.
 */
export type NatClass = "public" | "cone" | "symmetric" | "unknown"

export const NAT_CLASSES: ReadonlyArray<NatClass> = ["public", "cone", "symmetric", "unknown"]

export interface Reachability {
  readonly nat: NatClass
  /** Our external addresses confirmed by peers on two different IPs (or by a dial-back). */
  readonly addresses: ReadonlyArray<Address>
  /** Distinct peer IPs whose observations are fresh. */
  readonly observers: number
  /** When the class was last worked out (ms since the epoch, by the Clock); 0 before the first time. */
  readonly checkedAt: number
}

export const initial: Reachability = { nat: "unknown", addresses: [], observers: 0, checkedAt: 0 }

/** At most this many addresses in one identify message (a node's confirmed ones; NodeGraph's limit). */
export const IDENTIFY_ADDRESS_LIMIT = 5

const Addresses = Schema.Array(WireAddress).pipe(Schema.maxItems(IDENTIFY_ADDRESS_LIMIT))

/**
 * One side's half of the identify exchange: the address it observes for the other side on
 * this connection, and its own confirmed external addresses.
 */
export const IdentifyMessage = Schema.Struct({
  observed: WireAddress,
  confirmed: Addresses,
  /** The relays the sender holds reservations with: it is reachable through them (at most 3). */
  relays: Schema.optional(Schema.Array(WireRelay).pipe(Schema.maxItems(RELAYS_ANNOUNCED)))
})
export type IdentifyMessage = typeof IdentifyMessage.Type

/** At most this many nodes a dial-back requester names as contacted (the relay picks no helper among them). */
export const DIAL_BACK_EXCLUDE_LIMIT = 32

/**
 * A requester's ask: have a node it never contacted (none of `exclude`) dial it back at its
 * observed IP and `port`, and prove `nonce` there.
 */
export const DialBackRequest = Schema.Struct({
  port: Schema.Int.pipe(Schema.between(1, 65535)),
  nonce: Schema.String.pipe(Schema.maxLength(64)),
  exclude: Schema.Array(NodeIdEncodedSchema).pipe(Schema.maxItems(DIAL_BACK_EXCLUDE_LIMIT))
})
export type DialBackRequest = typeof DialBackRequest.Type

/** What the relay of a dial-back request asks its helper: dial `target` at host:port, prove `nonce`. */
export const DialBackOrder = Schema.Struct({
  targetNodeIdEncoded: NodeIdEncodedSchema,
  host: Schema.String.pipe(Schema.maxLength(64)),
  port: Schema.Int.pipe(Schema.between(1, 65535)),
  nonce: Schema.String.pipe(Schema.maxLength(64))
})
export type DialBackOrder = typeof DialBackOrder.Type

/** A peer's identify answer that decoded but cannot be true (not an IP address, port 0). */
export class IdentifyAnswerInvalid extends Data.TaggedError("IdentifyAnswerInvalid")<{
  readonly peer: string
  readonly detail: string
}> {
  override get message() {
    return `identify answer of ${this.peer}: ${this.detail}`
  }
}

/** A dial-back request or order the node would not act on; its `detail` goes back to the caller. */
export class DialBackRefused extends Data.TaggedError("DialBackRefused")<{
  readonly reason: "rate-limited" | "no-helper" | "unreachable" | "bad-order"
  readonly detail: string
}> {
  override get message() {
    return this.detail
  }
}

/** A peer's reachability methods as calls (every `PeerClient` of this package has them). */
export interface ReachabilityCalls {
  readonly identify: (message: IdentifyMessage) => Effect.Effect<IdentifyMessage, PeerCallError>
  readonly dialBackRequest: (request: DialBackRequest) => Effect.Effect<void, PeerCallError>
  readonly dialBack: (order: DialBackOrder) => Effect.Effect<void, PeerCallError>
  readonly dialBackProof: (nonce: string) => Effect.Effect<void, PeerCallError>
}

/** What the node answers to those calls; the connection manager provides them. */
export interface ReachabilityHandlers {
  readonly identify: (caller: Contact, message: IdentifyMessage) => Effect.Effect<IdentifyMessage>
  readonly dialBackRequest: (
    caller: Contact,
    request: DialBackRequest
  ) => Effect.Effect<void, DialBackRefused>
  readonly dialBack: (caller: Contact, order: DialBackOrder) => Effect.Effect<void, DialBackRefused>
  readonly dialBackProof: (caller: Contact, nonce: string) => Effect.Effect<void>
}
