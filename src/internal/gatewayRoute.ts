/**
 * Where the port-mapping gateway is: the default IPv4 gateway from Linux's routing table
 * (`/proc/net/route`: among the routes to 0.0.0.0/0 that are up and go through a gateway, the one
 * with the lowest metric; addresses in hexadecimal, host byte order), or one named by the user
 * ("HOST" or "HOST:PORT").
 */
import { readFile } from "node:fs/promises"
import { isIPv4 } from "node:net"
import { Effect, Option } from "effect"

const RTF_UP = 0x1
const RTF_GATEWAY = 0x2

const hexAddress = (hex: string): string | undefined => {
  if (!/^[0-9A-Fa-f]{8}$/.test(hex)) return undefined
  const n = Number.parseInt(hex, 16)
  return [n & 255, (n >>> 8) & 255, (n >>> 16) & 255, n >>> 24].join(".")
}

/** The default gateway in the text of `/proc/net/route`. */
export const parseDefaultGateway = (table: string): Option.Option<string> => {
  let best: { readonly gateway: string; readonly metric: number } | undefined
  for (const line of table.split("\n").slice(1)) {
    const [, destination, gatewayHex, flags, , , metric, mask] = line.trim().split(/\s+/)
    if (destination !== "00000000" || mask !== "00000000" || gatewayHex === undefined) continue
    const bits = Number.parseInt(flags ?? "", 16)
    const gateway = hexAddress(gatewayHex)
    if (gateway === undefined || (bits & (RTF_UP | RTF_GATEWAY)) !== (RTF_UP | RTF_GATEWAY)) continue
    const m = Number(metric)
    if (best === undefined || m < best.metric) best = { gateway, metric: m }
  }
  return Option.fromNullable(best?.gateway)
}

/** The default gateway of this host; none where there is no such table (not Linux) or no default route. */
export const defaultGateway = (path = "/proc/net/route"): Effect.Effect<Option.Option<string>> =>
  Effect.tryPromise(() => readFile(path, "utf8")).pipe(
    Effect.map(parseDefaultGateway),
    Effect.orElseSucceed(() => Option.none())
  )

/** The UDP port of PCP and NAT-PMP servers. */
export const GATEWAY_PORT = 5351

/** A gateway named by the user as host and port, or a one-line message saying what is wrong with it. */
export const parseGateway = (text: string): { readonly host: string; readonly port: number } | string => {
  const [host = "", port, ...rest] = text.trim().split(":")
  const portNumber = port === undefined ? GATEWAY_PORT : /^\d{1,5}$/.test(port) ? Number(port) : Number.NaN
  if (!isIPv4(host) || rest.length > 0 || !(portNumber > 0 && portNumber < 65536))
    return `invalid gateway "${text}": expected an IPv4 address, optionally with :PORT`
  return { host, port: portNumber }
}
