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

/** Loopback, private and link-local ranges (and names that commonly stand for them). */
export const isLocalHost = (host: string): boolean => {
  const h = normalizeHost(host)
  return (
    h === "::1" ||
    h === "localhost" ||
    h.startsWith("127.") ||
    h.startsWith("10.") ||
    h.startsWith("192.168.") ||
    /^172\.(1[6-9]|2\d|3[01])\./.test(h) ||
    h.startsWith("fe80:") ||
    h.startsWith("fc") ||
    h.startsWith("fd")
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
