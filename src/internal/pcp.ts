/**
 * PCP (RFC 6887): the MAP request and answer for one UDP port over IPv4, and a mapping client
 * over a gateway channel.
 *
 * A request is the 24-byte common header (version 2, opcode MAP, requested lifetime, the
 * client's address as IPv4-mapped IPv6) and the 36-byte MAP data (a 12-byte nonce, protocol 17,
 * internal port, suggested external port and address). The answer repeats the MAP data with the
 * assigned port and address after a header holding the result code, the granted lifetime and the
 * gateway's epoch; options may follow (ignored here), the whole a multiple of 4 bytes and at most
 * 1100. One nonce per client: renewing and deleting (lifetime 0) name the same mapping. A gateway
 * that speaks only NAT-PMP answers with version 0 (`PortMapUnsupportedVersion`).
 */
import { randomBytes } from "node:crypto"
import { Effect, Either } from "effect"
import * as Address from "../services/Address.js"
import {
  PortMapMalformedAnswer,
  type PortMapRefused,
  PortMapUnsupportedVersion
} from "../services/PortMapper.js"
import type { GatewayChannel, RetryPolicy } from "./gatewayChannel.js"
import { type MapProtocol, type MapRequest, refusal } from "./portMapProtocol.js"

const VERSION = 2
const OP_MAP = 1
const RESPONSE_BIT = 0x80
const UDP = 17
const MAP_SIZE = 60
const MAX_SIZE = 1100

const RESULT_TEXT = [
  "success",
  "unsupported version",
  "not authorized",
  "malformed request",
  "unsupported opcode",
  "unsupported option",
  "malformed option",
  "network failure",
  "no resources",
  "unsupported protocol",
  "user exceeded quota",
  "cannot provide external",
  "address mismatch",
  "excessive remote peers"
]

/** An IPv4 address as the 16 bytes of its IPv4-mapped IPv6 form. */
const mapped = (ipv4: string): Uint8Array => {
  const bytes = new Uint8Array(16)
  bytes[10] = 0xff
  bytes[11] = 0xff
  const v4 = Address.ipBytes(ipv4)
  if (v4?.length === 4) bytes.set(v4, 12)
  return bytes
}

export const encodeMapRequest = (
  request: MapRequest & { readonly clientAddress: string; readonly nonce: Uint8Array }
): Uint8Array => {
  const bytes = new Uint8Array(MAP_SIZE)
  const view = new DataView(bytes.buffer)
  view.setUint8(0, VERSION)
  view.setUint8(1, OP_MAP)
  view.setUint32(4, request.lifetimeSeconds)
  bytes.set(mapped(request.clientAddress), 8)
  bytes.set(request.nonce, 24)
  view.setUint8(36, UDP)
  view.setUint16(40, request.internalPort)
  view.setUint16(42, request.suggestedPort)
  bytes.set(mapped("0.0.0.0"), 44)
  return bytes
}

const malformed = (reason: PortMapMalformedAnswer["reason"], detail: string) =>
  Either.left(new PortMapMalformedAnswer({ protocol: "pcp", reason, detail }))

const sameBytes = (a: Uint8Array, b: Uint8Array) => a.length === b.length && a.every((x, i) => x === b[i])

export interface MapAnswer {
  readonly epoch: number
  readonly lifetimeSeconds: number
  readonly externalPort: number
  readonly externalAddress: string
}

/** The answer to a MAP request with `nonce` for `internalPort`, checked. */
export const decodeMapAnswer = (
  bytes: Uint8Array,
  nonce: Uint8Array,
  internalPort: number
): Either.Either<MapAnswer, PortMapMalformedAnswer | PortMapRefused | PortMapUnsupportedVersion> => {
  if (bytes.length < 4) return malformed("length", `${bytes.length} bytes`)
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  const version = view.getUint8(0)
  if (version === 0) return Either.left(new PortMapUnsupportedVersion({ protocol: "pcp", gatewayVersion: 0 }))
  if (version !== VERSION) return malformed("version", `version ${version}`)
  if (bytes.length < 24 || bytes.length > MAX_SIZE || bytes.length % 4 !== 0)
    return malformed("length", `${bytes.length} bytes (a PCP answer is 24 to 1100, a multiple of 4)`)
  if (view.getUint8(1) !== (RESPONSE_BIT | OP_MAP))
    return malformed("opcode", `opcode byte ${view.getUint8(1)} answering MAP`)
  const result = view.getUint8(3)
  if (result !== 0) return refusal("pcp", result, RESULT_TEXT)
  if (bytes.length < MAP_SIZE)
    return malformed("length", `${bytes.length} bytes, a MAP answer is at least 60`)
  if (!sameBytes(bytes.subarray(24, 36), nonce)) return malformed("nonce", "the answer names another mapping")
  if (view.getUint8(36) !== UDP || view.getUint16(40) !== internalPort)
    return malformed(
      "mapping",
      `protocol ${view.getUint8(36)} port ${view.getUint16(40)}, asked UDP ${internalPort}`
    )
  const address = bytes.subarray(44, 60)
  if (!sameBytes(address.subarray(0, 12), mapped("0.0.0.0").subarray(0, 12)))
    return malformed("mapping", "the external address is not IPv4")
  return Either.right({
    epoch: view.getUint32(8),
    lifetimeSeconds: view.getUint32(4),
    externalPort: view.getUint16(42),
    externalAddress: Array.from(address.subarray(12)).join(".")
  })
}

/** PCP MAP over `channel`, with one random nonce for every request of this client. */
export const pcpProtocol = (channel: GatewayChannel, retry: RetryPolicy): MapProtocol => {
  const nonce = new Uint8Array(randomBytes(12))
  const ask = (request: MapRequest, policy: RetryPolicy) =>
    channel
      .request("pcp", encodeMapRequest({ ...request, clientAddress: channel.localAddress, nonce }), policy)
      .pipe(Effect.flatMap((answer) => decodeMapAnswer(answer, nonce, request.internalPort)))
  return {
    protocol: "pcp",
    map: (request) =>
      ask(request, retry).pipe(
        Effect.map((a) => ({
          host: a.externalAddress,
          port: a.externalPort,
          lifetimeSeconds: a.lifetimeSeconds
        }))
      ),
    unmap: (internalPort, unmapRetry) =>
      ask({ internalPort, suggestedPort: 0, lifetimeSeconds: 0 }, unmapRetry).pipe(Effect.asVoid)
  }
}
