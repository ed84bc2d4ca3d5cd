/**
 * KeyRing: the node's Ed25519 identity, its self-signed X.509 certificate chain for TLS,
 * chain verification for the QUIC verify callback, and key renewal.
 */
import { Context, Data, type Effect, type Scope, type Stream } from "effect"
import type { NodeId } from "./NodeId.js"

/** PEM material ready for QUIC's `key` / `cert` options. The chain is leaf first. */
export interface TlsConfig {
  readonly keyPrivatePem: string
  readonly certChainPem: string
}

/** One renewal: the NodeId before and after it, and the new TLS config. */
export interface Renewal {
  readonly previous: NodeId
  readonly nodeId: NodeId
  readonly tls: TlsConfig
}

/** Why a key file could not be used. The private key never appears in these errors. */
export class KeyRingError extends Data.TaggedError("KeyRingError")<{
  readonly path: string
  readonly reason: "unreadable" | "corrupt" | "insecure-permissions" | "write-failed" | "renew-failed"
  readonly detail: string
  /** The file system's error, when there was one. */
  readonly cause?: unknown
}> {
  override get message() {
    return `key ring at ${this.path}: ${this.reason}: ${this.detail}`
  }
}

/**
 * A certificate chain that does not verify. `index` is the certificate at fault (0 = leaf).
 * `cn-mismatch`: the certificate's subject CN names another NodeId than its key's.
 */
export class CertificateError extends Data.TaggedError("CertificateError")<{
  readonly reason:
    | "empty"
    | "malformed"
    | "expired"
    | "not-yet-valid"
    | "bad-signature"
    | "broken-chain"
    | "cn-mismatch"
  readonly index: number
  readonly detail: string
  /** The parser's error, when it failed unexpectedly. */
  readonly cause?: unknown
}> {
  override get message() {
    return `certificate ${this.index}: ${this.reason}: ${this.detail}`
  }
}

export interface KeyRingService {
  /** The current NodeId (changes after `renew`). */
  readonly nodeId: Effect.Effect<NodeId>
  /** Current key and certificate chain as PEM. */
  readonly tlsConfig: Effect.Effect<TlsConfig>
  /** Current certificate chain as DER, leaf first. */
  readonly certChainDer: Effect.Effect<ReadonlyArray<Uint8Array>>
  /**
   * Verifies a peer's chain (leaf first, as the TLS verify callback gets it): the signatures,
   * issuer order, each subject CN against its key, and validity against the Clock (older
   * certificates may have expired). Succeeds with the NodeId of the leaf's key.
   */
  readonly verifyCertChain: (certs: ReadonlyArray<Uint8Array>) => Effect.Effect<NodeId, CertificateError>
  /** New key pair and certificate, signed by the old key; persisted, then published on `changes`. */
  readonly renew: Effect.Effect<TlsConfig, KeyRingError>
  /** Each renewal's new TLS config (subscribers created before a renewal see it). */
  readonly changes: Stream.Stream<TlsConfig>
  /**
   * Runs `f` inside every later `renew`, once the new key is in place and before `renew`
   * returns (and before `changes` publishes), until the scope closes: when `renew` returns,
   * whatever registered here (the connection manager) has moved to the new NodeId. `f` runs
   * while renewals are serialized: it must be quick and must not renew.
   */
  readonly onRenew: (f: (renewal: Renewal) => Effect.Effect<void>) => Effect.Effect<void, never, Scope.Scope>
  /** Sign bytes with the current private key (Ed25519). */
  readonly sign: (data: Uint8Array) => Effect.Effect<Uint8Array>
}

export class KeyRing extends Context.Tag("quicmesh/KeyRing")<KeyRing, KeyRingService>() {}
