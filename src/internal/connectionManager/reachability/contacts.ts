/**
 * Whom the node sent packets to, for the dial-back (`dialBack.ts`): a dial-back proves our
 * address reachable only when it comes from a node, and an IP address, that we never sent a
 * packet to. A packet we send may open our NAT's filter for its destination: a restricted NAT
 * then lets that destination's dial in, and the node would wrongly call itself public.
 *
 * Recorded: the NodeIds and the IP of every dial the manager makes, and the IP of every
 * datagram it sends (hole punches), when the dial or the datagram is made, before its first
 * packet (`watchSends` wraps the transport the manager dials and punches with). A check reads
 * the record when the proof comes, so that a dial started while the check runs counts too.
 *
 * What we send on a connection a peer opened to us is not recorded: the peer could open it
 * only through a filter already open to it (we had sent to it, so it is recorded) or through
 * none (we are reachable). Bounded: at most `capacity` NodeIds and as many IPs, the least
 * recently sent to forgotten first.
 */
import * as Address from "../../../services/Address.js"
import * as NodeId from "../../../services/NodeId.js"
import type { QuicTransportService } from "../../../services/QuicTransport.js"

/** NodeIds, and IPs, kept. */
export const CONTACTS_KEPT = 1024

/** A set that keeps its `capacity` most recently added keys, the latest last. */
class Recent {
  readonly #keys = new Set<string>()
  constructor(readonly capacity: number) {}
  add(key: string) {
    this.#keys.delete(key)
    this.#keys.add(key)
    if (this.#keys.size > this.capacity) this.#keys.delete(this.#keys.values().next().value as string)
  }
  has(key: string) {
    return this.#keys.has(key)
  }
  values(): Array<string> {
    return [...this.#keys]
  }
}

export class Contacts {
  readonly #nodes: Recent
  readonly #ips: Recent

  constructor(capacity: number = CONTACTS_KEPT) {
    this.#nodes = new Recent(capacity)
    this.#ips = new Recent(capacity)
  }

  /** We are about to send packets to `host`, expecting one of `nodeIds` there (none for a punch). */
  sent(nodeIds: ReadonlyArray<NodeId.NodeId>, host: string) {
    for (const nodeId of nodeIds) this.#nodes.add(NodeId.encode(nodeId))
    this.#ips.add(Address.normalizeHost(host))
  }

  /** Whether we sent packets to the node `key` (encoded) or to the IP `host`. */
  contacted(key: string, host: string): boolean {
    return this.#nodes.has(key) || this.#ips.has(Address.normalizeHost(host))
  }

  /** The NodeIds (encoded) we sent packets to, the latest first. */
  latest(): Array<string> {
    return this.#nodes.values().reverse()
  }
}

/**
 * `transport`, with every dial and datagram recorded in `contacts` (its destination's IP and
 * the NodeIds the dial expects there) when it is made, before its first packet.
 */
export const watchSends = (transport: QuicTransportService, contacts: Contacts): QuicTransportService => ({
  ...transport,
  dial: (options) => {
    contacts.sent(options.expectedNodeIds, options.host)
    return transport.dial(options)
  },
  sendDatagram: (host, port, data) => {
    contacts.sent([], host)
    return transport.sendDatagram(host, port, data)
  }
})
