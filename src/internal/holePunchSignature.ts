/**
 * Hole-punch requests signed by their source. The source signs, with its node key (Ed25519),
 * canonical bytes naming itself, the target, the addresses it vouches for, a timestamp and a
 * nonce; whoever acts on the request checks the signature against the source's NodeId (the
 * NodeId is the public key), the timestamp against its Clock, and the nonce against a replay
 * cache.
 *
 * Canonical bytes (all integers big-endian):
 *   "quicmesh/hole-punch-request/v1" 0x00   domain separation: these bytes sign nothing else
 *   source NodeId (32) | target NodeId (32) | timestamp, ms since the epoch (8) | nonce (16)
 *   address count (1) | per address: host length (1), host (UTF-8, as sent), port (2)
 */
import type { KeyObject } from "node:crypto"
import * as nodeCrypto from "node:crypto"
import { Either } from "effect"
import type { Address } from "../services/Address.js"
import { HOLE_PUNCH_MAX_ADDRESSES, type SignedHolePunchRequest } from "../services/AgentRpc.js"
import * as NodeId from "../services/NodeId.js"
import { publicKeyObject } from "./ed25519Key.js"

const DOMAIN = new TextEncoder().encode("quicmesh/hole-punch-request/v1\0")
export const NONCE_BYTES = 16
export const SIGNATURE_BYTES = 64
const MAX_HOST_BYTES = 255

/** A request older than this is refused. */
export const MAX_AGE_MS = 30_000
/** A request stamped later than now by more than this (the clocks' skew we allow) is refused. */
export const MAX_FUTURE_SKEW_MS = 5_000

/** What a source signs. */
export interface HolePunchRequestFields {
  readonly source: NodeId.NodeId
  readonly target: NodeId.NodeId
  readonly addresses: ReadonlyArray<Address>
  readonly timestamp: number
  readonly nonce: Uint8Array
}

const utf8 = new TextEncoder()

/** The bytes a source signs for `fields`; undefined when they cannot be signed (a field out of range). */
export const canonicalBytes = (fields: HolePunchRequestFields): Uint8Array | undefined => {
  const { source, target, addresses, timestamp, nonce } = fields
  if (source.length !== NodeId.NODE_ID_BYTES || target.length !== NodeId.NODE_ID_BYTES) return undefined
  if (nonce.length !== NONCE_BYTES || addresses.length > HOLE_PUNCH_MAX_ADDRESSES) return undefined
  if (!Number.isSafeInteger(timestamp) || timestamp < 0) return undefined
  const hosts = addresses.map((a) => utf8.encode(a.host))
  let size = DOMAIN.length + 32 + 32 + 8 + NONCE_BYTES + 1
  for (let i = 0; i < hosts.length; i++) {
    const port = addresses[i]!.port
    if (hosts[i]!.length > MAX_HOST_BYTES || !Number.isInteger(port) || port < 0 || port > 65535)
      return undefined
    size += 1 + hosts[i]!.length + 2
  }
  const out = new Uint8Array(size)
  const view = new DataView(out.buffer)
  let at = 0
  const put = (bytes: Uint8Array) => {
    out.set(bytes, at)
    at += bytes.length
  }
  put(DOMAIN)
  put(source)
  put(target)
  view.setBigUint64(at, BigInt(timestamp))
  at += 8
  put(nonce)
  out[at++] = hosts.length
  for (let i = 0; i < hosts.length; i++) {
    out[at++] = hosts[i]!.length
    put(hosts[i]!)
    view.setUint16(at, addresses[i]!.port)
    at += 2
  }
  return out
}

/** A request whose fields and signature checked out. */
export interface VerifiedRequest {
  readonly source: NodeId.NodeId
  readonly target: NodeId.NodeId
  readonly addresses: ReadonlyArray<Address>
  readonly timestamp: number
}

/** Why a request does not verify (the caller turns it into a typed refusal). */
export interface Rejection {
  readonly reason: "bad-source" | "bad-target" | "bad-signature" | "stale" | "future"
  readonly detail: string
}

// One public key object per NodeId while the NodeId lives (decoded NodeIds are shared objects).
const publicKeys = new WeakMap<NodeId.NodeId, KeyObject>()
const publicKeyOf = (nodeId: NodeId.NodeId): KeyObject => {
  let key = publicKeys.get(nodeId)
  if (key === undefined) {
    key = publicKeyObject(nodeId)
    publicKeys.set(nodeId, key)
  }
  return key
}

const isBytes = (u: unknown, length: number): u is Uint8Array =>
  u instanceof Uint8Array && u.length === length

/**
 * Checks `request` at time `now` (ms): its NodeIds, its freshness (at most `MAX_AGE_MS` old,
 * at most `MAX_FUTURE_SKEW_MS` ahead) and its source's signature over its canonical bytes.
 * Cheap checks first: a stale or malformed request costs no signature verification.
 */
export const verify = (
  request: SignedHolePunchRequest,
  now: number
): Either.Either<VerifiedRequest, Rejection> => {
  const source = NodeId.decode(request.source)
  if (Either.isLeft(source))
    return Either.left({ reason: "bad-source", detail: `bad source: ${source.left.message}` })
  const target = NodeId.decode(request.target)
  if (Either.isLeft(target))
    return Either.left({ reason: "bad-target", detail: `bad target: ${target.left.message}` })
  const age = now - request.timestamp
  if (age > MAX_AGE_MS)
    return Either.left({ reason: "stale", detail: `request signed ${age} ms ago (at most ${MAX_AGE_MS} ms)` })
  if (-age > MAX_FUTURE_SKEW_MS)
    return Either.left({
      reason: "future",
      detail: `request signed ${-age} ms in the future (at most ${MAX_FUTURE_SKEW_MS} ms of clock skew)`
    })
  const bytes =
    isBytes(request.nonce, NONCE_BYTES) && Array.isArray(request.addresses)
      ? canonicalBytes({
          source: source.right,
          target: target.right,
          addresses: request.addresses,
          timestamp: request.timestamp,
          nonce: request.nonce
        })
      : undefined
  if (bytes === undefined)
    return Either.left({ reason: "bad-signature", detail: "malformed request: its fields cannot be signed" })
  if (!isBytes(request.signature, SIGNATURE_BYTES))
    return Either.left({ reason: "bad-signature", detail: `signature must be ${SIGNATURE_BYTES} bytes` })
  let ok = false
  try {
    ok = nodeCrypto.verify(null, bytes, publicKeyOf(source.right), request.signature)
  } catch {
    ok = false
  }
  if (!ok) return Either.left({ reason: "bad-signature", detail: "the signature is not the source's" })
  return Either.right({
    source: source.right,
    target: target.right,
    addresses: request.addresses,
    timestamp: request.timestamp
  })
}

/** The signed request for `fields`, given the source's signing function's answer. */
export const assemble = (fields: HolePunchRequestFields, signature: Uint8Array): SignedHolePunchRequest => ({
  source: NodeId.encode(fields.source),
  target: NodeId.encode(fields.target),
  addresses: fields.addresses.map((a) => ({ host: a.host, port: a.port })),
  timestamp: fields.timestamp,
  nonce: fields.nonce,
  signature
})

/** What a replay cache keys a verified request by: its source and nonce. */
export const replayKey = (request: SignedHolePunchRequest): string =>
  `${request.source}/${Buffer.from(request.nonce.buffer, request.nonce.byteOffset, request.nonce.byteLength).toString("base64")}`
