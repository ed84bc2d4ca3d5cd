/**
 * QuicTransportLive over datagram circuits, real QUIC on loopback. Three transports: A, B and
 * the relay R (A connected to R, R to B). R forwards the circuit's datagrams with its
 * transport's `forwardDatagrams`; each end's circuit stream is a stream on its connection to R
 * that carries nothing but the test's first byte (a datagram circuit does not use it).
 */
import { randomBytes } from "node:crypto"
import { createSocket } from "node:dgram"
import type { Socket } from "@effect/platform"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Exit, Fiber, Queue, Scope } from "effect"
import * as NodeId from "../src/services/NodeId.js"
import type { Circuit, ForwardOptions } from "../src/services/QuicTransport.js"
import {
  chunkReader,
  eventually,
  makeWorld,
  roundTrip,
  serveEcho,
  type World
} from "./fixtures/circuitWorld.js"

/**
 * Opens a stream on `open`'s connection and writes one byte, so that the peer sees it; the
 * writer stays open until `end` (which ends our side of the stream).
 */
const announced = (open: Effect.Effect<Socket.Socket, unknown, Scope.Scope>) =>
  Effect.gen(function* () {
    const socket = yield* Effect.orDie(open)
    const writerScope = yield* Scope.make()
    const write = yield* Scope.extend(socket.writer, writerScope)
    yield* Effect.orDie(write(Uint8Array.of(1)))
    yield* Effect.addFinalizer(() => Scope.close(writerScope, Exit.void))
    return { socket, end: Scope.close(writerScope, Exit.void) }
  })

/**
 * A datagram circuit A → B through R: R's forwarding (in its own scope, `forwarding`), and
 * both ends' circuits. `tap` sees (and may alter) each datagram R forwards.
 */
const openCircuit = (world: World, tap?: (bytes: Uint8Array) => void, ended?: () => void) =>
  Effect.gen(function* () {
    const counted = { bytes: 0 }
    const options: ForwardOptions = {
      bytesPerSecond: Number.POSITIVE_INFINITY,
      tap,
      ended,
      forwarded: (bytes) => {
        counted.bytes += bytes
      }
    }
    const forwardingScope = yield* Scope.make()
    yield* Effect.addFinalizer(() => Scope.close(forwardingScope, Exit.void))
    const forwarding = yield* world.r.transport.forwardDatagrams!(
      {
        a: { host: world.rFromA.remoteHost, port: world.rFromA.remotePort },
        b: { host: world.rToB.remoteHost, port: world.rToB.remotePort }
      },
      options
    ).pipe(Scope.extend(forwardingScope))
    // A's circuit stream carries nothing, so R never sees it; R's stream to B carries one byte.
    const aEnd = yield* Effect.orDie(world.aToR.openStream)
    const rToB = yield* announced(world.rToB.openStream)
    const bEnd = yield* Queue.take(world.bStreamsFromR)
    const datagrams = { id: forwarding.id, host: "127.0.0.1", port: world.r.transport.port }
    const circuit = (socket: Socket.Socket): Circuit => ({ socket, relay: world.r.nodeId, datagrams })
    return { aCircuit: circuit(aEnd), bCircuit: circuit(bEnd), rToB, forwardingScope, counted }
  })

/** A relayed connection A → B over a fresh datagram circuit: both ends, and B's acceptCircuit fiber. */
const relayedPair = (world: World, tap?: (bytes: Uint8Array) => void, ended?: () => void) =>
  Effect.gen(function* () {
    const opened = yield* openCircuit(world, tap, ended)
    const accepting = yield* world.b.transport.acceptCircuit!(opened.bCircuit).pipe(Effect.forkScoped)
    const forward = yield* world.a.transport.dialCircuit!(opened.aCircuit, {
      expectedNodeIds: [world.b.nodeId]
    })
    const reverse = yield* Queue.take(world.bIncoming)
    return { ...opened, forward, reverse, accepting }
  })

/** Every byte read from `socket` until it ends (or fails). */
const readAll = (socket: Socket.Socket) =>
  Effect.gen(function* () {
    const reader = yield* chunkReader(socket)
    let bytes = 0
    while (true) {
      const chunk = yield* Effect.orElseSucceed(reader.readChunk, () => undefined)
      if (chunk === undefined) return bytes
      bytes += chunk.length
    }
  })

describe("QuicTransportLive over datagram circuits", () => {
  it.scopedLive(
    "A dials B with R forwarding datagrams: both NodeIds verified, streams both ways, nothing on the streams",
    () =>
      Effect.gen(function* () {
        const world = yield* makeWorld("tcd-ok")
        const { forward, reverse, rToB, counted } = yield* relayedPair(world)
        // What R's stream to B receives from B: nothing, while the connection works.
        const onStream = yield* Effect.fork(readAll(rToB.socket))

        expect(NodeId.encode(forward.remoteNodeId)).toBe(NodeId.encode(world.b.nodeId))
        expect(NodeId.encode(reverse.remoteNodeId)).toBe(NodeId.encode(world.a.nodeId))
        expect(forward.relay).toEqual(world.r.nodeId)
        expect(reverse.relay).toEqual(world.r.nodeId)
        yield* serveEcho(reverse)
        const data = randomBytes(200_000)
        const echoed = yield* roundTrip(forward, data)
        expect(Buffer.compare(echoed, data)).toBe(0)
        // Every byte of it went through R as datagrams (with QUIC's overhead on top, twice).
        expect(counted.bytes).toBeGreaterThan(2 * data.length)
        expect(world.r.internals.datagrams.sizes.forwarded).toBe(1)
        yield* forward.close()
        expect(yield* Fiber.join(onStream)).toBe(0)
      })
  )

  it.scopedLive("R never sees what the nodes send: a marker in stream data is in no forwarded datagram", () =>
    Effect.gen(function* () {
      const world = yield* makeWorld("tcd-marker")
      const seen: Array<Buffer> = []
      const { forward, reverse } = yield* relayedPair(world, (bytes) => void seen.push(Buffer.from(bytes)))
      yield* serveEcho(reverse)
      const marker = Buffer.from(`quicmesh-marker-${randomBytes(8).toString("hex")}`)
      const echoed = yield* roundTrip(forward, Buffer.concat([marker, marker]))
      expect(echoed.includes(marker)).toBe(true)
      expect(seen.length).toBeGreaterThan(4)
      expect(Buffer.concat(seen).includes(marker)).toBe(false)
    })
  )

  it.scopedLive(
    "a relay that alters every datagram makes the dial fail with a typed error; B gets nothing",
    () =>
      Effect.gen(function* () {
        const world = yield* makeWorld("tcd-flip")
        const { aCircuit, bCircuit } = yield* openCircuit(world, (bytes) => {
          bytes[bytes.length - 1] = bytes[bytes.length - 1]! ^ 0x01
        })
        yield* world.b.transport.acceptCircuit!(bCircuit).pipe(Effect.forkScoped)
        const dial = yield* world.a.transport.dialCircuit!(aCircuit, {
          expectedNodeIds: [world.b.nodeId],
          timeout: "1500 millis"
        }).pipe(Effect.exit)
        expect(Exit.isFailure(dial)).toBe(true)
        if (Exit.isFailure(dial)) expect(JSON.stringify(dial.cause)).toContain("DialError")
        expect(yield* Queue.size(world.bIncoming)).toBe(0)
      })
  )

  it.scopedLive(
    "R forwards only between the two ends: a stranger's datagram with the circuit's id is dropped",
    () =>
      Effect.gen(function* () {
        const world = yield* makeWorld("tcd-stranger")
        const { forward, reverse, aCircuit } = yield* relayedPair(world)
        const id = aCircuit.datagrams!.id
        const stranger = createSocket("udp4")
        yield* Effect.addFinalizer(() => Effect.sync(() => stranger.close()))
        const before = world.r.internals.datagrams.dropped
        yield* Effect.async<void>((resume) => {
          stranger.send(Buffer.from([0, ...id, 0x40, 1, 2, 3]), world.r.transport.port, "127.0.0.1", () =>
            resume(Effect.void)
          )
        })
        yield* eventually(
          Effect.sync(() => world.r.internals.datagrams.dropped),
          (n) => n > before,
          "2 seconds"
        )
        // The circuit that worked still works.
        yield* serveEcho(reverse)
        const echoed = yield* roundTrip(forward, Buffer.from("still here"))
        expect(echoed.toString()).toBe("still here")
      })
  )

  it.scopedLive(
    "the relay ending a circuit (END) closes both ends' connections; an end that leaves tells the relay",
    () =>
      Effect.gen(function* () {
        const world = yield* makeWorld("tcd-end")
        const ended = { n: 0 }
        const first = yield* relayedPair(world, undefined, () => {
          ended.n++
        })
        // The circuit's stream ending says nothing about a datagram circuit: it goes on.
        yield* first.rToB.end
        yield* serveEcho(first.reverse)
        expect((yield* roundTrip(first.forward, Buffer.from("after the stream"))).toString()).toBe(
          "after the stream"
        )
        // R ends the forwarding: its END reaches both ends, whose connections close at once.
        yield* Scope.close(first.forwardingScope, Exit.void)
        const reasons = yield* Effect.all([first.forward.closed, first.reverse.closed]).pipe(
          Effect.timeout("3 seconds")
        )
        for (const reason of reasons) expect(JSON.stringify(reason)).toContain("the relay ended the circuit")
        yield* Fiber.join(first.accepting)
        expect(world.r.internals.datagrams.sizes.forwarded).toBe(0)
        expect(world.a.internals.datagrams.sizes.ends).toBe(0)
        expect(world.b.internals.datagrams.sizes.ends).toBe(0)

        // A closes its relayed connection: its END reaches R (the relay's `ended`).
        const second = yield* relayedPair(world, undefined, () => {
          ended.n++
        })
        expect(ended.n).toBe(0)
        yield* second.forward.close()
        yield* eventually(
          Effect.sync(() => ended.n),
          (n) => n >= 1,
          "3 seconds"
        )
      })
  )

  it.scopedLive(
    "B takes over a circuit only the source the relay named: a connection proving another NodeId is closed",
    () =>
      Effect.gen(function* () {
        const world = yield* makeWorld("tcd-source")
        const { aCircuit, bCircuit } = yield* openCircuit(world)
        // The relay names R itself as the source, but A dials over the circuit.
        yield* world.b.transport.acceptCircuit!({ ...bCircuit, source: world.r.nodeId }).pipe(
          Effect.forkScoped
        )
        const dialled = yield* world.a.transport.dialCircuit!(aCircuit, {
          expectedNodeIds: [world.b.nodeId],
          timeout: "3 seconds"
        }).pipe(Effect.either)
        if (Either.isRight(dialled)) {
          const reason = yield* dialled.right.closed.pipe(Effect.timeout("5 seconds"))
          expect(JSON.stringify(reason)).toContain("as this circuit's source")
        }
        expect(yield* Queue.size(world.bIncoming)).toBe(0)
      })
  )
})
