/**
 * A hostile peer floods a real node on loopback: 10,000 garbage UDP datagrams (random sizes,
 * half of them shaped like QUIC long-header packets) at its port, and, over a genuine QUIC
 * connection (a raw @matrixai/quic client with a valid self-signed Ed25519 chain), 1,000
 * malformed agent-RPC frames on streams: junk bytes, oversized length headers, valid lengths
 * around well-formed MessagePack that is not a valid RPC message (bad ids, unknown tags,
 * untagged maps).
 *
 * untagged maps), and valid lengths around bytes that are not MessagePack at all (0xc1…, or a
 * truncated value: these once left a shared decoder broken for every peer). Meanwhile and
 * afterwards an honest node's pings and closest-node
 * queries keep succeeding, the attacked node's manager does not fail, and nothing escapes as an
 * unhandled error.
 */
import * as nodeCrypto from "node:crypto"
import * as dgram from "node:dgram"
import { describe, expect, it } from "@effect/vitest"
import { QUICClient } from "@matrixai/quic"
import { Effect, Fiber, Option } from "effect"
import {
  certChainToPem,
  generateKeyPair,
  selfSignedCert,
  validityFrom
} from "../../src/internal/certificates.js"
import { encodeFrame } from "../../src/internal/rpcWire.js"
import * as NodeId from "../../src/services/NodeId.js"
import { makeNode, type TestNode } from "../fixtures/cmNode.js"

const silentLogger = { info() {}, warn() {}, error() {}, debug() {}, getChild: () => silentLogger }

const random = (n: number) => new Uint8Array(nodeCrypto.randomBytes(n))

/** A datagram shaped like a QUIC long-header packet (Initial/Handshake/0-RTT), body random. */
const longHeaderish = (i: number): Uint8Array => {
  const size = 40 + (i % 1_200)
  const p = random(size)
  p[0] = 0xc0 | (p[0]! & 0x3f) // long header, fixed bit
  // QUIC v1 half of the time, an unknown version otherwise (version negotiation path).
  p.set(i % 2 === 0 ? [0, 0, 0, 1] : [0xfa, 0xce, 0xb0, 0x0c], 1)
  p[5] = 8 // DCID length
  p[14] = 8 // SCID length
  return p
}

/** Sends `count` garbage datagrams to host:port, pacing in batches so the socket buffer drains. */
const udpFlood = (port: number, count: number) =>
  Effect.acquireUseRelease(
    Effect.sync(() => dgram.createSocket("udp4")),
    (socket) =>
      Effect.gen(function* () {
        let sent = 0
        for (let batch = 0; batch < count; batch += 250) {
          const n = Math.min(250, count - batch)
          yield* Effect.promise(() =>
            Promise.all(
              Array.from({ length: n }, (_, j) => {
                const i = batch + j
                const data = i % 2 === 0 ? longHeaderish(i) : random(1 + ((i * 7919) % 1_400))
                return new Promise<void>((resolve) =>
                  socket.send(data, port, "127.0.0.1", (err) => {
                    if (!err) sent++
                    resolve()
                  })
                )
              })
            )
          )
          yield* Effect.sleep("2 millis")
        }
        return sent
      }),
    (socket) => Effect.sync(() => socket.close())
  )

const concat = (parts: ReadonlyArray<Uint8Array>) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0))
  let at = 0
  for (const p of parts) {
    out.set(p, at)
    at += p.length
  }
  return out
}

const u32 = (n: number) => {
  const b = new Uint8Array(4)
  new DataView(b.buffer).setUint32(0, n)
  return b
}

/** Frame number `i` of the malformed-frame flood. */
const malformedFrame = (i: number): Uint8Array => {
  switch (i % 5) {
    case 4: {
      // a valid length around bytes that are not MessagePack (0xc1 is never used), or a
      // truncated value (a str8 header announcing more bytes than follow)
      const body = i % 2 === 0 ? Uint8Array.from([0xc1, ...random(8)]) : Uint8Array.from([0xd9, 0x40, 0x61])
      return Uint8Array.from([...u32(body.length), ...body])
    }
    case 0: // plain junk
      return random(1 + (i % 300))
    case 1: // oversized length header (then a little junk)
      return Uint8Array.from([...u32(0xffff_fff0 - i), ...random(16)])
    case 2: {
      // a valid length around MessagePack of a tagged message that is not a valid request
      // (bad request id, unknown tag, payload of the wrong type)
      const bogus = [
        { _tag: "Request", id: "not-a-number", tag: "nodesPing", payload: i, headers: [] },
        { _tag: "Request", id: String(i), tag: "noSuchMethod", payload: {}, headers: [] },
        { _tag: "Interrupt", requestId: "x".repeat(100) },
        { _tag: "Bogus", value: i }
      ][(i >> 2) % 4]
      return encodeFrame(bogus).frame
    }
    default: {
      // a valid length around well-formed MessagePack that is not an RPC message (a fixmap {a: i})
      const body = Uint8Array.from([0x81, 0xa1, 0x61, i & 0x7f])
      return Uint8Array.from([...u32(body.length), ...body])
    }
  }
}

/** A raw QUIC client to `node` presenting a valid self-signed chain for a fresh key. */
const rawClient = (node: TestNode) =>
  Effect.gen(function* () {
    const attacker = generateKeyPair()
    const chain = [yield* selfSignedCert(attacker, validityFrom(Date.now(), 3_600_000))]
    return yield* Effect.acquireRelease(
      Effect.promise(() =>
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
              key: attacker.privateKeyPem(),
              cert: certChainToPem(chain),
              verifyPeer: false,
              maxIdleTimeout: 10_000
            },
            logger: silentLogger as never
          },
          { timer: 5_000 }
        )
      ),
      (c) => Effect.promise(() => c.destroy({ force: true }).catch(() => undefined))
    )
  })

/**
 * `connections` raw QUIC clients (5 at a time) each open `streamsEach` streams (10 at a time)
 * and write `framesEach` malformed frames on each in one write (the node refuses a stream at its
 * first bad frame, so the frames go out together). Returns how many frames were written.
 */
const rpcFlood = (node: TestNode, connections: number, streamsEach: number, framesEach: number) =>
  Effect.forEach(
    Array.from({ length: connections }, (_, c) => c),
    (c) =>
      Effect.gen(function* () {
        const client = yield* rawClient(node)
        let written = 0
        const oneStream = (i: number) =>
          Effect.promise(async () => {
            const stream = client.connection.newStream()
            // Drain whatever the node answers so its stream can finish.
            void stream.readable.pipeTo(new WritableStream()).catch(() => undefined)
            const writer = stream.writable.getWriter()
            const ok = await Promise.race([
              writer
                .write(
                  concat(Array.from({ length: framesEach }, (_, j) => malformedFrame(i * framesEach + j)))
                )
                .then(
                  () => true,
                  () => false
                ),
              new Promise<boolean>((r) => setTimeout(() => r(false), 2_000))
            ])
            if (ok) written += framesEach
            await Promise.race([
              writer.close().catch(() => undefined),
              new Promise<void>((r) => setTimeout(r, 500))
            ])
          })
        yield* Effect.forEach(
          Array.from({ length: streamsEach }, (_, s) => c * streamsEach + s),
          oneStream,
          { concurrency: 10, discard: true }
        )
        return written
      }).pipe(Effect.scoped),
    { concurrency: 5 }
  ).pipe(Effect.map((ws) => ws.reduce((x, y) => x + y, 0)))

describe("a flooding peer", () => {
  it.scopedLive(
    "10,000 garbage datagrams and 1,000 malformed RPC frames: honest pings and closest-node queries keep working",
    () =>
      Effect.gen(function* () {
        const unhandled: Array<unknown> = []
        const onUnhandled = (e: unknown) => void unhandled.push(e)
        yield* Effect.acquireRelease(
          Effect.sync(() => {
            process.on("unhandledRejection", onUnhandled)
            process.on("uncaughtException", onUnhandled)
          }),
          () =>
            Effect.sync(() => {
              process.off("unhandledRejection", onUnhandled)
              process.off("uncaughtException", onUnhandled)
            })
        )
        const target = yield* makeNode("flood-target")
        const honest = yield* makeNode("flood-honest", { config: { seedNodes: [] } })
        for (let i = 0; i < 6; i++)
          yield* target.graph.setNode(makeId(i), { host: "127.0.0.2", port: 20_000 + i, scope: "local" })
        const failed = yield* Effect.fork(target.cm.failure)
        yield* honest.cm.getConnectionWithAddress(target.nodeId, target.address, { timeout: "5 seconds" })

        // The honest node works the target for as long as the attack lasts.
        const okCalls = { pings: 0, closest: 0, errors: [] as Array<string> }
        const honestLoop = Effect.gen(function* () {
          while (true) {
            const r = yield* honest.cm
              .withConnection(target.nodeId, (h) => h.client.ping, { timeout: "5 seconds" })
              .pipe(Effect.either)
            if (r._tag === "Right") okCalls.pings++
            else okCalls.errors.push(String(r.left))
            const c = yield* honest.cm
              .getRemoteNodeClosestNodes(target.nodeId, makeId(50), { timeout: "5 seconds" })
              .pipe(Effect.either)
            if (c._tag === "Right" && c.right.length >= 6) okCalls.closest++
            else okCalls.errors.push(c._tag === "Left" ? String(c.left) : `got ${c.right.length}`)
            yield* Effect.sleep("50 millis")
          }
        })
        const loop = yield* Effect.fork(honestLoop)
        const started = performance.now()
        const [sent, flood] = yield* Effect.all(
          // 1,200 frames offered: a write the node leaves stalled once it has refused the stream
          // (10 streams of a batch at worst, seen under load) still leaves 1,000 written.
          [udpFlood(target.address.port, 10_000), rpcFlood(target, 1, 100, 12)],
          { concurrency: 2 }
        )
        const attackMs = performance.now() - started
        yield* Fiber.interrupt(loop)
        const duringPings = okCalls.pings
        const duringClosest = okCalls.closest

        // Afterwards: fresh calls still succeed.
        for (let i = 0; i < 5; i++) {
          yield* honest.cm.withConnection(target.nodeId, (h) => h.client.ping, { timeout: "5 seconds" })
          const contacts = yield* honest.cm.getRemoteNodeClosestNodes(target.nodeId, makeId(60), {
            timeout: "5 seconds"
          })
          // The six planted contacts (the attacker, whose certificate was valid, may be a seventh).
          expect(contacts.length).toBeGreaterThanOrEqual(6)
        }
        // A brand-new connection from a new honest node is accepted too.
        const late = yield* makeNode("flood-late", { config: { seedNodes: [] } })
        expect(yield* late.cm.pingNode(target.nodeId, target.address, { timeout: "5 seconds" })).toBe(true)

        const stats = yield* (yield* target.innerTransport).stats ?? Effect.void
        console.log(
          `flood: ${sent} datagrams sent, ${flood} malformed frames on 100 streams of one connection in ${Math.round(
            attackMs
          )} ms; honest during attack: ${duringPings} pings, ${duringClosest} closest-node queries, ${
            okCalls.errors.length
          } errors; target transport ${JSON.stringify(stats)}`
        )
        expect(sent).toBe(10_000)
        expect(flood).toBeGreaterThanOrEqual(1_000)
        expect(duringPings).toBeGreaterThan(0)
        expect(duringClosest).toBeGreaterThan(0)
        expect(okCalls.errors).toEqual([])
        expect(Option.isNone(yield* Fiber.poll(failed))).toBe(true)
        expect(unhandled).toEqual([])
        // The honest connection is still the one in the map.
        expect(yield* honest.cm.hasConnection(target.nodeId)).toBe(true)
      }),
    90_000
  )
})

/** A NodeId made from a small integer (not a real key: only the graph sees it). */
function makeId(i: number): NodeId.NodeId {
  const bytes = new Uint8Array(NodeId.NODE_ID_BYTES)
  bytes[0] = 0x40 | (i & 0x3f)
  bytes[NodeId.NODE_ID_BYTES - 1] = i
  return bytes as NodeId.NodeId
}
