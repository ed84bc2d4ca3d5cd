/**
 * KeyRings that present a certificate the test makes itself (with the X.509 library directly,
 * so that it stays what the test needs whatever quicmesh's KeyRing makes); everything else (the
 * key, verifying the peer's chain) is KeyRingTest's. Each certificate is self-signed Ed25519
 * with CA basic constraints and key usage, subject and issuer `CN=<NodeId>`, valid for a day:
 *
 * - `plainCertKeyRing`: none of Polykey's extensions (its node signature, OID
 *   1.3.6.1.4.1.57167.2.2.2, and version, …2.2.1): quicmesh's certificate profile without what
 *   #21 adds for Polykey, which Polykey refuses.
 * - `claimingKeyRing`: Polykey's format (version extension, a node signature of the same key:
 *   Polykey's checks pass) and no quicmesh marker, its CN naming whichever NodeId the test
 *   chooses. With another node's (a victim's) it claims that node's identity with the
 *   attacker's key, which quicmesh refuses (`cn-mismatch`) and Polykey 1.15.1 accepts (it reads
 *   a peer's NodeId from the CN).
 */
import "reflect-metadata"
import { randomBytes, webcrypto } from "node:crypto"
import * as x509 from "@peculiar/x509"
import { Effect, Layer, Stream } from "effect"
import type { Ed25519KeyPair } from "../../src/internal/certificates.js"
import {
  NODE_SIGNATURE_OID,
  nodeSignatureExtensionValue,
  POLYKEY_VERSION_OID,
  versionExtensionValue
} from "../../src/internal/polykey/certificateFormat.js"
import * as KeyRingTest from "../../src/layers/KeyRingTest.js"
import { KeyRing } from "../../src/services/KeyRing.js"
import * as NodeId from "../../src/services/NodeId.js"

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0])

const ED25519 = { name: "Ed25519" } as const

/** `keys` as WebCrypto keys: the public one to certify, the private one to sign with. */
const cryptoKeys = (keys: Ed25519KeyPair) =>
  Promise.all([
    webcrypto.subtle.importKey("raw", keys.nodeId, ED25519, true, ["verify"]),
    webcrypto.subtle.importKey("jwk", keys.privateKeyJwk() as webcrypto.JsonWebKey, ED25519, false, ["sign"])
  ])

/**
 * A self-signed certificate (DER) for `keys` with subject and issuer `CN=<named>`, CA basic
 * constraints and key usage; `polykey` adds Polykey's version extension and the key's node
 * signature.
 */
const selfSigned = (
  keys: Ed25519KeyPair,
  named: NodeId.NodeId,
  polykey: boolean
): Effect.Effect<Uint8Array> =>
  Effect.promise(async () => {
    const [publicKey, signingKey] = await cryptoKeys(keys)
    const name = `CN=${NodeId.encode(named)}`
    const serial = randomBytes(16)
    serial[0] = (serial[0]! & 0x7f) | 0x01
    const now = Date.now()
    const body = {
      serialNumber: serial.toString("hex"),
      subject: name,
      issuer: name,
      notBefore: new Date(now - 60_000),
      notAfter: new Date(now + 24 * 3600_000),
      signingAlgorithm: ED25519,
      publicKey: publicKey as never,
      signingKey: signingKey as never
    }
    const extensions: Array<x509.Extension> = [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(
        x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign,
        true
      )
    ]
    if (!polykey)
      return new Uint8Array((await x509.X509CertificateGenerator.create({ ...body, extensions })).rawData)
    extensions.push(new x509.Extension(POLYKEY_VERSION_OID, false, versionExtensionValue))
    // The node signature: the key's signature over the certificate without that extension.
    const unsigned = await x509.X509CertificateGenerator.create({ ...body, extensions })
    const nodeSignature = nodeSignatureExtensionValue(new Uint8Array(unsigned.signature))
    const cert = await x509.X509CertificateGenerator.create({
      ...body,
      extensions: [...extensions, new x509.Extension(NODE_SIGNATURE_OID, false, nodeSignature)]
    })
    return new Uint8Array(cert.rawData)
  })

/** KeyRingTest's KeyRing for `seed`, presenting `der` (made from its key pair) instead of its own chain. */
const presenting = (seed: string, der: (keys: Ed25519KeyPair) => Effect.Effect<Uint8Array>) =>
  Layer.effect(
    KeyRing,
    Effect.gen(function* () {
      const keyRing = yield* KeyRing
      const cert = yield* der(KeyRingTest.makeKeyPair(seed))
      const tls = yield* keyRing.tlsConfig
      return {
        ...keyRing,
        tlsConfig: Effect.succeed({
          keyPrivatePem: tls.keyPrivatePem,
          certChainPem: new x509.X509Certificate(cert).toString("pem")
        }),
        certChainDer: Effect.succeed([cert]),
        changes: Stream.empty
      }
    })
  ).pipe(Layer.provide(KeyRingTest.layer(seed)))

/** KeyRingTest's KeyRing for `seed`, presenting a plain certificate (see the module comment). */
export const plainCertKeyRing = (seed: string) =>
  presenting(seed, (keys) => selfSigned(keys, keys.nodeId, false))

/** KeyRingTest's KeyRing for `seed`, presenting a Polykey-format certificate naming `claimed`. */
export const claimingKeyRing = (seed: string, claimed: NodeId.NodeId) =>
  presenting(seed, (keys) => selfSigned(keys, claimed, true))
