/**
 * The hosts of a simulated world and their addresses: IPv4-looking, public ones `1.x.y.z`,
 * NATed ones a private `10.x.y.z` behind a NAT whose external address is public. Each host
 * holds the endpoints bound on it and its NAT's mappings.
 */
import type { NatType, SimHost } from "../../services/SimNetwork.js"
import type { Endpoint } from "./endpoint.js"
import type { Mapping } from "./nat.js"

export interface HostState {
  readonly index: number
  readonly host: string
  readonly publicHost: string
  readonly nat: NatType
  readonly bindings: Map<number, Endpoint>
  nextPort: number
  /** The NAT's mappings by key (see `nat.ts`). */
  readonly mappings: Map<string, Mapping>
  readonly byExtPort: Map<number, Mapping>
  nextExtPort: number
}

const IPV4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/

/** A rule of the simulated world: its hosts are IPv4 addresses (dotted quads). */
export const isSimHostAddress = (host: string) => {
  const m = IPV4.exec(host)
  return m?.slice(1).every((part) => Number(part) <= 255) === true
}

export class Hosts {
  /** Every host by each of its addresses (bind address and NAT external address). */
  readonly addresses = new Map<string, HostState>()
  count = 0
  private publicCounter = 0
  private privateCounter = 0

  private nextPublic(): string {
    while (true) {
      const i = ++this.publicCounter
      const host = `1.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`
      if (!this.addresses.has(host)) return host
    }
  }

  private nextPrivate(): string {
    while (true) {
      const i = ++this.privateCounter
      const host = `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`
      if (!this.addresses.has(host)) return host
    }
  }

  /** The host at `host` if there is one, else a new host (at `host`, or at a new address). */
  add(nat: NatType, host?: string): HostState {
    if (host !== undefined) {
      const existing = this.addresses.get(host)
      if (existing) return existing
    }
    const bindHost = host ?? (nat === "none" ? this.nextPublic() : this.nextPrivate())
    const state: HostState = {
      index: this.count++,
      host: bindHost,
      publicHost: nat === "none" ? bindHost : this.nextPublic(),
      nat,
      bindings: new Map(),
      nextPort: 1314,
      mappings: new Map(),
      byExtPort: new Map(),
      nextExtPort: 40000
    }
    this.addresses.set(state.host, state)
    this.addresses.set(state.publicHost, state)
    return state
  }

  info(state: HostState): SimHost {
    return { host: state.host, publicHost: state.publicHost, nat: state.nat }
  }
}
