/**
 * The relay's messages, on the streams of its two protocols (after the protocol's header and
 * status, `protocolWire.ts`).
 *
 * Each message is `[length: u16 BE][body]`, the body 1..`MAX_BODY_BYTES` bytes, its first byte
 * the type:
 * - RESERVE, node → relay on HOP: `[0x01]`.
 * - CONNECT, node → relay on HOP: `[0x02][target NodeId: 32 bytes]`.
 * - CONNECT-FROM, relay → target on STOP: `[0x03][source NodeId: 32 bytes][observed: UTF-8]`,
 *   `observed` (optional) the source's address as the relay's connection to it sees it, "HOST:PORT".
 * - STATUS, the answer on either: `[0x04][code][until: u64 BE, ms since 1970, 0 for none]
 *   [detail: UTF-8, at most 200 bytes]`. Code 0 is OK; the others name a `RelayRefusedReason`.
 *   An OK to a CONNECT carries, as its detail, the target's address as the relay sees it ("HOST:PORT").
 * - PATH, relay → source on HOP right after its OK to a CONNECT, and relay → target on STOP
 *   right after CONNECT-FROM: `[0x05][circuit id: 8 bytes]` when the relay forwards the
 *   circuit's datagrams, `[0x05]` alone when it splices the streams.
 *
 * A message is read with `readMessage`: bounded by its size and a deadline, the bytes after it
 * put back for whoever reads the stream next. Anything else (another type, a wrong size, an
 * unknown code, bad UTF-8, too long, too late) is a `RelayRefused` "malformed".
 */
import type { Socket } from "@effect/platform"
import { Duration, Effect, Either, Predicate } from "effect"
import * as Address from "../../services/Address.js"
import * as NodeId from "../../services/NodeId.js"
import type { ProtocolId } from "../../services/Protocols.js"
import { CIRCUIT_ID_BYTES } from "../../services/QuicTransport.js"
import { RelayRefused, type RelayRefusedReason, refusedReasons } from "../../services/Relay.js"
import { isChunkReader, type Parsed, readPrefix } from "../protocolWire.js"
import type { ChunkReader } from "../quicStreamSocket.js"

/** node → relay: reservations and circuits. Reserved ids, so not made by `ProtocolId.make`. */
export const HOP_PROTOCOL = "quicmesh/relay/hop/1" as ProtocolId
/** relay → target: a circuit arriving. */
export const STOP_PROTOCOL = "quicmesh/relay/stop/1" as ProtocolId

export const MAX_BODY_BYTES = 256
export const MAX_DETAIL_BYTES = 200

const RESERVE = 0x01
const CONNECT = 0x02
const CONNECT_FROM = 0x03
const STATUS = 0x04
const PATH = 0x05
const STATUS_HEAD = 11

/** Status codes: 0 is OK, then each reason at its place in `refusedReasons` (1 and up). */
const codes: ReadonlyArray<RelayRefusedReason | "ok"> = ["ok", ...refusedReasons]

export type HopRequest =
  | { readonly _tag: "Reserve" }
  | { readonly _tag: "Connect"; readonly target: NodeId.NodeId }

export type Status =
  | {
      readonly _tag: "Ok"
      readonly until: number
      /** An OK to a CONNECT: the target's address as the relay observes it. */
      readonly observed?: Address.Address | undefined
    }
  | { readonly _tag: "Refused"; readonly reason: RelayRefusedReason; readonly detail: string }

const encoder = new TextEncoder()
const decoder = new TextDecoder("utf-8", { fatal: true })

const frame = (body: Uint8Array): Uint8Array => {
  const out = new Uint8Array(2 + body.length)
  out[0] = body.length >> 8
  out[1] = body.length & 0xff
  out.set(body, 2)
  return out
}

const withNodeId = (type: number, nodeId: NodeId.NodeId): Uint8Array => {
  const body = new Uint8Array(1 + NodeId.NODE_ID_BYTES)
  body[0] = type
  body.set(nodeId, 1)
  return frame(body)
}

export const reserve: Uint8Array = frame(new Uint8Array([RESERVE]))
export const encodeConnect = (target: NodeId.NodeId): Uint8Array => withNodeId(CONNECT, target)
export const encodeConnectFrom = (source: NodeId.NodeId, observed?: Address.Address): Uint8Array => {
  if (observed === undefined) return withNodeId(CONNECT_FROM, source)
  const text = encoder.encode(Address.format(observed))
  const body = new Uint8Array(1 + NodeId.NODE_ID_BYTES + text.length)
  body[0] = CONNECT_FROM
  body.set(source, 1)
  body.set(text, 1 + NodeId.NODE_ID_BYTES)
  return frame(body)
}

/** PATH: the circuit's id when the relay forwards its datagrams, none when it splices. */
export const encodePath = (id: Uint8Array | undefined): Uint8Array => {
  const body = new Uint8Array(id === undefined ? 1 : 1 + CIRCUIT_ID_BYTES)
  body[0] = PATH
  if (id !== undefined) body.set(id, 1)
  return frame(body)
}

/** How the relay carries a circuit: `id` set when it forwards datagrams. */
export interface Path {
  readonly id: Uint8Array | undefined
}

/** The source a relay brings on STOP, and its address as the relay observes it (when the relay says). */
export interface ConnectFrom {
  readonly source: NodeId.NodeId
  readonly observed: Address.Address | undefined
}

/** "HOST:PORT" bytes as an address; undefined when absent; a string when it is not one. */
const observedOf = (bytes: Uint8Array): Address.Address | undefined | string => {
  if (bytes.length === 0) return undefined
  let text: string
  try {
    text = decoder.decode(bytes)
  } catch {
    return "an observed address that is not UTF-8"
  }
  const parsed = Address.parse(text)
  return Either.isLeft(parsed)
    ? `an observed address that is not HOST:PORT (${text.slice(0, 64)})`
    : parsed.right
}

/** `text` as UTF-8, its first `MAX_DETAIL_BYTES` at most (whole characters only). */
const boundedDetail = (text: string): Uint8Array => {
  const bytes = new Uint8Array(MAX_DETAIL_BYTES)
  return bytes.subarray(0, encoder.encodeInto(text, bytes).written)
}

export const encodeStatus = (status: Status): Uint8Array => {
  const ok = Predicate.isTagged(status, "Ok")
  const detail = ok
    ? status.observed === undefined
      ? new Uint8Array(0)
      : boundedDetail(Address.format(status.observed))
    : boundedDetail(status.detail)
  const body = new Uint8Array(STATUS_HEAD + detail.length)
  body[0] = STATUS
  body[1] = ok ? 0 : codes.indexOf(status.reason)
  const until = ok ? status.until : 0
  const view = new DataView(body.buffer)
  view.setUint32(2, Math.floor(until / 2 ** 32))
  view.setUint32(6, until >>> 0)
  body.set(detail, STATUS_HEAD)
  return frame(body)
}

/** `[length][body]` once complete, the body decoded by `decode` (a string is why it is not valid). */
const parseFrame =
  <A>(decode: (body: Uint8Array) => A | string) =>
  (bytes: Uint8Array): Parsed<A> => {
    if (bytes.length < 2) return { _tag: "More" }
    const length = (bytes[0]! << 8) | bytes[1]!
    if (length === 0) return { _tag: "Invalid", detail: "an empty message" }
    if (length > MAX_BODY_BYTES)
      return { _tag: "Invalid", detail: `a message of ${length} bytes (at most ${MAX_BODY_BYTES})` }
    if (bytes.length < 2 + length) return { _tag: "More" }
    const value = decode(bytes.subarray(2, 2 + length))
    if (typeof value === "string") return { _tag: "Invalid", detail: value }
    return { _tag: "Done", value, rest: bytes.length > 2 + length ? bytes.subarray(2 + length) : undefined }
  }

const typeName = (type: number) =>
  [undefined, "RESERVE", "CONNECT", "CONNECT-FROM", "STATUS", "PATH"][type] ?? `type 0x${type.toString(16)}`

const unexpected = (body: Uint8Array, wanted: string) => `${typeName(body[0]!)} where ${wanted} was expected`

const nodeIdOf = (body: Uint8Array, type: number): NodeId.NodeId | string =>
  body.length === 1 + NodeId.NODE_ID_BYTES
    ? NodeId.canonical(body.subarray(1))
    : `${typeName(type)} of ${body.length} bytes (${1 + NodeId.NODE_ID_BYTES} expected)`

const reserveRequest: HopRequest = { _tag: "Reserve" }

/** What a node asks a relay on HOP. */
export const parseHopRequest = parseFrame((body): HopRequest | string => {
  switch (body[0]) {
    case RESERVE:
      return body.length === 1 ? reserveRequest : `RESERVE of ${body.length} bytes (1 expected)`
    case CONNECT: {
      const target = nodeIdOf(body, CONNECT)
      return typeof target === "string" ? target : { _tag: "Connect", target }
    }
    default:
      return unexpected(body, "RESERVE or CONNECT")
  }
})

/** The source a relay names on STOP, with its observed address. */
export const parseConnectFrom = parseFrame((body): ConnectFrom | string => {
  if (body[0] !== CONNECT_FROM) return unexpected(body, "CONNECT-FROM")
  if (body.length < 1 + NodeId.NODE_ID_BYTES)
    return `CONNECT-FROM of ${body.length} bytes (at least ${1 + NodeId.NODE_ID_BYTES} expected)`
  const observed = observedOf(body.subarray(1 + NodeId.NODE_ID_BYTES))
  if (typeof observed === "string") return observed
  return { source: NodeId.canonical(body.subarray(1, 1 + NodeId.NODE_ID_BYTES)), observed }
})

/** How the relay carries the circuit. */
export const parsePath = parseFrame((body): Path | string => {
  if (body[0] !== PATH) return unexpected(body, "PATH")
  if (body.length === 1) return { id: undefined }
  if (body.length === 1 + CIRCUIT_ID_BYTES) return { id: body.slice(1) }
  return `PATH of ${body.length} bytes (1 or ${1 + CIRCUIT_ID_BYTES} expected)`
})

/** An answer on either protocol. */
export const parseStatus = parseFrame((body): Status | string => {
  if (body[0] !== STATUS) return unexpected(body, "STATUS")
  if (body.length < STATUS_HEAD) return `STATUS of ${body.length} bytes (at least ${STATUS_HEAD} expected)`
  if (body.length > STATUS_HEAD + MAX_DETAIL_BYTES) return `STATUS detail over ${MAX_DETAIL_BYTES} bytes`
  const code = codes[body[1]!]
  if (code === undefined) return `unknown status code ${body[1]}`
  if (code === "ok") {
    const view = new DataView(body.buffer, body.byteOffset, body.byteLength)
    const observed = observedOf(body.subarray(STATUS_HEAD))
    if (typeof observed === "string") return observed
    return { _tag: "Ok", until: view.getUint32(2) * 2 ** 32 + view.getUint32(6), observed }
  }
  try {
    return { _tag: "Refused", reason: code, detail: decoder.decode(body.subarray(STATUS_HEAD)) }
  } catch {
    return "STATUS detail is not UTF-8"
  }
})

const isDone = <A>(parsed: Parsed<A>): parsed is Extract<Parsed<A>, { readonly _tag: "Done" }> =>
  Predicate.isTagged(parsed, "Done")

const malformed = (detail: string) => new RelayRefused({ reason: "malformed", detail })

/**
 * One message from `socket`, parsed by `parse`, within `timeout` from now: a stream that ends
 * first, bytes that do not parse, or a deadline passed are `RelayRefused` "malformed"; a failed
 * stream is its `SocketError`.
 */
export const readMessage = <A>(
  socket: ChunkReader,
  parse: (bytes: Uint8Array) => Parsed<A>,
  timeout: Duration.DurationInput
): Effect.Effect<A, RelayRefused | Socket.SocketError> =>
  readPrefix(socket, parse, { maxBytes: 2 + MAX_BODY_BYTES, timeout }).pipe(
    Effect.timeoutFail({
      duration: timeout,
      onTimeout: () => malformed(`no complete message within ${Duration.format(timeout)}`)
    }),
    Effect.flatMap((parsed): Effect.Effect<A, RelayRefused> => {
      if (isDone(parsed)) return Effect.succeed(parsed.value)
      return Effect.fail(
        malformed(Predicate.isTagged(parsed, "Invalid") ? parsed.detail : "an incomplete message")
      )
    })
  )

/** `socket` read chunk by chunk, as every transport's streams can be. */
export const chunkReader = (socket: Socket.Socket): Effect.Effect<Socket.Socket & ChunkReader> =>
  isChunkReader(socket)
    ? Effect.succeed(socket)
    : Effect.dieMessage("relay streams must be readable chunk by chunk (readChunk)")
