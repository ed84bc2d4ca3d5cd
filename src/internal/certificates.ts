/**
 * Certificates: Ed25519 key pairs and the X.509 certificates quicmesh nodes present in TLS.
 *
 * - A node's certificate is self-signed, subject `CN=<NodeIdEncoded>`, signed with Ed25519.
 * - After a key renewal the chain is `[newLeaf, oldSelfSigned]`: the new leaf is issued by the
 *   old key, which proves that the new NodeId continues the old one.
 * - Certificates are made with `@peculiar/x509`.
 * - `verifyCertChain` runs in the QUIC TLS verify callback on every handshake. It reads the
 *   fields it checks with a small strict DER reader of its own and checks signatures
 *   synchronously with `node:crypto` over the exact to-be-signed bytes of each certificate.
 *
 * Nothing here logs or puts private key material into an error.
 */
import "reflect-metadata"
import * as nodeCrypto from "node:crypto"
import * as x509 from "@peculiar/x509"
import { Effect, Either } from "effect"
import { CertificateError } from "../services/KeyRing.js"
import { encode, type NodeId, type NodeIdEncoded } from "../services/NodeId.js"
import { base64url, publicKeyObject } from "./ed25519Key.js"

x509.cryptoProvider.set(nodeCrypto.webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0])

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

/** DER prefix of a PKCS#8 Ed25519 private key; the 32-byte seed follows. */
const PKCS8_ED25519_PREFIX = Buffer.from("302e020100300506032b657004220420", "hex")
/** DER prefix of an Ed25519 SubjectPublicKeyInfo; the 32-byte public key follows. */
const SPKI_ED25519_PREFIX = Buffer.from("302a300506032b6570032100", "hex")
/** DER AlgorithmIdentifier of Ed25519 (1.3.101.112, no parameters). */
const ED25519_ALGORITHM_ID = Buffer.from("300506032b6570", "hex")

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
  const [publicKey, signingKey] = await Promise.all([
    subtle.importKey("raw", subject.nodeId, ED25519, true, ["verify"]),
    subtle.importKey("jwk", issuer.privateKeyJwk() as nodeCrypto.webcrypto.JsonWebKey, ED25519, false, [
      "sign"
    ])
  ])
  return { publicKey, signingKey }
}

const randomSerial = (): string => {
  const bytes = nodeCrypto.randomBytes(16)
  bytes[0] = bytes[0]! & 0x7f // positive INTEGER
  if (bytes[0] === 0) bytes[0] = 1
  return bytes.toString("hex")
}

/**
 * A certificate for `subject`'s public key, signed by `issuer`'s private key (pass the same key
 * pair twice for a self-signed certificate). Returns DER.
 */
export const issueCert = (
  subject: Ed25519KeyPair,
  issuer: Ed25519KeyPair,
  options: CertOptions
): Effect.Effect<Uint8Array> =>
  Effect.promise(async () => {
    const { publicKey, signingKey } = await importKeys(subject, issuer)
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: options.serialNumber ?? randomSerial(),
      subject: subjectName(subject.nodeId),
      issuer: subjectName(issuer.nodeId),
      notBefore: options.notBefore,
      notAfter: options.notAfter,
      signingAlgorithm: ED25519,
      publicKey: publicKey as never,
      signingKey: signingKey as never,
      extensions: [
        new x509.BasicConstraintsExtension(true, undefined, true),
        new x509.KeyUsagesExtension(
          x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign,
          true
        )
      ]
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

// ---------------------------------------------------------------------------------------------
// Verification
// ---------------------------------------------------------------------------------------------
//
// A strict little DER reader for exactly the fields we check. Parsing with `@peculiar/x509`
// costs about three Ed25519 verifications per certificate; this is a small fraction of one.

interface Tlv {
  readonly tag: number
  /** Offset of the tag byte. */
  readonly header: number
  /** Offset of the content. */
  readonly start: number
  /** Offset just past the content. */
  readonly end: number
}

class Malformed {
  constructor(readonly detail: string) {}
}

/** Reads one DER TLV at `offset`, bounded by `limit`, expecting `tag`. */
const readTlv = (der: Uint8Array, offset: number, limit: number, tag: number, what: string): Tlv => {
  if (offset + 2 > limit) throw new Malformed(`truncated before ${what}`)
  if (der[offset] !== tag) throw new Malformed(`unexpected tag 0x${der[offset]!.toString(16)} for ${what}`)
  let length = der[offset + 1]!
  let start = offset + 2
  if (length & 0x80) {
    const n = length & 0x7f
    if (n === 0 || n > 3 || start + n > limit) throw new Malformed(`bad length of ${what}`)
    length = 0
    for (let i = 0; i < n; i++) length = length * 256 + der[start + i]!
    start += n
  }
  const end = start + length
  if (end > limit) throw new Malformed(`${what} overruns its container`)
  return { tag, header: offset, start, end }
}

const bytesOf = (der: Uint8Array, tlv: Tlv): Uint8Array => der.subarray(tlv.header, tlv.end)

const sameBytes = (a: Uint8Array, b: Uint8Array): boolean => {
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false
  return true
}

const digits = (der: Uint8Array, at: number, n: number): number => {
  let v = 0
  for (let i = 0; i < n; i++) {
    const c = der[at + i]! - 48
    if (c < 0 || c > 9) throw new Malformed("a validity date has a non-digit")
    v = v * 10 + c
  }
  return v
}

/** UTCTime `YYMMDDHHMMSSZ` or GeneralizedTime `YYYYMMDDHHMMSSZ` (the DER forms). */
const readTime = (
  der: Uint8Array,
  offset: number,
  limit: number,
  what: string
): { ms: number; end: number } => {
  const tag = der[offset]
  const tlv = readTlv(der, offset, limit, tag === 0x18 ? 0x18 : 0x17, what)
  const len = tlv.end - tlv.start
  let at = tlv.start
  let year: number
  if (tag === 0x17 && len === 13) {
    const yy = digits(der, at, 2)
    year = yy >= 50 ? 1900 + yy : 2000 + yy
    at += 2
  } else if (tag === 0x18 && len === 15) {
    year = digits(der, at, 4)
    at += 4
  } else throw new Malformed(`${what} is not a DER time`)
  if (der[tlv.end - 1] !== 0x5a) throw new Malformed(`${what} is not in UTC`)
  const month = digits(der, at, 2)
  const day = digits(der, at + 2, 2)
  const hour = digits(der, at + 4, 2)
  const minute = digits(der, at + 6, 2)
  const second = digits(der, at + 8, 2)
  if (month < 1 || month > 12 || day < 1 || day > 31 || hour > 23 || minute > 59 || second > 59)
    throw new Malformed(`${what} is out of range`)
  return { ms: Date.UTC(year, month - 1, day, hour, minute, second), end: tlv.end }
}

const CN_OID = Buffer.from("0603550403", "hex")

/** `CN=…` of a Name for messages, or a byte count when it has none. */
const showName = (name: Uint8Array): string => {
  for (let i = 0; i + CN_OID.length + 2 <= name.length; i++) {
    if (sameBytes(name.subarray(i, i + CN_OID.length), CN_OID)) {
      const at = i + CN_OID.length
      const len = name[at + 1]!
      if (len < 0x80 && at + 2 + len <= name.length)
        return `CN=${Buffer.from(name.subarray(at + 2, at + 2 + len)).toString("latin1")}`
    }
  }
  return `<name of ${name.length} bytes>`
}

interface ParsedCert {
  /** The exact bytes the issuer signed. */
  readonly tbs: Uint8Array
  readonly algorithm: Uint8Array
  readonly signature: Uint8Array
  readonly issuer: Uint8Array
  readonly subject: Uint8Array
  readonly notBefore: number
  readonly notAfter: number
  /** Raw Ed25519 public key, or undefined for another key type. */
  readonly ed25519: Uint8Array | undefined
}

const parseCert = (der: Uint8Array): ParsedCert => {
  const cert = readTlv(der, 0, der.length, 0x30, "Certificate")
  if (cert.end !== der.length) throw new Malformed("trailing bytes after the certificate")
  const tbs = readTlv(der, cert.start, cert.end, 0x30, "TBSCertificate")
  const algorithm = readTlv(der, tbs.end, cert.end, 0x30, "signatureAlgorithm")
  const signature = readTlv(der, algorithm.end, cert.end, 0x03, "signatureValue")
  if (signature.end !== cert.end) throw new Malformed("trailing bytes inside the certificate")
  if (signature.end === signature.start || der[signature.start] !== 0)
    throw new Malformed("the signature is not a whole number of bytes")

  let at = tbs.start
  if (der[at] === 0xa0) at = readTlv(der, at, tbs.end, 0xa0, "version").end
  at = readTlv(der, at, tbs.end, 0x02, "serialNumber").end
  const innerAlgorithm = readTlv(der, at, tbs.end, 0x30, "signature")
  if (!sameBytes(bytesOf(der, innerAlgorithm), bytesOf(der, algorithm)))
    throw new Malformed("the inner and outer signature algorithms differ")
  const issuer = readTlv(der, innerAlgorithm.end, tbs.end, 0x30, "issuer")
  const validity = readTlv(der, issuer.end, tbs.end, 0x30, "validity")
  const notBefore = readTime(der, validity.start, validity.end, "notBefore")
  const notAfter = readTime(der, notBefore.end, validity.end, "notAfter")
  if (notAfter.end !== validity.end) throw new Malformed("trailing bytes in validity")
  const subject = readTlv(der, validity.end, tbs.end, 0x30, "subject")
  const spki = bytesOf(der, readTlv(der, subject.end, tbs.end, 0x30, "subjectPublicKeyInfo"))
  const ed25519 =
    spki.length === SPKI_ED25519_PREFIX.length + 32 &&
    sameBytes(spki.subarray(0, SPKI_ED25519_PREFIX.length), SPKI_ED25519_PREFIX)
      ? spki.subarray(SPKI_ED25519_PREFIX.length)
      : undefined
  return {
    tbs: bytesOf(der, tbs),
    algorithm: bytesOf(der, algorithm),
    signature: der.subarray(signature.start + 1, signature.end),
    issuer: bytesOf(der, issuer),
    subject: bytesOf(der, subject),
    notBefore: notBefore.ms,
    notAfter: notAfter.ms,
    ed25519
  }
}

/**
 * The NodeId whose key issued a chain's leaf when that is another key: a renewed node's chain
 * is its new leaf, then the previous key's self-signed certificate. Undefined for a chain of
 * one certificate or a second one without an Ed25519 key. Trust it only for a verified chain.
 */
export const renewedFrom = (certs: ReadonlyArray<Uint8Array>): NodeId | undefined => {
  if (certs.length < 2) return undefined
  try {
    const key = parseCert(certs[1]!).ed25519
    return key === undefined ? undefined : (new Uint8Array(key) as NodeId)
  } catch {
    return undefined
  }
}

const fail = (reason: CertificateError["reason"], index: number, detail: string) =>
  Either.left(new CertificateError({ reason, index, detail }))

/**
 * Verifies a chain (leaf first, subject to issuer): every certificate parses and is valid at
 * `now`; certificate i names certificate i+1's subject as its issuer and carries an Ed25519
 * signature by certificate i+1's key; the last certificate is self-signed. Succeeds with the
 * leaf's Ed25519 public key, which is the peer's NodeId.
 */
export const verifyCertChain = (
  certs: ReadonlyArray<Uint8Array>,
  now: Date
): Either.Either<NodeId, CertificateError> => {
  if (certs.length === 0) return fail("empty", 0, "no certificate presented")
  const parsed: Array<ParsedCert> = []
  for (let i = 0; i < certs.length; i++) {
    try {
      parsed.push(parseCert(certs[i]!))
    } catch (e) {
      if (e instanceof Malformed) return fail("malformed", i, e.detail)
      return Either.left(
        new CertificateError({
          reason: "malformed",
          index: i,
          detail: "not a DER X.509 certificate",
          cause: e
        })
      )
    }
  }
  const leaf = parsed[0]!
  if (leaf.ed25519 === undefined) return fail("malformed", 0, "the leaf's public key is not Ed25519")
  const t = now.getTime()
  for (let i = 0; i < parsed.length; i++) {
    const { notBefore, notAfter } = parsed[i]!
    if (t < notBefore)
      return fail(
        "not-yet-valid",
        i,
        `valid from ${new Date(notBefore).toISOString()}, now is ${now.toISOString()}`
      )
    if (t > notAfter)
      return fail("expired", i, `expired at ${new Date(notAfter).toISOString()}, now is ${now.toISOString()}`)
  }
  for (let i = 0; i < parsed.length; i++) {
    const child = parsed[i]!
    const last = i === parsed.length - 1
    const issuer = last ? child : parsed[i + 1]!
    if (!sameBytes(child.issuer, issuer.subject))
      return fail(
        "broken-chain",
        i,
        last
          ? `the last certificate must be self-signed, but its issuer ${showName(child.issuer)} is not its subject ${showName(child.subject)}`
          : `issuer ${showName(child.issuer)} is not the next certificate's subject ${showName(issuer.subject)}`
      )
    if (!sameBytes(child.algorithm, ED25519_ALGORITHM_ID))
      return fail("bad-signature", i, "the signature algorithm is not Ed25519")
    if (issuer.ed25519 === undefined)
      return fail("bad-signature", i, `the issuer's key (certificate ${last ? i : i + 1}) is not Ed25519`)
    let ok: boolean
    try {
      ok = nodeCrypto.verify(null, child.tbs, publicKeyObject(issuer.ed25519), child.signature)
    } catch {
      ok = false
    }
    if (!ok)
      return fail(
        "bad-signature",
        i,
        last
          ? "the self-signature does not verify"
          : `the signature does not verify with certificate ${i + 1}'s key`
      )
  }
  return Either.right(new Uint8Array(leaf.ed25519) as NodeId)
}
