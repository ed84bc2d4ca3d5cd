/** circuitFrames: packets framed on a relayed circuit's stream, however the stream is cut. */
import { describe, expect, it } from "@effect/vitest"
import { FrameReader, frameOf, joinFrames, maxFramedPacket } from "../src/internal/circuitFrames.js"

const packetOf = (length: number, seed: number) =>
  Uint8Array.from({ length }, (_, i) => (i * 31 + seed) & 0xff)

/** The packets `reader` yields for `stream` cut into the given chunk sizes (cycled). */
const readAll = (stream: Uint8Array, sizes: ReadonlyArray<number>) => {
  const reader = new FrameReader()
  const packets: Array<Uint8Array> = []
  const onPacket = (p: Uint8Array) => void packets.push(p.slice())
  let offset = 0
  let wellFormed = true
  for (let i = 0; offset < stream.length; i++) {
    const end = Math.min(stream.length, offset + sizes[i % sizes.length]!)
    wellFormed &&= reader.push(stream.subarray(offset, end), onPacket)
    offset = end
  }
  expect(wellFormed).toBe(true)
  return { packets, midFrame: reader.midFrame }
}

describe("circuitFrames", () => {
  const packets = [packetOf(1, 1), packetOf(1200, 2), packetOf(300, 3), packetOf(maxFramedPacket, 4)]
  const stream = joinFrames(packets.map((p) => frameOf(p)!))

  it("a frame is the packet's length (2 bytes, big-endian), then the packet", () => {
    expect([...frameOf(new Uint8Array([7, 8, 9]))!]).toEqual([0, 3, 7, 8, 9])
    expect([...frameOf(packetOf(0x1234, 0))!.subarray(0, 2)]).toEqual([0x12, 0x34])
  })

  it("every packet comes out whole and in order, whatever the chunk sizes", () => {
    for (const sizes of [[stream.length], [1], [2], [3], [1201], [1, 2, 1203, 5], [4096]]) {
      const { packets: out, midFrame } = readAll(stream, sizes)
      expect(out).toEqual(packets)
      expect(midFrame).toBe(false)
    }
  })

  it("a stream cut inside a frame (header or body) is seen as such", () => {
    expect(readAll(stream.subarray(0, 4), [4]).midFrame).toBe(true)
    expect(readAll(stream.subarray(0, 3 + 1), [1]).midFrame).toBe(true)
    // After the first frame (3 bytes), one byte of the next header.
    expect(readAll(stream.subarray(0, 3 + 1), [3, 1]).midFrame).toBe(true)
  })

  it("an empty frame is malformed, and so is everything after it; no empty or oversized packet is framed", () => {
    const reader = new FrameReader()
    const out: Array<Uint8Array> = []
    expect(reader.push(new Uint8Array([0, 1, 42, 0]), (p) => out.push(p))).toBe(true)
    expect(reader.push(new Uint8Array([0]), (p) => out.push(p))).toBe(false)
    expect(reader.push(frameOf(packetOf(5, 5))!, (p) => out.push(p))).toBe(false)
    expect(out.map((p) => [...p])).toEqual([[42]])
    expect(frameOf(new Uint8Array(0))).toBeUndefined()
    expect(frameOf(new Uint8Array(maxFramedPacket + 1))).toBeUndefined()
  })
})
