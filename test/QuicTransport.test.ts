/**
 * QuicTransportLive over real QUIC on loopback: two (or three) nodes, each a transport with
 * its own deterministic KeyRing.
 */
import { randomBytes } from "node:crypto"
import { createSocket, type Socket as UdpSocket } from "node:dgram"
import type { Socket } from "@effect/platform"
import { describe, expect, it } from "@effect/vitest"
import {
  Chunk,
  Context,
  Deferred,
  Duration,
  Effect,
  Exit,
  Fiber,
  Layer,
  Option,
  Queue,
  Ref,
  Schedule,
  Scope,
  Stream,
  Supervisor
} from "effect"
import * as KeyRingTest from "../src/layers/KeyRingTest.js"
import * as QuicTransportLive from "../src/layers/QuicTransportLive.js"
import { KeyRing } from "../src/services/KeyRing.js"
import * as NodeId from "../src/services/NodeId.js"
import {
  type DialError,
  type QuicConnection,
  type QuicTransport,
  QuicTransportConfig,
  type QuicTransportOptions
} from "../src/services/QuicTransport.js"

interface TestNode {
  readonly transport: QuicTransport["Type"]
  readonly keyRing: KeyRing["Type"]
  readonly nodeId: NodeId.NodeId
  /** The transport's js-quic socket and server (to break them). */
  readonly internals: QuicTransportLive.TransportInternals
  /** Closing it stops the node. */
  readonly scope: Scope.CloseableScope
}

/** A node whose life is its own scope (closed with the test's scope at the latest). */
const makeNode = (seed: string, options: Partial<QuicTransportOptions> = {}) =>
  Effect.gen(function* () {
    const scope = yield* Scope.make()
    yield* Effect.addFinalizer(() => Scope.close(scope, Exit.void))
    const context = yield* Layer.buildWithScope(
      Layer.merge(KeyRingTest.layer(seed), QuicTransportConfig.layer(options)),
      scope
    )
    const { transport, internals } = yield* QuicTransportLive.makeWithInternals.pipe(
      Effect.provide(context),
      Scope.extend(scope)
    )
    const keyRing = Context.get(context, KeyRing)
    const nodeId = yield* keyRing.nodeId
    return { transport, keyRing, nodeId, internals, scope } satisfies TestNode
  })

/** The transport's counts now. */
const statsOf = (node: TestNode) => node.transport.stats ?? Effect.die("the transport keeps no stats")

const takeIncoming = (node: TestNode) =>
  node.transport.incoming.pipe(Stream.take(1), Stream.runCollect, Effect.map(Chunk.unsafeHead))

/**
 * `from` dials `to` on loopback; `inbound` is a fiber with the connection `to` accepts (join
 * it for the reverse side).
 */
const dialPair = (from: TestNode, to: TestNode) =>
  Effect.gen(function* () {
    const inbound = yield* takeIncoming(to).pipe(Effect.fork)
    const forward = yield* from.transport.dial({
      host: "127.0.0.1",
      port: to.transport.port,
      expectedNodeIds: [to.nodeId]
    })
    return { forward, inbound }
  })

/** Echoes every stream the peer opens on `connection`, until the connection ends. */
const serveEcho = (connection: QuicConnection) =>
  connection.acceptedStreams.pipe(
    Stream.runForEach((socket) =>
      Effect.scoped(
        Effect.gen(function* () {
          const write = yield* socket.writer
          yield* socket.run((bytes) => write(bytes))
        })
      ).pipe(Effect.ignore, Effect.forkScoped)
    ),
    Effect.forkScoped
  )

/** Opens a stream, sends `data`, ends our side, and collects what comes back until the peer ends. */
const roundTrip = (connection: QuicConnection, data: Uint8Array) =>
  Effect.scoped(
    Effect.gen(function* () {
      const socket: Socket.Socket = yield* connection.openStream
      const received: Uint8Array[] = []
      const reading = yield* socket.run((bytes) => void received.push(bytes)).pipe(Effect.fork)
      yield* Effect.scoped(
        Effect.gen(function* () {
          const write = yield* socket.writer
          // Several writes, to see they all arrive in order.
          const step = Math.ceil(data.length / 4)
          for (let i = 0; i < data.length; i += step) yield* write(data.subarray(i, i + step))
        })
      )
      yield* Fiber.join(reading)
      return Buffer.concat(received)
    })
  )

const udpBind = (port: number, type: "udp4" | "udp6", host: string) =>
  Effect.async<UdpSocket, Error>((resume) => {
    const socket = createSocket({ type, ipv6Only: type === "udp6" })
    socket.once("error", (e) => resume(Effect.fail(e)))
    socket.bind(port, host, () => resume(Effect.succeed(socket)))
  })
const udpClose = (socket: UdpSocket) =>
  Effect.async<void>((resume) => {
    socket.close(() => resume(Effect.void))
  })

describe("QuicTransportLive", () => {
  for (const host of ["127.0.0.1", "::1"]) {
    it.scopedLive(`dials over ${host}: NodeIds verified both ways, one shared port, echo both ways`, () =>
      Effect.gen(function* () {
        const a = yield* makeNode(`qt-a-${host}`)
        const b = yield* makeNode(`qt-b-${host}`)
        const inbound = yield* takeIncoming(b).pipe(Effect.fork)
        const forward = yield* a.transport.dial({ host, port: b.transport.port, expectedNodeIds: [b.nodeId] })
        const reverse = yield* Fiber.join(inbound)

        expect(NodeId.encode(forward.remoteNodeId)).toBe(NodeId.encode(b.nodeId))
        expect(forward.direction).toBe("forward")
        expect(forward.remotePort).toBe(b.transport.port)
        expect(NodeId.encode(reverse.remoteNodeId)).toBe(NodeId.encode(a.nodeId))
        expect(reverse.direction).toBe("reverse")
        // The dial left from A's listening port: one socket for server and clients.
        expect(reverse.remotePort).toBe(a.transport.port)
        expect(reverse.remoteHost).toBe(host)

        yield* serveEcho(reverse)
        yield* serveEcho(forward)
        const payload = randomBytes(64_000)
        const fromA = yield* roundTrip(forward, payload)
        expect(fromA.equals(payload)).toBe(true)
        const small = new TextEncoder().encode(`hello from B over ${host}`)
        const fromB = yield* roundTrip(reverse, small)
        expect(fromB.equals(Buffer.from(small))).toBe(true)
      })
    )
  }

  it.scopedLive("a dial expecting another NodeId fails with mismatch and leaves no connection", () =>
    Effect.gen(function* () {
      const a = yield* makeNode("qt-mm-a")
      const b = yield* makeNode("qt-mm-b")
      const c = yield* makeNode("qt-mm-c")
      const inbound = yield* takeIncoming(b).pipe(Effect.timeoutOption("1 second"), Effect.fork)
      const error = yield* a.transport
        .dial({ host: "127.0.0.1", port: b.transport.port, expectedNodeIds: [c.nodeId] })
        .pipe(Effect.flip)
      expect(error._tag).toBe("DialError")
      expect(error.reason).toBe("mismatch")
      expect(error.detail).toContain(NodeId.encode(c.nodeId))
      expect(error.detail).toContain(NodeId.encode(b.nodeId))
      // B never offers the rejected connection (or, had it, it would already be closed).
      const offered = yield* Fiber.join(inbound)
      if (Option.isSome(offered)) {
        const reason = yield* offered.value.closed.pipe(Effect.timeoutOption("1 second"))
        expect(Option.isSome(reason)).toBe(true)
      }
      yield* Effect.sleep("300 millis")
      expect(yield* statsOf(a)).toMatchObject({ connections: 0, quicConnections: 0 })
      expect(yield* statsOf(b)).toMatchObject({ connections: 0, quicConnections: 0 })
    })
  )

  it.scopedLive("a dial to a silent port times out within its timeout; interrupting a dial stops it", () =>
    Effect.gen(function* () {
      const a = yield* makeNode("qt-to-a")
      const silent = yield* Effect.acquireRelease(udpBind(0, "udp4", "127.0.0.1"), udpClose)
      const port = silent.address().port
      const someone = a.nodeId
      const [elapsed, error] = yield* a.transport
        .dial({ host: "127.0.0.1", port, expectedNodeIds: [someone], timeout: "400 millis" })
        .pipe(Effect.flip, Effect.timed)
      expect((error as DialError).reason).toBe("timeout")
      expect(Duration.toMillis(elapsed)).toBeGreaterThanOrEqual(390)
      expect(Duration.toMillis(elapsed)).toBeLessThan(1500)

      const pending = yield* a.transport
        .dial({ host: "127.0.0.1", port, expectedNodeIds: [someone], timeout: "30 seconds" })
        .pipe(Effect.fork)
      yield* Effect.sleep("100 millis")
      expect((yield* statsOf(a)).quicConnections).toBe(1)
      const [stopTime] = yield* Fiber.interrupt(pending).pipe(Effect.timed)
      expect(Duration.toMillis(stopTime)).toBeLessThan(1000)
      expect(yield* statsOf(a)).toMatchObject({ connections: 0, quicConnections: 0 })

      const invalid = yield* a.transport
        .dial({ host: "127.0.0.1", port: 70_000, expectedNodeIds: [someone] })
        .pipe(Effect.flip)
      expect(invalid.reason).toBe("invalid-address")
    })
  )

  it.scopedLive(
    "whenSlow runs once for a dial still going after its delay, never for a quick or stopped one",
    () =>
      Effect.gen(function* () {
        const a = yield* makeNode("qt-slow-a")
        const b = yield* makeNode("qt-slow-b")
        const silent = yield* Effect.acquireRelease(udpBind(0, "udp4", "127.0.0.1"), udpClose)
        const calls = { slow: 0, quick: 0, stopped: 0 }
        // A dial that never completes: nothing answers on the silent port.
        const dialSilent = (
          timeout: Duration.DurationInput,
          after: Duration.DurationInput,
          run: () => void
        ) =>
          a.transport.dial({
            host: "127.0.0.1",
            port: silent.address().port,
            expectedNodeIds: [b.nodeId],
            timeout,
            whenSlow: { after, run }
          })
        const slow = yield* dialSilent("600 millis", "100 millis", () => calls.slow++).pipe(Effect.flip)
        expect(slow.reason).toBe("timeout")
        expect(calls.slow).toBe(1)
        // A loopback dial is done well within 400 ms: its callback never runs, even later.
        const quick = yield* a.transport.dial({
          host: "127.0.0.1",
          port: b.transport.port,
          expectedNodeIds: [b.nodeId],
          whenSlow: { after: "400 millis", run: () => calls.quick++ }
        })
        expect(quick.remoteNodeId).toEqual(b.nodeId)
        // An interrupted dial: its callback is cancelled with it.
        const stopped = yield* dialSilent("5 seconds", "300 millis", () => calls.stopped++).pipe(Effect.fork)
        yield* Effect.sleep("50 millis")
        yield* Fiber.interrupt(stopped)
        yield* Effect.sleep("600 millis")
        expect(calls).toEqual({ slow: 1, quick: 0, stopped: 0 })
      })
  )

  it.scopedLive("10,000 random datagrams and stray 0-RTT packets do not disturb the node", () =>
    Effect.gen(function* () {
      const a = yield* makeNode("qt-junk-a")
      const b = yield* makeNode("qt-junk-b")
      const junk = yield* Effect.acquireRelease(udpBind(0, "udp4", "127.0.0.1"), udpClose)
      // Well-formed 0-RTT headers (QUIC v1) for unknown connections: js-quic's server reads
      // the token such a packet has not got (an unhandled rejection); the transport drops them.
      for (let i = 0; i < 50; i++) {
        const zeroRtt = Buffer.concat([
          Buffer.from([0xd0, 0, 0, 0, 1, 20]),
          randomBytes(20),
          Buffer.from([20]),
          randomBytes(20),
          Buffer.from([0x40, 50]),
          randomBytes(1150)
        ])
        yield* Effect.async<void>((resume) =>
          junk.send(zeroRtt, b.transport.port, "127.0.0.1", () => resume(Effect.void))
        )
      }
      for (let i = 0; i < 10_000; i++) {
        const datagram = randomBytes(1 + Math.floor(Math.random() * 1400))
        // A third look like QUIC long-header packets, to get past the first parse.
        if (i % 3 === 0) datagram[0] = 0xc0 | (datagram[0]! & 0x3f)
        yield* Effect.async<void>((resume) =>
          junk.send(datagram, b.transport.port, "127.0.0.1", () => resume(Effect.void))
        )
      }
      const { forward, inbound } = yield* dialPair(a, b)
      yield* serveEcho(yield* Fiber.join(inbound))
      const payload = randomBytes(10_000)
      expect((yield* roundTrip(forward, payload)).equals(payload)).toBe(true)
      const failed = yield* b.transport.failure.pipe(Effect.timeoutOption("10 millis"), Effect.exit)
      expect(Exit.isSuccess(failed) && Option.isNone(failed.value)).toBe(true)
    })
  )

  it.scopedLive("sendDatagram leaves from the shared port", () =>
    Effect.gen(function* () {
      const a = yield* makeNode("qt-dgram-a", { host: "127.0.0.1" })
      const receiver = yield* Effect.acquireRelease(udpBind(0, "udp4", "127.0.0.1"), udpClose)
      const received = Effect.async<{ data: Buffer; port: number }>((resume) => {
        receiver.once("message", (data, info) => resume(Effect.succeed({ data, port: info.port })))
      })
      const fiber = yield* Effect.fork(received)
      yield* a.transport.sendDatagram("127.0.0.1", receiver.address().port, new Uint8Array([1, 2, 3]))
      const got = yield* Fiber.join(fiber)
      expect([...got.data]).toEqual([1, 2, 3])
      expect(got.port).toBe(a.transport.port)
      const bad = yield* a.transport.sendDatagram("::1", 9, new Uint8Array([1])).pipe(Effect.flip)
      expect(bad.reason).toBe("send")
    })
  )

  it.scopedLive(
    "150 streams at once, past the peer's limit of 100: the opens beyond it wait for credit, every round trip completes, the connection stays",
    () =>
      Effect.gen(function* () {
        const a = yield* makeNode("qt-streams-a")
        const b = yield* makeNode("qt-streams-b")
        const { forward, inbound } = yield* dialPair(a, b)
        const reverse = yield* Fiber.join(inbound)
        yield* serveEcho(reverse)
        yield* serveEcho(forward)
        const sizes = Array.from({ length: 150 }, (_, i) => 1 + i)
        for (const [from, label] of [
          [forward, "forward"],
          [reverse, "reverse"]
        ] as const) {
          const echoed = yield* Effect.forEach(
            sizes,
            (size) => Effect.map(roundTrip(from, randomBytes(size)), (bytes) => bytes.length),
            { concurrency: "unbounded" }
          )
          expect(echoed, label).toEqual(sizes)
        }
        // The same connection still carries streams.
        expect([...(yield* roundTrip(forward, new Uint8Array([9])))]).toEqual([9])
        expect((yield* statsOf(a)).connections).toBe(1)
      })
  )

  it.scopedLive(
    "with the peer's 100 streams held open, the 101st open waits (interruptibly) until one of them ends",
    () =>
      Effect.gen(function* () {
        const a = yield* makeNode("qt-credit-a")
        const b = yield* makeNode("qt-credit-b")
        const { forward, inbound } = yield* dialPair(a, b)
        const reverse = yield* Fiber.join(inbound)
        yield* serveEcho(reverse)
        // 100 streams, each held open (our side not ended) until its latch opens.
        const latches = yield* Effect.forEach(Array.from({ length: 100 }), () => Deferred.make<void>())
        const opened = yield* Ref.make(0)
        const held = yield* Effect.forEach(
          latches,
          (latch) =>
            Effect.scoped(
              Effect.gen(function* () {
                const socket = yield* forward.openStream
                const write = yield* socket.writer
                yield* write(new Uint8Array([1]))
                yield* Ref.update(opened, (n) => n + 1)
                yield* Deferred.await(latch)
              })
            ).pipe(Effect.fork),
          { concurrency: "unbounded" }
        )
        yield* Ref.get(opened).pipe(
          Effect.repeat({ until: (n) => n === 100, schedule: Schedule.spaced("5 millis") })
        )
        // A wait for credit ends with its caller's timeout.
        const timedOut = yield* Effect.scoped(forward.openStream).pipe(Effect.timeoutOption("100 millis"))
        expect(Option.isNone(timedOut)).toBe(true)
        const extra = yield* roundTrip(forward, new Uint8Array([7, 7])).pipe(Effect.fork)
        yield* Effect.sleep("300 millis")
        expect(Option.isNone(yield* Fiber.poll(extra))).toBe(true)
        // One stream ends: the peer collects it and grants one more.
        yield* Deferred.succeed(latches[0]!, undefined)
        const echoed = yield* Fiber.join(extra)
        expect([...echoed]).toEqual([7, 7])
        for (const latch of latches) yield* Deferred.succeed(latch, undefined)
        yield* Fiber.joinAll(held)
        expect((yield* statsOf(a)).connections).toBe(1)
      })
  )

  it.scopedLive("close is idempotent and reported on both sides; streams cannot open afterwards", () =>
    Effect.gen(function* () {
      const a = yield* makeNode("qt-close-a")
      const b = yield* makeNode("qt-close-b")
      const { forward, inbound } = yield* dialPair(a, b)
      const reverse = yield* Fiber.join(inbound)
      const accepted = yield* reverse.acceptedStreams.pipe(Stream.runCollect, Effect.fork)
      yield* Effect.all([forward.close("bye"), forward.close("again")], { concurrency: "unbounded" })
      expect(yield* forward.closed).toEqual({ _tag: "Local", detail: "bye" })
      expect(yield* reverse.closed).toEqual({ _tag: "Peer", detail: "bye" })
      // The peer's accepted-streams stream ends with the connection.
      expect(Chunk.size(yield* Fiber.join(accepted))).toBe(0)
      const error = yield* Effect.scoped(forward.openStream).pipe(Effect.flip)
      expect(error.reason).toBe("closed")
      expect((yield* statsOf(a)).connections).toBe(0)
      expect((yield* statsOf(b)).connections).toBe(0)
    })
  )

  it.scopedLive("closing the layer closes every connection, frees the port and leaves no fibers", () =>
    Effect.gen(function* () {
      const supervisor = yield* Supervisor.track
      const a = yield* makeNode("qt-stop-a")
      const b = yield* makeNode("qt-stop-b").pipe(Effect.supervised(supervisor))
      const { forward, inbound } = yield* dialPair(a, b)
      // B also dials A, so it holds a forward and a reverse connection.
      const bForward = yield* b.transport
        .dial({ host: "127.0.0.1", port: a.transport.port, expectedNodeIds: [a.nodeId] })
        .pipe(Scope.extend(b.scope))
      yield* Fiber.join(inbound)
      expect((yield* statsOf(b)).connections).toBe(2)
      const aSeesBStop = yield* takeIncoming(a).pipe(
        Effect.flatMap((c) => c.closed),
        Effect.fork
      )
      // The node's own fibers (admission, renewal) are running under the supervisor.
      const started = yield* supervisor.value
      expect(started.length).toBeGreaterThan(0)

      yield* Scope.close(b.scope, Exit.void)
      expect((yield* forward.closed)._tag).toBe("Peer")
      expect((yield* Fiber.join(aSeesBStop))._tag).toBe("Peer")
      expect((yield* bForward.closed)._tag).toBe("Local")
      // The UDP port is free again, on both families.
      const v4 = yield* udpBind(b.transport.port, "udp4", "0.0.0.0")
      yield* udpClose(v4)
      const v6 = yield* udpBind(b.transport.port, "udp6", "::")
      yield* udpClose(v6)
      // Every fiber the node started has ended.
      const fibers = yield* supervisor.value
      const running = yield* Effect.filter(fibers, (fiber) => fiber.poll.pipe(Effect.map(Option.isNone)))
      expect(running).toHaveLength(0)
    })
  )

  it.scopedLive("a burst of 40 inbound handshakes never has more than maxInboundHandshakes in progress", () =>
    Effect.gen(function* () {
      const cap = 4
      // (A handshake whose client gave up is abandoned after B's connect timeout.)
      const b = yield* makeNode("qt-cap-b", {
        maxInboundHandshakes: cap,
        connectTimeout: Duration.seconds(1)
      })
      const a = yield* makeNode("qt-cap-a")
      const { forward: established, inbound } = yield* dialPair(a, b)
      yield* serveEcho(yield* Fiber.join(inbound))
      // B echoes on everything it admits from now on.
      yield* Stream.runForEach(b.transport.incoming, serveEcho).pipe(Effect.forkScoped)
      const bStats = statsOf(b)
      let sampledMax = 0
      yield* bStats.pipe(
        Effect.tap((stats) => {
          sampledMax = Math.max(sampledMax, stats.handshakesInProgress)
        }),
        Effect.repeat(Schedule.spaced("1 millis")),
        Effect.forkScoped
      )

      // 2 client nodes × 20 concurrent dials (each connection made is closed again at once),
      // while the established connection echoes.
      const clients = yield* Effect.forEach([0, 1], (i) => makeNode(`qt-cap-client-${i}`))
      const dialOnce = (client: TestNode) =>
        client.transport
          .dial({
            host: "127.0.0.1",
            port: b.transport.port,
            expectedNodeIds: [b.nodeId],
            timeout: "1500 millis"
          })
          .pipe(Effect.scoped, Effect.either)
      const burst = Effect.forEach(
        clients.flatMap((client) => Array.from({ length: 20 }, () => client)),
        dialOnce,
        { concurrency: "unbounded" }
      )
      const payload = randomBytes(20_000)
      const [results, echoed] = yield* Effect.all([burst, roundTrip(established, payload)], {
        concurrency: "unbounded"
      })
      expect(echoed.equals(payload)).toBe(true)
      const after = yield* bStats
      // The cap was reached, never passed.
      expect(after.handshakesHighWater).toBe(cap)
      expect(sampledMax).toBeLessThanOrEqual(cap)
      expect(after.handshakesRefused).toBeGreaterThan(0)
      // The admitted ones went through in full.
      expect(results.filter((r) => r._tag === "Right").length).toBeGreaterThanOrEqual(cap)
      // Every slot is released again.
      // (`repeat` with only `until` answers the last count read; with a schedule it would
      // answer the schedule's count of repetitions.)
      const drained = yield* Effect.map(bStats, (stats) => stats.handshakesInProgress).pipe(
        Effect.tap((n) => (n === 0 ? Effect.void : Effect.sleep("10 millis"))),
        Effect.repeat({ until: (n) => n === 0 }),
        Effect.timeoutOption("8 seconds")
      )
      expect(drained).toEqual(Option.some(0))
      // A normal dial and echo afterwards.
      const fresh = yield* a.transport.dial({
        host: "127.0.0.1",
        port: b.transport.port,
        expectedNodeIds: [b.nodeId]
      })
      expect((yield* roundTrip(fresh, payload)).equals(payload)).toBe(true)
      yield* Effect.forEach(clients, (client) => Scope.close(client.scope, Exit.void), {
        concurrency: "unbounded"
      })
    })
  )

  it.scopedLive(
    "with maxInboundHandshakes 0 inbound dials are refused (busy), outgoing dials still work",
    () =>
      Effect.gen(function* () {
        const a = yield* makeNode("qt-cap0-a")
        const b = yield* makeNode("qt-cap0-b", { maxInboundHandshakes: 0 })
        const error = yield* a.transport
          .dial({
            host: "127.0.0.1",
            port: b.transport.port,
            expectedNodeIds: [b.nodeId],
            timeout: "500 millis"
          })
          .pipe(Effect.flip)
        expect(error.reason).toBe("refused")
        expect(error.detail).toContain("busy")
        expect(yield* statsOf(b)).toMatchObject({
          connections: 0,
          handshakesInProgress: 0,
          handshakesHighWater: 0
        })
        expect((yield* statsOf(b)).handshakesRefused).toBeGreaterThan(0)
        const { forward: out, inbound } = yield* dialPair(b, a)
        yield* serveEcho(yield* Fiber.join(inbound))
        const payload = randomBytes(1000)
        expect((yield* roundTrip(out, payload)).equals(payload)).toBe(true)
      })
  )

  it.scopedLive("a quiet connection closes with IdleTimeout on both sides after maxIdleTimeout", () =>
    Effect.gen(function* () {
      // Keep-alive far longer than the idle timeout: nothing is sent once the handshake is done.
      const options = { maxIdleTimeout: Duration.millis(300), keepAliveInterval: Duration.seconds(10) }
      const a = yield* makeNode("qt-idle-a", options)
      const b = yield* makeNode("qt-idle-b", options)
      const { forward, inbound } = yield* dialPair(a, b)
      const reverse = yield* Fiber.join(inbound)
      const [elapsed, [forwardReason, reverseReason]] = yield* Effect.all([forward.closed, reverse.closed], {
        concurrency: "unbounded"
      }).pipe(Effect.timed)
      expect(forwardReason).toEqual({ _tag: "IdleTimeout" })
      expect(reverseReason).toEqual({ _tag: "IdleTimeout" })
      expect(Duration.toMillis(elapsed)).toBeGreaterThanOrEqual(200)
      expect(Duration.toMillis(elapsed)).toBeLessThan(2500)
      expect((yield* statsOf(a)).connections).toBe(0)
    })
  )

  it.scopedLive("a peer whose socket dies goes silent: its failure fires, our side sees IdleTimeout", () =>
    Effect.gen(function* () {
      // A pings every 100 ms; with B gone silent, A's connection idles out.
      const a = yield* makeNode("qt-fail-a", {
        maxIdleTimeout: Duration.millis(500),
        keepAliveInterval: Duration.millis(100)
      })
      const b = yield* makeNode("qt-fail-b")
      const { forward, inbound } = yield* dialPair(a, b)
      yield* Fiber.join(inbound)
      const bFailure = yield* b.transport.failure.pipe(Effect.flip, Effect.fork)
      // B's UDP socket stops underneath the transport, not through its finalizer.
      const internals = b.internals
      yield* Effect.promise(() => internals.socket.stop({ force: true }))
      const error = yield* Fiber.join(bFailure).pipe(Effect.timeout("2 seconds"))
      expect(error._tag).toBe("TransportError")
      expect(error.reason).toBe("socket")
      const [elapsed, reason] = yield* forward.closed.pipe(Effect.timed)
      expect(reason).toEqual({ _tag: "IdleTimeout" })
      expect(Duration.toMillis(elapsed)).toBeLessThan(3000)
      // A is fine; B's scope still closes (bounded).
      const aFailure = yield* a.transport.failure.pipe(Effect.timeoutOption("10 millis"), Effect.exit)
      expect(Exit.isSuccess(aFailure) && Option.isNone(aFailure.value)).toBe(true)
      yield* Scope.close(b.scope, Exit.void).pipe(Effect.timeout("5 seconds"))
    })
  )

  it.scopedLive("an unexpected stop of the QUIC server fails `failure` with TransportError", () =>
    Effect.gen(function* () {
      const a = yield* makeNode("qt-fail-server-a")
      const failure = yield* a.transport.failure.pipe(Effect.flip, Effect.fork)
      const internals = a.internals
      yield* Effect.promise(() => internals.server.stop({ force: true }))
      const error = yield* Fiber.join(failure).pipe(Effect.timeout("2 seconds"))
      expect(error._tag).toBe("TransportError")
      expect(error.reason).toBe("server")
      yield* Scope.close(a.scope, Exit.void).pipe(Effect.timeout("5 seconds"))
    })
  )

  it.scopedLive("key renewal applies to the next dial and the server as soon as renew returns", () =>
    Effect.gen(function* () {
      const a = yield* makeNode("qt-renew-a")
      const b = yield* makeNode("qt-renew-b")
      const bIncoming = yield* Queue.unbounded<QuicConnection>()
      yield* Stream.runForEach(b.transport.incoming, (c) => Queue.offer(bIncoming, c)).pipe(Effect.forkScoped)
      yield* Stream.runDrain(a.transport.incoming).pipe(Effect.forkScoped)
      const before = b.nodeId
      yield* b.keyRing.renew
      const after = yield* b.keyRing.nodeId
      expect(NodeId.encode(after)).not.toBe(NodeId.encode(before))
      // No waiting: B's server presents the new certificate to the very next dial.
      const renewed = yield* a.transport.dial({
        host: "127.0.0.1",
        port: b.transport.port,
        expectedNodeIds: [after]
      })
      expect(NodeId.encode(renewed.remoteNodeId)).toBe(NodeId.encode(after))
      const old = yield* a.transport
        .dial({ host: "127.0.0.1", port: b.transport.port, expectedNodeIds: [before] })
        .pipe(Effect.flip)
      expect(old.reason).toBe("mismatch")

      // The other way round: after A renews, A's next dial presents A's new certificate, and
      // A's server presents it to B's next dial.
      const aAfter = yield* a.keyRing.renew.pipe(Effect.zipRight(a.keyRing.nodeId))
      yield* a.transport.dial({ host: "127.0.0.1", port: b.transport.port, expectedNodeIds: [after] })
      const seenByB = yield* Queue.take(bIncoming).pipe(
        Effect.repeat({ until: (c) => NodeId.equals(c.remoteNodeId, aAfter) }),
        Effect.timeoutOption("2 seconds")
      )
      expect(Option.isSome(seenByB)).toBe(true)
      const back = yield* b.transport.dial({
        host: "127.0.0.1",
        port: a.transport.port,
        expectedNodeIds: [aAfter]
      })
      expect(NodeId.encode(back.remoteNodeId)).toBe(NodeId.encode(aAfter))
    })
  )
})
