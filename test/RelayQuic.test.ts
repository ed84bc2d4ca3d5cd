/**
 * The relay fallback on real QUIC over loopback, three full nodes: a relay R (`relay: true`), a
 * target T and a source S, each with R as its seed. Two peers on different IPs that lie about
 * what they observe (127.0.0.9 with a new port each, as a symmetric NAT would map) make T and S
 * classify themselves `symmetric`: T reserves with R and announces it, S finds T through R and,
 * reachable by no one itself, goes to T's relay at once and does not try a direct path (two
 * symmetric NATs let none open). The relayed connection is QUIC end to end between S and T: R
 * forwards ciphertext only.
 */
import type { Socket } from "@effect/platform"
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, ExecutionStrategy, Exit, Fiber, Scope } from "effect"
import * as NodeId from "../src/services/NodeId.js"
import * as Protocols from "../src/services/Protocols.js"
import { RelayTap } from "../src/services/Relay.js"
import { eventually, makeNode, seedOf, type TestNode } from "./fixtures/cmNode.js"
import { makeLyingNode } from "./fixtures/lyingIdentify.js"

const ECHO = Protocols.ProtocolId.unsafeMake("relay-quic-echo/1")
const HANG = Protocols.ProtocolId.unsafeMake("relay-quic-hang/1")

/** Echoes every chunk back until the caller ends its side. */
const echo: Protocols.StreamHandler = (socket) =>
  Effect.scoped(Effect.flatMap(socket.writer, (write) => socket.run((chunk) => write(chunk)))).pipe(
    Effect.ignore
  )

/** Reads `socket` until it ends: the bytes read. */
const readAll = (socket: Socket.Socket) =>
  Effect.gen(function* () {
    const parts: Array<Uint8Array> = []
    yield* socket.run((chunk) => {
      parts.push(chunk.slice())
    })
    return Buffer.concat(parts)
  })

/** Writes `bytes` on a new stream of `protocol` to `to`, ends our side, and reads the answer to its end. */
const exchange = (from: TestNode, to: TestNode, protocol: Protocols.ProtocolId, bytes: Uint8Array) =>
  Effect.scoped(
    Effect.gen(function* () {
      const socket = yield* from.cm.openStream(to.nodeId, protocol)
      const reading = yield* Effect.fork(readAll(socket))
      yield* Effect.scoped(Effect.flatMap(socket.writer, (write) => write(bytes)))
      return yield* Fiber.join(reading)
    })
  )

/** Lies told on identify: the asker is at 127.0.0.9:`port`. */
const lieWith = (port: number) => ({ observed: { host: "127.0.0.9", port }, confirmed: [] })

describe("Relay over QUIC", () => {
  it.scopedLive(
    "S reaches symmetric T only through relay R: RPC and streams work, the path says relayed, R sees no plaintext, R's end closes it",
    () =>
      Effect.gen(function* () {
        const tapped: Array<Uint8Array> = []
        const relayScope = yield* Scope.fork(yield* Effect.scope, ExecutionStrategy.sequential)
        const r = yield* makeNode("relay-quic/r", { host: "127.0.0.1", config: { relay: true } }).pipe(
          Effect.provideService(RelayTap, (bytes) => tapped.push(bytes.slice())),
          Scope.extend(relayScope)
        )
        const liar1 = yield* makeLyingNode("relay-quic/l1", "127.0.0.4", lieWith(40001))
        const liar2 = yield* makeLyingNode("relay-quic/l2", "127.0.0.5", lieWith(40002))
        const config = { seedNodes: [seedOf(r)] }
        const t = yield* makeNode("relay-quic/t", { host: "127.0.0.2", config })
        const s = yield* makeNode("relay-quic/s", { host: "127.0.0.3", config })
        yield* Context.get(t.ctx, Protocols.Protocols).handle(ECHO, echo)
        yield* Context.get(t.ctx, Protocols.Protocols).handle(HANG, () => Effect.never)
        for (const node of [t, s]) {
          yield* node.cm.getConnectionWithAddress(r.nodeId, r.address)
          for (const liar of [liar1, liar2])
            yield* node.cm.getConnectionWithAddress(liar.nodeId, liar.address)
          yield* eventually(node.cm.reachability, (x) => x.nat === "symmetric", "10 seconds")
        }
        // T reserves with its seed and announces it; R now passes T on with R as its relay.
        const tRelays = yield* eventually(t.cm.relays, (x) => x.reservations.length === 1, "15 seconds")
        expect(tRelays.reservations).toEqual([NodeId.encode(r.nodeId)])
        yield* eventually(
          Effect.map(r.cm.relays, (x) => x.server?.reservations ?? 0),
          (n) => n >= 1,
          "5 seconds"
        )

        // An RPC round trip over the relayed connection, made by NodeId alone.
        const pinged = yield* s.cm.withConnection(t.nodeId, (handle) =>
          Effect.map(handle.client.ping, () => handle.connection.relay)
        )
        expect(pinged !== undefined && NodeId.equals(pinged, r.nodeId)).toBe(true)
        const toT = (yield* s.cm.listConnections).filter((c) => c.nodeId === NodeId.encode(t.nodeId))
        expect(toT).toMatchObject([{ path: "relayed", relay: NodeId.encode(r.nodeId) }])
        const toS = (yield* t.cm.listConnections).filter((c) => c.nodeId === NodeId.encode(s.nodeId))
        expect(toS).toMatchObject([{ path: "relayed", relay: NodeId.encode(r.nodeId) }])

        // A marker in an application stream comes back intact; R forwarded bytes, none of them it.
        const marker = Buffer.from(`relay-quic marker ${crypto.randomUUID()}`)
        const before = Buffer.concat(tapped).length
        expect(yield* exchange(s, t, ECHO, marker)).toEqual(marker)
        const seen = Buffer.concat(tapped)
        expect(seen.length - before).toBeGreaterThan(2 * marker.length)
        expect(seen.includes(marker)).toBe(false)
        expect((yield* r.cm.relays).server).toMatchObject({ circuits: 1, bytesForwarded: seen.length })
        // R forwarded them as circuit datagrams (a zero byte, the circuit's id, one QUIC packet), not on a stream.
        const id = Buffer.from(tapped[0]!.subarray(1, 9))
        for (const datagram of tapped) {
          expect(datagram[0]).toBe(0)
          expect(Buffer.from(datagram.subarray(1, 9)).equals(id)).toBe(true)
          expect(datagram.length).toBeLessThanOrEqual(9 + 1200)
        }

        // R stops while a call is in flight: the call fails, the connection closes with an error.
        const relayed = yield* s.cm.withConnection(t.nodeId, (handle) => Effect.succeed(handle.connection))
        const inFlight = yield* Effect.fork(Effect.either(exchange(s, t, HANG, marker)))
        yield* Effect.sleep("300 millis")
        yield* Scope.close(relayScope, Exit.void)
        const reason = yield* relayed.closed.pipe(Effect.timeout("5 seconds"))
        expect(reason._tag).toBe("Error")
        expect(reason).toMatchObject({ detail: expect.stringMatching(/^relay circuit closed/) })
        const call = yield* Fiber.join(inFlight).pipe(Effect.timeout("5 seconds"))
        expect(call).toMatchObject({ _tag: "Left", left: { _tag: "SocketError", reason: "Read" } })
        yield* eventually(s.cm.listConnections, (xs) => xs.every((c) => c.nodeId !== NodeId.encode(t.nodeId)))
      }),
    60_000
  )
})
