/**
 * QuicTransportLive over relayed circuits, real QUIC on loopback. Three transports: A, B and
 * the relay R. The "relay" is the test itself: A opens a stream on its connection to R, R
 * opens one on its connection to B, and the test splices the two (R's ends) byte for byte,
 * through a tap that may record or alter what passes. A dials B over that circuit
 * (`dialCircuit`); B serves it (`acceptCircuit`).
 */
import { randomBytes } from "node:crypto"
import type { Socket } from "@effect/platform"
import { describe, expect, it } from "@effect/vitest"
import { Deferred, Duration, Effect, Exit, Fiber, Option, Queue, Scope, Supervisor } from "effect"
import { FrameReader, frameOf, joinFrames } from "../src/internal/circuitFrames.js"
import * as NodeId from "../src/services/NodeId.js"
import type { Circuit } from "../src/services/QuicTransport.js"
import {
  chunkReader,
  eventually,
  makeWorld,
  roundTrip,
  serveEcho,
  statsOf,
  type World
} from "./fixtures/circuitWorld.js"

/** What the test relay does to the bytes it passes ("ab": from A towards B). */
type Tap = (direction: "ab" | "ba", chunk: Uint8Array) => Uint8Array

const passThrough: Tap = (_, chunk) => chunk

/** Copies `from` to `to` through `tap` until `from` ends, then ends `to`. */
const pump = (from: Socket.Socket, to: Socket.Socket, direction: "ab" | "ba", tap: Tap) =>
  Effect.scoped(
    Effect.gen(function* () {
      const reader = yield* chunkReader(from)
      const write = yield* to.writer
      while (true) {
        const chunk = yield* reader.readChunk
        if (chunk === undefined) return
        const out = tap(direction, chunk)
        if (out.byteLength > 0) yield* write(out)
      }
    })
  ).pipe(Effect.ignore)

/**
 * Opens a circuit: A's end (a stream on A's connection to R) now; once A's first bytes reach
 * R, R's stream to B, spliced to A's by `tap`. `bEnd` is B's end, once it arrives; interrupting
 * `splice` (or closing the scope) ends the spliced streams at R.
 */
const openCircuit = (world: World, tap: Tap = passThrough) =>
  Effect.gen(function* () {
    const aEnd = yield* world.aToR.openStream
    const splice = yield* Effect.gen(function* () {
      const fromA = yield* Queue.take(world.rStreamsFromA)
      const toB = yield* world.rToB.openStream
      yield* Effect.all([pump(fromA, toB, "ab", tap), pump(toB, fromA, "ba", tap)], { concurrency: 2 })
    }).pipe(Effect.scoped, Effect.forkScoped)
    const bEnd = Queue.take(world.bStreamsFromR)
    const circuit = (socket: Socket.Socket): Circuit => ({ socket, relay: world.r.nodeId })
    return { aCircuit: circuit(aEnd), bCircuit: Effect.map(bEnd, circuit), splice }
  })

/** B serves the circuit's end once it arrives (a fiber; it completes when acceptCircuit does). */
const serveCircuit = (world: World, bCircuit: Effect.Effect<Circuit>) =>
  bCircuit.pipe(
    Effect.flatMap((circuit) => world.b.transport.acceptCircuit!(circuit)),
    Effect.forkScoped
  )

/** A relayed connection A → B over a fresh circuit: both ends, and B's acceptCircuit fiber. */
const relayedPair = (world: World, tap: Tap = passThrough) =>
  Effect.gen(function* () {
    const { aCircuit, bCircuit, splice } = yield* openCircuit(world, tap)
    const accepting = yield* serveCircuit(world, bCircuit)
    const forward = yield* world.a.transport.dialCircuit!(aCircuit, { expectedNodeIds: [world.b.nodeId] })
    const reverse = yield* Queue.take(world.bIncoming)
    return { forward, reverse, accepting, splice }
  })

describe("QuicTransportLive over relayed circuits", () => {
  it.scopedLive("A dials B through R: both NodeIds verified, relay named, streams both ways", () =>
    Effect.gen(function* () {
      const world = yield* makeWorld("tc-ok")
      const { forward, reverse } = yield* relayedPair(world)

      expect(NodeId.encode(forward.remoteNodeId)).toBe(NodeId.encode(world.b.nodeId))
      expect(forward.direction).toBe("forward")
      expect(forward.relay).toEqual(world.r.nodeId)
      // A's end of the circuit is a local shim, not B's address.
      expect(forward.remoteHost).toBe("127.0.0.1")
      expect(forward.remotePort).not.toBe(world.b.transport.port)
      expect(NodeId.encode(reverse.remoteNodeId)).toBe(NodeId.encode(world.a.nodeId))
      expect(reverse.direction).toBe("reverse")
      expect(reverse.relay).toEqual(world.r.nodeId)
      // The direct connections say no relay.
      expect(world.aToR.relay).toBeUndefined()

      yield* serveEcho(forward)
      yield* serveEcho(reverse)
      const payload = randomBytes(64_000)
      expect((yield* roundTrip(forward, payload)).equals(payload)).toBe(true)
      const small = new TextEncoder().encode("hello from B through R")
      expect((yield* roundTrip(reverse, small)).equals(Buffer.from(small))).toBe(true)
      expect(world.a.internals.circuits.shims).toBe(1)
      expect(world.b.internals.circuits.shims).toBe(1)
    })
  )

  it.scopedLive("a dial expecting another NodeId fails with mismatch; B offers nothing", () =>
    Effect.gen(function* () {
      const world = yield* makeWorld("tc-mm")
      const { aCircuit, bCircuit } = yield* openCircuit(world)
      const accepting = yield* serveCircuit(world, bCircuit)
      const error = yield* world.a.transport.dialCircuit!(aCircuit, {
        expectedNodeIds: [world.r.nodeId]
      }).pipe(Effect.flip)
      expect(error._tag).toBe("DialError")
      expect(error.reason).toBe("mismatch")
      expect(error.detail).toContain(NodeId.encode(world.r.nodeId))
      expect(error.detail).toContain(NodeId.encode(world.b.nodeId))
      // A's failed dial ends its circuit, and B's side ends with it. (In TLS 1.3 the server may
      // finish its handshake before the client has checked its certificate: a connection B
      // offered is closed by then.)
      yield* Fiber.join(accepting).pipe(Effect.timeout("5 seconds"))
      for (const offered of yield* Queue.takeAll(world.bIncoming))
        expect(Option.isSome(yield* offered.closed.pipe(Effect.timeoutOption("1 second")))).toBe(true)
      expect(world.a.internals.circuits.shims).toBe(0)
      expect(world.b.internals.circuits.shims).toBe(0)
      expect((yield* statsOf(world.a)).connections).toBe(1)
    })
  )

  it.scopedLive(
    "a relay that alters every packet makes the dial fail with a typed error, B gets nothing",
    () =>
      Effect.gen(function* () {
        const world = yield* makeWorld("tc-flip")
        // R re-frames what passes, with one byte of each packet flipped.
        const readers = { ab: new FrameReader(), ba: new FrameReader() }
        let altered = 0
        const flip: Tap = (direction, chunk) => {
          const frames: Array<Uint8Array> = []
          readers[direction].push(chunk, (packet) => {
            const copy = packet.slice()
            copy[copy.length >> 1] ^= 0x40
            altered++
            frames.push(frameOf(copy)!)
          })
          return frames.length === 0 ? new Uint8Array(0) : joinFrames(frames)
        }
        const { aCircuit, bCircuit } = yield* openCircuit(world, flip)
        yield* serveCircuit(world, bCircuit)
        const error = yield* world.a.transport.dialCircuit!(aCircuit, {
          expectedNodeIds: [world.b.nodeId],
          timeout: "1500 millis"
        }).pipe(Effect.flip)
        expect(error._tag).toBe("DialError")
        expect(["timeout", "tls"]).toContain(error.reason)
        expect(altered).toBeGreaterThan(0)
        expect(yield* Queue.size(world.bIncoming)).toBe(0)
        // B holds only its connection from R.
        expect(yield* statsOf(world.b)).toMatchObject({ connections: 1, quicConnections: 1 })
      })
  )

  it.scopedLive("the relay never sees what the nodes send: a marker in stream data is not in its bytes", () =>
    Effect.gen(function* () {
      const world = yield* makeWorld("tc-marker")
      const forwarded: Array<Uint8Array> = []
      const record: Tap = (_, chunk) => {
        forwarded.push(chunk.slice())
        return chunk
      }
      const { forward, reverse } = yield* relayedPair(world, record)
      yield* serveEcho(reverse)
      const marker = Buffer.from(`quicmesh-marker-${randomBytes(12).toString("hex")}`)
      const payload = Buffer.concat(Array.from({ length: 50 }, () => marker))
      expect((yield* roundTrip(forward, payload)).equals(payload)).toBe(true)
      const seen = Buffer.concat(forwarded)
      // Both copies of the payload (there and back) passed the relay.
      expect(seen.length).toBeGreaterThan(2 * payload.length)
      expect(seen.indexOf(marker)).toBe(-1)
    })
  )

  it.scopedLive("ending the spliced stream closes both ends' connections", () =>
    Effect.gen(function* () {
      const world = yield* makeWorld("tc-end")
      const { forward, reverse, accepting, splice } = yield* relayedPair(world)
      yield* Fiber.interrupt(splice)
      const [forwardReason, reverseReason] = yield* Effect.all([forward.closed, reverse.closed], {
        concurrency: 2
      }).pipe(Effect.timeout("5 seconds"))
      expect(forwardReason._tag).toBe("Error")
      expect(forwardReason).toMatchObject({ detail: expect.stringContaining("relay circuit closed") })
      expect(reverseReason._tag).toBe("Error")
      expect(reverseReason).toMatchObject({ detail: expect.stringContaining("relay circuit closed") })
      yield* Fiber.join(accepting).pipe(Effect.timeout("5 seconds"))
      // A's circuit closes once its connection has.
      yield* eventually(
        Effect.sync(() => world.a.internals.circuits.shims),
        (n) => n === 0,
        "1 second"
      )
      expect(world.b.internals.circuits.shims).toBe(0)
      // The direct connections to R are untouched.
      expect((yield* statsOf(world.a)).connections).toBe(1)
      expect((yield* statsOf(world.b)).connections).toBe(1)
    })
  )

  it.scopedLive(
    "closing the dial's scope, or interrupting acceptCircuit, leaves no shim, connection or fiber",
    () =>
      Effect.gen(function* () {
        const world = yield* makeWorld("tc-scope")
        const supervisor = yield* Supervisor.track
        const dialScope = yield* Scope.make()
        const { aCircuit, bCircuit } = yield* openCircuit(world)
        const accepting = yield* serveCircuit(world, bCircuit).pipe(Effect.supervised(supervisor))
        const forward = yield* world.a.transport.dialCircuit!(aCircuit, {
          expectedNodeIds: [world.b.nodeId]
        }).pipe(Scope.extend(dialScope), Effect.supervised(supervisor))
        const reverse = yield* Queue.take(world.bIncoming)
        // The circuits' fibers run under the supervisor.
        expect((yield* supervisor.value).length).toBeGreaterThan(0)
        yield* Scope.close(dialScope, Exit.void)
        expect(yield* forward.closed).toEqual({ _tag: "Local", detail: "dial scope closed" })
        expect((yield* reverse.closed.pipe(Effect.timeout("5 seconds")))._tag).toBe("Peer")
        yield* Fiber.join(accepting).pipe(Effect.timeout("5 seconds"))

        // The other way: B stops serving its circuit; A's connection over it closes too.
        const second = yield* openCircuit(world)
        const serving = yield* serveCircuit(world, second.bCircuit).pipe(Effect.supervised(supervisor))
        const forward2 = yield* world.a.transport.dialCircuit!(second.aCircuit, {
          expectedNodeIds: [world.b.nodeId]
        }).pipe(Effect.supervised(supervisor))
        const reverse2 = yield* Queue.take(world.bIncoming)
        yield* Fiber.interrupt(serving)
        expect((yield* reverse2.closed)._tag).toBe("Error")
        expect((yield* forward2.closed.pipe(Effect.timeout("5 seconds")))._tag).not.toBe("IdleTimeout")

        // A's circuit closes once its connection has.
        yield* eventually(
          Effect.sync(() => world.a.internals.circuits.shims),
          (n) => n === 0,
          "1 second"
        )
        expect(world.b.internals.circuits.shims).toBe(0)
        for (const node of [world.a, world.b])
          yield* eventually(statsOf(node), (s) => s.connections === 1 && s.quicConnections === 1, "5 seconds")
        const fibers = yield* supervisor.value
        const running = yield* Effect.filter(fibers, (fiber) => fiber.poll.pipe(Effect.map(Option.isNone)))
        expect(running).toHaveLength(0)
      })
  )

  it.scopedLive(
    "a circuit that ends mid-handshake fails the dial at once; B offers nothing, keeps nothing",
    () =>
      Effect.gen(function* () {
        const world = yield* makeWorld("tc-mid", { connectTimeout: Duration.seconds(2) })
        // R passes B's first packet (the stateless retry) and drops the rest: B's handshake stalls.
        const fromB = new FrameReader()
        let passedFromB = 0
        const stall: Tap = (direction, chunk) => {
          if (direction === "ab") return chunk
          const frames: Array<Uint8Array> = []
          fromB.push(chunk, (packet) => {
            if (passedFromB++ === 0) frames.push(frameOf(packet)!)
          })
          return frames.length === 0 ? new Uint8Array(0) : joinFrames(frames)
        }
        const { aCircuit, bCircuit, splice } = yield* openCircuit(world, stall)
        const accepting = yield* serveCircuit(world, bCircuit)
        const dialing = yield* world.a.transport.dialCircuit!(aCircuit, {
          expectedNodeIds: [world.b.nodeId],
          timeout: "20 seconds"
        }).pipe(Effect.flip, Effect.fork)
        yield* eventually(statsOf(world.b), (s) => s.handshakesInProgress === 1, "5 seconds")
        yield* Fiber.interrupt(splice)
        // Long before the dial's own 20 s timeout.
        const error = yield* Fiber.join(dialing).pipe(Effect.timeout("5 seconds"))
        expect(error.reason).toBe("unreachable")
        expect(error.detail).toContain("relay circuit closed")
        yield* Fiber.join(accepting).pipe(Effect.timeout("5 seconds"))
        expect(world.a.internals.circuits.shims).toBe(0)
        expect(world.b.internals.circuits.shims).toBe(0)
        // B's stalled handshake ends with its connect timeout, as a direct one would.
        yield* eventually(
          statsOf(world.b),
          (s) => s.handshakesInProgress === 0 && s.quicConnections === 1,
          "10 seconds"
        )
        expect(yield* Queue.size(world.bIncoming)).toBe(0)
      })
  )

  /** R opens a stream to B itself and writes `bytes`; B serves it as a circuit. */
  const rawCircuitToB = (world: World, bytes: Uint8Array) =>
    Effect.gen(function* () {
      const socket = yield* world.rToB.openStream
      const write = yield* socket.writer
      yield* write(bytes)
      const ended = yield* Deferred.make<void>()
      yield* socket.run(() => {}).pipe(Effect.ensuring(Deferred.succeed(ended, undefined)), Effect.forkScoped)
      const accepting = yield* serveCircuit(
        world,
        Effect.map(Queue.take(world.bStreamsFromR), (s) => ({ socket: s, relay: world.r.nodeId }))
      )
      return { accepting, ended }
    })

  it.scopedLive("acceptCircuit ends when no handshake completes within the connect timeout", () =>
    Effect.gen(function* () {
      const world = yield* makeWorld("tc-idle", { connectTimeout: Duration.seconds(1) })
      // One frame that is no QUIC packet, then silence.
      const silent = yield* rawCircuitToB(world, frameOf(new TextEncoder().encode("not a QUIC packet"))!)
      yield* Fiber.join(silent.accepting).pipe(Effect.timeout("5 seconds"))
      // B ended its side of the stream.
      yield* Deferred.await(silent.ended).pipe(Effect.timeout("5 seconds"))
      expect(world.b.internals.circuits.shims).toBe(0)
    })
  )

  it.scopedLive("a malformed frame ends the circuit", () =>
    Effect.gen(function* () {
      const world = yield* makeWorld("tc-bad", { connectTimeout: Duration.seconds(20) })
      // An empty frame: the circuit ends at once, not after the 20 s connect timeout.
      const bad = yield* rawCircuitToB(world, new Uint8Array([0, 0]))
      yield* Fiber.join(bad.accepting).pipe(Effect.timeout("5 seconds"))
      yield* Deferred.await(bad.ended).pipe(Effect.timeout("5 seconds"))
      expect(world.b.internals.circuits.shims).toBe(0)
    })
  )
})
