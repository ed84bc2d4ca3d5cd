/**
 * AgentRpc: the methods one node calls on another over QUIC, as an `@effect/rpc` group.
 *
 * - Every handler runs with `Caller` in its context: the calling peer's NodeId and the
 *   address the connection observed for it. Who is calling is never read from a message.
 * - Errors that cross the wire are `Schema.TaggedError`s. The transport-level ones
 *   (`RpcWireError`: timeout, oversized message, invalid request, unknown method,
 *   malformed bytes, broken stream) belong to every method through `WireMiddleware`'s
 *   failure schema, so a client decodes them as typed failures of the call.
 * - `WireMiddleware` is the same for every group served on the wire (the agent's and the
 *   application's own): a user group gets the wire errors and `Caller` by
 *   `RpcGroup.make(...).middleware(WireMiddleware)`.
 */
import { Rpc, RpcGroup, RpcMiddleware } from "@effect/rpc"
import { Schema } from "effect"
import { WireAddress } from "./Address.js"
import { Caller, WireContact } from "./Contact.js"
import { NodeIdEncodedSchema } from "./NodeId.js"
import { DialBackOrder, DialBackRequest, IdentifyMessage } from "./Reachability.js"

/** At most this many contacts answer `nodesClosestLocalNodesGet` (Kademlia k). */
export const NODES_CLOSEST_LIMIT = 20

// ---------------------------------------------------------------------------------------
// Errors crossing the wire

/** The handler did not finish within `rpcCallTimeoutTime` (it was interrupted), or the caller gave up. */
export class RpcTimeoutError extends Schema.TaggedError<RpcTimeoutError>()("RpcTimeoutError", {
  method: Schema.String,
  timeoutMillis: Schema.Number
}) {
  override get message() {
    return `${this.method}: no answer within ${this.timeoutMillis} ms`
  }
}

/** A message was larger than `rpcParserBufferSize`; the stream carrying it was closed. */
export class RpcMessageTooLargeError extends Schema.TaggedError<RpcMessageTooLargeError>()(
  "RpcMessageTooLargeError",
  { size: Schema.Number, limit: Schema.Number }
) {
  override get message() {
    return `message of ${this.size} bytes exceeds the limit of ${this.limit} bytes`
  }
}

/** The request's payload does not match the method's schema. */
export class RpcInvalidRequestError extends Schema.TaggedError<RpcInvalidRequestError>()(
  "RpcInvalidRequestError",
  { method: Schema.String, detail: Schema.String }
) {
  override get message() {
    return `${this.method}: invalid request: ${this.detail}`
  }
}

/** The request names a method the peer does not serve. */
export class RpcUnknownMethodError extends Schema.TaggedError<RpcUnknownMethodError>()(
  "RpcUnknownMethodError",
  {
    method: Schema.String
  }
) {
  override get message() {
    return `unknown method "${this.method}"`
  }
}

/** Bytes on the stream were not a message; the stream was closed. */
export class RpcMalformedMessageError extends Schema.TaggedError<RpcMalformedMessageError>()(
  "RpcMalformedMessageError",
  { detail: Schema.String }
) {
  override get message() {
    return `malformed message: ${this.detail}`
  }
}

/** The stream or connection carrying the call failed before an answer came. */
export class RpcStreamError extends Schema.TaggedError<RpcStreamError>()("RpcStreamError", {
  detail: Schema.String
}) {
  override get message() {
    return `rpc stream failed: ${this.detail}`
  }
}

/** A handler refused the request (e.g. a dial-back request the node will not serve). */
export class RpcHandlerError extends Schema.TaggedError<RpcHandlerError>()("RpcHandlerError", {
  method: Schema.String,
  detail: Schema.String
}) {
  override get message() {
    return `${this.method}: ${this.detail}`
  }
}

/** Failures any call on the wire may end with, whatever the group and the method. */
export const RpcWireError = Schema.Union(
  RpcTimeoutError,
  RpcMessageTooLargeError,
  RpcInvalidRequestError,
  RpcUnknownMethodError,
  RpcMalformedMessageError,
  RpcStreamError
)
export type RpcWireError = typeof RpcWireError.Type

/**
 * Server middleware of every method served on the wire: provides `Caller` and bounds the
 * handler by `rpcCallTimeoutTime`; its failure schema adds `RpcWireError` to every method.
 * Implemented by the group server (`src/internal/groupServer.ts`).
 */
export class WireMiddleware extends RpcMiddleware.Tag<WireMiddleware>()("quicmesh/Rpc/WireMiddleware", {
  wrap: true,
  provides: Caller,
  failure: RpcWireError
}) {}

// ---------------------------------------------------------------------------------------
// Payloads and answers

export const NodesClosestLocalNodesGet = Rpc.make("nodesClosestLocalNodesGet", {
  payload: { nodeIdEncoded: NodeIdEncodedSchema },
  success: WireContact,
  stream: true
})

/** At most this many addresses in a hole-punch request (the source's confirmed ones and one observed). */
export const HOLE_PUNCH_MAX_ADDRESSES = 8

const bytesOfLength = (n: number) =>
  Schema.Uint8ArrayFromSelf.pipe(
    Schema.filter((b) => b.length === n || `expected ${n} bytes, got ${b.length}`)
  )

/** Unknown fields are an invalid request (not silently dropped): nothing unsigned rides along. */
const strict = { parseOptions: { onExcessProperty: "error" } } as const

/**
 * A hole-punch request as its source signed it (`internal/holePunchSignature.ts` holds the
 * canonical bytes): who asks, whom, the addresses the source vouches for, when (ms since the
 * epoch) and a random nonce, with the source's Ed25519 signature over all of it.
 */
export const SignedHolePunchRequest = Schema.Struct({
  source: NodeIdEncodedSchema,
  target: NodeIdEncodedSchema,
  addresses: Schema.Array(
    Schema.Struct({
      host: Schema.String.pipe(Schema.maxLength(255)),
      port: WireAddress.fields.port
    }).annotations(strict)
  ).pipe(Schema.maxItems(HOLE_PUNCH_MAX_ADDRESSES)),
  timestamp: Schema.Int.pipe(Schema.nonNegative()),
  nonce: bytesOfLength(16),
  signature: bytesOfLength(64)
}).annotations(strict)
export type SignedHolePunchRequest = typeof SignedHolePunchRequest.Type

/** Why a node would not act on a hole-punch request (what the caller gets back, typed). */
export const HolePunchRefusalReason = Schema.Literal(
  "bad-source",
  "bad-target",
  "rate-limited",
  "not-the-source",
  "bad-signature",
  "stale",
  "future",
  "replayed",
  "address-unsigned"
)

/**
 * A hole-punch request refused: by the relay or by the target, never followed by a punch.
 * With reason "address-unsigned", `observed` is the source address the refusing node saw
 * (the source may sign it and ask again).
 */
export class HolePunchRefused extends Schema.TaggedError<HolePunchRefused>()("HolePunchRefused", {
  reason: HolePunchRefusalReason,
  detail: Schema.String,
  observed: Schema.optional(WireAddress)
}) {
  override get message() {
    return this.detail
  }
}

/**
 * A signed hole-punch request; `observed` is set by a relay passing it on: the address it
 * observed for the source. An unsigned request of the old form is an invalid request.
 */
export const NodesHolePunchSignal = Rpc.make("nodesHolePunchSignal", {
  payload: Schema.Struct({
    request: SignedHolePunchRequest,
    observed: Schema.optional(WireAddress)
  }).annotations(strict),
  error: HolePunchRefused
})

export const NodesPing = Rpc.make("nodesPing", {
  payload: { nonce: Schema.String },
  success: Schema.Struct({ nonce: Schema.String })
})

/**
 * The identify exchange: the dialler sends what it observes for the peer (the address it
 * dialled) and its confirmed addresses; the answer is the same from the other side.
 */
export const NodesIdentify = Rpc.make("nodesIdentify", { payload: IdentifyMessage, success: IdentifyMessage })

/** Asks the peer to have a node we never contacted dial us back at our observed IP (`Reachability`). */
export const NodesDialBackRequest = Rpc.make("nodesDialBackRequest", {
  payload: DialBackRequest,
  error: RpcHandlerError
})

/** The relay of a dial-back request asks its helper to dial the requester and prove the nonce. */
export const NodesDialBack = Rpc.make("nodesDialBack", { payload: DialBackOrder, error: RpcHandlerError })

/** The helper, on its new connection to the requester: the nonce of the request it answers. */
export const NodesDialBackProof = Rpc.make("nodesDialBackProof", {
  payload: { nonce: Schema.String.pipe(Schema.maxLength(64)) }
})

export class AgentRpcs extends RpcGroup.make(
  NodesClosestLocalNodesGet,
  NodesHolePunchSignal,
  NodesPing,
  NodesIdentify,
  NodesDialBackRequest,
  NodesDialBack,
  NodesDialBackProof
).middleware(WireMiddleware) {}

export type AgentRpc = RpcGroup.Rpcs<typeof AgentRpcs>
