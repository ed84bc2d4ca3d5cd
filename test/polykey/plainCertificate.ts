/**
 * A KeyRing whose TLS certificate is a plain one: self-signed Ed25519, subject and issuer
 * `CN=<NodeId>`, CA basic constraints and key usage, and none of Polykey's extensions (its
 * node signature, OID 1.3.6.1.4.1.57167.2.2.2, and version, …2.2.1): quicmesh's certificate
 * profile without what #21 adds for Polykey, made here by the test itself so that it stays
 * plain whatever quicmesh's KeyRing makes. Everything else (the key, verifying the peer's
 * chain) is KeyRingTest's.
 */
import "reflect-metadata"
import { createPrivateKey, createPublicKey, randomBytes, webcrypto } from "node:crypto"
import * as x509 from "@peculiar/x509"
import { Effect, Layer, Stream } from "effect"
import * as KeyRingTest from "../../src/layers/KeyRingTest.js"
import { KeyRing } from "../../src/services/KeyRing.js"
import * as NodeId from "../../src/services/NodeId.js"

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0])

const ED25519 = { name: "Ed25519" } as const

/** A plain self-signed certificate (DER) for the Ed25519 key in `keyPrivatePem`. */
export const plainSelfSignedCert = (
  keyPrivatePem: string,
  nodeId: NodeId.NodeId
): Effect.Effect<Uint8Array> =>
  Effect.promise(async () => {
    const privateKey = createPrivateKey(keyPrivatePem)
    const [signingKey, publicKey] = await Promise.all([
      webcrypto.subtle.importKey(
        "pkcs8",
        privateKey.export({ type: "pkcs8", format: "der" }),
        ED25519,
        false,
        ["sign"]
      ),
      webcrypto.subtle.importKey(
        "spki",
        createPublicKey(privateKey).export({ type: "spki", format: "der" }),
        ED25519,
        true,
        ["verify"]
      )
    ])
    const name = `CN=${NodeId.encode(nodeId)}`
    const serial = randomBytes(16)
    serial[0] = (serial[0]! & 0x7f) | 0x01
    const now = Date.now()
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: serial.toString("hex"),
      subject: name,
      issuer: name,
      notBefore: new Date(now - 60_000),
      notAfter: new Date(now + 24 * 3600_000),
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

/** KeyRingTest's KeyRing for `seed`, presenting a plain certificate instead of its own chain. */
export const plainCertKeyRing = (seed: string) =>
  Layer.effect(
    KeyRing,
    Effect.gen(function* () {
      const keyRing = yield* KeyRing
      const tls = yield* keyRing.tlsConfig
      const der = yield* plainSelfSignedCert(tls.keyPrivatePem, yield* keyRing.nodeId)
      const plain = {
        keyPrivatePem: tls.keyPrivatePem,
        certChainPem: new x509.X509Certificate(der).toString("pem")
      }
      return {
        ...keyRing,
        tlsConfig: Effect.succeed(plain),
        certChainDer: Effect.succeed([der]),
        changes: Stream.empty
      }
    })
  ).pipe(Layer.provide(KeyRingTest.layer(seed)))
