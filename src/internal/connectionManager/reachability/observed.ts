/**
 * The addresses peers observed for us: per peer (by NodeId) the latest address it told us,
 * how many times it told us that address and when it last did. Bounded: at most `limit`
 * peers, the one heard from longest ago forgotten first; an observation older than
 * `staleAfter` no longer counts and is dropped at the next `prune`.
 *
 * An address is confirmed once peers on at least two different IP addresses observed it: no
 * single peer, however often it repeats itself, can make an address count.
 */
import * as Address from "../../../services/Address.js"
import type { NatClass } from "../../../services/Reachability.js"

export interface Observation {
  readonly address: Address.Address
  /** The IP of the peer that observed it, as our connection to the peer shows it. */
  readonly peerIp: string
  /** How many times this peer told us this address in a row. */
  readonly count: number
  /** When it last told us (ms, by the Clock). */
  readonly lastSeen: number
}

/** Peers on this many different IPs must agree before an address counts. */
export const CONFIRMATIONS = 2

const keyOf = (a: Address.Address) => `${Address.normalizeHost(a.host)}|${a.port}`

export class ObservedAddresses {
  readonly #byPeer = new Map<string, Observation>()

  constructor(
    readonly limit: number,
    readonly staleAfterMillis: number
  ) {}

  get size(): number {
    return this.#byPeer.size
  }

  /**
   * `peer` (on `peerIp`) observed `address` for us at `now`. Returns true when the address
   * differs from what the peer told us before (the picture may have changed).
   */
  record(peer: string, peerIp: string, address: Address.Address, now: number): boolean {
    const before = this.#byPeer.get(peer)
    const same = before !== undefined && Address.equals(before.address, address) && before.peerIp === peerIp
    this.#byPeer.delete(peer)
    this.#byPeer.set(peer, { address, peerIp, count: same ? before.count + 1 : 1, lastSeen: now })
    if (this.#byPeer.size > this.limit) {
      const oldest = this.#byPeer.keys().next().value as string
      this.#byPeer.delete(oldest)
    }
    return !same
  }

  /** The address `peer` observed for us, while fresh. */
  observedBy(peer: string, now: number): Address.Address | undefined {
    const o = this.#byPeer.get(peer)
    return o !== undefined && now - o.lastSeen <= this.staleAfterMillis ? o.address : undefined
  }

  /** Drops the observations older than `staleAfter`; true when any went. */
  prune(now: number): boolean {
    let dropped = false
    for (const [peer, o] of this.#byPeer)
      if (now - o.lastSeen > this.staleAfterMillis) {
        this.#byPeer.delete(peer)
        dropped = true
      }
    return dropped
  }

  /** The fresh observations. */
  fresh(now: number): Array<Observation> {
    const out: Array<Observation> = []
    for (const o of this.#byPeer.values()) if (now - o.lastSeen <= this.staleAfterMillis) out.push(o)
    return out
  }

  /** How many different peer IPs have a fresh observation. */
  observers(now: number): number {
    return new Set(this.fresh(now).map((o) => o.peerIp)).size
  }

  /**
   * Addresses observed by peers on at least `CONFIRMATIONS` different IPs, the most widely
   * observed first.
   */
  confirmed(now: number): Array<Address.Address> {
    const ips = new Map<string, { address: Address.Address; ips: Set<string> }>()
    for (const o of this.fresh(now)) {
      const key = keyOf(o.address)
      const entry = ips.get(key) ?? { address: o.address, ips: new Set<string>() }
      entry.ips.add(o.peerIp)
      ips.set(key, entry)
    }
    return [...ips.values()]
      .filter((e) => e.ips.size >= CONFIRMATIONS)
      .sort((a, b) => b.ips.size - a.ips.size)
      .map((e) => e.address)
  }

  /**
   * The mapping behaviour the observations show (a dial-back alone can tell `public`):
   * `cone` when an address is confirmed; `symmetric` when peers on different IPs saw the same
   * external IP with different ports and none agree; else `unknown`.
   */
  classify(now: number): Exclude<NatClass, "public"> {
    if (this.confirmed(now).length > 0) return "cone"
    const fresh = this.fresh(now)
    for (let i = 0; i < fresh.length; i++)
      for (let j = i + 1; j < fresh.length; j++) {
        const a = fresh[i]!
        const b = fresh[j]!
        if (
          a.peerIp !== b.peerIp &&
          Address.normalizeHost(a.address.host) === Address.normalizeHost(b.address.host) &&
          a.address.port !== b.address.port
        )
          return "symmetric"
      }
    return "unknown"
  }
}
