/**
 * certificateChain: checking the chain a peer presents in TLS. `verifyCertChain` runs in the
 * QUIC TLS verify callback on every handshake: it reads the fields it checks with the strict
 * DER reader of `certificateDer.ts` and checks signatures synchronously with `node:crypto` over
 * the exact to-be-signed bytes, one Ed25519 verification per certificate. It accepts quicmesh's
 * chains and Polykey 1.x's (an expired older certificate, a last one whose issuer was dropped).
 */
import * as nodeCrypto from "node:crypto"
import { Either } from "effect"
import { CertificateError } from "../services/KeyRing.js"
import { encode, type NodeId } from "../services/NodeId.js"
import { commonNameIs, Malformed, type ParsedCert, parseCert, sameBytes, showName } from "./certificateDer.js"
import { publicKeyObject } from "./ed25519Key.js"
import { nodeSigned } from "./polykey/certificateFormat.js"

/** DER AlgorithmIdentifier of Ed25519 (1.3.101.112, no parameters). */
const ED25519_ALGORITHM_ID = Uint8Array.from([0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70])

/**
 * The NodeId a renewed node had before: the key of the first certificate after the leaf whose
 * key is not the leaf's (a Polykey node may renew its certificate with the same key first).
 * Undefined when there is none or it is not Ed25519. Trust it only for a verified chain.
 */
export const renewedFrom = (certs: ReadonlyArray<Uint8Array>): NodeId | undefined => {
  if (certs.length < 2) return undefined
  try {
    const leaf = parseCert(certs[0]!).ed25519
    for (let i = 1; i < certs.length; i++) {
      const key = parseCert(certs[i]!).ed25519
      if (key === undefined) return undefined
      if (leaf === undefined || !sameBytes(key, leaf)) return new Uint8Array(key) as NodeId
    }
    return undefined
  } catch {
    return undefined
  }
}

const refuse = (reason: CertificateError["reason"], index: number, detail: string) =>
  new CertificateError({ reason, index, detail })
const fail = (reason: CertificateError["reason"], index: number, detail: string) =>
  Either.left(refuse(reason, index, detail))

const signedBy = (key: Uint8Array, data: Uint8Array, signature: Uint8Array): boolean => {
  try {
    return nodeCrypto.verify(null, data, publicKeyObject(key), signature)
  } catch {
    return false
  }
}

/**
 * How the chain's last certificate vouches for itself: self-signed (its issuer is its subject
 * and its signature verifies with its own key) or, when its issuer is not in the chain (Polykey
 * drops the certificates older than the first expired one), by a node signature of its own key.
 */
const lastVouches = (cert: ParsedCert, index: number): CertificateError | undefined => {
  const key = cert.ed25519
  if (sameBytes(cert.issuer, cert.subject)) {
    if (key === undefined) return refuse("bad-signature", index, "the self-signed key is not Ed25519")
    return signedBy(key, cert.tbs, cert.signature)
      ? undefined
      : refuse("bad-signature", index, "the self-signature does not verify")
  }
  const signed = nodeSigned(cert)
  if (signed === undefined)
    return refuse(
      "broken-chain",
      index,
      `the last certificate's issuer ${showName(cert.issuer)} is not its subject ${showName(cert.subject)} and it carries no node signature`
    )
  if (key === undefined) return refuse("bad-signature", index, "the node-signed key is not Ed25519")
  return signedBy(key, signed.body, signed.signature)
    ? undefined
    : refuse("bad-signature", index, "the node signature does not verify with the certificate's own key")
}

const malformed = (index: number, cause: unknown) =>
  cause instanceof Malformed
    ? fail("malformed", index, cause.detail)
    : Either.left(
        new CertificateError({ reason: "malformed", index, detail: "not a DER X.509 certificate", cause })
      )

/**
 * Verifies a chain (leaf first, subject to issuer) and succeeds with the leaf's Ed25519 public
 * key, which is the peer's NodeId:
 * - every certificate parses; the leaf is valid at `now`; an older one may have expired (Polykey
 *   keeps the first expired certificate after a renewal) but none is valid only from later;
 * - every certificate's subject CN is the NodeId of its own key (`cn-mismatch` otherwise);
 * - certificate i names certificate i+1's subject as its issuer and carries an Ed25519 signature
 *   by certificate i+1's key;
 * - the last certificate is self-signed or, when its issuer is not in the chain, node-signed.
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
      return malformed(i, e)
    }
  }
  const leaf = parsed[0]!
  if (leaf.ed25519 === undefined) return fail("malformed", 0, "the leaf's public key is not Ed25519")
  const nodeId = new Uint8Array(leaf.ed25519) as NodeId
  const t = now.getTime()
  for (let i = 0; i < parsed.length; i++) {
    const { notBefore, notAfter, ed25519, subject } = parsed[i]!
    if (t < notBefore)
      return fail(
        "not-yet-valid",
        i,
        `valid from ${new Date(notBefore).toISOString()}, now is ${now.toISOString()}`
      )
    if (i === 0 && t > notAfter)
      return fail("expired", i, `expired at ${new Date(notAfter).toISOString()}, now is ${now.toISOString()}`)
    // A certificate with another key is an issuer: its signature check below refuses it.
    if (ed25519 === undefined) continue
    const keyId = i === 0 ? encode(nodeId) : encode(new Uint8Array(ed25519) as NodeId)
    let named: boolean
    try {
      named = commonNameIs(subject, keyId)
    } catch (e) {
      return malformed(i, e)
    }
    if (!named)
      return fail("cn-mismatch", i, `the subject ${showName(subject)} is not the NodeId of its key, ${keyId}`)
  }
  const last = parsed.length - 1
  for (let i = 0; i < last; i++) {
    const child = parsed[i]!
    const issuer = parsed[i + 1]!
    if (!sameBytes(child.issuer, issuer.subject))
      return fail(
        "broken-chain",
        i,
        `issuer ${showName(child.issuer)} is not the next certificate's subject ${showName(issuer.subject)}`
      )
    if (!sameBytes(child.algorithm, ED25519_ALGORITHM_ID))
      return fail("bad-signature", i, "the signature algorithm is not Ed25519")
    if (issuer.ed25519 === undefined)
      return fail("bad-signature", i, `the issuer's key (certificate ${i + 1}) is not Ed25519`)
    if (!signedBy(issuer.ed25519, child.tbs, child.signature))
      return fail("bad-signature", i, `the signature does not verify with certificate ${i + 1}'s key`)
  }
  const tail = parsed[last]!
  if (!sameBytes(tail.algorithm, ED25519_ALGORITHM_ID))
    return fail("bad-signature", last, "the signature algorithm is not Ed25519")
  let refused: CertificateError | undefined
  try {
    refused = lastVouches(tail, last)
  } catch (e) {
    return malformed(last, e)
  }
  return refused === undefined ? Either.right(nodeId) : Either.left(refused)
}
