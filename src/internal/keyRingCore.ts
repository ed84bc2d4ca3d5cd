/**
 * The part of a KeyRing shared by the live (files) and test (seeded, in memory) layers:
 * current key and chain, lazy certificate generation, verification against the Clock,
 * serialized renewal, its listeners (`onRenew`) and the `changes` stream.
 */
import { Clock, Effect, Either, Option, PubSub, Ref, Stream } from "effect"
import {
  CertificateError,
  type KeyRingError,
  type KeyRingService,
  type Renewal,
  type TlsConfig
} from "../services/KeyRing.js"
import type { NodeId } from "../services/NodeId.js"
import { verifyCertChain } from "./certificateChain.js"
import {
  type CertOptions,
  certChainToPem,
  DEFAULT_CERT_VALIDITY_MS,
  type Ed25519KeyPair,
  sign,
  validityFrom
} from "./certificates.js"

/** A key pair with its certificate chain (leaf first, DER) and the PEM form of both. */
export interface KeyMaterial {
  readonly keyPair: Ed25519KeyPair
  readonly chain: ReadonlyArray<Uint8Array>
  readonly tls: TlsConfig
}

export const keyMaterial = (keyPair: Ed25519KeyPair, chain: ReadonlyArray<Uint8Array>): KeyMaterial => ({
  keyPair,
  chain,
  tls: { keyPrivatePem: keyPair.privateKeyPem(), certChainPem: certChainToPem(chain) }
})

/** Validity window starting at the Clock's current time. */
export const validityNow = (validityMs: number = DEFAULT_CERT_VALIDITY_MS): Effect.Effect<CertOptions> =>
  Effect.map(Clock.currentTimeMillis, (now) => validityFrom(now, validityMs))

/** Chain verification against the Clock. */
export const verifyNow = (certs: ReadonlyArray<Uint8Array>): Effect.Effect<NodeId, CertificateError> =>
  Effect.flatMap(Clock.currentTimeMillis, (now) =>
    Effect.suspend(() => {
      try {
        return verifyCertChain(certs, new Date(now))
      } catch (cause) {
        // verifyCertChain returns its failures; this only guards against the unforeseen.
        return Either.left(
          new CertificateError({ reason: "malformed", index: 0, detail: "unverifiable chain", cause })
        )
      }
    })
  )

interface State {
  readonly keyPair: Ed25519KeyPair
  /** None until the first `tlsConfig` / `certChainDer` when the chain is made lazily. */
  readonly material: Option.Option<KeyMaterial>
}

export interface CoreOptions {
  readonly keyPair: Ed25519KeyPair
  /** The chain when it is already known; otherwise `makeChain` runs on first use. */
  readonly material?: KeyMaterial
  readonly makeChain: (keyPair: Ed25519KeyPair) => Effect.Effect<ReadonlyArray<Uint8Array>>
  /** Makes (and persists, for the live layer) the next key and its chain signed by `current`. */
  readonly renew: (current: Ed25519KeyPair) => Effect.Effect<KeyMaterial, KeyRingError>
}

export const makeService = (options: CoreOptions): Effect.Effect<KeyRingService> =>
  Effect.gen(function* () {
    const state = yield* Ref.make<State>({
      keyPair: options.keyPair,
      material: Option.fromNullable(options.material)
    })
    // Serializes lazy chain creation and renewals; reads never wait for it.
    const lock = yield* Effect.makeSemaphore(1)
    const pubsub = yield* PubSub.unbounded<TlsConfig>()
    const listeners = new Set<(renewal: Renewal) => Effect.Effect<void>>()

    const material: Effect.Effect<KeyMaterial> = Effect.flatMap(Ref.get(state), (s) =>
      Option.match(s.material, {
        onSome: Effect.succeed,
        onNone: () =>
          lock.withPermits(1)(
            Effect.flatMap(Ref.get(state), (s) =>
              Option.match(s.material, {
                onSome: Effect.succeed,
                onNone: () =>
                  options.makeChain(s.keyPair).pipe(
                    Effect.map((chain) => keyMaterial(s.keyPair, chain)),
                    Effect.tap((m) => Ref.set(state, { keyPair: s.keyPair, material: Option.some(m) }))
                  )
              })
            )
          )
      })
    )

    // The new state is in place before the listeners run and subscribers hear of it;
    // publications keep renewal order. A listener's failure is logged, never the renewal's.
    const renew: Effect.Effect<TlsConfig, KeyRingError> = lock
      .withPermits(1)(
        Effect.gen(function* () {
          const current = yield* Ref.get(state)
          const next = yield* options.renew(current.keyPair)
          yield* Ref.set(state, { keyPair: next.keyPair, material: Option.some(next) })
          const renewal: Renewal = {
            previous: current.keyPair.nodeId,
            nodeId: next.keyPair.nodeId,
            tls: next.tls
          }
          for (const f of [...listeners])
            yield* f(renewal).pipe(
              Effect.catchAllCause((cause) => Effect.logWarning("a key renewal listener failed", cause))
            )
          yield* PubSub.publish(pubsub, next.tls)
          return next.tls
        })
      )
      .pipe(Effect.uninterruptible)

    const onRenew: KeyRingService["onRenew"] = (f) =>
      Effect.acquireRelease(
        Effect.sync(() => {
          // Each registration is its own entry, even of the same function.
          const entry = (renewal: Renewal) => f(renewal)
          listeners.add(entry)
          return entry
        }),
        (entry) => Effect.sync(() => listeners.delete(entry))
      ).pipe(Effect.asVoid)

    return {
      nodeId: Effect.map(Ref.get(state), (s) => s.keyPair.nodeId),
      tlsConfig: Effect.map(material, (m) => m.tls),
      certChainDer: Effect.map(material, (m) => m.chain),
      verifyCertChain: verifyNow,
      renew,
      changes: Stream.fromPubSub(pubsub),
      onRenew,
      sign: (data) => Effect.map(Ref.get(state), (s) => sign(s.keyPair, data))
    } satisfies KeyRingService
  })
