/**
 * Relay hints: the relays other nodes said they are reachable through ("reachable via relay
 * R", from their identify messages and from the contacts in closest-nodes answers). A dial
 * falls back to them when no direct path opens, and goes to them at once for a node that is
 * reachable only so. Bounded: the most recently heard `capacity` nodes are kept.
 *
 * A hint is only a way to try: the connection through the relay is authenticated end to end
 * with the node's own NodeId, so a false hint costs an attempt, never a wrong peer.
 */
import { Either } from "effect"
import * as Address from "../../services/Address.js"
import { type Contact, RELAYS_ANNOUNCED, type WireRelay } from "../../services/Contact.js"
import * as NodeId from "../../services/NodeId.js"

/** What we know of a node's relays. */
export interface RelayHint {
  readonly relays: ReadonlyArray<Contact>
  /** True when the node announced no address of its own beside its relays: dial it through them at once. */
  readonly relayOnly: boolean
  /** The node told us itself (identify), rather than a third node's answer. */
  readonly firstHand: boolean
}

/**
 * The relays of `wire` worth keeping: well formed, not the node itself, each once, at most 3.
 * We may be one of them (the node reserved with us): we keep it, to pass it on in our answers.
 */
export const fromWire = (
  wire: ReadonlyArray<WireRelay> | undefined,
  nodeKey: string
): ReadonlyArray<Contact> => {
  if (wire === undefined) return []
  const out: Array<Contact> = []
  for (const r of wire) {
    if (out.length >= RELAYS_ANNOUNCED) break
    if (r.nodeIdEncoded === nodeKey) continue
    const id = NodeId.decode(r.nodeIdEncoded)
    if (Either.isLeft(id) || out.some((c) => NodeId.equals(c.nodeId, id.right))) continue
    const host = Address.normalizeHost(r.host)
    if (!Address.isHost(host) || !Address.isPort(r.port)) continue
    out.push({ nodeId: id.right, host, port: r.port })
  }
  return out
}

export const toWire = (relays: ReadonlyArray<Contact>): Array<WireRelay> =>
  relays
    .slice(0, RELAYS_ANNOUNCED)
    .map((r) => ({ nodeIdEncoded: NodeId.encode(r.nodeId), host: r.host, port: r.port }))

export class RelayHints {
  readonly #hints = new Map<string, RelayHint>()
  constructor(readonly capacity = 4096) {}

  /**
   * Records `nodeId`'s relays as the node itself told us (an empty list forgets them: the node
   * no longer needs any).
   */
  learn(nodeId: NodeId.NodeId, relays: ReadonlyArray<Contact>, relayOnly: boolean): void {
    this.#set(NodeId.encode(nodeId) as string, relays, relayOnly, true)
  }

  /**
   * Records `nodeId`'s relays as a third node's answer names them: replaces what other answers
   * said (the newest wins), never what the node told us itself.
   */
  heard(nodeId: NodeId.NodeId, relays: ReadonlyArray<Contact>, relayOnly: boolean): void {
    const key = NodeId.encode(nodeId) as string
    if (relays.length === 0 || this.#hints.get(key)?.firstHand === true) return
    this.#set(key, relays, relayOnly, false)
  }

  #set(key: string, relays: ReadonlyArray<Contact>, relayOnly: boolean, firstHand: boolean) {
    this.#hints.delete(key)
    if (relays.length === 0) return
    this.#hints.set(key, { relays, relayOnly, firstHand })
    if (this.#hints.size > this.capacity) this.#hints.delete(this.#hints.keys().next().value as string)
  }

  of(nodeId: NodeId.NodeId): RelayHint | undefined {
    return this.#hints.get(NodeId.encode(nodeId))
  }

  /** Every hint, the most recently heard last. */
  values(): IterableIterator<RelayHint> {
    return this.#hints.values()
  }

  get size(): number {
    return this.#hints.size
  }
}
