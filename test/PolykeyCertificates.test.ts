// @peculiar/x509 needs a Reflect polyfill loaded before it.
import "reflect-metadata"
import * as nodeCrypto from "node:crypto"
import * as fs from "node:fs"
import * as fsp from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { describe, expect, it } from "@effect/vitest"
import { AsnConvert } from "@peculiar/asn1-schema"
import { Extensions, TBSCertificate } from "@peculiar/asn1-x509"
import * as x509 from "@peculiar/x509"
import { Effect, Either, TestClock } from "effect"
import {
  certChainFromPem,
  certChainToPem,
  generateKeyPair,
  issueCert,
  keyPairFromPem,
  makeCertChain,
  renewedFrom,
  selfSignedCert,
  subjectName,
  validityFrom,
  verifyCertChain
} from "../src/internal/certificates.js"
import { isPolykeyCertificate, isQuicmeshCertificate } from "../src/internal/polykey/certificateFormat.js"
import * as KeyRingLive from "../src/layers/KeyRingLive.js"
import * as KeyRingTest from "../src/layers/KeyRingTest.js"
import { KeyRing } from "../src/services/KeyRing.js"
import { encode, type NodeId } from "../src/services/NodeId.js"
import { plainCert } from "./fixtures/x509Certificate.js"

const VERSION_OID = "1.3.6.1.4.1.57167.2.2.1"
const NODE_SIGNATURE_OID = "1.3.6.1.4.1.57167.2.2.2"
const HOUR = 60 * 60 * 1000
const DAY = 24 * HOUR

const fixture = (name: string) =>
  fs.readFileSync(fileURLToPath(new URL(`./fixtures/polykey/${name}`, import.meta.url)), "utf8")
const polykeyChain = (name: string) => certChainFromPem(fixture(name))
const manifest = JSON.parse(fixture("manifest.json")) as {
  readonly polykey: string
  readonly nodeIds: ReadonlyArray<string>
  readonly times: ReadonlyArray<string>
}
const at = (iso: string, plusMs = 0) => new Date(new Date(iso).getTime() + plusMs)

const verdict = (certs: ReadonlyArray<Uint8Array>, now: Date) =>
  Either.match(verifyCertChain(certs, now), {
    onLeft: (e) => `${e.reason}@${e.index}`,
    onRight: (id) => `ok:${encode(id)}`
  })
const ok = (id: NodeId | string) => `ok:${typeof id === "string" ? id : encode(id)}`

/** The raw 32-byte Ed25519 key in a certificate's SubjectPublicKeyInfo. */
const rawKey = (cert: x509.X509Certificate) => new Uint8Array(cert.publicKey.rawData).subarray(-32)
/** The exact TBSCertificate bytes of a parsed certificate (the library keeps them). */
const tbsOf = (cert: x509.X509Certificate) =>
  new Uint8Array((cert as unknown as { readonly tbs: ArrayBuffer }).tbs)
const ed25519Key = (raw: Uint8Array) =>
  nodeCrypto.createPublicKey({
    key: { kty: "OKP", crv: "Ed25519", x: Buffer.from(raw).toString("base64url") },
    format: "jwk"
  })

/**
 * Checks Polykey's node signature the way Polykey does, with none of quicmesh's code: the body
 * is the TBSCertificate decoded and re-encoded by the ASN.1 library without the node-signature
 * extension, verified with the certificate's own key (or `key`).
 */
const nodeSignatureVerifies = (der: Uint8Array, key?: Uint8Array): boolean => {
  const cert = new x509.X509Certificate(der)
  const extension = cert.extensions.find((e) => e.type === NODE_SIGNATURE_OID)
  if (extension === undefined) return false
  const value = new Uint8Array(extension.value)
  expect([value[0], value[1], value.length]).toEqual([0x04, 64, 66])
  const tbs = AsnConvert.parse(tbsOf(cert), TBSCertificate)
  const kept = tbs.extensions!.filter((e) => e.extnID !== NODE_SIGNATURE_OID)
  tbs.extensions = new Extensions(kept)
  const body = new Uint8Array(AsnConvert.serialize(tbs))
  return nodeCrypto.verify(null, body, ed25519Key(key ?? rawKey(cert)), value.subarray(2))
}

describe("quicmesh certificates in Polykey's format", () => {
  it.effect("carry Polykey's version and a node signature by the subject's key, checked independently", () =>
    Effect.gen(function* () {
      const old = generateKeyPair()
      const next = generateKeyPair()
      const now = Date.now()
      const [single] = yield* makeCertChain(old, validityFrom(now))
      const renewed = yield* makeCertChain(next, validityFrom(now), old)
      for (const [der, subject, issuer] of [
        [single!, old, old],
        [renewed[0]!, next, old],
        [renewed[1]!, old, old]
      ] as const) {
        const cert = new x509.X509Certificate(der)
        expect(cert.subject).toBe(`CN=${encode(subject.nodeId)}`)
        expect(cert.issuer).toBe(`CN=${encode(issuer.nodeId)}`)
        expect(AsnConvert.parse(tbsOf(cert), TBSCertificate).signature.algorithm).toBe("1.3.101.112")
        const version = cert.extensions.find((e) => e.type === VERSION_OID)
        // An IA5String holding the Polykey release whose format this follows.
        expect(Buffer.from(version!.value).toString("latin1")).toBe("\x16\x061.15.1")
        expect(nodeSignatureVerifies(der)).toBe(true)
        // The whole certificate is signed by the issuer's key over the full body.
        const signature = new Uint8Array(cert.signature)
        expect(nodeCrypto.verify(null, tbsOf(cert), ed25519Key(issuer.nodeId), signature)).toBe(true)
      }
      // The same check with another key than the subject's fails: it checks what it claims to.
      expect(nodeSignatureVerifies(renewed[0]!, old.nodeId)).toBe(false)
    })
  )

  it.effect("carry quicmesh's marker, which tells them from Polykey's", () =>
    Effect.gen(function* () {
      const keys = generateKeyPair()
      const chain = yield* makeCertChain(keys, validityFrom(Date.now()), generateKeyPair())
      expect(chain.map(isQuicmeshCertificate)).toEqual([true, true])
      const san = new x509.X509Certificate(chain[0]!).getExtension(x509.SubjectAlternativeNameExtension)
      expect(san?.names.toJSON()).toEqual([{ type: "url", value: `quicmesh://${encode(keys.nodeId)}` }])
      for (const name of ["single.pem", "renewed.pem", "renewed-twice.pem"])
        expect(polykeyChain(name).map(isQuicmeshCertificate)).not.toContain(true)
      // Without the marker (same key, same name, a URI of another scheme) it is not ours.
      const bare = yield* plainCert(
        keys,
        subjectName(keys.nodeId),
        { name: subjectName(keys.nodeId), keys },
        new Date(),
        new Date(Date.now() + DAY),
        [new x509.SubjectAlternativeNameExtension([{ type: "url", value: `pk://${encode(keys.nodeId)}` }])]
      )
      expect(isQuicmeshCertificate(bare)).toBe(false)
      expect(isQuicmeshCertificate(new Uint8Array(0))).toBe(false)
      expect(isQuicmeshCertificate(chain[0]!.subarray(0, chain[0]!.length - 1))).toBe(false)
      // A Polykey node's: Polykey's node signature and no marker. Ours is not, and neither is a
      // certificate with neither (a quicmesh node of a release before this format).
      for (const name of ["single.pem", "renewed.pem", "renewed-twice.pem"])
        expect(isPolykeyCertificate(polykeyChain(name)[0]!)).toBe(true)
      expect(isPolykeyCertificate(chain[0]!)).toBe(false)
      expect(isPolykeyCertificate(bare)).toBe(false)
      expect(isPolykeyCertificate(new Uint8Array(0))).toBe(false)
    })
  )
})

describe("Polykey's certificates and chains", () => {
  const [first, second, third] = manifest.nodeIds as [string, string, string]
  const [t0, t1, t2] = manifest.times as [string, string, string]

  it("come from Polykey 1.15.1: one self-signed certificate, then two renewals", () => {
    expect(manifest.polykey).toBe("1.15.1")
    expect(
      [polykeyChain("single.pem"), polykeyChain("renewed.pem"), polykeyChain("renewed-twice.pem")].map(
        (c) => c.length
      )
    ).toEqual([1, 2, 2])
  })

  it("a Polykey certificate is accepted while valid, and its NodeId is its key's", () => {
    const chain = polykeyChain("single.pem")
    expect(verdict(chain, at(t0, 12 * HOUR))).toBe(ok(first))
    expect(verdict(chain, at(t0, 2 * DAY))).toBe("expired@0")
  })

  it("a renewed Polykey chain whose older certificate has expired is accepted", () => {
    const chain = polykeyChain("renewed.pem")
    const now = at(t1, 12 * HOUR)
    expect(new x509.X509Certificate(chain[1]!).notAfter.getTime()).toBeLessThan(now.getTime())
    expect(verdict(chain, now)).toBe(ok(second))
    expect(encode(renewedFrom(chain)!)).toBe(first)
  })

  it("a Polykey chain whose last certificate is not self-signed (and has expired) is accepted", () => {
    const chain = polykeyChain("renewed-twice.pem")
    const tail = new x509.X509Certificate(chain[1]!)
    expect(tail.issuer).toBe(`CN=${first}`)
    expect(tail.subject).toBe(`CN=${second}`)
    expect(verdict(chain, at(t2, 30 * DAY))).toBe(ok(third))
    expect(encode(renewedFrom(chain)!)).toBe(second)
    // The leaf alone is still valid; the leaf expired is refused.
    expect(verdict(chain, at(t2, 400 * DAY))).toBe("expired@0")
  })

  it.effect("the KeyRing accepts them against its Clock", () =>
    Effect.gen(function* () {
      const keyRing = yield* KeyRing
      yield* TestClock.setTime(at(t2, 30 * DAY).getTime())
      expect(encode(yield* keyRing.verifyCertChain(polykeyChain("renewed-twice.pem")))).toBe(third)
      const refused = yield* Effect.flip(keyRing.verifyCertChain(polykeyChain("renewed.pem")))
      expect([refused.reason, refused.index]).toEqual(["expired", 0])
    }).pipe(Effect.provide(KeyRingTest.layer("polykey-clock")))
  )
})

describe("chain rules for Polykey's chains, with quicmesh's certificates", () => {
  const now = Date.UTC(2031, 0, 1)

  it.effect("an expired older certificate is accepted; one valid only later is not", () =>
    Effect.gen(function* () {
      const old = generateKeyPair()
      const next = generateKeyPair()
      const leaf = yield* issueCert(next, old, validityFrom(now - DAY, 30 * DAY))
      const expiredRoot = yield* selfSignedCert(old, validityFrom(now - 10 * DAY, DAY))
      expect(verdict([leaf, expiredRoot], new Date(now))).toBe(ok(next.nodeId))
      const laterRoot = yield* selfSignedCert(old, validityFrom(now + DAY, DAY))
      expect(verdict([leaf, laterRoot], new Date(now))).toBe("not-yet-valid@1")
    })
  )

  it.effect("a last certificate whose issuer is absent vouches for itself by its node signature", () =>
    Effect.gen(function* () {
      const [k1, k2, k3] = [generateKeyPair(), generateKeyPair(), generateKeyPair()]
      const validity = validityFrom(now - DAY)
      const leaf = yield* issueCert(k3, k2, validity)
      const middle = yield* issueCert(k2, k1, validity)
      expect(verdict([leaf, middle], new Date(now))).toBe(ok(k3.nodeId))
      expect(encode(renewedFrom([leaf, middle])!)).toBe(encode(k2.nodeId))
      // Its node signature is checked: one flipped byte in it is refused.
      const signature = Buffer.from(new x509.X509Certificate(middle).extensions.at(-1)!.value).subarray(2)
      const tampered = Uint8Array.from(middle)
      const offset = Buffer.from(tampered).indexOf(signature)
      tampered[offset + 10] = tampered[offset + 10]! ^ 0x01
      expect(verdict([leaf, tampered], new Date(now))).toBe("bad-signature@1")
      // Without a node signature (made by the X.509 library alone) it cannot vouch for itself.
      const unsigned = yield* plainCert(
        k2,
        subjectName(k2.nodeId),
        { name: subjectName(k1.nodeId), keys: k1 },
        validity.notBefore,
        validity.notAfter
      )
      expect(verdict([leaf, unsigned], new Date(now))).toBe("broken-chain@1")
    })
  )

  it.effect("an expired leaf is refused", () =>
    Effect.gen(function* () {
      const keys = generateKeyPair()
      const chain = yield* makeCertChain(keys, validityFrom(now - 2 * DAY, DAY), generateKeyPair())
      expect(verdict(chain, new Date(now))).toBe("expired@0")
    })
  )

  it.effect("a certificate whose CN names another NodeId than its key's is refused", () =>
    Effect.gen(function* () {
      const victim = generateKeyPair()
      const attacker = generateKeyPair()
      const notBefore = new Date(now - DAY)
      const notAfter = new Date(now + DAY)
      const claimVictim = { name: subjectName(victim.nodeId), keys: attacker }
      const forged = yield* plainCert(attacker, subjectName(victim.nodeId), claimVictim, notBefore, notAfter)
      const result = verifyCertChain([forged], new Date(now))
      expect(verdict([forged], new Date(now))).toBe("cn-mismatch@0")
      expect(Either.isLeft(result) && result.left.message).toBe(
        `certificate 0: cn-mismatch: the subject CN=${encode(victim.nodeId)} is not the NodeId of its key, ${encode(attacker.nodeId)}`
      )
      // Deeper in a chain: the attacker's key issues a leaf while its certificate names the victim.
      const leafKeys = generateKeyPair()
      const leaf = yield* plainCert(leafKeys, subjectName(leafKeys.nodeId), claimVictim, notBefore, notAfter)
      expect(verdict([leaf, forged], new Date(now))).toBe("cn-mismatch@1")
      // A certificate with no CN names no NodeId.
      const nameless = yield* plainCert(
        attacker,
        "O=quicmesh",
        { name: "O=quicmesh", keys: attacker },
        notBefore,
        notAfter
      )
      expect(verdict([nameless], new Date(now))).toBe("cn-mismatch@0")
      // The honest control: same construction, the attacker's own NodeId.
      const own = subjectName(attacker.nodeId)
      const honest = yield* plainCert(attacker, own, { name: own, keys: attacker }, notBefore, notAfter)
      expect(verdict([honest], new Date(now))).toBe(ok(attacker.nodeId))
    })
  )

  it.effect("a renewal with the same key is no change of NodeId", () =>
    Effect.gen(function* () {
      const keys = generateKeyPair()
      const validity = validityFrom(now - DAY)
      const chain = [
        yield* selfSignedCert(keys, { ...validity, serialNumber: "02" }),
        yield* selfSignedCert(keys, { ...validity, serialNumber: "01" })
      ]
      expect(verdict(chain, new Date(now))).toBe(ok(keys.nodeId))
      expect(renewedFrom(chain)).toBeUndefined()
    })
  )
})

describe("KeyRingLive and older certificates", () => {
  it.scopedLive("a chain made before the Polykey format is rebuilt for the same key", () =>
    Effect.gen(function* () {
      const dir = yield* Effect.acquireRelease(
        Effect.promise(() => fsp.mkdtemp(path.join(os.tmpdir(), "keyring-polykey-"))),
        (d) => Effect.promise(() => fsp.rm(d, { recursive: true, force: true }))
      )
      const first = yield* KeyRingLive.make({ nodePath: dir })
      const id = yield* first.nodeId
      // The certificate quicmesh made before: same name and key, no Polykey extensions.
      const name = subjectName(id)
      const keyPem = yield* Effect.promise(() => fsp.readFile(path.join(dir, KeyRingLive.KEY_FILE), "utf8"))
      const self = Either.getOrThrow(keyPairFromPem(keyPem))
      const older = yield* plainCert(
        self,
        name,
        { name, keys: self },
        new Date(Date.now() - HOUR),
        new Date(Date.now() + DAY)
      )
      expect(verdict([older], new Date())).toBe(ok(id))
      expect(isQuicmeshCertificate(older)).toBe(false)
      yield* Effect.promise(() =>
        fsp.writeFile(path.join(dir, KeyRingLive.CERT_FILE), certChainToPem([older]))
      )
      const restarted = yield* KeyRingLive.make({ nodePath: dir })
      const chain = yield* restarted.certChainDer
      expect(encode(yield* restarted.verifyCertChain(chain))).toBe(encode(id))
      expect(chain.map(isQuicmeshCertificate)).toEqual([true])
      expect(nodeSignatureVerifies(chain[0]!)).toBe(true)
      const onDisk = certChainFromPem(
        yield* Effect.promise(() => fsp.readFile(path.join(dir, KeyRingLive.CERT_FILE), "utf8"))
      )
      expect(Buffer.from(onDisk[0]!).equals(Buffer.from(chain[0]!))).toBe(true)
    })
  )
})
