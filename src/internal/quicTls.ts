/**
 * quicTls: what js-quic's TLS needs from quicmesh. The crypto operations of the server (retry
 * tokens, connection ids) and of the client (random bytes), and the certificate check both
 * sides run on the peer's chain: `KeyRing.verifyCertChain`, then, on a dial, whether the NodeId
 * it proves is one the dial expects (`DialCheck`).
 */
import { createHmac, randomFillSync, timingSafeEqual } from "node:crypto"
import { native, type TLSVerifyCallback } from "@matrixai/quic"
import { Cause, Exit, Runtime } from "effect"
import type { KeyRingService } from "../services/KeyRing.js"
import * as NodeId from "../services/NodeId.js"
import { describe } from "./quicErrors.js"

const toArrayBuffer = (bytes: Uint8Array): ArrayBuffer =>
  bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer

/** The server signs retry tokens and derives connection ids with an HMAC key of its own. */
export const makeServerCrypto = () => {
  const key = toArrayBuffer(randomFillSync(new Uint8Array(32)))
  const hmac = (k: ArrayBuffer, data: ArrayBuffer) =>
    createHmac("sha256", Buffer.from(k)).update(Buffer.from(data)).digest()
  return {
    key,
    ops: {
      sign: async (k: ArrayBuffer, data: ArrayBuffer) => toArrayBuffer(hmac(k, data)),
      verify: async (k: ArrayBuffer, data: ArrayBuffer, sig: ArrayBuffer) => {
        const expected = hmac(k, data)
        const given = Buffer.from(sig)
        return expected.length === given.length && timingSafeEqual(expected, given)
      }
    }
  }
}

export const clientCrypto = {
  ops: {
    randomBytes: async (data: ArrayBuffer) => {
      randomFillSync(new Uint8Array(data))
    }
  }
}

/** Decides, from the KeyRing's verdict on the peer's chain, whether the handshake goes on. */
export interface CertificateCheck {
  readonly accept: (result: Exit.Exit<NodeId.NodeId, unknown>) => boolean
  /** The TLS alert (as js-quic's crypto error) a refused chain gets; "bad_certificate" by default. */
  readonly alertFor?: (result: Exit.Exit<NodeId.NodeId, unknown>) => native.CryptoError
}

/**
 * The TLS verify callback for one side of a connection: the chain is refused with the TLS
 * alert "bad_certificate" (or the check's `alertFor`) unless `check` accepts it. The callback
 * returned is anonymous (no per-connection function name) and holds only these three.
 */
export const verifyCallback =
  (runtime: Runtime.Runtime<never>, keyRing: KeyRingService, check: CertificateCheck): TLSVerifyCallback =>
  async (certs) => {
    const exit = await Runtime.runPromiseExit(runtime)(keyRing.verifyCertChain(certs))
    return check.accept(exit) ? undefined : (check.alertFor?.(exit) ?? native.CryptoError.BadCertificate)
  }

/**
 * What a dial's certificate check found. js-quic keeps a connection's verify callback (its
 * config) as long as the connection: the callback holds this object, not the dial's closures,
 * and the NodeIds it expected are let go once the dial has settled.
 */
export class DialCheck implements CertificateCheck {
  expected: ReadonlyArray<NodeId.NodeId> | undefined
  verified: NodeId.NodeId | undefined
  rejection: { readonly reason: "tls" | "mismatch"; readonly detail: string } | undefined
  constructor(expected: ReadonlyArray<NodeId.NodeId>) {
    this.expected = expected
  }

  accept(exit: Exit.Exit<NodeId.NodeId, unknown>): boolean {
    if (Exit.isFailure(exit)) {
      const error = Cause.squash(exit.cause)
      this.rejection = { reason: "tls", detail: `peer certificate rejected: ${describe(error)}` }
      return false
    }
    const actual = exit.value
    const expected = this.expected ?? []
    if (!expected.some((e) => NodeId.equals(e, actual))) {
      this.rejection = {
        reason: "mismatch",
        detail: `expected NodeId ${expected.map(NodeId.encode).join(", ")}, peer proved ${NodeId.encode(actual)}`
      }
      return false
    }
    this.verified = actual
    return true
  }
}

/** The server's check: any valid chain. */
export const acceptValid: CertificateCheck = { accept: Exit.isSuccess }
