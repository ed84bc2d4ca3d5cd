/**
 * Packets of the simulated world (handshake packets, datagrams): one packet goes out through
 * the sender's NAT, may be dropped by a partition or lost on the link, arrives after the
 * link's delay, and passes the destination's NAT or is filtered. Every drop is traced.
 */
import type { Address } from "../../services/Address.js"
import type { Endpoint } from "./endpoint.js"
import type { HostState } from "./hosts.js"
import { inbound, outbound } from "./nat.js"
import type { World } from "./world.js"

/**
 * Sends one packet; on arrival, `arrive` gets the destination host, the internal port and
 * the source as observed there.
 */
export const sendPacket = (
  world: World,
  kind: string,
  ep: Endpoint,
  toHost: string,
  toPort: number,
  arrive: (dst: HostState, port: number, src: Address) => void
) => {
  const from = ep.host
  const to = `${toHost}:${toPort}`
  const dst = world.hosts.addresses.get(toHost)
  if (dst === undefined || (dst !== from && dst.nat !== "none" && toHost === dst.host)) {
    world.log.add("drop", ep.label, to, `${kind}: unroutable`)
    return
  }
  const local = dst === from
  const src = local ? { host: from.host, port: ep.port } : outbound(from, ep.port, toHost, toPort)
  if (world.links.blocked(from, dst)) return world.log.add("drop", ep.label, to, `${kind}: partitioned`)
  if (world.links.lost(from, dst)) return world.log.add("drop", ep.label, to, `${kind}: lost`)
  world.scheduler.schedule(world.links.delay(from, dst), () => {
    const port = local ? toPort : inbound(dst, toHost, toPort, src)
    if (typeof port === "string") return world.log.add("drop", ep.label, to, `${kind}: ${port}`)
    arrive(dst, port, src)
  })
}

/** Sends a datagram of `size` bytes: traced on arrival at a bound endpoint. */
export const sendDatagram = (world: World, ep: Endpoint, toHost: string, toPort: number, size: number) => {
  sendPacket(world, "datagram", ep, toHost, toPort, (dst, port, src) => {
    const target = dst.bindings.get(port)
    if (target === undefined)
      return world.log.add("drop", ep.label, `${toHost}:${toPort}`, "datagram: no listener")
    world.log.add("datagram", `${src.host}:${src.port}`, target.label, `${size} bytes`)
  })
}
