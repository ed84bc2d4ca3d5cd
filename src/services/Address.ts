/**
 * Address: a host and a UDP port, the one address shape of quicmesh, with its parser and
 * normaliser. A host is an IP address (v4 or v6) or a host name; a port is 1–65535 for a
 * peer (0 only where a socket binds "any port").
 */
import { isIP } from "node:net"
import { Data, Either, Schema } from "effect"

export interface Address {
  readonly host: string
  readonly port: number
}

/** Text that is not an address, or an address part that is out of range. */
export class AddressError extends Data.TaggedError("AddressError")<{
  /** What was wrong: the whole text's shape, its host or its port. */
  readonly part: "address" | "host" | "port"
  /** The text given. */
  readonly input: string
}> {
  override get message() {
    return this.part === "address"
      ? `invalid address "${this.input}": expected HOST:PORT`
      : this.part === "host"
        ? `invalid host "${this.input}": not an IP address or hostname`
        : `invalid port in address "${this.input}": must be 1-65535`
  }
}

const HOSTNAME =
  /^(?=.{1,253}$)([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*$/

/** An RFC 1123 host name (not an IP address, and not all digits and dots). */
export const isHostname = (host: string): boolean => HOSTNAME.test(host) && !/^[\d.]+$/.test(host)

/** An IP address or a host name. */
export const isHost = (host: string): boolean => isIP(host) !== 0 || isHostname(host)

/** 4 or 6 for an IP address (after normalising), 0 for anything else. */
export const ipVersion = (host: string): 0 | 4 | 6 => isIP(normalizeHost(host)) as 0 | 4 | 6

/** A port a peer can be reached on: 1–65535. */
export const isPort = (port: number): boolean => Number.isInteger(port) && port > 0 && port < 65536

/** A port a socket can bind: 0 (any) to 65535. */
export const isBindPort = (port: number): boolean => Number.isInteger(port) && port >= 0 && port < 65536

/** "[::1]" → "::1", "::ffff:1.2.3.4" → "1.2.3.4" (the same peer), lower case. */
export const normalizeHost = (host: string): string => {
  const h = host.startsWith("[") && host.endsWith("]") ? host.slice(1, -1) : host
  return h.toLowerCase().startsWith("::ffff:") && isIP(h.slice(7)) === 4 ? h.slice(7) : h.toLowerCase()
}

/** The same address, once both hosts are normalised. */
export const equals = (a: Address, b: Address): boolean =>
  a.port === b.port && normalizeHost(a.host) === normalizeHost(b.host)

/**
 * The bytes of an IP address (4 for IPv4, 16 for IPv6, after normalising; an IPv6 zone is
 * ignored), undefined for anything else (host names included).
 */
export const ipBytes = (host: string): Uint8Array | undefined => {
  const h = normalizeHost(host)
  const version = isIP(h)
  if (version === 4) return Uint8Array.from(h.split("."), Number)
  if (version !== 6) return undefined
  const bare = h.split("%")[0]!
  const words = (part: string): Array<number> =>
    part === ""
      ? []
      : part.split(":").flatMap((w) => {
          if (!w.includes(".")) return [Number.parseInt(w, 16)]
          const [a, b, c, d] = w.split(".").map(Number) as [number, number, number, number]
          return [(a << 8) | b, (c << 8) | d]
        })
  const gap = bare.indexOf("::")
  const head = words(gap < 0 ? bare : bare.slice(0, gap))
  const tail = gap < 0 ? [] : words(bare.slice(gap + 2))
  const all = [...head, ...new Array<number>(8 - head.length - tail.length).fill(0), ...tail]
  const bytes = new Uint8Array(16)
  all.forEach((w, i) => {
    bytes[2 * i] = w >> 8
    bytes[2 * i + 1] = w & 255
  })
  return bytes
}

/**
 * Not a public Internet address: "localhost" (and names under ".localhost"), or an IP literal
 * in a loopback, private, link-local, shared (carrier NAT) or unspecified range: 0.0.0.0/8,
 * 10/8, 100.64/10, 127/8, 169.254/16, 172.16/12, 192.168/16, ::, ::1, fe80::/10 and fc00::/7.
 * Other host names are not resolved: they count as public.
 */
export const isLocalHost = (host: string): boolean => {
  const h = normalizeHost(host)
  if (h === "localhost" || h.endsWith(".localhost")) return true
  const b = ipBytes(h)
  if (b === undefined) return false
  const [b0, b1] = [b[0]!, b[1]!]
  if (b.length === 4)
    return (
      b0 === 0 ||
      b0 === 10 ||
      b0 === 127 ||
      (b0 === 100 && (b1 & 0xc0) === 64) ||
      (b0 === 169 && b1 === 254) ||
      (b0 === 172 && (b1 & 0xf0) === 16) ||
      (b0 === 192 && b1 === 168)
    )
  return (
    (b.subarray(0, 15).every((x) => x === 0) && b[15]! <= 1) ||
    (b0 & 0xfe) === 0xfc ||
    (b0 === 0xfe && (b1 & 0xc0) === 0x80)
  )
}

/** "HOST:PORT", with an IPv6 host in brackets. */
export const format = (address: Address): string =>
  isIP(address.host) === 6 ? `[${address.host}]:${address.port}` : `${address.host}:${address.port}`

/** "HOST:PORT" or "[IPV6]:PORT" → an Address (host normalised, port 1–65535). */
export const parse = (text: string): Either.Either<Address, AddressError> => {
  const t = text.trim()
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(t) ?? /^([^:]+):(\d+)$/.exec(t)
  if (!m) return Either.left(new AddressError({ part: "address", input: text }))
  const host = m[1]!
  if (!isHost(host)) return Either.left(new AddressError({ part: "host", input: host }))
  const port = Number(m[2])
  if (!isPort(port)) return Either.left(new AddressError({ part: "port", input: text }))
  return Either.right({ host: normalizeHost(host), port })
}

/** An address as it crosses the wire (the port checked as 0–65535: the receiver filters 0). */
export const WireAddress = Schema.Struct({
  host: Schema.String,
  port: Schema.Int.pipe(Schema.between(0, 65535))
})
