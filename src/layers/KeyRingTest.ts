/**
 * KeyRingTest: a KeyRing whose Ed25519 key is derived from a seed, in memory, no files.
 *
 * The private key seed is SHA-256("quicmesh-test-key:" + seed). Making one costs well under a
 * tenth of a millisecond; the certificate chain is only built on the first `tlsConfig` /
 * `certChainDer`, so a simulation can create thousands of nodes cheaply. Certificates are
 * deterministic too: same seed and same Clock time give the same bytes.
 */
import { createHash } from "node:crypto"
import { Duration, Effect, Layer } from "effect"
import {
  DEFAULT_CERT_VALIDITY_MS,
  type Ed25519KeyPair,
  issueCert,
  keyPairFromSeed,
  selfSignedCert
} from "../internal/certificates.js"
import { keyMaterial, makeService, validityNow } from "../internal/keyRingCore.js"
import { KeyRing, type KeyRingService } from "../services/KeyRing.js"
import type { NodeId } from "../services/NodeId.js"

export interface KeyRingTestOptions {
  /** Certificate validity; one year by default. */
  readonly certValidity?: Duration.DurationInput
}

/** The 32-byte Ed25519 private seed for a test seed. */
export const seedBytes = (seed: string | number): Uint8Array =>
  new Uint8Array(createHash("sha256").update(`quicmesh-test-key:${seed}`).digest())

/** The deterministic key pair of a test seed. */
export const makeKeyPair = (seed: string | number): Ed25519KeyPair => keyPairFromSeed(seedBytes(seed))

/** The NodeId a `layer(seed)` KeyRing starts with. */
export const nodeIdOf = (seed: string | number): NodeId => makeKeyPair(seed).nodeId

/** The seed of the key that the `generation`-th renewal of `seed` moves to. */
export const renewedSeed = (seed: string | number, generation: number): string =>
  `${seed}/renewal/${generation}`

/** Serial number derived from the key and the start date, so that certificates are deterministic. */
const serialFor = (subject: Ed25519KeyPair, issuer: Ed25519KeyPair, notBefore: Date): string => {
  const h = createHash("sha256")
    .update(subject.nodeId)
    .update(issuer.nodeId)
    .update(String(notBefore.getTime()))
  const bytes = h.digest().subarray(0, 16)
  bytes[0] = (bytes[0]! & 0x7f) | 0x01
  return bytes.toString("hex")
}

/** Deterministic chain for `current`, issued by `previous` when given (otherwise self-signed). */
const deterministicChain = (current: Ed25519KeyPair, validityMs: number, previous?: Ed25519KeyPair) =>
  Effect.flatMap(validityNow(validityMs), (validity) =>
    previous === undefined
      ? Effect.map(
          selfSignedCert(current, {
            ...validity,
            serialNumber: serialFor(current, current, validity.notBefore)
          }),
          (leaf) => [leaf] as ReadonlyArray<Uint8Array>
        )
      : Effect.all(
          [
            issueCert(current, previous, {
              ...validity,
              serialNumber: serialFor(current, previous, validity.notBefore)
            }),
            selfSignedCert(previous, {
              ...validity,
              serialNumber: serialFor(previous, previous, validity.notBefore)
            })
          ],
          { concurrency: 2 }
        )
  )

/** A seeded KeyRing service. Renewal moves to the key of `renewedSeed(seed, n)`. */
export const make = (
  seed: string | number,
  options: KeyRingTestOptions = {}
): Effect.Effect<KeyRingService> => {
  const validityMs =
    options.certValidity === undefined ? DEFAULT_CERT_VALIDITY_MS : Duration.toMillis(options.certValidity)
  let generation = 0
  return makeService({
    keyPair: makeKeyPair(seed),
    makeChain: (keyPair) => deterministicChain(keyPair, validityMs),
    renew: (current) =>
      Effect.suspend(() => {
        const next = makeKeyPair(renewedSeed(seed, generation + 1))
        return Effect.map(deterministicChain(next, validityMs, current), (chain) => {
          generation++
          return keyMaterial(next, chain)
        })
      })
  })
}

/** A seeded KeyRing: same seed, same NodeId; different seeds, different NodeIds. */
export const layer = (seed: string | number, options: KeyRingTestOptions = {}): Layer.Layer<KeyRing> =>
  Layer.effect(KeyRing, make(seed, options))
