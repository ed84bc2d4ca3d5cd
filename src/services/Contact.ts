/**
 * Contact: a node at one address. `Contact` is the domain shape (NodeId bytes: a seed, a node
 * another node told us of, the calling peer); `WireContact` is what crosses the wire (the
 * NodeId in its text form), and `toWire` converts. The NodeGraph's record of a node, with all
 * its addresses and when it was last seen, is `NodeGraph.NodeContact`.
 */
import { Context, Schema } from "effect"
import { type Address, WireAddress } from "./Address.js"
import * as NodeId from "./NodeId.js"

export interface Contact extends Address {
  readonly nodeId: NodeId.NodeId
}

/** At most this many relays a node announces itself reachable through. */
export const RELAYS_ANNOUNCED = 3

/** A relay a node holds a reservation with: where others reach it through. */
export const WireRelay = Schema.Struct({
  nodeIdEncoded: NodeId.NodeIdEncodedSchema,
  host: Schema.String.pipe(Schema.maxLength(64)),
  port: Schema.Int.pipe(Schema.between(1, 65535))
})
export type WireRelay = typeof WireRelay.Type

export const WireContact = Schema.Struct({
  nodeIdEncoded: NodeId.NodeIdEncodedSchema,
  host: Schema.String,
  port: Schema.Int.pipe(Schema.between(0, 65535)),
  /** The node's external addresses confirmed by peers on two IPs, as it told the answering node (at most 5). */
  addresses: Schema.optional(Schema.Array(WireAddress).pipe(Schema.maxItems(5))),
  /** The relays the node said it is reachable through ("reachable via relay R"), at most 3. */
  relays: Schema.optional(Schema.Array(WireRelay).pipe(Schema.maxItems(RELAYS_ANNOUNCED)))
})
export type WireContact = typeof WireContact.Type

export const toWire = (contact: Contact): WireContact => ({
  nodeIdEncoded: NodeId.encode(contact.nodeId),
  host: contact.host,
  port: contact.port
})

/**
 * The calling peer, as its connection proves it (its NodeId from the handshake, its address as
 * the connection observed it), never taken from a message. Provided to every handler.
 */
export class Caller extends Context.Tag("quicmesh/Caller")<Caller, Contact>() {}
