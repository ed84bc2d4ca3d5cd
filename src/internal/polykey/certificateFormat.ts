/**
 * The certificate extensions of Polykey 1.x's format, and quicmesh's own marker.
 *
 * - Polykey version (1.3.6.1.4.1.57167.2.2.1, Polykey's arc): an IA5String naming the release
 *   whose format the certificate follows. Polykey writes its own version; nothing in Polykey
 *   1.15.1 reads it back.
 * - Node signature (1.3.6.1.4.1.57167.2.2.2): an OCTET STRING holding the subject key's Ed25519
 *   signature over the TBSCertificate without this extension. Polykey refuses a certificate
 *   without one; it is what proves, for a certificate issued by another key, that its own key
 *   agreed to it.
 * - quicmesh's marker: a subjectAltName URI `quicmesh://<NodeIdEncoded>` (Polykey writes
 *   `pk://<NodeIdEncoded>` there). A peer whose leaf carries it speaks quicmesh's wire; one
 *   with Polykey's node signature and without it is a Polykey node. The marker uses the standard extension, not an OID of our
 *   own: an arc anyone may claim unregistered (2.25, a UUID) has arcs beyond 2^53, which
 *   Polykey's ASN.1 library re-encodes wrongly when it rebuilds the body to check the node
 *   signature, so it would refuse every such certificate.
 *
 * All three are non-critical. Nothing here imports the X.509 library.
 */
import {
  findExtension,
  Malformed,
  type ParsedCert,
  parseCert,
  readTlv,
  sameBytes,
  without
} from "../certificateDer.js"

export const POLYKEY_VERSION_OID = "1.3.6.1.4.1.57167.2.2.1"
export const NODE_SIGNATURE_OID = "1.3.6.1.4.1.57167.2.2.2"
const SUBJECT_ALT_NAME_OID = "2.5.29.17"
/** The URI scheme of quicmesh's marker. */
export const QUICMESH_URI_SCHEME = "quicmesh"

/** The Polykey release whose certificate format quicmesh's certificates follow. */
export const POLYKEY_FORMAT_VERSION = "1.15.1"

/** The whole DER (tag, length, content) of a dotted OID. */
const oidDer = (dotted: string): Uint8Array => {
  const arcs = dotted.split(".").map((a) => BigInt(a))
  const content: Array<number> = []
  for (const arc of [arcs[0]! * 40n + arcs[1]!, ...arcs.slice(2)]) {
    const groups = [Number(arc & 0x7fn)]
    for (let rest = arc >> 7n; rest > 0n; rest >>= 7n) groups.unshift(Number(rest & 0x7fn) | 0x80)
    content.push(...groups)
  }
  if (content.length > 127) throw new RangeError(`OID ${dotted} is too long`)
  return Uint8Array.from([0x06, content.length, ...content])
}

const NODE_SIGNATURE_OID_DER = oidDer(NODE_SIGNATURE_OID)
const SUBJECT_ALT_NAME_OID_DER = oidDer(SUBJECT_ALT_NAME_OID)
/** `quicmesh://` as the bytes that start the marker URI. */
const MARKER_PREFIX = Buffer.from(`${QUICMESH_URI_SCHEME}://`, "latin1")
/** The tag of a GeneralName's uniformResourceIdentifier ([6] IMPLICIT IA5String). */
const URI_TAG = 0x86

const ia5String = (text: string): Uint8Array =>
  Uint8Array.from([0x16, text.length, ...Buffer.from(text, "latin1")])

/** The extnValue content of the version extension. */
export const versionExtensionValue: Uint8Array = ia5String(POLYKEY_FORMAT_VERSION)
/** The marker URI of a node's certificate. */
export const markerUri = (nodeIdEncoded: string): string => `${QUICMESH_URI_SCHEME}://${nodeIdEncoded}`
/** The extnValue content of the node-signature extension for a 64-byte Ed25519 signature. */
export const nodeSignatureExtensionValue = (signature: Uint8Array): Uint8Array =>
  Uint8Array.from([0x04, signature.length, ...signature])

/**
 * What the node signature of a parsed certificate signs and the signature itself, or undefined
 * when it has no node-signature extension. Throws `Malformed` for one that does not parse.
 */
export const nodeSigned = (
  cert: ParsedCert
): { readonly body: Uint8Array; readonly signature: Uint8Array } | undefined => {
  const found = findExtension(cert, NODE_SIGNATURE_OID_DER)
  if (found === undefined || cert.extensions === undefined) return undefined
  const { der } = cert
  const inner = der.subarray(found.value.start, found.value.end)
  if (inner.length !== 66 || inner[0] !== 0x04 || inner[1] !== 64)
    throw new Malformed("the node signature is not a 64-byte OCTET STRING")
  return {
    body: without(der, [cert.tbsTlv, cert.extensions.field, cert.extensions.list], found.extension),
    signature: inner.subarray(2)
  }
}

/** Whether a parsed certificate's subjectAltName holds a `quicmesh://` URI. */
const hasMarker = (cert: ParsedCert): boolean => {
  const found = findExtension(cert, SUBJECT_ALT_NAME_OID_DER)
  if (found === undefined) return false
  const { der } = cert
  const names = readTlv(der, found.value.start, found.value.end, 0x30, "GeneralNames")
  for (let at = names.start; at < names.end; ) {
    const tag = der[at]!
    const name = readTlv(der, at, names.end, tag, "GeneralName")
    if (
      tag === URI_TAG &&
      name.end - name.start > MARKER_PREFIX.length &&
      sameBytes(der.subarray(name.start, name.start + MARKER_PREFIX.length), MARKER_PREFIX)
    )
      return true
    at = name.end
  }
  return false
}

/**
 * Whether a certificate (DER) carries quicmesh's marker: the peer that presents it as its leaf
 * speaks quicmesh's wire. False for anything that does not parse.
 */
export const isQuicmeshCertificate = (der: Uint8Array): boolean => {
  try {
    return hasMarker(parseCert(der))
  } catch (e) {
    if (e instanceof Malformed) return false
    throw e
  }
}

/**
 * Whether a leaf certificate (DER) is a Polykey node's: it carries Polykey's node signature
 * and not quicmesh's marker. A certificate with neither (a quicmesh node of a release before
 * this format) is not; nor is anything that does not parse.
 */
export const isPolykeyCertificate = (der: Uint8Array): boolean => {
  try {
    const cert = parseCert(der)
    return findExtension(cert, NODE_SIGNATURE_OID_DER) !== undefined && !hasMarker(cert)
  } catch (e) {
    if (e instanceof Malformed) return false
    throw e
  }
}
