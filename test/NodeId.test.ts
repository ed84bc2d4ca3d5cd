import { describe, expect, it } from "@effect/vitest"
import { Either, FastCheck as fc, Schema } from "effect"
import {
  bucketIndex,
  canonical,
  compare,
  decode,
  distance,
  distanceBytes,
  encode,
  equals,
  fromBytes,
  NODE_ID_BYTES,
  NODE_ID_ENCODED_LENGTH,
  type NodeId,
  NodeIdDecodeError,
  NodeIdFromString
} from "../src/services/NodeId.js"

const ALPHABET = "0123456789abcdefghijklmnopqrstuv"
const arbId = fc.uint8Array({ minLength: NODE_ID_BYTES, maxLength: NODE_ID_BYTES }).map((b) => b as NodeId)
/** A pair of ids that differ, often only in low bits (so every bucket gets exercised). */
const arbPair = fc.tuple(arbId, fc.integer({ min: 0, max: 255 }), arbId).map(([a, bit, noise]) => {
  const b = Uint8Array.from(a)
  const byte = NODE_ID_BYTES - 1 - (bit >> 3)
  b[byte] = b[byte]! ^ (1 << (bit & 7)) ^ (noise[byte]! & ((1 << (bit & 7)) - 1))
  for (let i = byte + 1; i < NODE_ID_BYTES; i++) b[i] = b[i]! ^ noise[i]!
  return [a, b as NodeId, bit] as const
})

const toBigInt = (bytes: Uint8Array): bigint => BigInt(`0x${Buffer.from(bytes).toString("hex")}`)
const log2Floor = (n: bigint): number => n.toString(2).length - 1

const decodeReason = (text: string) =>
  Either.match(decode(text), { onLeft: (e) => e.reason, onRight: () => "ok" as const })

describe("NodeId encoding", () => {
  it.prop("encode/decode round-trips any 32 bytes", [arbId], ([id]) => {
    const text = encode(id)
    expect(text).toHaveLength(NODE_ID_ENCODED_LENGTH)
    expect(text).toHaveLength(53)
    expect(text[0]).toBe("v")
    expect([...text.slice(1)].every((c) => ALPHABET.includes(c))).toBe(true)
    const back = decode(text)
    expect(Either.isRight(back)).toBe(true)
    expect(Buffer.from(Either.getOrThrow(back)).equals(Buffer.from(id))).toBe(true)
  })

  it.prop("encoding preserves byte order (base32hex is order-preserving)", [arbId, arbId], ([a, b]) => {
    const byBytes = Math.sign(compare(a, b))
    const byText = encode(a) < encode(b) ? -1 : encode(a) > encode(b) ? 1 : 0
    expect(byText).toBe(byBytes)
  })

  it.prop("the Schema decodes and encodes the same text", [arbId], ([id]) => {
    const text = encode(id)
    const decoded = Schema.decodeUnknownSync(NodeIdFromString)(text)
    expect(equals(decoded, id)).toBe(true)
    expect(Schema.encodeSync(NodeIdFromString)(decoded)).toBe(text)
  })

  it.prop("a wrong first character is a prefix error", [arbId, fc.constantFrom(..."uVw0aA#")], ([id, c]) => {
    expect(decodeReason(c + encode(id).slice(1))).toBe("prefix")
  })

  it.prop(
    "too short or too long is a length error",
    [arbId, fc.integer({ min: 0, max: 52 }), fc.string({ unit: fc.constantFrom(...ALPHABET), minLength: 1 })],
    ([id, keep, extra]) => {
      const text = encode(id)
      expect(decodeReason(text.slice(0, keep) || "v")).toBe("length")
      expect(decodeReason(text + extra)).toBe("length")
    }
  )

  it.prop(
    "a character outside 0-9a-v is an alphabet error",
    [arbId, fc.integer({ min: 1, max: 52 }), fc.constantFrom(..."wxyzWXYZABCV-_=+/ !é")],
    ([id, at, c]) => {
      const text = encode(id)
      const mutated = text.slice(0, at) + c + text.slice(at + 1)
      expect(mutated).toHaveLength(53)
      const result = decode(mutated)
      expect(Either.isLeft(result) && result.left.reason).toBe("alphabet")
      expect(Either.isLeft(result) && result.left).toBeInstanceOf(NodeIdDecodeError)
    }
  )

  it.prop(
    "a last character with any of its 4 spare bits set is a padding error",
    [arbId, fc.integer({ min: 1, max: 15 })],
    ([id, spare]) => {
      const text = encode(id)
      const last = ALPHABET.indexOf(text[52]!)
      // The last symbol carries 1 data bit (its top bit) and 4 bits that must be zero.
      expect(last & 0b01111).toBe(0)
      const mutated = text.slice(0, 52) + ALPHABET[last | spare]!
      expect(decodeReason(mutated)).toBe("padding")
    }
  )

  it.prop(
    "one id, one object: decoding and canonical copies share it, and the bytes stay right",
    [arbId],
    ([id]) => {
      const text = encode(Uint8Array.from(id) as NodeId)
      const first = Either.getOrThrow(decode(text))
      expect(Either.getOrThrow(decode(text))).toBe(first)
      expect(canonical(Uint8Array.from(id))).toBe(first)
      expect(first).not.toBe(id)
      expect(equals(first, id)).toBe(true)
      expect(encode(first)).toBe(text)
    }
  )

  it("an id first seen as bytes becomes the one decoding returns", () => {
    const bytes = new Uint8Array(NODE_ID_BYTES).fill(0x5a)
    bytes[0] = 0x01
    const shared = canonical(bytes)
    expect(shared).not.toBe(bytes)
    expect(Either.getOrThrow(decode(encode(bytes as NodeId)))).toBe(shared)
  })

  it("error messages name the problem and never throw", () => {
    expect(decode("x").pipe(Either.flip, Either.getOrThrow).message).toContain('start with "v"')
    expect(decode("v123").pipe(Either.flip, Either.getOrThrow).message).toContain("53 characters")
    const long = `v${"0".repeat(500)}`
    expect(decode(long).pipe(Either.flip, Either.getOrThrow).message.length).toBeLessThan(200)
  })

  it.prop("fromBytes accepts exactly 32 bytes", [fc.uint8Array({ maxLength: 64 })], ([bytes]) => {
    expect(Either.isRight(fromBytes(bytes))).toBe(bytes.length === NODE_ID_BYTES)
  })
})

describe("NodeId distance", () => {
  it.prop("distance is the XOR of the two ids as an integer", [arbId, arbId], ([a, b]) => {
    expect(distance(a, b)).toBe(toBigInt(a) ^ toBigInt(b))
    expect(toBigInt(distanceBytes(a, b))).toBe(distance(a, b))
  })

  it.prop("distance is symmetric", [arbId, arbId], ([a, b]) => {
    expect(distance(a, b)).toBe(distance(b, a))
  })

  it.prop("distance is zero exactly for equal ids", [arbId, arbPair], ([a, [x, y]]) => {
    expect(distance(a, a)).toBe(0n)
    expect(distance(a, Uint8Array.from(a))).toBe(0n)
    expect(distance(x, y) > 0n).toBe(true)
    expect(equals(x, y)).toBe(false)
  })

  it.prop("bucketIndex is floor(log2(distance))", [arbPair], ([[a, b, bit]]) => {
    const d = distance(a, b)
    expect(bucketIndex(a, b)).toBe(log2Floor(d))
    expect(bucketIndex(a, b)).toBe(bit)
    expect(bucketIndex(b, a)).toBe(bucketIndex(a, b))
  })

  it.prop("bucketIndex of uniformly random pairs", [arbId, arbId], ([a, b]) => {
    const d = distance(a, b)
    expect(bucketIndex(a, b)).toBe(d === 0n ? -1 : log2Floor(d))
  })

  it.prop("bucketIndex of an id with itself is -1", [arbId], ([a]) => {
    expect(bucketIndex(a, a)).toBe(-1)
  })
})
