/**
 * quicRefusal: a server's explicit refusal of an inbound QUIC connection, made without any
 * connection state. The answer to a client's Initial packet is one Initial packet of ours
 * holding a single CONNECTION_CLOSE frame (RFC 9000 §19.19, transport error
 * CONNECTION_REFUSED 0x2, with a short reason phrase), protected with the Initial keys both
 * sides derive from the client's Destination Connection ID (RFC 9001 §5.2). The client reads
 * it as the peer closing the connection with that code and reason, and stops at once instead
 * of retransmitting into a server that is not answering. An ACK of the client's packet comes
 * first: it gives the client a round-trip sample, so that its draining period (three probe
 * timeouts, RFC 9000 §10.2) lasts a few round trips instead of the ~3 s an unmeasured path
 * costs, and the refusal reaches the application that soon.
 *
 * Its cost is a few HMACs, one AES-GCM seal of ~10 bytes and one AES block: no TLS, no quiche
 * connection. The packet is smaller than the client's Initial (at least 1200 bytes), so
 * answering it amplifies nothing.
 */
import { createCipheriv, createHmac } from "node:crypto"

/** QUIC version 1 (RFC 9000); the only version this module can answer. */
export const quicVersion1 = 1

/** The transport error code CONNECTION_REFUSED (RFC 9000 §20.1). */
export const connectionRefusedCode = 0x2

/** RFC 9001 §5.2: the salt of QUIC version 1's Initial secrets. */
const initialSalt = Buffer.from("38762cf7f55934b34d179ae6a4c80cadccbb7f0a", "hex")

/** HKDF-Expand-Label (RFC 8446 §7.1) with an empty context, for lengths up to 32 bytes. */
const expandLabel = (secret: Buffer, label: string, length: number): Buffer => {
  const full = Buffer.from(`tls13 ${label}`, "ascii")
  const info = Buffer.concat([Buffer.from([0, length, full.length]), full, Buffer.from([0, 1])])
  return createHmac("sha256", secret).update(info).digest().subarray(0, length)
}

/** One side's Initial key, IV and header-protection key for a client's DCID. */
const initialKeys = (clientDcid: Uint8Array, side: "server in" | "client in") => {
  const initialSecret = createHmac("sha256", initialSalt).update(clientDcid).digest()
  const secret = expandLabel(initialSecret, side, 32)
  return {
    key: expandLabel(secret, "quic key", 16),
    iv: expandLabel(secret, "quic iv", 12),
    hp: expandLabel(secret, "quic hp", 16)
  }
}

/** A variable-length integer (RFC 9000 §16) for values below 2^14, as 1 or 2 bytes. */
const varint = (n: number): Array<number> => (n < 64 ? [n] : [0x40 | (n >> 8), n & 0xff])

/** The header-protection mask of a packet whose packet number starts at `pnOffset`. */
const protectionMask = (hp: Buffer, packet: Uint8Array, pnOffset: number): Buffer =>
  createCipheriv("aes-128-ecb", hp, null).update(packet.subarray(pnOffset + 4, pnOffset + 20))

/** A variable-length integer at `offset` of `data`: its value and the offset after it. */
const readVarint = (data: Uint8Array, offset: number): readonly [number, number] => {
  const first = data[offset]!
  const length = 1 << (first >> 6)
  let value = first & 0x3f
  for (let i = 1; i < length; i++) value = value * 256 + data[offset + i]!
  return [value, offset + length]
}

/**
 * The packet number of the client's Initial packet at the start of `datagram` (removing its
 * header protection with the client's Initial keys), or undefined if the datagram is too short.
 * Its packet numbers are small (a handful of Initials), so the truncated number is the full one.
 */
export const initialPacketNumber = (datagram: Uint8Array, clientDcid: Uint8Array): number | undefined => {
  let offset = 5 // first byte, version
  offset += 1 + datagram[offset]! // DCID
  offset += 1 + datagram[offset]! // SCID
  const [tokenLength, afterToken] = readVarint(datagram, offset)
  const [, pnOffset] = readVarint(datagram, afterToken + tokenLength)
  if (pnOffset + 20 > datagram.length) return undefined
  const mask = protectionMask(initialKeys(clientDcid, "client in").hp, datagram, pnOffset)
  const pnLength = ((datagram[0]! ^ (mask[0]! & 0x0f)) & 0x03) + 1
  let pn = 0
  for (let i = 0; i < pnLength; i++) pn = pn * 256 + (datagram[pnOffset + i]! ^ mask[1 + i]!)
  return pn
}

/**
 * The datagram that refuses the connection a client's Initial packet started: `clientScid`
 * and `clientDcid` are that packet's Source and Destination Connection IDs, `acked` its packet
 * number (no ACK when undefined); `reason` (at most 255 bytes of UTF-8) is the phrase the
 * client reports.
 */
export const refusalPacket = (
  clientScid: Uint8Array,
  clientDcid: Uint8Array,
  acked: number | undefined,
  reason: string
): Buffer => {
  const phrase = Buffer.from(reason, "utf8").subarray(0, 255)
  // ACK (type 0x02: largest acknowledged, no delay, no further ranges, first range 0), then
  // CONNECTION_CLOSE (transport; type 0x1c: error code, the frame type that caused it (none), reason).
  const ack = acked === undefined || acked >= 1 << 14 ? [] : [0x02, ...varint(acked), 0, 0, 0]
  const close = [0x1c, ...varint(connectionRefusedCode), 0, ...varint(phrase.length), ...phrase]
  const payload = Buffer.from([...ack, ...close])
  const pnLength = 1
  const header = Buffer.from([
    0xc0 | (pnLength - 1), // long header, fixed bit, type Initial, packet number length
    0,
    0,
    0,
    quicVersion1,
    clientScid.length,
    ...clientScid, // our packet's destination: the client's source
    clientDcid.length,
    ...clientDcid, // our source: the id the client addressed
    0, // no token
    ...varint(pnLength + payload.length + 16),
    0 // packet number 0
  ])
  const { key, iv, hp } = initialKeys(clientDcid, "server in")
  // Packet number 0: the nonce is the IV itself.
  const seal = createCipheriv("aes-128-gcm", key, iv)
  seal.setAAD(header)
  const sealed = Buffer.concat([seal.update(payload), seal.final(), seal.getAuthTag()])
  const packet = Buffer.concat([header, sealed])
  // Header protection (RFC 9001 §5.4): a mask from 16 bytes sampled 4 bytes after the packet number's start.
  const pnOffset = header.length - pnLength
  const mask = protectionMask(hp, packet, pnOffset)
  packet[0] = packet[0]! ^ (mask[0]! & 0x0f)
  packet[pnOffset] = packet[pnOffset]! ^ mask[1]!
  return packet
}
