/**
 * The NAT models of simulated hosts (`NatType`): how a packet's source is rewritten on the
 * way out and whether it is let in on the way back.
 *
 * - Mapping: `full-cone` and `restricted` keep one external port per internal port
 *   (endpoint-independent); `symmetric` makes one per internal port and destination.
 * - Filtering: `full-cone` lets anyone send to a mapping once it exists; `restricted` and
 *   `symmetric` only the destinations the mapping has sent to (address and port).
 */
import type { Address } from "../../services/Address.js"
import type { HostState } from "./hosts.js"

export interface Mapping {
  readonly internalPort: number
  readonly extPort: number
  /** Destinations `host:port` this mapping has sent to (the filter of restricted NATs). */
  readonly permits: Set<string>
}

/** NAT on the way out: the source address the rest of the world sees (creates mappings). */
export const outbound = (from: HostState, fromPort: number, toHost: string, toPort: number): Address => {
  if (from.nat === "none") return { host: from.host, port: fromPort }
  const dest = `${toHost}:${toPort}`
  const key = from.nat === "symmetric" ? `${fromPort}>${dest}` : `${fromPort}`
  let mapping = from.mappings.get(key)
  if (mapping === undefined) {
    mapping = { internalPort: fromPort, extPort: from.nextExtPort++, permits: new Set() }
    from.mappings.set(key, mapping)
    from.byExtPort.set(mapping.extPort, mapping)
  }
  mapping.permits.add(dest)
  return { host: from.publicHost, port: mapping.extPort }
}

/** NAT on the way in: the internal port, or why the packet is dropped. */
export const inbound = (dst: HostState, toHost: string, toPort: number, src: Address): number | string => {
  if (dst.nat === "none" || toHost === dst.host) return toPort
  const mapping = dst.byExtPort.get(toPort)
  if (mapping === undefined) return "no NAT mapping"
  if (dst.nat !== "full-cone" && !mapping.permits.has(`${src.host}:${src.port}`)) return "filtered by NAT"
  return mapping.internalPort
}
