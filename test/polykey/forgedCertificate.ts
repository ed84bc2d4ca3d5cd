/**
 * A KeyRing presenting a certificate in Polykey's format whose subject CN names whichever
 * NodeId the test chooses: self-signed by the KeyRing's own Ed25519 key, with Polykey's version
 * extension and a node signature of that same key (so Polykey's checks of the signature and
 * node signature pass), and no quicmesh marker. With the KeyRing's own NodeId in the CN it is an
 * honest certificate; with another node's (a victim's) it claims that node's identity with the
 * attacker's key, which quicmesh refuses (`cn-mismatch`) and Polykey 1.15.1 accepts (it reads a
 * peer's NodeId from the CN). Made here by the test itself, with the X.509 library directly.
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

/**
 * A self-signed certificate (DER) for `keys` in Polykey's format, valid for a day, whose subject
 * and issuer are `CN=<claimed>`.
 */
export const polykeyFormatCert = (keys: Ed25519KeyPair, claimed: NodeId.NodeId): Effect.Effect<Uint8Array> =>
  Effect.promise(async () => {
    const subtle = webcrypto.subtle
    const [publicKey, signingKey] = await Promise.all([
      subtle.importKey("raw", keys.nodeId, ED25519, true, ["verify"]),
      subtle.importKey("jwk", keys.privateKeyJwk() as webcrypto.JsonWebKey, ED25519, false, ["sign"])
    ])
    const name = `CN=${NodeId.encode(claimed)}`
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
    const extensions = [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(
        x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign,
        true
      ),
      new x509.Extension(POLYKEY_VERSION_OID, false, versionExtensionValue)
    ]
    // The node signature: the key's signature over the certificate without that extension.
    const unsigned = await x509.X509CertificateGenerator.create({ ...body, extensions })
    const nodeSignature = nodeSignatureExtensionValue(new Uint8Array(unsigned.signature))
    const cert = await x509.X509CertificateGenerator.create({
      ...body,
      extensions: [...extensions, new x509.Extension(NODE_SIGNATURE_OID, false, nodeSignature)]
    })
    return new Uint8Array(cert.rawData)
  })

/**
 * KeyRingTest's KeyRing for `seed` (its key, its verification of peers), presenting
 * `polykeyFormatCert` with `claimed` in the CN instead of its own chain.
 */
export const claimingKeyRing = (seed: string, claimed: NodeId.NodeId) =>
  Layer.effect(
    KeyRing,
    Effect.gen(function* () {
      const keyRing = yield* KeyRing
      const der = yield* polykeyFormatCert(KeyRingTest.makeKeyPair(seed), claimed)
      const tls = yield* keyRing.tlsConfig
      return {
        ...keyRing,
        tlsConfig: Effect.succeed({
          keyPrivatePem: tls.keyPrivatePem,
          certChainPem: new x509.X509Certificate(der).toString("pem")
        }),
        certChainDer: Effect.succeed([der]),
        changes: Stream.empty
      }
    })
  ).pipe(Layer.provide(KeyRingTest.layer(seed)))
