/**
 * certificateDer: a strict little DER reader for exactly the X.509 fields quicmesh checks, and
 * the one DER edit it needs (a certificate body without one extension, for Polykey's node
 * signature). Parsing with `@peculiar/x509` costs about three Ed25519 verifications per
 * certificate; this is a small fraction of one. Nothing here imports the X.509 library.
 */

/** DER prefix of an Ed25519 SubjectPublicKeyInfo; the 32-byte public key follows. */
const SPKI_ED25519_PREFIX = Uint8Array.from([
  0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00
])
/** DER of the commonName attribute type (2.5.4.3). */
const CN_OID = Uint8Array.from([0x06, 0x03, 0x55, 0x04, 0x03])
/** Tags of the string types a CN is written in: UTF8String, PrintableString, IA5String. */
const CN_STRING_TAGS = [0x0c, 0x13, 0x16]

export interface Tlv {
  readonly tag: number
  /** Offset of the tag byte. */
  readonly header: number
  /** Offset of the content. */
  readonly start: number
  /** Offset just past the content. */
  readonly end: number
}

/** What a reader throws on bytes that are not the DER it expects; callers turn it into a value. */
export class Malformed {
  constructor(readonly detail: string) {}
}

/** Reads one DER TLV at `offset`, bounded by `limit`, expecting `tag`. */
export const readTlv = (der: Uint8Array, offset: number, limit: number, tag: number, what: string): Tlv => {
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

export const bytesOf = (der: Uint8Array, tlv: Tlv): Uint8Array => der.subarray(tlv.header, tlv.end)

export const sameBytes = (a: Uint8Array, b: Uint8Array): boolean => {
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

/** `CN=…` of a Name for messages, or a byte count when it has none. */
export const showName = (name: Uint8Array): string => {
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

/**
 * Whether the Name `name` (its whole DER) has a CN and every CN it has is exactly `text`.
 * Throws `Malformed` for a Name that does not parse.
 */
export const commonNameIs = (name: Uint8Array, text: string): boolean => {
  const outer = readTlv(name, 0, name.length, 0x30, "Name")
  let found = false
  for (let at = outer.start; at < outer.end; ) {
    const rdn = readTlv(name, at, outer.end, 0x31, "RelativeDistinguishedName")
    for (let a = rdn.start; a < rdn.end; ) {
      const attribute = readTlv(name, a, rdn.end, 0x30, "AttributeTypeAndValue")
      const type = readTlv(name, attribute.start, attribute.end, 0x06, "AttributeType")
      if (sameBytes(bytesOf(name, type), CN_OID)) {
        const tag = name[type.end]!
        if (!CN_STRING_TAGS.includes(tag)) return false
        const value = readTlv(name, type.end, attribute.end, tag, "CN")
        if (value.end - value.start !== text.length) return false
        for (let i = 0; i < text.length; i++) if (name[value.start + i] !== text.charCodeAt(i)) return false
        found = true
      }
      a = attribute.end
    }
    at = rdn.end
  }
  return found
}

export interface ParsedCert {
  readonly der: Uint8Array
  /** The TBSCertificate's TLV in `der`. */
  readonly tbsTlv: Tlv
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
  /** The `[3]` field and the SEQUENCE OF Extension inside it, when the certificate has them. */
  readonly extensions: { readonly field: Tlv; readonly list: Tlv } | undefined
}

export const parseCert = (der: Uint8Array): ParsedCert => {
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
  const spkiTlv = readTlv(der, subject.end, tbs.end, 0x30, "subjectPublicKeyInfo")
  const spki = bytesOf(der, spkiTlv)
  const ed25519 =
    spki.length === SPKI_ED25519_PREFIX.length + 32 &&
    sameBytes(spki.subarray(0, SPKI_ED25519_PREFIX.length), SPKI_ED25519_PREFIX)
      ? spki.subarray(SPKI_ED25519_PREFIX.length)
      : undefined
  at = spkiTlv.end
  if (der[at] === 0x81) at = readTlv(der, at, tbs.end, 0x81, "issuerUniqueID").end
  if (der[at] === 0x82) at = readTlv(der, at, tbs.end, 0x82, "subjectUniqueID").end
  let extensions: ParsedCert["extensions"]
  if (at < tbs.end) {
    const field = readTlv(der, at, tbs.end, 0xa3, "extensions")
    const list = readTlv(der, field.start, field.end, 0x30, "Extensions")
    if (list.end !== field.end || field.end !== tbs.end)
      throw new Malformed("trailing bytes after extensions")
    extensions = { field, list }
  }
  return {
    der,
    tbsTlv: tbs,
    tbs: bytesOf(der, tbs),
    algorithm: bytesOf(der, algorithm),
    signature: der.subarray(signature.start + 1, signature.end),
    issuer: bytesOf(der, issuer),
    subject: bytesOf(der, subject),
    notBefore: notBefore.ms,
    notAfter: notAfter.ms,
    ed25519,
    extensions
  }
}

/** An extension of a certificate: its whole TLV and its extnValue (an OCTET STRING). */
export interface FoundExtension {
  readonly extension: Tlv
  readonly value: Tlv
}

/** The extension whose extnID is `oid` (the OID's whole DER), or undefined. */
export const findExtension = (cert: ParsedCert, oid: Uint8Array): FoundExtension | undefined => {
  if (cert.extensions === undefined) return undefined
  const { der } = cert
  const { list } = cert.extensions
  for (let at = list.start; at < list.end; ) {
    const extension = readTlv(der, at, list.end, 0x30, "Extension")
    const id = readTlv(der, extension.start, extension.end, 0x06, "extnID")
    if (sameBytes(bytesOf(der, id), oid)) {
      let next = id.end
      if (der[next] === 0x01) next = readTlv(der, next, extension.end, 0x01, "critical").end
      const value = readTlv(der, next, extension.end, 0x04, "extnValue")
      if (value.end !== extension.end) throw new Malformed("trailing bytes in an extension")
      return { extension, value }
    }
    at = extension.end
  }
  return undefined
}

/** DER length octets of `n` (below 2^24, as `readTlv` reads them). */
const lengthOctets = (n: number): Array<number> =>
  n < 0x80
    ? [n]
    : n < 0x100
      ? [0x81, n]
      : n < 0x10000
        ? [0x82, n >> 8, n & 0xff]
        : [0x83, n >> 16, (n >> 8) & 0xff, n & 0xff]

/**
 * The bytes of `path[0]` without `cut`. Each TLV of `path` (all in `der`) contains the next one,
 * and the last contains `cut`; their lengths shrink by what is cut, and their length octets are
 * re-encoded (they may get shorter too).
 */
export const without = (der: Uint8Array, path: ReadonlyArray<Tlv>, cut: Tlv): Uint8Array => {
  const headers: Array<Array<number>> = []
  let shrink = cut.end - cut.header
  for (let k = path.length - 1; k >= 0; k--) {
    const t = path[k]!
    const header = [t.tag, ...lengthOctets(t.end - t.start - shrink)]
    headers[k] = header
    shrink += t.start - t.header - header.length
  }
  const outer = path[0]!
  const out = new Uint8Array(outer.end - outer.header - shrink)
  let w = 0
  for (let k = 0; k < path.length; k++) {
    out.set(headers[k]!, w)
    w += headers[k]!.length
    const until = k + 1 < path.length ? path[k + 1]!.header : cut.header
    out.set(der.subarray(path[k]!.start, until), w)
    w += until - path[k]!.start
  }
  out.set(der.subarray(cut.end, path[path.length - 1]!.end), w)
  w += path[path.length - 1]!.end - cut.end
  for (let k = path.length - 2; k >= 0; k--) {
    out.set(der.subarray(path[k + 1]!.end, path[k]!.end), w)
    w += path[k]!.end - path[k + 1]!.end
  }
  return out
}
