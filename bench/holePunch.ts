/**
 * Signed hole-punch signalling: what signing and verifying a request costs against the
 * unsigned path it replaced (target: under 0.2 ms each).
 *
 * - sign: a new nonce, the canonical bytes, the Ed25519 signature, the request object (what a
 *   source does per relay it asks);
 * - verify: the NodeIds, freshness, canonical bytes and the Ed25519 check (what a relay and a
 *   target each do), with the source's public key already made (a source asks again and again)
 *   and with a new source every time (the key made from the NodeId each time);
 * - baseline: the unsigned path, building the old message (two NodeIds encoded, an address)
 *   and reading it back (two NodeIds decoded), as the old sender and handler did;
 * - the wire payload's schema decode, signed against the old unsigned form.
 * Each figure is the median of single operations (ms), after a warm-up.
 */
import { randomBytes } from "node:crypto"
import { Either, Schema } from "effect"
import { generateKeyPair, sign } from "../src/internal/certificates.js"
import * as Signature from "../src/internal/holePunchSignature.js"
import { WireAddress } from "../src/services/Address.js"
import { NodesHolePunchSignal } from "../src/services/AgentRpc.js"
import * as NodeId from "../src/services/NodeId.js"
import { type BenchResult, type BenchSuite, median } from "./types.js"

const SUITE = "holePunch"
const N = 5000
const address = { host: "198.51.100.7", port: 4000 }

/** Median per-call time (ms) of `fn` over `n` calls after `n / 5` warm-up calls. */
const perCall = (fn: (i: number) => unknown, n = N): number => {
  for (let i = 0; i < n / 5; i++) fn(i)
  const out: number[] = []
  for (let i = 0; i < n; i++) {
    const t0 = performance.now()
    fn(i)
    out.push(performance.now() - t0)
  }
  return median(out)
}

const OldPayload = Schema.Struct({
  sourceNodeIdEncoded: NodeId.NodeIdEncodedSchema,
  targetNodeIdEncoded: NodeId.NodeIdEncodedSchema,
  address: Schema.optional(WireAddress)
})

export const suite: BenchSuite = {
  name: SUITE,
  run: async () => {
    const source = generateKeyPair()
    const target = generateKeyPair().nodeId
    const now = Date.now()
    const signOne = (keyPair = source) => {
      const fields: Signature.HolePunchRequestFields = {
        source: keyPair.nodeId,
        target,
        addresses: [address],
        timestamp: now,
        nonce: randomBytes(Signature.NONCE_BYTES)
      }
      return Signature.assemble(fields, sign(keyPair, Signature.canonicalBytes(fields)!))
    }
    const signMs = perCall(() => signOne())
    const requests = Array.from({ length: N }, () => signOne())
    const verifyMs = perCall((i) => {
      if (Either.isLeft(Signature.verify(requests[i % N]!, now))) throw new Error("did not verify")
    })
    // A new source each time: its public key object is made from the NodeId in the check.
    const strangers = Array.from({ length: 1000 }, () => signOne(generateKeyPair()))
    const coldMs = perCall((i) => {
      if (Either.isLeft(Signature.verify(strangers[i % 1000]!, now))) throw new Error("did not verify")
    }, 1000)
    const unsignedMs = perCall(() => {
      const message = {
        sourceNodeIdEncoded: NodeId.encode(source.nodeId),
        targetNodeIdEncoded: NodeId.encode(target),
        address
      }
      if (Either.isLeft(NodeId.decode(message.sourceNodeIdEncoded))) throw new Error("bad")
      if (Either.isLeft(NodeId.decode(message.targetNodeIdEncoded))) throw new Error("bad")
    })
    const decodeSigned = Schema.decodeUnknownEither(
      NodesHolePunchSignal.payloadSchema as Schema.Schema<unknown, unknown>
    )
    const decodeOld = Schema.decodeUnknownEither(OldPayload)
    const signedWire = { request: requests[0]!, observed: address }
    const oldWire = {
      sourceNodeIdEncoded: NodeId.encode(source.nodeId),
      targetNodeIdEncoded: NodeId.encode(target),
      address
    }
    const decodeSignedMs = perCall(() => decodeSigned(signedWire))
    const decodeOldMs = perCall(() => decodeOld(oldWire))
    const result = (
      name: string,
      value: number,
      target?: string,
      met?: boolean,
      baseline?: { name: string; value: number }
    ): BenchResult => ({
      suite: SUITE,
      name,
      value,
      unit: "ms",
      ...(baseline
        ? { baselineName: baseline.name, baseline: baseline.value, ratio: value / baseline.value }
        : {}),
      ...(target === undefined ? {} : { target, met: met === true })
    })
    const unsigned = { name: "unsigned message", value: unsignedMs }
    return [
      result("sign a request (median)", signMs, "< 0.2 ms", signMs < 0.2, unsigned),
      result("verify a request, known source (median)", verifyMs, "< 0.2 ms", verifyMs < 0.2, unsigned),
      result("verify a request, new source (median)", coldMs, "< 0.2 ms", coldMs < 0.2, unsigned),
      result("decode the wire payload, signed (median)", decodeSignedMs, undefined, undefined, {
        name: "unsigned payload",
        value: decodeOldMs
      })
    ]
  }
}
