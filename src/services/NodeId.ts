/**
 * NodeId: the raw 32-byte Ed25519 public key of a node, and its text form
 * (NodeIdEncoded): `v` followed by the lower-case, unpadded base32hex of the bytes.
 */
import { type Brand, Data, Either, ParseResult, Schema } from "effect"

export const NODE_ID_BYTES = 32
export const NODE_ID_ENCODED_LENGTH = 53

export type NodeId = Uint8Array & Brand.Brand<"NodeId">
export type NodeIdEncoded = string & Brand.Brand<"NodeIdEncoded">

/** Text that is not a valid NodeIdEncoded; `reason` names the problem. */
export class NodeIdDecodeError extends Data.TaggedError("NodeIdDecodeError")<{
  readonly input: string
  readonly reason: "prefix" | "length" | "alphabet" | "padding"
}> {
  override get message() {
    const shown = this.input.length > 60 ? `${this.input.slice(0, 60)}…` : this.input
    const why = {
      prefix: `it must start with "v"`,
      length: `it must be ${NODE_ID_ENCODED_LENGTH} characters long, got ${this.input.length}`,
      alphabet: `only the characters 0-9 and a-v may follow the "v"`,
      padding: "its last character carries bits beyond the 32 bytes"
    }[this.reason]
    return `invalid NodeId "${shown}": ${why}`
  }
}

/** Bytes that are not a NodeId (wrong length). */
export class InvalidNodeIdError extends Data.TaggedError("InvalidNodeIdError")<{
  readonly length: number
}> {
  override get message() {
    return `invalid NodeId: expected ${NODE_ID_BYTES} bytes, got ${this.length}`
  }
}

const ALPHABET = "0123456789abcdefghijklmnopqrstuv"
const LOOKUP: Record<string, number> = Object.fromEntries([...ALPHABET].map((c, i) => [c, i]))

// Char codes, then one flat string: `+=` per character would build a rope of ~50 nodes that
// every map keyed by NodeId (the connection map, the routing table) keeps alive.
const ALPHABET_CODES = Array.from(ALPHABET, (c) => c.charCodeAt(0))

const base32hexEncode = (bytes: Uint8Array, prefix = ""): string => {
  const codes: Array<number> = Array.from(prefix, (c) => c.charCodeAt(0))
  let buffer = 0
  let bits = 0
  for (const byte of bytes) {
    buffer = (buffer << 8) | byte
    bits += 8
    while (bits >= 5) {
      codes.push(ALPHABET_CODES[(buffer >>> (bits - 5)) & 31]!)
      bits -= 5
    }
    buffer &= (1 << bits) - 1
  }
  if (bits > 0) codes.push(ALPHABET_CODES[(buffer << (5 - bits)) & 31]!)
  return String.fromCharCode(...codes)
}

export const fromBytes = (bytes: Uint8Array): Either.Either<NodeId, InvalidNodeIdError> =>
  bytes.length === NODE_ID_BYTES
    ? Either.right(Uint8Array.from(bytes) as NodeId)
    : Either.left(new InvalidNodeIdError({ length: bytes.length }))

/** Unchecked cast for bytes already known to be 32 long. */
export const unsafeFromBytes = (bytes: Uint8Array): NodeId => {
  if (bytes.length !== NODE_ID_BYTES) throw new InvalidNodeIdError({ length: bytes.length })
  return bytes as NodeId
}

/**
 * Each NodeId's text form, kept with the NodeId object while it lives: a NodeId's bytes never
 * change once it is made, and lookups, routing-table answers and map keys encode the same ids
 * over and over. `decode` records the text it was given (it is the canonical form).
 */
const encodings = new WeakMap<NodeId, NodeIdEncoded>()

export const encode = (nodeId: NodeId): NodeIdEncoded => {
  let text = encodings.get(nodeId)
  if (text === undefined) {
    text = base32hexEncode(nodeId, "v") as NodeIdEncoded
    encodings.set(nodeId, text)
  }
  return text
}

/**
 * One object per NodeId while any is in use: decoded ids, routing-table entries and the
 * contacts that carry them share it, with its text form (a simulated world would otherwise
 * hold millions of copies of ten thousand ids). Held weakly: an id nobody uses any more is
 * collected, then forgotten. Shared ids must not be written to; nothing here writes to one.
 */
const canonicalIds = new Map<string, WeakRef<NodeId>>()
const forgetCanonical = new FinalizationRegistry<string>((text) => {
  if (canonicalIds.get(text)?.deref() === undefined) canonicalIds.delete(text)
})
const adoptCanonical = (nodeId: NodeId, text: NodeIdEncoded) => {
  encodings.set(nodeId, text)
  canonicalIds.set(text, new WeakRef(nodeId))
  forgetCanonical.register(nodeId, text)
}

/** The shared object for these bytes (a copy of them becomes it if there is none yet). */
export const canonical = (nodeId: Uint8Array): NodeId => {
  const text = encodings.get(nodeId as NodeId) ?? (base32hexEncode(nodeId, "v") as NodeIdEncoded)
  const known = canonicalIds.get(text)?.deref()
  if (known !== undefined) return known
  const copy = Uint8Array.from(nodeId) as NodeId
  adoptCanonical(copy, text)
  return copy
}

export const decode = (text: string): Either.Either<NodeId, NodeIdDecodeError> => {
  const known = canonicalIds.get(text)?.deref()
  if (known !== undefined) return Either.right(known)
  if (!text.startsWith("v")) return Either.left(new NodeIdDecodeError({ input: text, reason: "prefix" }))
  if (text.length !== NODE_ID_ENCODED_LENGTH)
    return Either.left(new NodeIdDecodeError({ input: text, reason: "length" }))
  const out = new Uint8Array(NODE_ID_BYTES)
  let buffer = 0
  let bits = 0
  let index = 0
  for (let i = 1; i < text.length; i++) {
    const value = LOOKUP[text[i]!]
    if (value === undefined) return Either.left(new NodeIdDecodeError({ input: text, reason: "alphabet" }))
    buffer = (buffer << 5) | value
    bits += 5
    if (bits >= 8) {
      out[index++] = (buffer >>> (bits - 8)) & 0xff
      bits -= 8
      buffer &= (1 << bits) - 1
    }
  }
  // 52 symbols carry 260 bits: the 4 trailing bits must be zero (canonical form).
  if (buffer !== 0) return Either.left(new NodeIdDecodeError({ input: text, reason: "padding" }))
  adoptCanonical(out as NodeId, text as NodeIdEncoded)
  return Either.right(out as NodeId)
}

export const equals = (a: Uint8Array, b: Uint8Array): boolean => {
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false
  return true
}

/** Lexicographic byte order: negative when a < b. */
export const compare = (a: Uint8Array, b: Uint8Array): number => {
  const n = Math.min(a.length, b.length)
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i]! - b[i]!
  return a.length - b.length
}

/** XOR distance as raw bytes (big-endian), comparable with `compare`. */
export const distanceBytes = (a: Uint8Array, b: Uint8Array): Uint8Array => {
  const out = new Uint8Array(NODE_ID_BYTES)
  for (let i = 0; i < NODE_ID_BYTES; i++) out[i] = a[i]! ^ b[i]!
  return out
}

/** XOR distance as a 256-bit unsigned integer. */
export const distance = (a: Uint8Array, b: Uint8Array): bigint => {
  let d = 0n
  for (let i = 0; i < NODE_ID_BYTES; i++) d = (d << 8n) | BigInt(a[i]! ^ b[i]!)
  return d
}

/**
 * Kademlia bucket index of `other` as seen from `own`: the position (0 = least significant)
 * of the highest set bit of their XOR distance. -1 when the two are equal.
 */
export const bucketIndex = (own: Uint8Array, other: Uint8Array): number => {
  for (let i = 0; i < NODE_ID_BYTES; i++) {
    const x = own[i]! ^ other[i]!
    if (x !== 0) return (NODE_ID_BYTES - 1 - i) * 8 + (31 - Math.clz32(x))
  }
  return -1
}

/**
 * A NodeId in bucket `index` of `own` (their XOR distance has its highest set bit at `index`).
 * The bits below that one are taken from `noise` (byte j of `noise` for byte j of the id; bytes
 * before the bucket's byte are not read), so random noise gives a random id of the bucket.
 */
export const inBucket = (own: Uint8Array, index: number, noise: ArrayLike<number>): NodeId => {
  const out = Uint8Array.from(own)
  const byte = NODE_ID_BYTES - 1 - (index >> 3)
  const bit = index & 7
  const low = (1 << bit) - 1
  out[byte] = ((own[byte]! ^ (1 << bit)) & ~low) | (noise[byte]! & low)
  for (let j = byte + 1; j < NODE_ID_BYTES; j++) out[j] = noise[j]! & 0xff
  return out as NodeId
}

/** Text form as a Schema: decodes a NodeIdEncoded string into NodeId bytes. */
export const NodeIdFromString: Schema.Schema<NodeId, string> = Schema.transformOrFail(
  Schema.String,
  Schema.declare((u): u is NodeId => u instanceof Uint8Array && u.length === NODE_ID_BYTES, {
    identifier: "NodeId"
  }),
  {
    strict: true,
    decode: (text, _, ast) => Either.mapLeft(decode(text), (e) => new ParseResult.Type(ast, text, e.message)),
    encode: (nodeId) => ParseResult.succeed(encode(nodeId))
  }
)

/** A NodeIdEncoded string, validated but kept as text. */
export const NodeIdEncodedSchema: Schema.Schema<NodeIdEncoded, string> = Schema.String.pipe(
  Schema.filter((s) => Either.isRight(decode(s)) || `not a NodeId: ${s}`),
  Schema.brand("NodeIdEncoded")
) as unknown as Schema.Schema<NodeIdEncoded, string>
