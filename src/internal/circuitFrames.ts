/**
 * circuitFrames: how a relayed QUIC connection's packets travel on a circuit's byte stream.
 * Each packet is one frame: its length as 2 bytes big-endian, then the packet. A frame of
 * length 0 is malformed (no QUIC packet is empty); a packet over 65535 bytes has no frame
 * (UDP carries none that large over IPv4, and QUIC never sends one).
 */

/** The longest packet a frame carries. */
export const maxFramedPacket = 0xffff

/** The frame carrying `packet`, or undefined for an empty or oversized one. */
export const frameOf = (packet: Uint8Array): Uint8Array | undefined => {
  const length = packet.byteLength
  if (length === 0 || length > maxFramedPacket) return undefined
  const frame = new Uint8Array(2 + length)
  frame[0] = length >>> 8
  frame[1] = length & 0xff
  frame.set(packet, 2)
  return frame
}

/** Frames joined into one write. */
export const joinFrames = (frames: ReadonlyArray<Uint8Array>): Uint8Array => {
  if (frames.length === 1) return frames[0]!
  let total = 0
  for (const frame of frames) total += frame.byteLength
  const out = new Uint8Array(total)
  let offset = 0
  for (const frame of frames) {
    out.set(frame, offset)
    offset += frame.byteLength
  }
  return out
}

/**
 * Cuts a byte stream into packets, chunk by chunk. A packet that lies whole in a chunk is a
 * view of it (no copy); a packet split across chunks is copied once into a buffer of its
 * length, so at most one packet (65535 bytes) is held, however the stream is cut.
 */
export class FrameReader {
  /** The packet being assembled, its length known from its frame's header. */
  private packet: Uint8Array | undefined
  private filled = 0
  /** A header's first byte, when its second has not arrived yet; -1 otherwise. */
  private headerByte = -1
  /** Set by a malformed frame: nothing after it is read. */
  private malformed = false

  /** Whether the stream stopped inside a frame, were it to end now. */
  get midFrame(): boolean {
    return this.packet !== undefined || this.headerByte >= 0
  }

  /**
   * Hands each complete packet in `chunk` to `onPacket`, in order; false once the stream is
   * malformed (an empty frame), and for every chunk after that.
   */
  push(chunk: Uint8Array, onPacket: (packet: Uint8Array) => void): boolean {
    if (this.malformed) return false
    const size = chunk.byteLength
    let offset = 0
    if (this.headerByte >= 0 && size > 0) {
      if (!this.begin((this.headerByte << 8) | chunk[0]!)) return false
      this.headerByte = -1
      offset = 1
    }
    const packet = this.packet
    if (packet !== undefined) {
      const take = Math.min(packet.byteLength - this.filled, size - offset)
      packet.set(chunk.subarray(offset, offset + take), this.filled)
      this.filled += take
      offset += take
      if (this.filled < packet.byteLength) return true
      this.packet = undefined
      onPacket(packet)
    }
    while (offset < size) {
      if (size - offset === 1) {
        this.headerByte = chunk[offset]!
        return true
      }
      const length = (chunk[offset]! << 8) | chunk[offset + 1]!
      offset += 2
      if (offset + length <= size && length > 0) {
        onPacket(chunk.subarray(offset, offset + length))
        offset += length
        continue
      }
      if (!this.begin(length)) return false
      this.packet!.set(chunk.subarray(offset))
      this.filled = size - offset
      return true
    }
    return true
  }

  /** Starts assembling a packet of `length` bytes; false for an empty frame. */
  private begin(length: number): boolean {
    if (length === 0) {
      this.malformed = true
      return false
    }
    this.packet = new Uint8Array(length)
    this.filled = 0
    return true
  }
}
