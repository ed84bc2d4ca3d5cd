/**
 * cidr: IP addresses and CIDR ranges as 16 bytes, for the connection gate.
 *
 * Every address is held in IPv6 form: an IPv4 address as its IPv4-mapped IPv6 address
 * (`::ffff:a.b.c.d`) and an IPv4 range as the matching mapped range (prefix + 96). So an IPv4
 * peer that reaches a dual-stack socket as `::ffff:10.0.0.5` and one that reaches an IPv4
 * socket as `10.0.0.5` fall in the same ranges, and `::/0` covers every address. A range
 * inside `::ffff:0:0/96` is written back in IPv4 form (`10.0.0.0/8`).
 */
import { isIPv4 } from "node:net"
import * as Address from "../services/Address.js"

/** A range: its network address (host bits cleared) and prefix length over 128 bits. */
export interface Cidr {
  readonly network: Uint8Array
  readonly prefix: number
}

const mappedPrefix = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]

/** An IP address (IPv4, IPv6, IPv4-mapped IPv6; brackets and a zone id allowed) as 16 bytes, or undefined. */
export const parseIp = (text: string): Uint8Array | undefined => {
  const bytes = Address.ipBytes(text)
  if (bytes === undefined || bytes.length === 16) return bytes
  const mapped = new Uint8Array(16)
  mapped.set(mappedPrefix)
  mapped.set(bytes, 12)
  return mapped
}

const isMapped = (bytes: Uint8Array) => mappedPrefix.every((b, i) => bytes[i] === b)

/** Whether `address` (16 bytes) lies in `range`. */
export const contains = (range: Cidr, address: Uint8Array): boolean => {
  const whole = range.prefix >> 3
  for (let i = 0; i < whole; i++) if (range.network[i] !== address[i]) return false
  const rest = range.prefix & 7
  if (rest === 0) return true
  const mask = (0xff << (8 - rest)) & 0xff
  return (address[whole]! & mask) === range.network[whole]
}

/**
 * "10.0.0.0/8", "2001:db8::/32", "::ffff:10.0.0.0/104" or a bare address (a range of one) as a
 * range with its host bits cleared; otherwise why not.
 */
export const parseCidr = (text: string): Cidr | string => {
  const slash = text.indexOf("/")
  const addressText = slash < 0 ? text : text.slice(0, slash)
  const bytes = parseIp(addressText)
  if (bytes === undefined) return `"${addressText}" is not an IP address`
  const v4 = isIPv4(addressText)
  const max = v4 ? 32 : 128
  const prefixText = slash < 0 ? String(max) : text.slice(slash + 1)
  if (!/^\d{1,3}$/.test(prefixText) || Number(prefixText) > max)
    return `the prefix length must be a whole number from 0 to ${max}`
  const prefix = Number(prefixText) + (v4 ? 96 : 0)
  const network = new Uint8Array(16)
  const whole = prefix >> 3
  network.set(bytes.subarray(0, whole))
  if ((prefix & 7) !== 0) network[whole] = bytes[whole]! & ((0xff << (8 - (prefix & 7))) & 0xff)
  return { network, prefix }
}

/** The shortest text of 16 bytes as an IPv6 address (RFC 5952: the longest run of zero groups as "::"). */
const formatIpv6 = (bytes: Uint8Array): string => {
  const groups = Array.from({ length: 8 }, (_, i) => (bytes[2 * i]! << 8) | bytes[2 * i + 1]!)
  let best = { at: -1, length: 0 }
  for (let i = 0; i < 8; ) {
    let j = i
    while (j < 8 && groups[j] === 0) j++
    if (j - i > best.length && j - i > 1) best = { at: i, length: j - i }
    i = j === i ? i + 1 : j
  }
  const hex = (xs: ReadonlyArray<number>) => xs.map((g) => g.toString(16)).join(":")
  if (best.at < 0) return hex(groups)
  return `${hex(groups.slice(0, best.at))}::${hex(groups.slice(best.at + best.length))}`
}

/** An address (16 bytes) as text: IPv4 for a mapped address, IPv6 otherwise. */
export const formatIp = (bytes: Uint8Array): string =>
  isMapped(bytes) ? Array.from(bytes.subarray(12)).join(".") : formatIpv6(bytes)

/** A range as text: IPv4 form for a range inside `::ffff:0:0/96`, IPv6 form otherwise. */
export const formatCidr = (range: Cidr): string =>
  range.prefix >= 96 && isMapped(range.network)
    ? `${formatIp(range.network)}/${range.prefix - 96}`
    : `${formatIpv6(range.network)}/${range.prefix}`
