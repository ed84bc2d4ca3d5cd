/**
 * contacts: Polykey's node contact messages and quicmesh's `WireContact`, both ways.
 *
 * What Polykey 1.15.1 sends (agent methods of its NodeConnectionManager):
 * - `nodesClosestLocalNodesGet` streams `{ nodeIdEncoded, nodeContact }` per node of its graph
 *   near the target: `nodeContact` maps each address, as the key `<host>-<port>` (the host
 *   canonical: an IP address, or a host name in lower case; the port after the last `-`), to
 *   `{ mode: "direct" | "signal" | "relay", connectedTime (ms since 1970, 0 for a seed), scopes:
 *   ("local" | "global")[] }`. It shares only addresses with the "global" scope, and dials only
 *   the "direct" ones of what it hears.
 * - `nodesClosestActiveConnectionsGet` streams `{ nodeId, connections }` per node it holds a
 *   connection to: `connections` maps a connection id to `{ host, hostName?, port, timeout?,
 *   primary }`. A node it hears of so, it asks the answering node to signal (hole punching).
 * NodeIds are multibase base32hex (`v…`), as quicmesh's `NodeIdEncoded`.
 *
 * Reading: every record is checked as a lookup checks answers (`answerFilter`): a NodeId that
 * does not decode, a port outside 1–65535 or a host that is neither an IP address nor a host
 * name drops the address, and a node left without one is dropped. The best address (direct
 * first, then the most recently connected) is the contact's; the node's other IP addresses
 * (at most 5) go in `addresses`. Writing: each contact's address (and its `addresses`) as
 * "direct", "global", connected at `connectedTime`.
 */
import { Either, Option, Predicate, Schema } from "effect"
import * as Address from "../../services/Address.js"
import type { WireContact } from "../../services/Contact.js"
import * as NodeId from "../../services/NodeId.js"

/** How Polykey reached an address last. */
export const ContactMode = Schema.Literal("direct", "signal", "relay")

/** Polykey's record of one address of a node (`NodeContactAddressData`). */
export const NodeContactAddressData = Schema.Struct({
  mode: ContactMode,
  connectedTime: Schema.Number,
  scopes: Schema.Array(Schema.Literal("local", "global"))
})
export type NodeContactAddressData = typeof NodeContactAddressData.Type

/** One message of `nodesClosestLocalNodesGet`. */
export interface NodeContactMessage {
  readonly nodeIdEncoded: string
  readonly nodeContact: Readonly<Record<string, NodeContactAddressData>>
}

/** One connection in a message of `nodesClosestActiveConnectionsGet`. */
export const ActiveConnection = Schema.Struct({
  host: Schema.String,
  hostName: Schema.optional(Schema.NullOr(Schema.String)),
  port: Schema.Number,
  timeout: Schema.optional(Schema.NullOr(Schema.Number)),
  primary: Schema.Boolean
})

/** One message of `nodesClosestActiveConnectionsGet`. */
export interface ActiveConnectionMessage {
  readonly nodeId: string
  readonly connections: Readonly<Record<string, typeof ActiveConnection.Type>>
}

/** The most addresses `WireContact.addresses` carries. */
const MAX_ADDRESSES = 5
/** Longest host text looked at (a host name is at most 253 characters). */
const MAX_HOST_LENGTH = 253

const decodeAddressData = Schema.decodeUnknownEither(NodeContactAddressData)
const decodeConnection = Schema.decodeUnknownEither(ActiveConnection)

/** Polykey's key for an address: `<host>-<port>`. */
export const addressKey = (address: Address.Address): string => `${address.host}-${address.port}`

/** A host and port as quicmesh takes them from a peer: normalised and well formed, else none. */
const checkedAddress = (host: unknown, port: unknown): Address.Address | undefined => {
  if (typeof host !== "string" || host.length > MAX_HOST_LENGTH) return undefined
  if (typeof port !== "number" || !Address.isPort(port)) return undefined
  const normalized = Address.normalizeHost(host)
  return Address.isHost(normalized) ? { host: normalized, port } : undefined
}

/** An address key, parsed and checked. */
export const parseAddressKey = (key: string): Address.Address | undefined => {
  const dash = key.lastIndexOf("-")
  const port = key.slice(dash + 1)
  if (dash <= 0 || !/^\d{1,5}$/.test(port)) return undefined
  return checkedAddress(key.slice(0, dash), Number(port))
}

/** The NodeId text of a message, if it decodes. */
const checkedNodeId = (value: unknown): NodeId.NodeIdEncoded | undefined =>
  typeof value === "string" && Either.isRight(NodeId.decode(value))
    ? (value as NodeId.NodeIdEncoded)
    : undefined

const isDistinct = (address: Address.Address, taken: ReadonlyArray<Address.Address>) =>
  !taken.some((a) => Address.equals(a, address))

/** A contact from a `nodesClosestLocalNodesGet` message, if it holds a NodeId and an address. */
export const fromNodeContactMessage = (message: unknown): Option.Option<WireContact> => {
  if (!Predicate.isRecord(message) || !Predicate.isRecord(message.nodeContact)) return Option.none()
  const nodeIdEncoded = checkedNodeId(message.nodeIdEncoded)
  if (nodeIdEncoded === undefined) return Option.none()
  const heard: Array<{ readonly address: Address.Address; readonly data: NodeContactAddressData }> = []
  for (const [key, value] of Object.entries(message.nodeContact)) {
    const address = parseAddressKey(key)
    const data = decodeAddressData(value)
    if (address !== undefined && Either.isRight(data)) heard.push({ address, data: data.right })
  }
  heard.sort(
    (a, b) =>
      Number(b.data.mode === "direct") - Number(a.data.mode === "direct") ||
      b.data.connectedTime - a.data.connectedTime
  )
  const [best, ...others] = heard
  if (best === undefined) return Option.none()
  const addresses: Array<Address.Address> = []
  for (const { address } of others) {
    if (addresses.length === MAX_ADDRESSES) break
    if (Address.ipVersion(address.host) !== 0 && isDistinct(address, [best.address, ...addresses]))
      addresses.push(address)
  }
  return Option.some({
    nodeIdEncoded,
    host: best.address.host,
    port: best.address.port,
    ...(addresses.length > 0 ? { addresses } : {})
  })
}

/** A contact from a `nodesClosestActiveConnectionsGet` message: the node at its primary connection's address. */
export const fromActiveConnectionMessage = (message: unknown): Option.Option<WireContact> => {
  if (!Predicate.isRecord(message) || !Predicate.isRecord(message.connections)) return Option.none()
  const nodeIdEncoded = checkedNodeId(message.nodeId)
  if (nodeIdEncoded === undefined) return Option.none()
  let best: { readonly address: Address.Address; readonly primary: boolean } | undefined
  for (const value of Object.values(message.connections)) {
    const connection = decodeConnection(value)
    if (Either.isLeft(connection)) continue
    const address = checkedAddress(connection.right.host, connection.right.port)
    if (address !== undefined && (best === undefined || (connection.right.primary && !best.primary)))
      best = { address, primary: connection.right.primary }
  }
  return best === undefined ? Option.none() : Option.some({ nodeIdEncoded, ...best.address })
}

/** The contact's own address and its `addresses`, those well formed, each once. */
const addressesOf = (contact: WireContact): ReadonlyArray<Address.Address> => {
  const out: Array<Address.Address> = []
  for (const a of [contact, ...(contact.addresses ?? [])]) {
    const address = checkedAddress(a.host, a.port)
    if (address !== undefined && isDistinct(address, out)) out.push(address)
  }
  return out
}

/**
 * The `nodesClosestLocalNodesGet` message for `contact` (its addresses as "direct",
 * "global", connected at `connectedTime`: 0 for unknown, as Polykey writes its seeds); none
 * when the contact has no well-formed address.
 */
export const toNodeContactMessage = (
  contact: WireContact,
  connectedTime = 0
): Option.Option<NodeContactMessage> => {
  const addresses = addressesOf(contact)
  if (addresses.length === 0) return Option.none()
  const nodeContact: Record<string, NodeContactAddressData> = {}
  for (const address of addresses)
    nodeContact[addressKey(address)] = { mode: "direct", connectedTime, scopes: ["global"] }
  return Option.some({ nodeIdEncoded: contact.nodeIdEncoded, nodeContact })
}

/** The `nodesClosestActiveConnectionsGet` message for `contact`: one primary connection at its address. */
export const toActiveConnectionMessage = (contact: WireContact): Option.Option<ActiveConnectionMessage> => {
  const address = checkedAddress(contact.host, contact.port)
  return address === undefined
    ? Option.none()
    : Option.some({
        nodeId: contact.nodeIdEncoded,
        connections: { [addressKey(address)]: { host: address.host, port: address.port, primary: true } }
      })
}
