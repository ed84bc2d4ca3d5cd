import { describe, expect, it } from "@effect/vitest"
import { Context, type Duration, Effect, Exit, Fiber, Layer, Option, Scope, Stream, TestClock } from "effect"
import * as SimNet from "../src/layers/SimWorld.js"
import * as NodeId from "../src/services/NodeId.js"
import {
  type CloseReason,
  DialError,
  type QuicConnection,
  QuicTransport,
  type QuicTransportService
} from "../src/services/QuicTransport.js"
import { type NatType, SimNetwork, type SimTransportOptions } from "../src/services/SimNetwork.js"
import { stubKeyRing } from "./fixtures/stubKeyRing.js"

const idOf = (n: number): NodeId.NodeId => {
  const bytes = new Uint8Array(32)
  bytes[0] = n
  bytes[31] = n ^ 0x5a
  return bytes as NodeId.NodeId
}

const decoder = new TextDecoder()

interface Node {
  readonly id: NodeId.NodeId
  readonly transport: QuicTransportService
  /** Every inbound connection so far. */
  readonly inbound: Array<QuicConnection>
}

/** A node's transport in the test's world, in `scope` (default: the test's scope). */
const makeNode = (n: number, options: SimTransportOptions = {}, scope?: Scope.Scope) =>
  Effect.gen(function* () {
    const id = idOf(n)
    const layer = SimNet.transport(options).pipe(Layer.provide(stubKeyRing(id)))
    const context =
      scope === undefined ? yield* Layer.build(layer) : yield* Layer.buildWithScope(layer, scope)
    const transport = Context.get(context, QuicTransport)
    const inbound: Array<QuicConnection> = []
    const collect = Stream.runForEach(transport.incoming, (c) => Effect.sync(() => inbound.push(c)))
    if (scope === undefined) yield* Effect.forkScoped(collect)
    else yield* Effect.forkIn(collect, scope)
    return { id, transport, inbound } satisfies Node
  })

const dialFork = (
  from: Node,
  to: Node,
  address?: { host: string; port: number },
  timeout: Duration.DurationInput = "1 second"
) =>
  Effect.fork(
    from.transport.dial({
      host: address?.host ?? to.transport.host,
      port: address?.port ?? to.transport.port,
      expectedNodeIds: [to.id],
      timeout
    })
  )

/** Dials and lets the handshake finish (latency 10 ms: the dialer has it at 20 ms, the listener at 30 ms). */
const connect = (from: Node, to: Node, address?: { host: string; port: number }) =>
  Effect.gen(function* () {
    const fiber = yield* dialFork(from, to, address)
    yield* TestClock.adjust("30 millis")
    return yield* Fiber.join(fiber)
  })

/** Nodes 1 and 2, a connection from 1 to 2 (both ends) and a stream 1 opened on it. */
const connectedPair = Effect.gen(function* () {
  const a = yield* makeNode(1)
  const b = yield* makeNode(2)
  const forward = yield* connect(a, b)
  const reverse = b.inbound[0]!
  const socket = yield* forward.openStream
  return { a, b, forward, reverse, socket }
})

const world = (options: Partial<Parameters<typeof SimNet.layer>[0]> = {}) =>
  SimNet.layer({ seed: 1, latency: "10 millis", ...options })

const collect = (socket: { run: (h: (b: Uint8Array) => void) => Effect.Effect<void, unknown> }) =>
  Effect.gen(function* () {
    const got: Array<string> = []
    const fiber = yield* Effect.fork(socket.run((bytes) => void got.push(decoder.decode(bytes))))
    return { got, fiber }
  })

describe("SimNetwork", () => {
  it.scoped("dial connects, checks the NodeId, and both ends see each other", () =>
    Effect.gen(function* () {
      const a = yield* makeNode(1)
      const b = yield* makeNode(2)
      expect(a.transport.host).toMatch(/^1\.0\.\d+\.\d+$/)
      const fiber = yield* dialFork(a, b)
      yield* TestClock.adjust("19 millis")
      expect(Option.isNone(yield* Fiber.poll(fiber))).toBe(true)
      yield* TestClock.adjust("1 millis")
      const forward = yield* Fiber.join(fiber)
      expect(NodeId.equals(forward.remoteNodeId, b.id)).toBe(true)
      expect(forward.direction).toBe("forward")
      expect([forward.remoteHost, forward.remotePort]).toEqual([b.transport.host, b.transport.port])
      expect([forward.localHost, forward.localPort]).toEqual([a.transport.host, a.transport.port])
      expect(b.inbound).toHaveLength(0)
      yield* TestClock.adjust("10 millis")
      expect(b.inbound).toHaveLength(1)
      const reverse = b.inbound[0]!
      expect(reverse.direction).toBe("reverse")
      expect(NodeId.equals(reverse.remoteNodeId, a.id)).toBe(true)
      expect([reverse.remoteHost, reverse.remotePort]).toEqual([a.transport.host, a.transport.port])
    }).pipe(Effect.provide(world()))
  )

  it.scoped("dial with the wrong expected NodeId fails with mismatch naming both ids", () =>
    Effect.gen(function* () {
      const a = yield* makeNode(1)
      const b = yield* makeNode(2)
      const fiber = yield* Effect.fork(
        a.transport.dial({ host: b.transport.host, port: b.transport.port, expectedNodeIds: [idOf(3)] })
      )
      yield* TestClock.adjust("20 millis")
      const error = yield* Fiber.join(fiber).pipe(Effect.flip)
      expect(error).toBeInstanceOf(DialError)
      expect(error.reason).toBe("mismatch")
      expect(error.detail).toContain(NodeId.encode(idOf(3)))
      expect(error.detail).toContain(NodeId.encode(b.id))
      yield* TestClock.adjust("100 millis")
      expect(b.inbound).toHaveLength(0)
      const sim = yield* SimNetwork
      expect((yield* sim.stats).openConnectionEnds).toBe(0)
    }).pipe(Effect.provide(world()))
  )

  it.scoped("stream bytes flow both ways after the link latency, FIN ends the reader", () =>
    Effect.gen(function* () {
      const a = yield* makeNode(1)
      const b = yield* makeNode(2)
      const forward = yield* connect(a, b)
      const reverse = b.inbound[0]!
      const accepted: Array<{ run: (h: (b: Uint8Array) => void) => Effect.Effect<void, unknown> }> = []
      yield* Effect.fork(
        Stream.runForEach(reverse.acceptedStreams, (s) => Effect.sync(() => accepted.push(s)))
      )

      const streamScope = yield* Scope.make()
      const socket = yield* forward.openStream.pipe(Scope.extend(streamScope))
      const write = yield* socket.writer.pipe(Scope.extend(streamScope))
      yield* write("ping")
      const fromB = yield* collect(socket)
      yield* TestClock.adjust("9 millis")
      expect(accepted).toHaveLength(0)
      yield* TestClock.adjust("1 millis")
      expect(accepted).toHaveLength(1)
      const atB = yield* collect(accepted[0]!)
      yield* TestClock.adjust("0 millis")
      expect(atB.got).toEqual(["ping"])

      const bSocket = accepted[0] as unknown as import("@effect/platform").Socket.Socket
      const writeB = yield* bSocket.writer
      yield* writeB(new TextEncoder().encode("pong"))
      yield* TestClock.adjust("9 millis")
      expect(fromB.got).toEqual([])
      yield* TestClock.adjust("1 millis")
      expect(fromB.got).toEqual(["pong"])

      // Closing our side sends FIN: B's reader returns cleanly after the latency.
      yield* Scope.close(streamScope, Exit.void)
      yield* TestClock.adjust("9 millis")
      expect(Option.isNone(yield* Fiber.poll(atB.fiber))).toBe(true)
      yield* TestClock.adjust("1 millis")
      expect(Exit.isSuccess(yield* Fiber.await(atB.fiber))).toBe(true)
    }).pipe(Effect.provide(world()))
  )

  it.scoped("closing a connection reaches the peer as Peer after the latency and fails its streams", () =>
    Effect.gen(function* () {
      const { forward, reverse, socket } = yield* connectedPair
      const reading = yield* collect(socket)
      yield* TestClock.adjust("10 millis")
      yield* reverse.close("bye")
      expect(yield* reverse.closed).toEqual({ _tag: "Local", detail: "bye" } satisfies CloseReason)
      const early = yield* Effect.fork(forward.closed)
      yield* TestClock.adjust("9 millis")
      expect(Option.isNone(yield* Fiber.poll(early))).toBe(true)
      yield* TestClock.adjust("1 millis")
      expect(yield* Fiber.join(early)).toEqual({ _tag: "Peer", detail: "bye" })
      const readExit = yield* Fiber.await(reading.fiber)
      expect(Exit.isFailure(readExit)).toBe(true)
      const opened = yield* forward.openStream.pipe(Effect.flip)
      expect(opened.reason).toBe("closed")
    }).pipe(Effect.provide(world()))
  )

  it.scoped(
    "halt: nothing sent arrives any more, no dial completes or times out, a close tells no peer",
    () =>
      Effect.gen(function* () {
        const sim = yield* SimNetwork
        const { a, b, forward, reverse, socket } = yield* connectedPair
        yield* TestClock.adjust("10 millis")
        yield* sim.halt
        const scheduled = (yield* sim.stats).scheduledEvents
        const dial = yield* dialFork(a, b, undefined, "1 second")
        yield* socket.writer.pipe(Effect.flatMap((write) => write(new TextEncoder().encode("lost"))))
        yield* forward.close("bye")
        yield* TestClock.adjust("5 seconds")
        // Neither the dial's handshake nor its timeout came; the peer never heard of the close.
        expect(Option.isNone(yield* Fiber.poll(dial))).toBe(true)
        expect(Option.isNone(yield* Fiber.poll(yield* Effect.fork(reverse.closed)))).toBe(true)
        expect(b.inbound).toHaveLength(1)
        expect((yield* sim.stats).scheduledEvents).toBe(scheduled)
        yield* Fiber.interrupt(dial)
      }).pipe(Effect.provide(world()))
  )

  it.scoped("a dial to nothing waits for its timeout", () =>
    Effect.gen(function* () {
      const a = yield* makeNode(1)
      const nobody = yield* Effect.fork(
        a.transport.dial({ host: "1.0.0.250", port: 1314, expectedNodeIds: [idOf(2)], timeout: "5 seconds" })
      )
      yield* TestClock.adjust("4999 millis")
      expect(Option.isNone(yield* Fiber.poll(nobody))).toBe(true)
      yield* TestClock.adjust("1 millis")
      const error = yield* Fiber.join(nobody).pipe(Effect.flip)
      expect(error.reason).toBe("timeout")
      const sim = yield* SimNetwork
      expect((yield* sim.stats).pendingDials).toBe(0)
      const invalid = yield* a.transport
        .dial({ host: "not-a-host", port: 1, expectedNodeIds: [idOf(2)] })
        .pipe(Effect.flip)
      expect(invalid.reason).toBe("invalid-address")
    }).pipe(Effect.provide(world()))
  )

  it.scoped("whenSlow runs once, at its time, for a dial still going; never for a quick or stopped one", () =>
    Effect.gen(function* () {
      const a = yield* makeNode(1)
      const b = yield* makeNode(2)
      const calls = { slow: 0, quick: 0, stopped: 0 }
      const slow = yield* Effect.fork(
        a.transport.dial({
          host: "1.0.0.250",
          port: 1314,
          expectedNodeIds: [idOf(2)],
          timeout: "2 seconds",
          whenSlow: { after: "500 millis", run: () => calls.slow++ }
        })
      )
      // A dial to b is done at 20 ms (10 ms links): its callback at 100 ms never runs.
      const quick = yield* Effect.fork(
        a.transport.dial({
          host: b.transport.host,
          port: b.transport.port,
          expectedNodeIds: [b.id],
          whenSlow: { after: "100 millis", run: () => calls.quick++ }
        })
      )
      const stopped = yield* Effect.fork(
        a.transport.dial({
          host: "1.0.0.250",
          port: 1315,
          expectedNodeIds: [idOf(2)],
          whenSlow: { after: "300 millis", run: () => calls.stopped++ }
        })
      )
      yield* TestClock.adjust("200 millis")
      yield* Fiber.join(quick)
      yield* Fiber.interrupt(stopped)
      yield* TestClock.adjust("299 millis")
      expect(calls).toEqual({ slow: 0, quick: 0, stopped: 0 })
      yield* TestClock.adjust("1 millis")
      expect(calls).toEqual({ slow: 1, quick: 0, stopped: 0 })
      yield* TestClock.adjust("2 seconds")
      expect((yield* Fiber.join(slow).pipe(Effect.flip)).reason).toBe("timeout")
      expect(calls).toEqual({ slow: 1, quick: 0, stopped: 0 })
    }).pipe(Effect.provide(world()))
  )

  it.scoped("interrupting a dial leaves nothing behind", () =>
    Effect.gen(function* () {
      const sim = yield* SimNetwork
      const a = yield* makeNode(1)
      const b = yield* makeNode(2)
      const fiber = yield* dialFork(a, b)
      yield* TestClock.adjust("15 millis")
      expect((yield* sim.stats).pendingDials).toBe(1)
      yield* Fiber.interrupt(fiber)
      expect((yield* sim.stats).pendingDials).toBe(0)
      yield* TestClock.adjust("1 second")
      const stats = yield* sim.stats
      expect(stats.openConnectionEnds).toBe(0)
      expect(stats.scheduledEvents).toBe(0)
      expect(b.inbound).toHaveLength(0)

      // A dial whose scope closes takes its connection down on both sides.
      const scope = yield* Scope.make()
      const dial = yield* Effect.fork(
        a.transport
          .dial({ host: b.transport.host, port: b.transport.port, expectedNodeIds: [b.id] })
          .pipe(Scope.extend(scope))
      )
      yield* TestClock.adjust("30 millis")
      yield* Fiber.join(dial)
      expect((yield* sim.stats).openConnectionEnds).toBe(2)
      yield* Scope.close(scope, Exit.void)
      yield* TestClock.adjust("10 millis")
      expect(yield* b.inbound[0]!.closed).toEqual({ _tag: "Peer", detail: "released" })
      expect((yield* sim.stats).openConnectionEnds).toBe(0)
    }).pipe(Effect.provide(world()))
  )

  it.scoped("a partition blocks dials, holds bytes, and heals", () =>
    Effect.gen(function* () {
      const sim = yield* SimNetwork
      const { a, b, forward, reverse, socket } = yield* connectedPair
      const write = yield* socket.writer
      yield* TestClock.adjust("10 millis")
      const accepted = yield* Stream.runHead(reverse.acceptedStreams).pipe(Effect.map(Option.getOrThrow))
      const reading = yield* collect(accepted)

      const cut = yield* sim.partition([a.transport.host], [b.transport.host])
      const blocked = yield* dialFork(b, a)
      yield* write("held")
      yield* TestClock.adjust("1 second")
      expect((yield* Fiber.join(blocked).pipe(Effect.flip)).reason).toBe("timeout")
      expect(reading.got).toEqual([])

      yield* sim.heal(cut)
      yield* TestClock.adjust("10 millis")
      expect(reading.got).toEqual(["held"])
      const again = yield* connect(b, a)
      expect(NodeId.equals(again.remoteNodeId, a.id)).toBe(true)
      expect(yield* forward.closed.pipe(Effect.timeout("0 millis"), Effect.option)).toEqual(Option.none())
    }).pipe(Effect.provide(world()))
  )

  it.scoped("a partition longer than the idle timeout closes both ends with IdleTimeout", () =>
    Effect.gen(function* () {
      const sim = yield* SimNetwork
      const a = yield* makeNode(1, { maxIdleTimeout: "2 seconds" })
      const b = yield* makeNode(2, { maxIdleTimeout: "3 seconds" })
      const forward = yield* connect(a, b)
      const reverse = b.inbound[0]!
      yield* sim.partition([a.transport.host], [b.transport.host])
      const aClosed = yield* Effect.fork(forward.closed)
      const bClosed = yield* Effect.fork(reverse.closed)
      yield* TestClock.adjust("1999 millis")
      expect(Option.isNone(yield* Fiber.poll(aClosed))).toBe(true)
      yield* TestClock.adjust("1 millis")
      expect(yield* Fiber.join(aClosed)).toEqual({ _tag: "IdleTimeout" })
      expect(Option.isNone(yield* Fiber.poll(bClosed))).toBe(true)
      yield* TestClock.adjust("1 second")
      expect(yield* Fiber.join(bClosed)).toEqual({ _tag: "IdleTimeout" })
    }).pipe(Effect.provide(world()))
  )

  it.scoped("loss drops handshakes and datagrams", () =>
    Effect.gen(function* () {
      const sim = yield* SimNetwork
      const a = yield* makeNode(1)
      const b = yield* makeNode(2)
      yield* sim.setLink(a.transport.host, b.transport.host, { loss: 1 })
      const lost = yield* dialFork(a, b)
      yield* TestClock.adjust("1 second")
      expect((yield* Fiber.join(lost).pipe(Effect.flip)).reason).toBe("timeout")

      yield* sim.setLink(a.transport.host, b.transport.host, { loss: 0.5 })
      for (let i = 0; i < 200; i++)
        yield* a.transport.sendDatagram(b.transport.host, b.transport.port, new Uint8Array(8))
      yield* TestClock.adjust("10 millis")
      const trace = yield* sim.trace
      const delivered = trace.filter((e) => e.kind === "datagram").length
      const dropped = trace.filter((e) => e.kind === "drop" && e.detail === "datagram: lost").length
      expect(delivered + dropped).toBe(200)
      expect(delivered).toBeGreaterThan(60)
      expect(delivered).toBeLessThan(140)
      expect(trace.some((e) => e.kind === "drop" && e.detail === "handshake: lost")).toBe(true)
    }).pipe(Effect.provide(world()))
  )

  it.scoped(
    "a crash closes the peer's connections after its idle timeout; the node restarts on its address",
    () =>
      Effect.gen(function* () {
        const sim = yield* SimNetwork
        const aScope = yield* Scope.make()
        const a = yield* makeNode(1, {}, aScope)
        const b = yield* makeNode(2, { maxIdleTimeout: "1 second" })
        const forward = yield* connect(a, b)
        const reverse = b.inbound[0]!
        const failure = yield* Effect.fork(a.transport.failure.pipe(Effect.flip))

        yield* sim.crash(a.transport.host)
        expect(yield* forward.closed).toEqual({ _tag: "Error", detail: "crashed" })
        expect((yield* Fiber.join(failure)).reason).toBe("stopped")
        expect(yield* sim.isBound(a.transport.host, a.transport.port)).toBe(false)
        const bClosed = yield* Effect.fork(reverse.closed)
        yield* TestClock.adjust("999 millis")
        expect(Option.isNone(yield* Fiber.poll(bClosed))).toBe(true)
        yield* TestClock.adjust("1 millis")
        expect(yield* Fiber.join(bClosed)).toEqual({ _tag: "IdleTimeout" })
        expect(
          (yield* a.transport
            .dial({ host: b.transport.host, port: b.transport.port, expectedNodeIds: [b.id] })
            .pipe(Effect.flip)).reason
        ).toBe("stopped")

        // Restart: same key, same address, while the old scope is still open.
        const restarted = yield* makeNode(1, { host: a.transport.host, port: a.transport.port })
        const again = yield* connect(b, restarted)
        expect(NodeId.equals(again.remoteNodeId, a.id)).toBe(true)
        // Closing the crashed incarnation's scope does not unbind the new one.
        yield* Scope.close(aScope, Exit.void)
        expect(yield* sim.isBound(a.transport.host, a.transport.port)).toBe(true)
        const clash = yield* Layer.build(
          SimNet.transport({ host: a.transport.host, port: a.transport.port }).pipe(
            Layer.provide(stubKeyRing(idOf(9)))
          )
        ).pipe(Effect.flip)
        expect(clash.reason).toBe("bind")
      }).pipe(Effect.provide(world()))
  )

  describe("NAT", () => {
    const natTypes: ReadonlyArray<NatType> = ["none", "full-cone", "restricted", "symmetric"]

    it.scoped("a public target accepts dials from behind every NAT and sees the external address", () =>
      Effect.gen(function* () {
        const sim = yield* SimNetwork
        const s = yield* makeNode(1)
        let n = 10
        for (const nat of natTypes) {
          const x = yield* makeNode(n++, { nat })
          const info = (yield* sim.hostInfo(x.transport.host))!
          yield* connect(x, s)
          const reverse = s.inbound.at(-1)!
          expect(NodeId.equals(reverse.remoteNodeId, x.id)).toBe(true)
          expect(reverse.remoteHost).toBe(info.publicHost)
          if (nat === "none") expect(reverse.remotePort).toBe(x.transport.port)
          else expect(x.transport.host).toMatch(/^10\./)
        }
        expect(s.inbound).toHaveLength(natTypes.length)
      }).pipe(Effect.provide(world()))
    )

    /** The NATed node dials the public seed; the seed's view is its external address. */
    const externalAddress = (x: Node, seed: Node) =>
      Effect.gen(function* () {
        yield* connect(x, seed)
        const reverse = seed.inbound.at(-1)!
        return { host: reverse.remoteHost, port: reverse.remotePort }
      })

    it.scoped("a restricted target is unreachable unsolicited, reachable after it sent to the dialer", () =>
      Effect.gen(function* () {
        const sim = yield* SimNetwork
        const s = yield* makeNode(1)
        const a = yield* makeNode(2)
        const b = yield* makeNode(3, { nat: "restricted" })
        const external = yield* externalAddress(b, s)
        expect(external.host).not.toBe(b.transport.host)

        const unsolicited = yield* dialFork(a, b, external)
        yield* TestClock.adjust("1 second")
        expect((yield* Fiber.join(unsolicited).pipe(Effect.flip)).reason).toBe("timeout")
        expect((yield* sim.trace).some((e) => e.detail === "handshake: filtered by NAT")).toBe(true)
        // Its private address is not routable either.
        const privately = yield* dialFork(a, b)
        yield* TestClock.adjust("1 second")
        expect((yield* Fiber.join(privately).pipe(Effect.flip)).reason).toBe("timeout")

        yield* b.transport.sendDatagram(a.transport.host, a.transport.port, new Uint8Array([1]))
        yield* TestClock.adjust("10 millis")
        const forward = yield* connect(a, b, external)
        expect(NodeId.equals(forward.remoteNodeId, b.id)).toBe(true)
        expect(NodeId.equals(b.inbound.at(-1)!.remoteNodeId, a.id)).toBe(true)
      }).pipe(Effect.provide(world()))
    )

    it.scoped("a full-cone target is reachable by anyone after any outbound packet", () =>
      Effect.gen(function* () {
        const sim = yield* SimNetwork
        const s = yield* makeNode(1)
        const a = yield* makeNode(2)
        const b = yield* makeNode(3, { nat: "full-cone" })
        const info = (yield* sim.hostInfo(b.transport.host))!
        const before = yield* dialFork(a, b, { host: info.publicHost, port: 40000 })
        yield* TestClock.adjust("1 second")
        expect((yield* Fiber.join(before).pipe(Effect.flip)).reason).toBe("timeout")
        expect((yield* sim.trace).some((e) => e.detail === "handshake: no NAT mapping")).toBe(true)

        const external = yield* externalAddress(b, s)
        expect(external).toEqual({ host: info.publicHost, port: 40000 })
        const forward = yield* connect(a, b, external)
        expect(NodeId.equals(forward.remoteNodeId, b.id)).toBe(true)
      }).pipe(Effect.provide(world()))
    )

    it.scoped("two restricted NATs connect by punching; two symmetric NATs cannot", () =>
      Effect.gen(function* () {
        const s = yield* makeNode(1)
        const punch = (nat: NatType, n: number) =>
          Effect.gen(function* () {
            const a = yield* makeNode(n, { nat })
            const b = yield* makeNode(n + 1, { nat })
            const aExternal = yield* externalAddress(a, s)
            const bExternal = yield* externalAddress(b, s)
            yield* b.transport.sendDatagram(aExternal.host, aExternal.port, new Uint8Array([1]))
            yield* TestClock.adjust("10 millis")
            const dial = yield* dialFork(a, b, bExternal)
            yield* TestClock.adjust("1 second")
            return yield* Fiber.await(dial)
          })
        const restricted = yield* punch("restricted", 10)
        expect(Exit.isSuccess(restricted)).toBe(true)
        const symmetric = yield* punch("symmetric", 20)
        expect(Exit.isFailure(symmetric)).toBe(true)
        if (Exit.isFailure(symmetric)) {
          const error = Option.getOrThrow(
            Option.flatMap(Option.some(symmetric.cause), (c) =>
              c._tag === "Fail" ? Option.some(c.error as DialError) : Option.none()
            )
          )
          expect(error.reason).toBe("timeout")
        }
      }).pipe(Effect.provide(world()))
    )
  })

  describe("determinism", () => {
    /** A small randomized scenario: jitter, loss, NATs, dials, streams, datagrams. */
    const scenario = (seed: number) =>
      Effect.gen(function* () {
        const sim = yield* SimNetwork
        const nats: ReadonlyArray<NatType> = [
          "none",
          "none",
          "restricted",
          "none",
          "full-cone",
          "symmetric",
          "none"
        ]
        const nodes: Array<Node> = []
        for (let i = 0; i < nats.length; i++) nodes.push(yield* makeNode(i + 1, { nat: nats[i]! }))
        const fibers = []
        for (let i = 0; i < nodes.length; i++)
          for (const j of [1, 3]) {
            const to = nodes[(i + j) % nodes.length]!
            if (to.transport.host.startsWith("10.")) continue
            fibers.push(
              yield* Effect.fork(
                nodes[i]!.transport.dial({
                  host: to.transport.host,
                  port: to.transport.port,
                  expectedNodeIds: [to.id],
                  timeout: "300 millis"
                }).pipe(
                  Effect.flatMap((c) =>
                    Effect.gen(function* () {
                      const socket = yield* c.openStream
                      const write = yield* socket.writer
                      yield* write(`hello from ${i}`)
                    })
                  ),
                  Effect.ignore
                )
              )
            )
          }
        for (const node of nodes)
          for (const other of nodes)
            if (node !== other)
              yield* node.transport.sendDatagram(
                other.transport.host,
                other.transport.port,
                new Uint8Array(4)
              )
        yield* TestClock.adjust("2 seconds")
        for (const f of fibers) yield* Fiber.join(f)
        const trace = yield* sim.trace
        return { hash: yield* sim.traceHash, kinds: new Set(trace.map((e) => e.kind)), length: trace.length }
      }).pipe(
        Effect.scoped,
        Effect.provide(SimNet.layer({ seed, latency: "20 millis", jitter: "30 millis", loss: 0.2 }))
      )

    it.effect("the same seed gives the same trace hash, another seed another one", () =>
      Effect.gen(function* () {
        const first = yield* scenario(7)
        const second = yield* scenario(7)
        const other = yield* scenario(8)
        expect(first.kinds.has("connect")).toBe(true)
        expect(first.kinds.has("drop")).toBe(true)
        expect(first.kinds.has("datagram")).toBe(true)
        expect(first.kinds.has("stream")).toBe(true)
        expect(second.hash).toBe(first.hash)
        expect(second.length).toBe(first.length)
        expect(other.hash).not.toBe(first.hash)
      })
    )

    it("the PRNG is deterministic and uniform enough", () => {
      const a = SimNet.makePrng(42)
      const b = SimNet.makePrng(42)
      const c = SimNet.makePrng("42x")
      const xs = Array.from({ length: 1000 }, () => a.next())
      expect(Array.from({ length: 1000 }, () => b.next())).toEqual(xs)
      expect(c.next()).not.toBe(xs[0])
      expect(xs.every((x) => x >= 0 && x < 1)).toBe(true)
      const mean = xs.reduce((s, x) => s + x, 0) / xs.length
      expect(Math.abs(mean - 0.5)).toBeLessThan(0.05)
    })
  })
})
