/**
 * A raw Ed25519 public key (a NodeId's 32 bytes) as a node:crypto KeyObject, with no X.509
 * code: the main entry verifies signatures with it (hole-punch requests), and only the
 * certificate machinery (`certificates.ts`) needs the X.509 library.
 */
import * as nodeCrypto from "node:crypto"

/** The bytes in base64url, without copying them. */
export const base64url = (bytes: Uint8Array): string =>
  Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64url")

/** A public KeyObject for a raw Ed25519 key (JWK import: much cheaper than SPKI DER). */
export const publicKeyObject = (raw: Uint8Array): nodeCrypto.KeyObject =>
  nodeCrypto.createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x: base64url(raw) }, format: "jwk" })
