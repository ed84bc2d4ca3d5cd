/**
 * The messages of Polykey 1.x's signalled hole punching, as Polykey 1.15.1 sends and checks
 * them, and the signatures they carry (Ed25519, by node keys: a NodeId is its public key).
 *
 * - `nodesConnectionSignalInitial`, source → relay: `{ targetNodeIdEncoded, signature }`. The
 *   source signs `source ‖ target` (the two raw 32-byte NodeIds); the relay checks it with the
 *   key of the NodeId its connection from the source proved. The relay answers `{ host, port }`:
 *   the address of its own connection to the target, which the source then dials.
 * - `nodesConnectionSignalFinal`, relay → target: `{ sourceNodeIdEncoded, targetNodeIdEncoded,
 *   address, requestSignature, relaySignature }`; `address` is `{ host, port }`, where the relay
 *   saw the source's connection. The relay signs `source ‖ target ‖ UTF-8 of
 *   JSON.stringify(address) ‖ the source's signature bytes`. The target checks the source's
 *   signature with the source NodeId's key and the relay's with the key of the NodeId its
 *   connection from the relay proved, then answers `{}`.
 *
 * NodeIds travel as NodeIdEncoded (`v` + base32hex); signatures as unpadded base64url of the
 * 64 bytes. Polykey adds `metadata` to params on the wire (the wire layer's business: the
 * schemas here ignore it). Nothing is stamped or random: Ed25519 is deterministic, so a source
 * asking for the same target always sends the same signature, and a receiver cannot tell a
 * replay from a retry. Polykey keeps no replay state; it bounds what a replay can do instead
 * (see `signallingRoles.ts`).
 *
 * Every check here is stricter than or equal to Polykey's: Polykey decodes base64url leniently
 * (dropping stray characters) and accepts any multibase NodeId; Polykey itself only ever sends
 * the canonical forms accepted here.
 */
import * as nodeCrypto from "node:crypto"
import { isIP } from "node:net"
import { Data, Effect, Either, ParseResult, Schema } from "effect"
import type { Address } from "../../services/Address.js"
import * as NodeId from "../../services/NodeId.js"
import { publicKeyObject } from "../ed25519Key.js"

export const SIGNATURE_BYTES = 64

/** Wire params of `nodesConnectionSignalInitial` (what the source sends its relay). */
export const SignalInitialParams = Schema.Struct({
  targetNodeIdEncoded: Schema.String,
  signature: Schema.String
})
export type SignalInitialParams = typeof SignalInitialParams.Type

/** Wire result of `nodesConnectionSignalInitial`: where the relay's connection to the target goes. */
export const SignalInitialResult = Schema.Struct({
  host: Schema.String,
  port: Schema.Int.pipe(Schema.between(1, 65535))
})
export type SignalInitialResult = typeof SignalInitialResult.Type

/** Wire params of `nodesConnectionSignalFinal` (what the relay sends the target). */
export const SignalFinalParams = Schema.Struct({
  sourceNodeIdEncoded: Schema.String,
  targetNodeIdEncoded: Schema.String,
  address: Schema.Struct({ host: Schema.String, port: Schema.Number }),
  requestSignature: Schema.String,
  relaySignature: Schema.String
})
export type SignalFinalParams = typeof SignalFinalParams.Type

/** Wire result of `nodesConnectionSignalFinal`: always `{}`. */
export const SignalFinalResult = Schema.Struct({})
export type SignalFinalResult = typeof SignalFinalResult.Type

/** Signs with our node key (the KeyRing's `sign`). */
export type Sign = (data: Uint8Array) => Effect.Effect<Uint8Array>

/** A field of a signalling message that does not decode (params of the wrong shape included). */
export class SignalDecodeError extends Data.TaggedError("SignalDecodeError")<{
  /** The field at fault ("params" for the whole message). */
  readonly field: string
  readonly detail: string
  readonly cause?: unknown
}> {
  override get message() {
    return `signalling message: bad ${this.field}: ${this.detail}`
  }
  /** The Polykey error class a Polykey node answers with for such a message. */
  get polykeyType() {
    return "ErrorParse"
  }
}

/** A signature that is not 64 bytes, or not the signer's over the message's bytes. */
export class SignalSignatureError extends Data.TaggedError("SignalSignatureError")<{
  /** Whose signature: the source's (the request) or the relay's. */
  readonly signer: "source" | "relay"
  /** Who refused it: a relay checking an Initial, or a target checking a Final. */
  readonly checkedBy: "relay" | "target"
  readonly reason: "length" | "mismatch"
}> {
  override get message() {
    return this.reason === "length"
      ? `the ${this.signer}'s signature is not ${SIGNATURE_BYTES} bytes`
      : `the ${this.signer}'s signature does not verify with the ${this.signer}'s NodeId`
  }
  /** Polykey's relay calls the source's bad signature a relay-verification failure, as here. */
  get polykeyType() {
    return this.checkedBy === "target" && this.signer === "source"
      ? "ErrorNodesConnectionSignalRequestVerificationFailed"
      : "ErrorNodesConnectionSignalRelayVerificationFailed"
  }
}

/** A relay's Initial, checked: `signature` is the source's over source ‖ target. */
export interface SignalRequest {
  readonly source: NodeId.NodeId
  readonly target: NodeId.NodeId
  readonly signature: Uint8Array
}

/** A target's Final, checked: both signatures hold; `address` is where the relay saw the source. */
export interface SignalFinal {
  readonly source: NodeId.NodeId
  readonly target: NodeId.NodeId
  readonly relay: NodeId.NodeId
  readonly address: Address
}

const utf8 = new TextEncoder()

/** What a source signs: source ‖ target. */
export const requestBytes = (source: NodeId.NodeId, target: NodeId.NodeId): Uint8Array =>
  Buffer.concat([source, target])

/** What a relay signs: source ‖ target ‖ `addressJson` (UTF-8) ‖ the source's signature. */
export const relayBytes = (
  source: NodeId.NodeId,
  target: NodeId.NodeId,
  addressJson: string,
  requestSignature: Uint8Array
): Uint8Array => Buffer.concat([source, target, utf8.encode(addressJson), requestSignature])

/** The address as a relay signs and sends it: `{"host":…,"port":…}`, those keys in that order. */
export const addressJson = (address: Address): string =>
  JSON.stringify({ host: address.host, port: address.port })

const base64url = (bytes: Uint8Array): string =>
  Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64url")

const BASE64URL = /^[A-Za-z0-9_-]*$/

const signatureFrom = (
  text: string,
  field: string,
  signer: SignalSignatureError["signer"],
  checkedBy: SignalSignatureError["checkedBy"]
): Either.Either<Uint8Array, SignalDecodeError | SignalSignatureError> => {
  if (!BASE64URL.test(text))
    return Either.left(new SignalDecodeError({ field, detail: "not unpadded base64url" }))
  const bytes = new Uint8Array(Buffer.from(text, "base64url"))
  if (bytes.length !== SIGNATURE_BYTES)
    return Either.left(new SignalSignatureError({ signer, checkedBy, reason: "length" }))
  if (base64url(bytes) !== text)
    return Either.left(new SignalDecodeError({ field, detail: "not the canonical base64url of 64 bytes" }))
  return Either.right(bytes)
}

const nodeIdFrom = (text: string, field: string): Either.Either<NodeId.NodeId, SignalDecodeError> =>
  Either.mapLeft(NodeId.decode(text), (e) => new SignalDecodeError({ field, detail: e.message, cause: e }))

const decodeParams =
  <A, I>(schema: Schema.Schema<A, I>) =>
  (params: unknown): Either.Either<A, SignalDecodeError> =>
    Either.mapLeft(
      Schema.decodeUnknownEither(schema)(params),
      (e) =>
        new SignalDecodeError({
          field: "params",
          detail: ParseResult.TreeFormatter.formatErrorSync(e),
          cause: e
        })
    )
const decodeInitial = decodeParams(SignalInitialParams)
const decodeFinal = decodeParams(SignalFinalParams)

/** Right when `signature` is `key`'s over `bytes`; `who` names the signature in the refusal. */
const signedBy = (
  key: NodeId.NodeId,
  bytes: Uint8Array,
  signature: Uint8Array,
  who: Pick<SignalSignatureError, "signer" | "checkedBy">
): Either.Either<void, SignalSignatureError> => {
  let ok = false
  try {
    ok = nodeCrypto.verify(null, bytes, publicKeyObject(key), signature)
  } catch {
    ok = false
  }
  return ok ? Either.void : Either.left(new SignalSignatureError({ ...who, reason: "mismatch" }))
}

/** The Initial a source sends to ask a relay to signal `target`. */
export const makeInitial = (
  self: NodeId.NodeId,
  target: NodeId.NodeId,
  sign: Sign
): Effect.Effect<SignalInitialParams> =>
  Effect.map(sign(requestBytes(self, target)), (signature) => ({
    targetNodeIdEncoded: NodeId.encode(target),
    signature: base64url(signature)
  }))

/**
 * A relay's check of an Initial from `caller` (the NodeId its connection proved: the source).
 * Cheap checks first: a malformed message costs no signature verification.
 */
export const verifyInitial = (
  caller: NodeId.NodeId,
  params: unknown
): Either.Either<SignalRequest, SignalDecodeError | SignalSignatureError> =>
  Either.gen(function* () {
    const message = yield* decodeInitial(params)
    const target = yield* nodeIdFrom(message.targetNodeIdEncoded, "targetNodeIdEncoded")
    const signature = yield* signatureFrom(message.signature, "signature", "source", "relay")
    yield* signedBy(caller, requestBytes(caller, target), signature, { signer: "source", checkedBy: "relay" })
    return { source: caller, target, signature }
  })

/** The Final a relay sends the target of `request`, naming `observed`: where it sees the source. */
export const makeFinal = (
  request: SignalRequest,
  observed: Address,
  sign: Sign
): Effect.Effect<SignalFinalParams> => {
  const address = { host: observed.host, port: observed.port }
  const bytes = relayBytes(request.source, request.target, addressJson(address), request.signature)
  return Effect.map(sign(bytes), (relaySignature) => ({
    sourceNodeIdEncoded: NodeId.encode(request.source),
    targetNodeIdEncoded: NodeId.encode(request.target),
    address,
    requestSignature: base64url(request.signature),
    relaySignature: base64url(relaySignature)
  }))
}

/** An address a target may punch toward: an IP address (a relay observes nothing else) and a port. */
const punchableAddress = (
  address: SignalFinalParams["address"]
): Either.Either<Address, SignalDecodeError> =>
  isIP(address.host) !== 0 && Number.isInteger(address.port) && address.port > 0 && address.port < 65536
    ? Either.right({ host: address.host, port: address.port })
    : Either.left(
        new SignalDecodeError({ field: "address", detail: "expected an IP address and a port 1-65535" })
      )

/**
 * A target's check of a Final from `relay` (the NodeId its connection proved). The relay's
 * signature is checked over the address exactly as it arrived (`JSON.stringify` of the received
 * object, as Polykey does), so `params` is the message as parsed from the wire.
 */
export const verifyFinal = (
  relay: NodeId.NodeId,
  params: unknown
): Either.Either<SignalFinal, SignalDecodeError | SignalSignatureError> =>
  Either.gen(function* () {
    const message = yield* decodeFinal(params)
    const source = yield* nodeIdFrom(message.sourceNodeIdEncoded, "sourceNodeIdEncoded")
    const target = yield* nodeIdFrom(message.targetNodeIdEncoded, "targetNodeIdEncoded")
    const address = yield* punchableAddress(message.address)
    const request = yield* signatureFrom(message.requestSignature, "requestSignature", "source", "target")
    const relayed = yield* signatureFrom(message.relaySignature, "relaySignature", "relay", "target")
    yield* signedBy(source, requestBytes(source, target), request, { signer: "source", checkedBy: "target" })
    const asSent = JSON.stringify((params as { readonly address: unknown }).address)
    yield* signedBy(relay, relayBytes(source, target, asSent, request), relayed, {
      signer: "relay",
      checkedBy: "target"
    })
    return { source, target, relay, address }
  })
