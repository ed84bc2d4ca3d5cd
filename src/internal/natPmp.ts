/**
 * NAT-PMP (RFC 6886): its messages and a mapping client over a gateway channel.
 *
 * Requests: "external address" (version 0, opcode 0; 2 bytes) and "map UDP" (opcode 1; 12
 * bytes: reserved, internal port, suggested external port, requested lifetime in seconds).
 * Answers: version 0, opcode 128 + the request's, a result code and the gateway's epoch (8
 * bytes, all an error answer holds), then the external IPv4 address (12 bytes in all) or the
 * internal port, the mapped external port and the granted lifetime (16 bytes). A mapping is
 * deleted by asking for it with lifetime 0 and external port 0.
 */
import { Effect, Either } from "effect"
import { PortMapMalformedAnswer, type PortMapRefused } from "../services/PortMapper.js"
import type { GatewayChannel, RetryPolicy } from "./gatewayChannel.js"
import { type Granted, type MapProtocol, refusal } from "./portMapProtocol.js"

const VERSION = 0
const OP_EXTERNAL_ADDRESS = 0
const OP_MAP_UDP = 1
const RESPONSE_BIT = 128

const RESULT_TEXT = [
  "success",
  "unsupported version",
  "not authorized or refused",
  "network failure",
  "out of resources",
  "unsupported opcode"
]

export const encodeExternalAddressRequest = (): Uint8Array => Uint8Array.of(VERSION, OP_EXTERNAL_ADDRESS)

export const encodeMapRequest = (request: {
  readonly internalPort: number
  readonly suggestedPort: number
  readonly lifetimeSeconds: number
}): Uint8Array => {
  const bytes = new Uint8Array(12)
  const view = new DataView(bytes.buffer)
  view.setUint8(0, VERSION)
  view.setUint8(1, OP_MAP_UDP)
  view.setUint16(4, request.internalPort)
  view.setUint16(6, request.suggestedPort)
  view.setUint32(8, request.lifetimeSeconds)
  return bytes
}

const malformed = (reason: PortMapMalformedAnswer["reason"], detail: string) =>
  Either.left(new PortMapMalformedAnswer({ protocol: "nat-pmp", reason, detail }))

/** The common header of an answer to `opcode`, checked; the view when it is a success of `size` bytes. */
const checkHeader = (
  bytes: Uint8Array,
  opcode: number,
  size: number
): Either.Either<DataView, PortMapMalformedAnswer | PortMapRefused> => {
  if (bytes.length < 8) return malformed("length", `${bytes.length} bytes, fewer than a header's 8`)
  if (bytes.length > size) return malformed("length", `${bytes.length} bytes, more than the ${size} expected`)
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  if (view.getUint8(0) !== VERSION) return malformed("version", `version ${view.getUint8(0)}`)
  if (view.getUint8(1) !== RESPONSE_BIT + opcode)
    return malformed("opcode", `opcode ${view.getUint8(1)} answering ${opcode}`)
  const result = view.getUint16(2)
  if (result !== 0) return refusal("nat-pmp", result, RESULT_TEXT)
  if (bytes.length !== size) return malformed("length", `${bytes.length} bytes, a success is ${size}`)
  return Either.right(view)
}

export const decodeExternalAddressAnswer = (bytes: Uint8Array) =>
  Either.map(checkHeader(bytes, OP_EXTERNAL_ADDRESS, 12), (view) => ({
    epoch: view.getUint32(4),
    address: [8, 9, 10, 11].map((i) => view.getUint8(i)).join(".")
  }))

export const decodeMapAnswer = (bytes: Uint8Array, internalPort: number) =>
  Either.flatMap(checkHeader(bytes, OP_MAP_UDP, 16), (view) =>
    view.getUint16(8) !== internalPort
      ? malformed("mapping", `internal port ${view.getUint16(8)}, asked for ${internalPort}`)
      : Either.right({
          epoch: view.getUint32(4),
          externalPort: view.getUint16(10),
          lifetimeSeconds: view.getUint32(12)
        })
  )

/** NAT-PMP over `channel`: the external address first, then the mapping. */
export const natPmpProtocol = (channel: GatewayChannel, retry: RetryPolicy): MapProtocol => {
  const ask = <A, E>(message: Uint8Array, decode: (answer: Uint8Array) => Either.Either<A, E>) =>
    channel.request("nat-pmp", message, retry).pipe(Effect.flatMap((answer) => decode(answer)))
  return {
    protocol: "nat-pmp",
    map: ({ internalPort, suggestedPort, lifetimeSeconds }) =>
      Effect.gen(function* () {
        const external = yield* ask(encodeExternalAddressRequest(), decodeExternalAddressAnswer)
        const mapped = yield* ask(encodeMapRequest({ internalPort, suggestedPort, lifetimeSeconds }), (a) =>
          decodeMapAnswer(a, internalPort)
        )
        return {
          host: external.address,
          port: mapped.externalPort,
          lifetimeSeconds: mapped.lifetimeSeconds
        } satisfies Granted
      }),
    unmap: (internalPort, unmapRetry) =>
      channel
        .request(
          "nat-pmp",
          encodeMapRequest({ internalPort, suggestedPort: 0, lifetimeSeconds: 0 }),
          unmapRetry
        )
        .pipe(
          Effect.flatMap((answer) => decodeMapAnswer(answer, internalPort)),
          Effect.asVoid
        )
  }
}
