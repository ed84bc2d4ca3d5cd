/**
 * Certificates: Ed25519 key pairs and the X.509 certificates quicmesh nodes present in TLS.
 *
 * - A node's certificate is self-signed, subject and issuer `CN=<NodeIdEncoded>`, signed with
 *   Ed25519, in Polykey 1.x's format: it carries Polykey's version and node-signature extensions
 *   (`polykey/certificateFormat.ts`) and quicmesh's marker.
 * - After a key renewal the chain is `[newLeaf, oldSelfSigned]`: the new leaf is issued by the
 *   old key, which proves that the new NodeId continues the old one.
 * - Certificates are made with `@peculiar/x509`; chains are verified in `certificateChain.ts`
 *   (re-exported here) without it.
 *
 * Nothing here logs or puts private key material into an error.
 */
import "reflect-metadata"
import * as nodeCrypto from "node:crypto"
import * as x509 from "@peculiar/x509"
import { Effect, Either } from "effect"
import { encode, type NodeId, type NodeIdEncoded } from "../services/NodeId.js"
import { base64url, publicKeyObject } from "./ed25519Key.js"
import {
  markerUri,
  NODE_SIGNATURE_OID,
  nodeSignatureExtensionValue,
  POLYKEY_VERSION_OID,
  versionExtensionValue
} from "./polykey/certificateFormat.js"

export { renewedFrom, verifyCertChain } from "./certificateChain.js"

x509.cryptoProvider.set(nodeCrypto.webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0])

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

/** DER prefix of a PKCS#8 Ed25519 private key; the 32-byte seed follows. */
const PKCS8_ED25519_PREFIX = Buffer.from("302e020100300506032b657004220420", "hex")

export const DEFAULT_CERT_VALIDITY_MS = 365 * 24 * 60 * 60 * 1000

/**
 * An Ed25519 key pair; `nodeId` is the raw 32-byte public key. The private key is held in private
 * fields and reachable only through `privateKey`, `privateKeyPem()` and `privateKeyJwk()`, so that
 * printing the object shows no secret.
 */
export interface Ed25519KeyPair {
  readonly nodeId: NodeId
  readonly publicKey: nodeCrypto.KeyObject
  readonly privateKey: nodeCrypto.KeyObject
  /** PKCS#8 PEM of the private key, as QUIC's `key` option wants it. */
  readonly privateKeyPem: () => string
  /** The private key as a JWK (`d` is the seed, `x` the public key). */
  readonly privateKeyJwk: () => nodeCrypto.JsonWebKey
}

const toPem = (label: string, der: Uint8Array): string => {
  const b64 = Buffer.from(der.buffer, der.byteOffset, der.byteLength).toString("base64")
  let body = ""
  for (let i = 0; i < b64.length; i += 64) body += `${b64.slice(i, i + 64)}\n`
  return `-----BEGIN ${label}-----\n${body}-----END ${label}-----\n`
}

/** Private key material lives in `#` fields, which `util.inspect`, JSON and logs do not show. */
class KeyPair implements Ed25519KeyPair {
  readonly nodeId: NodeId
  readonly #privateKey: nodeCrypto.KeyObject
  readonly #jwk: nodeCrypto.JsonWebKey
  #publicKey: nodeCrypto.KeyObject | undefined

  constructor(privateKey: nodeCrypto.KeyObject) {
    // JWK export and import are an order of magnitude cheaper than DER with OpenSSL 3.
    this.#privateKey = privateKey
    this.#jwk = privateKey.export({ format: "jwk" })
    this.nodeId = new Uint8Array(Buffer.from(this.#jwk.x!, "base64url")) as NodeId
  }
  get privateKey() {
    return this.#privateKey
  }
  get publicKey() {
    if (this.#publicKey === undefined) this.#publicKey = publicKeyObject(this.nodeId)
    return this.#publicKey
  }
  privateKeyPem() {
    const der = new Uint8Array(PKCS8_ED25519_PREFIX.length + 32)
    der.set(PKCS8_ED25519_PREFIX, 0)
    der.set(Buffer.from(this.#jwk.d!, "base64url"), PKCS8_ED25519_PREFIX.length)
    return toPem("PRIVATE KEY", der)
  }
  privateKeyJwk() {
    return { ...this.#jwk }
  }
}

/** A fresh random Ed25519 key pair. */
export const generateKeyPair = (): Ed25519KeyPair => {
  const { privateKey } = nodeCrypto.generateKeyPairSync("ed25519")
  return new KeyPair(privateKey)
}

/** The Ed25519 key pair whose 32-byte private seed is `seed` (RFC 8032). */
export const keyPairFromSeed = (seed: Uint8Array): Ed25519KeyPair => {
  if (seed.length !== 32) throw new RangeError(`Ed25519 seed must be 32 bytes, got ${seed.length}`)
  let privateKey: nodeCrypto.KeyObject
  try {
    // Node derives the public half from `d`; `x` is only required to be present.
    privateKey = nodeCrypto.createPrivateKey({
      key: { kty: "OKP", crv: "Ed25519", d: base64url(seed), x: "" },
      format: "jwk"
    })
  } catch {
    const der = new Uint8Array(PKCS8_ED25519_PREFIX.length + 32)
    der.set(PKCS8_ED25519_PREFIX, 0)
    der.set(seed, PKCS8_ED25519_PREFIX.length)
    privateKey = nodeCrypto.createPrivateKey({ key: Buffer.from(der), format: "der", type: "pkcs8" })
  }
  return new KeyPair(privateKey)
}

/**
 * Parses a PKCS#8 PEM private key and checks that it is Ed25519. The failure text describes
 * the problem without quoting the input.
 */
export const keyPairFromPem = (pem: string | Uint8Array): Either.Either<Ed25519KeyPair, string> => {
  let privateKey: nodeCrypto.KeyObject
  try {
    privateKey = nodeCrypto.createPrivateKey({
      key: typeof pem === "string" ? pem : Buffer.from(pem),
      format: "pem"
    })
  } catch {
    return Either.left("not a PEM-encoded private key")
  }
  if (privateKey.asymmetricKeyType !== "ed25519")
    return Either.left(
      `expected an Ed25519 key, found ${privateKey.asymmetricKeyType ?? "an unknown key type"}`
    )
  return Either.right(new KeyPair(privateKey))
}

/** Ed25519 signature of `data`. */
export const sign = (keyPair: Ed25519KeyPair, data: Uint8Array): Uint8Array =>
  new Uint8Array(nodeCrypto.sign(null, data, keyPair.privateKey))

/** Checks an Ed25519 signature made by the holder of `nodeId`. */
export const verifySignature = (nodeId: Uint8Array, data: Uint8Array, signature: Uint8Array): boolean => {
  if (nodeId.length !== 32) return false
  try {
    return nodeCrypto.verify(null, data, publicKeyObject(nodeId), signature)
  } catch {
    return false
  }
}

// ---------------------------------------------------------------------------------------------
// Certificate generation
// ---------------------------------------------------------------------------------------------

export interface CertOptions {
  /** Start of validity; a certificate carries whole seconds. */
  readonly notBefore: Date
  /** End of validity. */
  readonly notAfter: Date
  /** Hex serial; random when absent. A deterministic serial makes the certificate deterministic. */
  readonly serialNumber?: string
}

/** Validity window of `validityMs` starting at `nowMs` (rounded down to the second). */
export const validityFrom = (nowMs: number, validityMs: number = DEFAULT_CERT_VALIDITY_MS): CertOptions => {
  const start = Math.floor(nowMs / 1000) * 1000
  return { notBefore: new Date(start), notAfter: new Date(start + validityMs) }
}

/** Subject name of a node's certificate. */
export const subjectName = (nodeId: NodeId): string => `CN=${encode(nodeId) satisfies NodeIdEncoded}`

const ED25519 = { name: "Ed25519" } as const

const importKeys = async (subject: Ed25519KeyPair, issuer: Ed25519KeyPair) => {
  const subtle = nodeCrypto.webcrypto.subtle
  const signing = (keys: Ed25519KeyPair) =>
    subtle.importKey("jwk", keys.privateKeyJwk() as nodeCrypto.webcrypto.JsonWebKey, ED25519, false, ["sign"])
  const [publicKey, subjectKey, issuerKey] = await Promise.all([
    subtle.importKey("raw", subject.nodeId, ED25519, true, ["verify"]),
    signing(subject),
    subject === issuer ? undefined : signing(issuer)
  ])
  return { publicKey, subjectKey, issuerKey: issuerKey ?? subjectKey }
}

const randomSerial = (): string => {
  const bytes = nodeCrypto.randomBytes(16)
  bytes[0] = bytes[0]! & 0x7f // positive INTEGER
  if (bytes[0] === 0) bytes[0] = 1
  return bytes.toString("hex")
}

/** The extensions every certificate carries, before the node signature. */
const bodyExtensions = (subject: NodeId): Array<x509.Extension> => [
  new x509.BasicConstraintsExtension(true, undefined, true),
  new x509.KeyUsagesExtension(
    x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign,
    true
  ),
  new x509.Extension(POLYKEY_VERSION_OID, false, versionExtensionValue),
  new x509.SubjectAlternativeNameExtension([{ type: "url", value: markerUri(encode(subject)) }])
]

/**
 * A certificate for `subject`'s public key, signed by `issuer`'s private key (pass the same key
 * pair twice for a self-signed certificate). Returns DER. The subject's key first signs the
 * body (the certificate without its node-signature extension); that signature becomes the
 * node-signature extension, and the issuer signs the whole.
 */
export const issueCert = (
  subject: Ed25519KeyPair,
  issuer: Ed25519KeyPair,
  options: CertOptions
): Effect.Effect<Uint8Array> =>
  Effect.promise(async () => {
    const { publicKey, subjectKey, issuerKey } = await importKeys(subject, issuer)
    const body = {
      serialNumber: options.serialNumber ?? randomSerial(),
      subject: subjectName(subject.nodeId),
      issuer: subjectName(issuer.nodeId),
      notBefore: options.notBefore,
      notAfter: options.notAfter,
      signingAlgorithm: ED25519,
      publicKey: publicKey as never
    }
    const extensions = bodyExtensions(subject.nodeId)
    const bySubject = await x509.X509CertificateGenerator.create({
      ...body,
      extensions,
      signingKey: subjectKey as never
    })
    const nodeSignature = nodeSignatureExtensionValue(new Uint8Array(bySubject.signature))
    const cert = await x509.X509CertificateGenerator.create({
      ...body,
      extensions: [...extensions, new x509.Extension(NODE_SIGNATURE_OID, false, nodeSignature)],
      signingKey: issuerKey as never
    })
    return new Uint8Array(cert.rawData)
  })

/** A self-signed certificate for `keyPair`. Returns DER. */
export const selfSignedCert = (keyPair: Ed25519KeyPair, options: CertOptions): Effect.Effect<Uint8Array> =>
  issueCert(keyPair, keyPair, options)

/**
 * The chain a node presents, leaf first: `[selfSigned(current)]`, or after a renewal
 * `[current issued by previous, selfSigned(previous)]`. Both certificates get the same validity.
 */
export const makeCertChain = (
  current: Ed25519KeyPair,
  options: CertOptions,
  previous?: Ed25519KeyPair
): Effect.Effect<ReadonlyArray<Uint8Array>> =>
  previous === undefined || previous.nodeId.every((b, i) => b === current.nodeId[i])
    ? Effect.map(selfSignedCert(current, options), (leaf) => [leaf])
    : Effect.all([issueCert(current, previous, options), selfSignedCert(previous, options)], {
        concurrency: 2
      })

// ---------------------------------------------------------------------------------------------
// PEM
// ---------------------------------------------------------------------------------------------

/** PEM chain (leaf first), as QUIC's `cert` option wants it. */
export const certChainToPem = (chain: ReadonlyArray<Uint8Array>): string =>
  chain.map((der) => toPem("CERTIFICATE", der)).join("")

const PEM_CERT = /-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]*?)-----END CERTIFICATE-----/g

/** DER certificates found in a PEM text, in order. Empty when there are none. */
export const certChainFromPem = (pem: string): ReadonlyArray<Uint8Array> =>
  [...pem.matchAll(PEM_CERT)].map((m) => new Uint8Array(Buffer.from(m[1]!.replace(/\s+/g, ""), "base64")))
