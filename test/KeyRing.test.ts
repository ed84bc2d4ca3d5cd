// @peculiar/x509 needs a Reflect polyfill loaded before it.
import "reflect-metadata"
import * as nodeCrypto from "node:crypto"
import * as fs from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "@effect/vitest"
import Logger, { LogLevel } from "@matrixai/logger"
import { QUICClient, QUICServer } from "@matrixai/quic"
import * as x509 from "@peculiar/x509"
import {
  Chunk,
  Effect,
  Logger as EffectLogger,
  Either,
  Exit,
  Fiber,
  FiberStatus,
  Stream,
  TestClock
} from "effect"
import {
  certChainFromPem,
  certChainToPem,
  type Ed25519KeyPair,
  generateKeyPair,
  issueCert,
  keyPairFromPem,
  makeCertChain,
  selfSignedCert,
  sign,
  subjectName,
  validityFrom,
  verifyCertChain,
  verifySignature
} from "../src/internal/certificates.js"
import * as KeyRingLive from "../src/layers/KeyRingLive.js"
import * as KeyRingTest from "../src/layers/KeyRingTest.js"
import { CertificateError, KeyRing, KeyRingError, type KeyRingService } from "../src/services/KeyRing.js"
import { encode, equals, type NodeId } from "../src/services/NodeId.js"
import { plainCert } from "./fixtures/x509Certificate.js"

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const YEAR = 365 * 24 * 60 * 60 * 1000

/** A fresh temporary directory, removed with the test's scope. */
const tempDir = Effect.acquireRelease(
  Effect.promise(() => fs.mkdtemp(path.join(os.tmpdir(), "keyring-"))),
  (dir) => Effect.promise(() => fs.rm(dir, { recursive: true, force: true }))
)

const startLive = (nodePath: string) =>
  Effect.flatMap(KeyRing, Effect.succeed).pipe(Effect.provide(KeyRingLive.layer({ nodePath })))

const startError = (nodePath: string) =>
  startLive(nodePath).pipe(
    Effect.flip,
    Effect.filterOrDieMessage((e): e is KeyRingError => e instanceof KeyRingError, "expected a KeyRingError")
  )

const mode = (file: string) => Effect.promise(() => fs.stat(file)).pipe(Effect.map((s) => s.mode & 0o777))
const readBytes = (file: string) => Effect.promise(() => fs.readFile(file))
const listDir = (dir: string) =>
  Effect.promise(() => fs.readdir(dir)).pipe(Effect.map((names) => names.sort()))

const run = (certs: ReadonlyArray<Uint8Array>, now: number | Date = Date.now()) =>
  verifyCertChain(certs, typeof now === "number" ? new Date(now) : now)
const reasonOf = (result: Either.Either<NodeId, CertificateError>) =>
  Either.match(result, { onLeft: (e) => `${e.reason}@${e.index}`, onRight: (id) => `ok:${encode(id)}` })
const ok = (id: NodeId) => `ok:${encode(id)}`

/** The base64 lines of a PEM private key: none of them may appear in any message. */
const secretLines = (pem: string) => pem.split("\n").filter((l) => l.length > 20 && !l.startsWith("-----"))
const expectNoSecret = (text: string, keyPem: string) => {
  expect(text).not.toContain("PRIVATE KEY")
  for (const line of secretLines(keyPem)) expect(text).not.toContain(line)
}

/** Collects every log line written while `effect` runs. */
const withLogs = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.gen(function* () {
    const lines: Array<string> = []
    const logger = EffectLogger.make(({ message }) => {
      lines.push(Array.isArray(message) ? message.map(String).join(" ") : String(message))
    })
    const result = yield* effect.pipe(
      Effect.provide(EffectLogger.replace(EffectLogger.defaultLogger, logger))
    )
    return [result, lines] as const
  })

/** Forks `changes` taking `n` items and waits until it is subscribed (suspended on the queue). */
const subscribe = (keyRing: KeyRingService, n: number) =>
  Effect.gen(function* () {
    const fiber = yield* Effect.fork(Stream.runCollect(Stream.take(keyRing.changes, n)))
    while (!FiberStatus.isSuspended(yield* fiber.status)) yield* Effect.yieldNow()
    return fiber
  })

/** A self-signed Ed25519 certificate whose subject is `name` but whose key is `keys` (a forgery). */
const forgedCert = (keys: Ed25519KeyPair, name: string, now: number) =>
  plainCert(keys, name, { name, keys }, new Date(now - 1000), new Date(now + YEAR))

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

describe("Certificates", () => {
  it.effect("a self-signed certificate verifies to its key's NodeId, with CN = NodeIdEncoded", () =>
    Effect.gen(function* () {
      const keys = generateKeyPair()
      const now = Date.now()
      const [der] = yield* makeCertChain(keys, validityFrom(now))
      expect(reasonOf(run([der!], now))).toBe(ok(keys.nodeId))
      const parsed = new x509.X509Certificate(der!)
      expect(parsed.subject).toBe(subjectName(keys.nodeId))
      expect(parsed.subject).toBe(`CN=${encode(keys.nodeId)}`)
      expect(parsed.issuer).toBe(parsed.subject)
      expect(parsed.notAfter.getTime() - parsed.notBefore.getTime()).toBe(YEAR)
      expect(yield* Effect.promise(() => parsed.isSelfSigned())).toBe(true)
    })
  )

  it.effect("a renewal chain [new issued by old, old self-signed] verifies to the new NodeId", () =>
    Effect.gen(function* () {
      const old = generateKeyPair()
      const next = generateKeyPair()
      const now = Date.now()
      const chain = yield* makeCertChain(next, validityFrom(now), old)
      expect(chain).toHaveLength(2)
      expect(reasonOf(run(chain, now))).toBe(ok(next.nodeId))
      expect(reasonOf(run([chain[1]!], now))).toBe(ok(old.nodeId))
      // Issuer order matters; a last certificate whose issuer is absent vouches for itself by
      // its node signature (Polykey drops the older certificates).
      expect(reasonOf(run([chain[1]!, chain[0]!], now))).toBe("broken-chain@0")
      expect(reasonOf(run([chain[0]!], now))).toBe(ok(next.nodeId))
    })
  )

  it("empty and unparsable input are typed failures, never exceptions", () => {
    expect(reasonOf(run([]))).toBe("empty@0")
    expect(reasonOf(run([new Uint8Array(0)]))).toBe("malformed@0")
    expect(reasonOf(run([Uint8Array.from([0x30, 0x82, 0xff, 0xff, 1, 2, 3])]))).toBe("malformed@0")
    expect(reasonOf(run([nodeCrypto.randomBytes(300)]))).toBe("malformed@0")
  })

  it.effect("every single-byte truncation or corruption of a certificate is rejected", () =>
    Effect.gen(function* () {
      const keys = generateKeyPair()
      const now = Date.now()
      const [der] = yield* makeCertChain(keys, validityFrom(now))
      for (let cut = 0; cut < der!.length; cut++)
        expect(Either.isLeft(run([der!.subarray(0, cut)], now))).toBe(true)
      const reasons = new Set<string>()
      for (let i = 0; i < der!.length; i++) {
        const tampered = Uint8Array.from(der!)
        tampered[i] = tampered[i]! ^ 0x01
        const result = run([tampered], now)
        // A flipped bit may only keep the certificate valid if it changed nothing we rely on.
        if (Either.isRight(result)) expect.fail(`flipping byte ${i} went unnoticed`)
        reasons.add(result.left.reason)
        expect(result.left).toBeInstanceOf(CertificateError)
      }
      expect(
        [...reasons].every((r) =>
          ["malformed", "bad-signature", "broken-chain", "expired", "not-yet-valid", "cn-mismatch"].includes(
            r
          )
        )
      ).toBe(true)
    })
  )

  it.effect("a flipped byte in the signature is a bad signature", () =>
    Effect.gen(function* () {
      const old = generateKeyPair()
      const next = generateKeyPair()
      const now = Date.now()
      const chain = yield* makeCertChain(next, validityFrom(now), old)
      for (const index of [0, 1]) {
        const tampered = chain.map((c) => Uint8Array.from(c))
        const cert = tampered[index]!
        cert[cert.length - 5] = cert[cert.length - 5]! ^ 0xff
        const result = run(tampered, now)
        expect(reasonOf(result)).toBe(`bad-signature@${index}`)
        expect(Either.isLeft(result) && result.left.message).toMatch(/^certificate \d: bad-signature: /)
      }
    })
  )

  it.effect("expired and not-yet-valid certificates are rejected with the index at fault", () =>
    Effect.gen(function* () {
      const old = generateKeyPair()
      const next = generateKeyPair()
      const now = Date.UTC(2030, 0, 1)
      const chain = yield* makeCertChain(next, validityFrom(now, 1000 * 60), old)
      expect(reasonOf(run(chain, now + 30_000))).toBe(ok(next.nodeId))
      expect(reasonOf(run(chain, now + 61_000))).toBe("expired@0")
      expect(reasonOf(run(chain, now - 1000))).toBe("not-yet-valid@0")
      // The issuer's certificate may have expired (Polykey keeps one so); not be valid only later.
      const shortRoot = yield* selfSignedCert(old, validityFrom(now, 10_000))
      expect(reasonOf(run([chain[0]!, shortRoot], now + 5_000))).toBe(ok(next.nodeId))
      expect(reasonOf(run([chain[0]!, shortRoot], now + 20_000))).toBe(ok(next.nodeId))
      const lateRoot = yield* selfSignedCert(old, validityFrom(now + 10_000))
      expect(reasonOf(run([chain[0]!, lateRoot], now + 5_000))).toBe("not-yet-valid@1")
      // GeneralizedTime (after 2049) is read as well as UTCTime.
      const far = yield* selfSignedCert(next, validityFrom(Date.UTC(2060, 5, 1)))
      expect(reasonOf(run([far], Date.UTC(2060, 6, 1)))).toBe(ok(next.nodeId))
      expect(reasonOf(run([far], Date.UTC(2062, 0, 1)))).toBe("expired@0")
    })
  )

  it.effect("a chain signed by a foreign key is rejected", () =>
    Effect.gen(function* () {
      const victim = generateKeyPair()
      const attacker = generateKeyPair()
      const leaf = generateKeyPair()
      const now = Date.now()
      const validity = validityFrom(now)
      // The leaf claims to be issued by the victim; the attacker appends its own root.
      const leafByVictim = yield* issueCert(leaf, victim, validity)
      const attackerRoot = yield* selfSignedCert(attacker, validity)
      expect(reasonOf(run([leafByVictim, attackerRoot], now))).toBe("broken-chain@0")
      // A root with the victim's name on it and the attacker's key is refused for its name.
      const forgedRoot = yield* forgedCert(attacker, subjectName(victim.nodeId), now)
      expect(reasonOf(run([leafByVictim, forgedRoot], now))).toBe("cn-mismatch@1")
      // A leaf issued by the attacker in the victim's name.
      const leafByAttacker = yield* issueCert(leaf, attacker, validity)
      const victimRoot = yield* selfSignedCert(victim, validity)
      expect(reasonOf(run([leafByAttacker, victimRoot], now))).toBe("broken-chain@0")
      // A self-signed certificate naming someone else as subject is refused.
      expect(reasonOf(run([forgedRoot], now))).toBe("cn-mismatch@0")
    })
  )

  it.effect("a leaf with a non-Ed25519 key is malformed", () =>
    Effect.gen(function* () {
      const subtle = nodeCrypto.webcrypto.subtle
      const alg = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" }
      const keys = yield* Effect.promise(() => subtle.generateKey(alg, true, ["sign", "verify"]))
      const cert = yield* Effect.promise(() =>
        x509.X509CertificateGenerator.createSelfSigned({
          serialNumber: "01",
          name: "CN=ecdsa",
          notBefore: new Date(Date.now() - 1000),
          notAfter: new Date(Date.now() + YEAR),
          signingAlgorithm: alg,
          keys: keys as never
        })
      )
      const result = run([new Uint8Array(cert.rawData)])
      expect(reasonOf(result)).toBe("malformed@0")
      expect(Either.isLeft(result) && result.left.detail).toContain("Ed25519")
    })
  )

  it.effect("PEM round-trips and a key pair never prints its private key", () =>
    Effect.gen(function* () {
      const keys = generateKeyPair()
      const chain = yield* makeCertChain(keys, validityFrom(Date.now()), generateKeyPair())
      const pem = certChainToPem(chain)
      expect(certChainFromPem(pem).map((c) => Buffer.from(c).toString("hex"))).toEqual(
        chain.map((c) => Buffer.from(c).toString("hex"))
      )
      const loaded = Either.getOrThrow(keyPairFromPem(keys.privateKeyPem()))
      expect(equals(loaded.nodeId, keys.nodeId)).toBe(true)
      const { inspect } = yield* Effect.promise(() => import("node:util"))
      expectNoSecret(inspect(keys, { showHidden: true, depth: 5 }), keys.privateKeyPem())
      expectNoSecret(JSON.stringify(keys), keys.privateKeyPem())
      const sig = sign(keys, new Uint8Array([1, 2, 3]))
      expect(verifySignature(keys.nodeId, new Uint8Array([1, 2, 3]), sig)).toBe(true)
      expect(verifySignature(keys.nodeId, new Uint8Array([1, 2, 4]), sig)).toBe(false)
    })
  )
})

// ---------------------------------------------------------------------------------------------
// KeyRingLive
// ---------------------------------------------------------------------------------------------

describe("KeyRingLive", () => {
  it.scoped(
    "first start creates the directory (0700) and key (0600); the second start loads the same NodeId",
    () =>
      Effect.gen(function* () {
        const root = yield* tempDir
        const nodePath = path.join(root, "a", "node")
        const first = yield* startLive(nodePath)
        const id1 = yield* first.nodeId
        expect(yield* mode(nodePath)).toBe(0o700)
        expect(yield* mode(path.join(nodePath, KeyRingLive.KEY_FILE))).toBe(0o600)
        expect(yield* listDir(nodePath)).toEqual([KeyRingLive.CERT_FILE, KeyRingLive.KEY_FILE])
        const keyBytes = yield* readBytes(path.join(nodePath, KeyRingLive.KEY_FILE))
        expect(keyBytes.toString()).toBe((yield* first.tlsConfig).keyPrivatePem)

        const second = yield* startLive(nodePath)
        expect(encode(yield* second.nodeId)).toBe(encode(id1))
        expect((yield* second.tlsConfig).certChainPem).toBe((yield* first.tlsConfig).certChainPem)
        expect(yield* readBytes(path.join(nodePath, KeyRingLive.KEY_FILE))).toEqual(keyBytes)
        // Its own chain verifies to its NodeId.
        expect(encode(yield* second.verifyCertChain(yield* second.certChainDer))).toBe(encode(id1))
        // And it signs with that key.
        const sig = yield* second.sign(new Uint8Array([7]))
        expect(verifySignature(id1, new Uint8Array([7]), sig)).toBe(true)
      })
  )

  it.scoped("a corrupt key file stops start-up with a typed error and nothing is written", () =>
    Effect.gen(function* () {
      const nodePath = yield* tempDir
      const keyFile = path.join(nodePath, KeyRingLive.KEY_FILE)
      const garbage = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI\n-----END PRIVATE KEY-----\n"
      yield* Effect.promise(() => fs.writeFile(keyFile, garbage, { mode: 0o600 }))
      const error = yield* startError(nodePath)
      expect(error.reason).toBe("corrupt")
      expect(error.path).toBe(keyFile)
      expect(error.message).toContain(keyFile)
      expect(error.message).not.toContain("MC4CAQAwBQYDK2VwBCIEI")
      expect((yield* readBytes(keyFile)).toString()).toBe(garbage)
      expect(yield* listDir(nodePath)).toEqual([KeyRingLive.KEY_FILE])

      // A key of another type is corrupt too.
      const ec = nodeCrypto.generateKeyPairSync("ec", { namedCurve: "P-256" })
      const ecPem = ec.privateKey.export({ format: "pem", type: "pkcs8" }) as string
      yield* Effect.promise(() => fs.writeFile(keyFile, ecPem, { mode: 0o600 }))
      const ecError = yield* startError(nodePath)
      expect(ecError.reason).toBe("corrupt")
      expect(ecError.detail).toContain("Ed25519")
      expectNoSecret(ecError.message, ecPem)
      expect((yield* readBytes(keyFile)).toString()).toBe(ecPem)
    })
  )

  it.scoped("a key file readable by group or others is insecure; it is left as it is", () =>
    Effect.gen(function* () {
      const nodePath = yield* tempDir
      const keyFile = path.join(nodePath, KeyRingLive.KEY_FILE)
      const first = yield* startLive(nodePath)
      const pem = (yield* first.tlsConfig).keyPrivatePem
      const before = yield* readBytes(keyFile)
      const certBefore = yield* readBytes(path.join(nodePath, KeyRingLive.CERT_FILE))
      for (const bad of [0o644, 0o640, 0o604, 0o620, 0o602]) {
        yield* Effect.promise(() => fs.chmod(keyFile, bad))
        const error = yield* startError(nodePath)
        expect(error.reason).toBe("insecure-permissions")
        expect(error.path).toBe(keyFile)
        expect(error.detail).toContain(bad.toString(8))
        expectNoSecret(error.message, pem)
        expectNoSecret(JSON.stringify(error), pem)
        expect(yield* mode(keyFile)).toBe(bad)
      }
      expect(yield* readBytes(keyFile)).toEqual(before)
      expect(yield* readBytes(path.join(nodePath, KeyRingLive.CERT_FILE))).toEqual(certBefore)
      // 0400 is fine.
      yield* Effect.promise(() => fs.chmod(keyFile, 0o400))
      expect(encode(yield* (yield* startLive(nodePath)).nodeId)).toBe(encode(yield* first.nodeId))
    })
  )

  // Tests run as root, for whom file modes do not deny reading; a directory where the key file
  // should be is the unreadable case that holds for every user.
  it.scoped("an unreadable key path is a typed error", () =>
    Effect.gen(function* () {
      const nodePath = yield* tempDir
      const keyFile = path.join(nodePath, KeyRingLive.KEY_FILE)
      yield* Effect.promise(() => fs.mkdir(keyFile, { mode: 0o700 }))
      const error = yield* startError(nodePath)
      expect(error.reason).toBe("unreadable")
      expect(error.path).toBe(keyFile)
      expect((yield* Effect.promise(() => fs.stat(keyFile))).isDirectory()).toBe(true)
      expect(yield* listDir(nodePath)).toEqual([KeyRingLive.KEY_FILE])
    })
  )

  it.scoped("a missing, foreign or expired certificate is rebuilt for the same key", () =>
    Effect.gen(function* () {
      const nodePath = yield* tempDir
      const keyFile = path.join(nodePath, KeyRingLive.KEY_FILE)
      const certFile = path.join(nodePath, KeyRingLive.CERT_FILE)
      const start = Date.UTC(2030, 0, 1)
      yield* TestClock.setTime(start)
      const first = yield* startLive(nodePath)
      const id = encode(yield* first.nodeId)
      const keyBytes = yield* readBytes(keyFile)

      yield* Effect.promise(() => fs.rm(certFile))
      const afterMissing = yield* startLive(nodePath)
      expect(encode(yield* afterMissing.nodeId)).toBe(id)
      expect(encode(yield* afterMissing.verifyCertChain(yield* afterMissing.certChainDer))).toBe(id)
      expect(certChainFromPem((yield* readBytes(certFile)).toString())).toHaveLength(1)

      // Another node's certificate.
      const other = yield* makeCertChain(generateKeyPair(), validityFrom(start))
      yield* Effect.promise(() => fs.writeFile(certFile, certChainToPem(other)))
      const afterForeign = yield* startLive(nodePath)
      expect(encode(yield* afterForeign.verifyCertChain(yield* afterForeign.certChainDer))).toBe(id)

      // Expired: one year and a day later by the Clock.
      const certBefore = (yield* readBytes(certFile)).toString()
      yield* TestClock.setTime(start + YEAR + 24 * 3600 * 1000)
      const afterExpiry = yield* startLive(nodePath)
      expect(encode(yield* afterExpiry.nodeId)).toBe(id)
      const rebuilt = (yield* readBytes(certFile)).toString()
      expect(rebuilt).not.toBe(certBefore)
      expect(encode(yield* afterExpiry.verifyCertChain(certChainFromPem(rebuilt)))).toBe(id)
      expect(yield* readBytes(keyFile)).toEqual(keyBytes)
    })
  )

  it.scoped("verifyCertChain uses the Clock: a chain expires when TestClock passes its end", () =>
    Effect.gen(function* () {
      const nodePath = yield* tempDir
      yield* TestClock.setTime(Date.UTC(2031, 0, 1))
      const keyRing = yield* Effect.flatMap(KeyRing, Effect.succeed).pipe(
        Effect.provide(KeyRingLive.layer({ nodePath, certValidity: "1 hour" }))
      )
      const chain = yield* keyRing.certChainDer
      const id = yield* keyRing.nodeId
      expect(encode(yield* keyRing.verifyCertChain(chain))).toBe(encode(id))
      yield* TestClock.adjust("59 minutes")
      expect(encode(yield* keyRing.verifyCertChain(chain))).toBe(encode(id))
      yield* TestClock.adjust("2 minutes")
      const error = yield* Effect.flip(keyRing.verifyCertChain(chain))
      expect(error.reason).toBe("expired")
      expect(error.index).toBe(0)
    })
  )

  it.scoped(
    "renewal: new NodeId, chain [new, old] verifies to it, subscribers hear of it, restart keeps it",
    () =>
      Effect.gen(function* () {
        const nodePath = yield* tempDir
        const keyFile = path.join(nodePath, KeyRingLive.KEY_FILE)
        const prevFile = path.join(nodePath, KeyRingLive.PREVIOUS_KEY_FILE)
        const keyRing = yield* startLive(nodePath)
        const oldId = yield* keyRing.nodeId
        const oldPem = (yield* keyRing.tlsConfig).keyPrivatePem
        const subscriber = yield* subscribe(keyRing, 2)

        const [renewed, logs] = yield* withLogs(keyRing.renew)
        const newId = yield* keyRing.nodeId
        expect(encode(newId)).not.toBe(encode(oldId))
        expect(yield* keyRing.tlsConfig).toEqual(renewed)
        const chain = yield* keyRing.certChainDer
        expect(chain).toHaveLength(2)
        expect(certChainFromPem(renewed.certChainPem)).toHaveLength(2)
        expect(encode(yield* keyRing.verifyCertChain(chain))).toBe(encode(newId))
        expect(encode(yield* keyRing.verifyCertChain([chain[1]!]))).toBe(encode(oldId))
        expect(new x509.X509Certificate(chain[0]!).issuer).toBe(subjectName(oldId))
        // Signs with the new key.
        const sig = yield* keyRing.sign(new Uint8Array([9]))
        expect(verifySignature(newId, new Uint8Array([9]), sig)).toBe(true)
        expect(verifySignature(oldId, new Uint8Array([9]), sig)).toBe(false)
        // Persisted, the old key kept aside; both private.
        expect((yield* readBytes(keyFile)).toString()).toBe(renewed.keyPrivatePem)
        expect((yield* readBytes(prevFile)).toString()).toBe(oldPem)
        expect(yield* mode(keyFile)).toBe(0o600)
        expect(yield* mode(prevFile)).toBe(0o600)
        expect((yield* listDir(nodePath)).filter((n) => n.endsWith(".tmp"))).toEqual([])
        // Logs name NodeIds, never the keys.
        expect(logs.join("\n")).toContain(encode(newId))
        for (const line of logs) {
          expectNoSecret(line, oldPem)
          expectNoSecret(line, renewed.keyPrivatePem)
        }

        const renewedAgain = yield* keyRing.renew
        const received = Chunk.toReadonlyArray(yield* Fiber.join(subscriber))
        expect(received).toEqual([renewed, renewedAgain])

        const restarted = yield* startLive(nodePath)
        expect(encode(yield* restarted.nodeId)).toBe(encode(yield* keyRing.nodeId))
        expect(yield* restarted.tlsConfig).toEqual(renewedAgain)
      })
  )

  it.scoped("after a renewal, a rebuilt certificate keeps the chain to the previous key", () =>
    Effect.gen(function* () {
      const nodePath = yield* tempDir
      const keyRing = yield* startLive(nodePath)
      const oldId = yield* keyRing.nodeId
      yield* keyRing.renew
      const newId = yield* keyRing.nodeId
      yield* Effect.promise(() => fs.rm(path.join(nodePath, KeyRingLive.CERT_FILE)))
      const restarted = yield* startLive(nodePath)
      const chain = yield* restarted.certChainDer
      expect(chain).toHaveLength(2)
      expect(encode(yield* restarted.verifyCertChain(chain))).toBe(encode(newId))
      expect(encode(yield* restarted.verifyCertChain([chain[1]!]))).toBe(encode(oldId))
    })
  )

  it.scoped("a failed renewal is a typed error and leaves the current identity in place", () =>
    Effect.gen(function* () {
      const nodePath = yield* tempDir
      const keyRing = yield* startLive(nodePath)
      const id = yield* keyRing.nodeId
      const tls = yield* keyRing.tlsConfig
      // A directory where the previous key would go makes the first write fail.
      yield* Effect.promise(() => fs.mkdir(path.join(nodePath, KeyRingLive.PREVIOUS_KEY_FILE)))
      yield* Effect.promise(() => fs.writeFile(path.join(nodePath, KeyRingLive.PREVIOUS_KEY_FILE, "x"), ""))
      const subscriber = yield* subscribe(keyRing, 1)
      const error = yield* Effect.flip(keyRing.renew)
      expect(error).toBeInstanceOf(KeyRingError)
      expect(error.reason).toBe("renew-failed")
      expectNoSecret(error.message, tls.keyPrivatePem)
      expect(encode(yield* keyRing.nodeId)).toBe(encode(id))
      expect(yield* keyRing.tlsConfig).toEqual(tls)
      expect((yield* readBytes(path.join(nodePath, KeyRingLive.KEY_FILE))).toString()).toBe(tls.keyPrivatePem)
      expect(yield* fiberDone(subscriber)).toBe(false)
    })
  )
})

const fiberDone = <A, E>(fiber: Fiber.RuntimeFiber<A, E>) =>
  Effect.map(fiber.status, (s) => s._tag === "Done")

// ---------------------------------------------------------------------------------------------
// KeyRingTest
// ---------------------------------------------------------------------------------------------

const testKeyRing = (seed: string | number) =>
  Effect.flatMap(KeyRing, Effect.succeed).pipe(Effect.provide(KeyRingTest.layer(seed)))

describe("KeyRingTest", () => {
  it.effect("is deterministic: same seed, same NodeId and certificates; different seeds differ", () =>
    Effect.gen(function* () {
      const a1 = yield* testKeyRing("alice")
      const a2 = yield* testKeyRing("alice")
      const b = yield* testKeyRing("bob")
      const n7 = yield* testKeyRing(7)
      const idA = encode(yield* a1.nodeId)
      expect(encode(yield* a2.nodeId)).toBe(idA)
      expect(encode(yield* b.nodeId)).not.toBe(idA)
      expect(encode(yield* n7.nodeId)).not.toBe(idA)
      expect(encode(KeyRingTest.nodeIdOf("alice"))).toBe(idA)
      expect(encode(KeyRingTest.makeKeyPair(7).nodeId)).toBe(encode(yield* n7.nodeId))
      expect(yield* a1.tlsConfig).toEqual(yield* a2.tlsConfig)
      expect(encode(yield* a1.verifyCertChain(yield* a1.certChainDer))).toBe(idA)
      const ids = new Set(Array.from({ length: 200 }, (_, i) => encode(KeyRingTest.nodeIdOf(i))))
      expect(ids.size).toBe(200)
    })
  )

  it.effect("the seed is SHA-256 of the tagged seed, as a PKCS#8 Ed25519 key", () =>
    Effect.gen(function* () {
      const seed = nodeCrypto.createHash("sha256").update("quicmesh-test-key:carol").digest()
      const der = Buffer.concat([Buffer.from("302e020100300506032b657004220420", "hex"), seed])
      const key = nodeCrypto.createPrivateKey({ key: der, format: "der", type: "pkcs8" })
      const spki = nodeCrypto.createPublicKey(key).export({ format: "der", type: "spki" })
      expect(Buffer.from(KeyRingTest.nodeIdOf("carol")).equals(spki.subarray(12))).toBe(true)
      const keyRing = yield* testKeyRing("carol")
      expect((yield* keyRing.tlsConfig).keyPrivatePem).toBe(key.export({ format: "pem", type: "pkcs8" }))
    })
  )

  it.effect("certificates are dated by the Clock and renewal follows the live behaviour", () =>
    Effect.gen(function* () {
      yield* TestClock.setTime(Date.UTC(2032, 5, 1))
      const keyRing = yield* testKeyRing("dave")
      const oldId = yield* keyRing.nodeId
      const leaf = new x509.X509Certificate((yield* keyRing.certChainDer)[0]!)
      expect(leaf.notBefore.getTime()).toBe(Date.UTC(2032, 5, 1))
      const subscriber = yield* subscribe(keyRing, 1)
      const tls = yield* keyRing.renew
      const newId = yield* keyRing.nodeId
      expect(encode(newId)).toBe(encode(KeyRingTest.nodeIdOf(KeyRingTest.renewedSeed("dave", 1))))
      const chain = yield* keyRing.certChainDer
      expect(chain).toHaveLength(2)
      expect(encode(yield* keyRing.verifyCertChain(chain))).toBe(encode(newId))
      expect(encode(yield* keyRing.verifyCertChain([chain[1]!]))).toBe(encode(oldId))
      expect(Chunk.toReadonlyArray(yield* Fiber.join(subscriber))).toEqual([tls])
      yield* TestClock.adjust("366 days")
      expect((yield* Effect.flip(keyRing.verifyCertChain(chain))).reason).toBe("expired")
    })
  )

  it.effect("many KeyRings are cheap to create: certificates are only made on demand", () =>
    Effect.gen(function* () {
      const started = performance.now()
      const rings = yield* Effect.forEach(
        Array.from({ length: 500 }, (_, i) => i),
        (i) => KeyRingTest.make(`sim-${i}`)
      )
      const elapsed = performance.now() - started
      // Making a certificate costs milliseconds; 500 key rings without them take far less.
      expect(elapsed).toBeLessThan(2_000)
      expect(new Set(yield* Effect.forEach(rings, (r) => Effect.map(r.nodeId, encode))).size).toBe(500)
      // Concurrent first uses share one certificate.
      const ring = rings[0]!
      const configs = yield* Effect.all([ring.tlsConfig, ring.tlsConfig, ring.certChainDer], {
        concurrency: 3
      })
      expect(configs[0]).toBe(configs[1])
      expect(certChainToPem(configs[2])).toBe(configs[0].certChainPem)
    })
  )
})

// ---------------------------------------------------------------------------------------------
// @matrixai/quic accepts the PEM material
// ---------------------------------------------------------------------------------------------

describe("KeyRing material in @matrixai/quic", () => {
  it.scopedLive(
    "a mutually authenticated loopback handshake presents and verifies both chains",
    () =>
      Effect.gen(function* () {
        const server = yield* testKeyRing("quic-server")
        const client = yield* testKeyRing("quic-client")
        yield* server.renew // the server presents a two-certificate chain
        const serverTls = yield* server.tlsConfig
        const clientTls = yield* client.tlsConfig
        const seen: Array<string> = []
        const verifier = (keyRing: KeyRingService, who: string) => async (certs: Array<Uint8Array>) => {
          const exit = await Effect.runPromiseExit(keyRing.verifyCertChain(certs))
          seen.push(`${who}:${certs.length}:${Exit.isSuccess(exit) ? encode(exit.value) : "rejected"}`)
          return Exit.isSuccess(exit) ? undefined : 298 // TLS bad_certificate
        }
        const logger = new Logger("test", LogLevel.ERROR)
        const hmacKey = nodeCrypto.randomBytes(32)
        const hmac = (data: ArrayBuffer) =>
          nodeCrypto.createHmac("sha256", hmacKey).update(Buffer.from(data)).digest()
        const quicServer = yield* Effect.acquireRelease(
          Effect.promise(async () => {
            const s = new QUICServer({
              logger,
              crypto: {
                key: hmacKey.buffer.slice(hmacKey.byteOffset, hmacKey.byteOffset + 32),
                ops: {
                  sign: async (_key, data) => new Uint8Array(hmac(data)).buffer,
                  verify: async (_key, data, sig) => nodeCrypto.timingSafeEqual(hmac(data), Buffer.from(sig))
                }
              },
              config: {
                key: serverTls.keyPrivatePem,
                cert: serverTls.certChainPem,
                verifyPeer: true,
                verifyCallback: verifier(server, "server")
              }
            })
            await s.start({ host: "127.0.0.1", port: 0 })
            return s
          }),
          (s) => Effect.promise(() => s.stop({ force: true }))
        )
        const quicClient = yield* Effect.acquireRelease(
          Effect.promise(() =>
            QUICClient.createQUICClient({
              logger,
              host: "127.0.0.1",
              port: quicServer.port,
              crypto: {
                ops: { randomBytes: async (b) => void nodeCrypto.randomFillSync(new Uint8Array(b)) }
              },
              config: {
                key: clientTls.keyPrivatePem,
                cert: clientTls.certChainPem,
                verifyPeer: true,
                verifyCallback: verifier(client, "client")
              }
            })
          ),
          (c) => Effect.promise(() => c.destroy({ force: true }))
        )
        // The server checks the client's chain once the client's first flight arrives.
        const stream = quicClient.connection.newStream()
        const writer = stream.writable.getWriter()
        yield* Effect.promise(() => writer.write(new Uint8Array([1])))
        yield* Effect.promise(async () => {
          for (let i = 0; i < 200 && seen.length < 2; i++) await new Promise((r) => setTimeout(r, 10))
        })
        expect(seen.sort()).toEqual([
          `client:2:${encode(yield* server.nodeId)}`,
          `server:1:${encode(yield* client.nodeId)}`
        ])
      }),
    20_000
  )
})
