/**
 * What a simulated connection over a relay circuit writes on the circuit's stream. The
 * simulator encodes no QUIC packets; these bytes stand for them, so that a relay forwards (and
 * counts and limits) a packet for everything the connection sends:
 *
 * - Hello (dialler → acceptor, first): `[HELLO_MAGIC: 4][dialler NodeId: 32][token: u32]
 *   [n: u8][n expected NodeIds: 32 each]`; the token names the dial in the world.
 * - Reply (acceptor → dialler, first): `[REPLY_MAGIC: 4][acceptor NodeId: 32]`.
 * - Then packets both ways, one per thing an end sends: `[seq: u32][size: u32][size zero bytes]`
 *   (`size` is the stream data's length; 0 for the rest: stream opens, FINs, closes, calls).
 */
import * as NodeId from "../../services/NodeId.js"
import type { Parsed } from "../protocolWire.js"

const HELLO_MAGIC = Uint8Array.of(0x51, 0x4d, 0x43, 0x48)
const REPLY_MAGIC = Uint8Array.of(0x51, 0x4d, 0x43, 0x52)
const ID = NodeId.NODE_ID_BYTES
const HELLO_FIXED = 4 + ID + 4 + 1
/** The most expected NodeIds a hello names. */
export const MAX_EXPECTED = 255
export const PACKET_HEADER_BYTES = 8

export interface Hello {
  readonly dialler: NodeId.NodeId
  readonly token: number
  readonly expected: ReadonlyArray<NodeId.NodeId>
}

const more: Parsed<never> = { _tag: "More" }
const invalid = (detail: string): Parsed<never> => ({ _tag: "Invalid", detail })
const done = <A>(value: A, bytes: Uint8Array, length: number): Parsed<A> => ({
  _tag: "Done",
  value,
  rest: bytes.length > length ? bytes.subarray(length) : undefined
})

export const writeU32 = (bytes: Uint8Array, at: number, value: number) => {
  bytes[at] = value >>> 24
  bytes[at + 1] = value >>> 16
  bytes[at + 2] = value >>> 8
  bytes[at + 3] = value
}

export const readU32 = (bytes: Uint8Array, at: number) =>
  ((bytes[at]! << 24) | (bytes[at + 1]! << 16) | (bytes[at + 2]! << 8) | bytes[at + 3]!) >>> 0

/** Whether `bytes` starts with as much of `magic` as it holds. */
const startsWith = (bytes: Uint8Array, magic: Uint8Array) => {
  for (let i = 0; i < magic.length && i < bytes.length; i++) if (bytes[i] !== magic[i]) return false
  return true
}

const idAt = (bytes: Uint8Array, at: number) => NodeId.unsafeFromBytes(bytes.slice(at, at + ID))

/** The hello (at most `MAX_EXPECTED` expected NodeIds: the caller checks). */
export const encodeHello = (hello: Hello): Uint8Array => {
  const n = hello.expected.length
  const out = new Uint8Array(HELLO_FIXED + n * ID)
  out.set(HELLO_MAGIC)
  out.set(hello.dialler, 4)
  writeU32(out, 4 + ID, hello.token)
  out[HELLO_FIXED - 1] = n
  for (let i = 0; i < n; i++) out.set(hello.expected[i]!, HELLO_FIXED + i * ID)
  return out
}

export const parseHello = (bytes: Uint8Array): Parsed<Hello> => {
  if (!startsWith(bytes, HELLO_MAGIC)) return invalid("not a circuit hello")
  if (bytes.length < HELLO_FIXED) return more
  const n = bytes[HELLO_FIXED - 1]!
  const length = HELLO_FIXED + n * ID
  if (bytes.length < length) return more
  const expected = Array.from({ length: n }, (_, i) => idAt(bytes, HELLO_FIXED + i * ID))
  return done({ dialler: idAt(bytes, 4), token: readU32(bytes, 4 + ID), expected }, bytes, length)
}

export const encodeReply = (acceptor: NodeId.NodeId): Uint8Array => {
  const out = new Uint8Array(4 + ID)
  out.set(REPLY_MAGIC)
  out.set(acceptor, 4)
  return out
}

export const parseReply = (bytes: Uint8Array): Parsed<NodeId.NodeId> => {
  if (!startsWith(bytes, REPLY_MAGIC)) return invalid("not a circuit reply")
  if (bytes.length < 4 + ID) return more
  return done(idAt(bytes, 4), bytes, 4 + ID)
}

/** A packet's bytes: its header and `size` zero bytes (the content stays with the world). */
export const encodePacket = (seq: number, size: number): Uint8Array => {
  const out = new Uint8Array(PACKET_HEADER_BYTES + size)
  writeU32(out, 0, seq)
  writeU32(out, 4, size)
  return out
}
