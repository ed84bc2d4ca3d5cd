/**
 * A hostile peer with crafted certificates against a real node on loopback: a raw @matrixai/quic
 * client (not our transport, which would refuse to send such chains) presents a certificate for
 * someone else's key, an expired certificate, and a self-signed certificate whose signature is
 * broken. The node's QUIC handshake rejects each one: no connection reaches its map, and it
 * keeps serving honest peers. A well-formed chain from the same raw client is the control.
 */
import * as nodeCrypto from "node:crypto"
import { describe, expect, it } from "@effect/vitest"
import { QUICClient } from "@matrixai/quic"
import { Duration, Effect, Either } from "effect"
import {
  certChainToPem,
  type Ed25519KeyPair,
  generateKeyPair,
  selfSignedCert,
  validityFrom,
  verifyCertChain
} from "../../src/internal/certificates.js"
import { makeKeyPair } from "../../src/layers/KeyRingTest.js"
import * as NodeId from "../../src/services/NodeId.js"
import { eventually, makeNode, type TestNode } from "../fixtures/cmNode.js"

const silentLogger = { info() {}, warn() {}, error() {}, debug() {}, getChild: () => silentLogger }

type Outcome =
  | { readonly _tag: "Refused"; readonly detail: string }
  | { readonly _tag: "Connected"; readonly closedWithin: boolean }

/**
 * Dials `node` with a raw client presenting `chain` with the private key `key`, writes on a
 * stream (the server's verdict on a client certificate can arrive after the client has finished
 * its side of the handshake), runs `whileOpen`, then reports whether the node closed the
 * connection within 2 s. The client is destroyed with the scope.
 */
const rawDial = <A>(
  node: TestNode,
  chain: ReadonlyArray<Uint8Array>,
  key: Ed25519KeyPair,
  whileOpen: Effect.Effect<A> = Effect.void as Effect.Effect<A>
) =>
  Effect.gen(function* () {
    const client = yield* Effect.acquireRelease(
      Effect.tryPromise(() =>
        QUICClient.createQUICClient(
          {
            host: "127.0.0.1",
            port: node.address.port,
            crypto: {
              ops: {
                randomBytes: async (b: ArrayBuffer) => void nodeCrypto.randomFillSync(new Uint8Array(b))
              }
            },
            config: {
              key: key.privateKeyPem(),
              cert: certChainToPem(chain),
              verifyPeer: false,
              maxIdleTimeout: 3_000
            },
            logger: silentLogger as never
          },
          { timer: 3_000 }
        )
      ),
      (c) => Effect.promise(() => c.destroy({ force: true }).catch(() => undefined))
    ).pipe(Effect.either)
    if (Either.isLeft(client))
      return { outcome: { _tag: "Refused", detail: String(client.left.error) } as Outcome, during: undefined }
    const connection = client.right.connection
    const stopped = new Promise<void>((resolve) =>
      connection.addEventListener("EventQUICConnectionStopped", () => resolve(), { once: true })
    )
    const writer = connection.newStream().writable.getWriter()
    yield* Effect.promise(() => writer.write(new Uint8Array([0, 0, 0, 1, 0])).catch(() => undefined))
    const during = yield* whileOpen
    const closedWithin = yield* Effect.promise(() =>
      Promise.race([stopped.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 2_000))])
    )
    return { outcome: { _tag: "Connected", closedWithin } as Outcome, during }
  })

/** The node's map holds no connection from `nodeId`, after a moment for a late adoption. */
const noConnectionFrom = (node: TestNode, nodeId: NodeId.NodeId) =>
  Effect.gen(function* () {
    yield* Effect.sleep("200 millis")
    const list = yield* node.cm.listConnections
    return !list.some((c) => c.nodeId === NodeId.encode(nodeId))
  })

const now = () => Date.now()

describe("hostile certificates against a real QUIC handshake", () => {
  it.scopedLive(
    "control: a well-formed self-signed chain from the raw client is accepted and adopted",
    () =>
      Effect.gen(function* () {
        const node = yield* makeNode("certs-control")
        const attacker = generateKeyPair()
        const chain = [yield* selfSignedCert(attacker, validityFrom(now(), 3_600_000))]
        // While it is open, the node's map holds it under the attacker's (honest) NodeId.
        const adopted = eventually(node.cm.listConnections, (l) =>
          l.some((c) => c.nodeId === NodeId.encode(attacker.nodeId))
        ).pipe(Effect.option)
        const result = yield* rawDial(node, chain, attacker, adopted)
        expect(result.outcome).toEqual({ _tag: "Connected", closedWithin: false })
        expect(result.during?._tag).toBe("Some")
      }),
    20_000
  )

  it.scopedLive(
    "another node's certificate presented with our own key (claiming its NodeId) is rejected",
    () =>
      Effect.gen(function* () {
        const node = yield* makeNode("certs-impersonate")
        const victim = makeKeyPair("certs-victim")
        const attacker = generateKeyPair()
        // The victim's genuine self-signed certificate: a valid chain naming the victim's NodeId...
        const victimChain = [yield* selfSignedCert(victim, validityFrom(now(), 3_600_000))]
        expect(Either.isRight(verifyCertChain(victimChain, new Date()))).toBe(true)
        // ...but the TLS handshake is signed with the attacker's key, which cannot prove it.
        const outcome = yield* rawDial(node, victimChain, attacker)
        // The client finished its half of the handshake; the node then refused its certificate.
        expect(outcome.outcome).toEqual({ _tag: "Connected", closedWithin: true })
        expect(yield* noConnectionFrom(node, victim.nodeId)).toBe(true)
      }),
    20_000
  )

  it.scopedLive(
    "an expired certificate is rejected",
    () =>
      Effect.gen(function* () {
        const node = yield* makeNode("certs-expired")
        const attacker = generateKeyPair()
        const day = Duration.toMillis("1 day")
        const chain = [yield* selfSignedCert(attacker, validityFrom(now() - 2 * day, day))]
        expect(Either.isLeft(verifyCertChain(chain, new Date()))).toBe(true)
        const outcome = yield* rawDial(node, chain, attacker)
        // The client finished its half of the handshake; the node then refused its certificate.
        expect(outcome.outcome).toEqual({ _tag: "Connected", closedWithin: true })
        expect(yield* noConnectionFrom(node, attacker.nodeId)).toBe(true)
      }),
    20_000
  )

  it.scopedLive(
    "a self-signed certificate with a broken signature is rejected; honest peers are unaffected",
    () =>
      Effect.gen(function* () {
        const node = yield* makeNode("certs-broken")
        const honest = yield* makeNode("certs-honest")
        const attacker = generateKeyPair()
        const good = yield* selfSignedCert(attacker, validityFrom(now(), 3_600_000))
        const broken = Uint8Array.from(good)
        broken[broken.length - 1] = broken[broken.length - 1]! ^ 0x01 // last byte of the signature
        const verdict = verifyCertChain([broken], new Date())
        expect(Either.isLeft(verdict) && verdict.left.reason).toBe("bad-signature")
        for (let i = 0; i < 3; i++) {
          const outcome = yield* rawDial(node, [broken], attacker)
          // The client finished its half of the handshake; the node then refused its certificate.
          expect(outcome.outcome).toEqual({ _tag: "Connected", closedWithin: true })
        }
        expect(yield* noConnectionFrom(node, attacker.nodeId)).toBe(true)
        // The node still serves an honest peer.
        expect(yield* honest.cm.pingNode(node.nodeId, node.address, { timeout: "5 seconds" })).toBe(true)
      }),
    30_000
  )
})
