/**
 * The connection manager on real QUIC over loopback: lifecycle, the connection map,
 * getting connections, ping, multi-connection, timeouts and interruption.
 */
import * as Dgram from "node:dgram"
import { describe, expect, it } from "@effect/vitest"
import { Chunk, Clock, Duration, Effect, Exit, Fiber, Option, Queue, Scope, Stream, TestClock } from "effect"
import type { ConnectionEvent } from "../src/services/ConnectionManager.js"
import * as Dns from "../src/services/Dns.js"
import * as NodeId from "../src/services/NodeId.js"
import { ConnectionError } from "../src/services/QuicTransport.js"
import { eventually, makeNode, nodeIdOf, seedOf, type TestNode } from "./fixtures/cmNode.js"

const deadAddress = { host: "127.0.0.1", port: 9 } // discard port: nothing answers QUIC there

/** Binding a UDP socket to 127.0.0.1:`port` (closed at once): its error code, or undefined. */
const bindError = (port: number) =>
  Effect.async<string | undefined>((resume) => {
    const socket = Dgram.createSocket("udp4")
    socket.once("error", (e: NodeJS.ErrnoException) => {
      socket.close()
      resume(Effect.succeed(e.code ?? e.message))
    })
    socket.bind(port, "127.0.0.1", () => socket.close(() => resume(Effect.succeed(undefined))))
  })

describe("ConnectionManager lifecycle", () => {
  it.scopedLive("starts and stops repeatedly, reporting the bound address", () =>
    Effect.gen(function* () {
      for (let i = 0; i < 3; i++) {
        const scope = yield* Scope.make()
        const node = yield* makeNode("lifecycle").pipe(Scope.extend(scope))
        expect(node.address.host).toBe("127.0.0.1")
        expect(NodeId.equals(node.nodeId, nodeIdOf("lifecycle"))).toBe(true)
        // The reported port is the one it holds while it runs, and lets go of when it stops.
        expect(yield* bindError(node.address.port)).toBe("EADDRINUSE")
        yield* Scope.close(scope, Exit.void)
        expect(yield* bindError(node.address.port)).toBe(undefined)
      }
    })
  )

  it.scopedLive("stopping destroys every connection (the peer sees them close)", () =>
    Effect.gen(function* () {
      const b = yield* makeNode("stop-b")
      const scope = yield* Scope.make()
      const a = yield* makeNode("stop-a").pipe(Scope.extend(scope))
      yield* a.cm.getConnectionWithAddress(b.nodeId, b.address)
      yield* eventually(b.cm.hasConnection(a.nodeId), (x) => x)
      expect(yield* b.cm.hasConnection(a.nodeId)).toBe(true)
      yield* Scope.close(scope, Exit.void)
      const gone = yield* eventually(b.cm.hasConnection(a.nodeId), (has) => !has, "5 seconds").pipe(
        Effect.option
      )
      expect(gone).toEqual(Option.some(false))
    })
  )
})

describe("the connection map", () => {
  it.scopedLive("withConnection creates a connection, lists it, and keeps it between uses", () =>
    Effect.gen(function* () {
      const a = yield* makeNode("map-a")
      const b = yield* makeNode("map-b")
      yield* a.graph.setNode(b.nodeId, { ...b.address, scope: "local" })
      const first = yield* a.cm.withConnection(b.nodeId, (h) =>
        h.client.ping.pipe(Effect.as(h.connection.id))
      )
      const second = yield* a.cm.withConnection(b.nodeId, (h) => Effect.succeed(h.connection.id))
      expect(second).toBe(first)
      const list = yield* a.cm.listConnections
      expect(list).toHaveLength(1)
      expect(list[0]).toMatchObject({
        nodeId: NodeId.encode(b.nodeId),
        host: "127.0.0.1",
        port: b.address.port,
        usageCount: 0,
        direction: "forward"
      })
      expect(list[0]!.timeout).toBeGreaterThan(0)
      // The peer holds the same connection as an inbound one, under our NodeId.
      const theirs = yield* eventually(b.cm.listConnections, (l) => l.length === 1)
      expect(theirs[0]).toMatchObject({
        nodeId: NodeId.encode(a.nodeId),
        port: a.address.port,
        direction: "reverse"
      })
      // …and learned our address from the connection.
      const learned = yield* b.graph.getNode(a.nodeId)
      expect(Option.map(learned, (c) => c.addresses[0]?.port)).toEqual(Option.some(a.address.port))
    })
  )

  it.scopedLive("usage count follows acquire and release", () =>
    Effect.gen(function* () {
      const a = yield* makeNode("usage-a")
      const b = yield* makeNode("usage-b")
      yield* a.graph.setNode(b.nodeId, { ...b.address, scope: "local" })
      const scope = yield* Scope.make()
      yield* a.cm.acquireConnection(b.nodeId).pipe(Scope.extend(scope))
      yield* a.cm.acquireConnection(b.nodeId).pipe(Scope.extend(scope))
      const during = yield* a.cm.listConnections
      expect(during[0]!.usageCount).toBe(2)
      expect(during[0]!.timeout).toBeUndefined()
      yield* Scope.close(scope, Exit.void)
      const after = yield* a.cm.listConnections
      expect(after[0]!.usageCount).toBe(0)
      expect(after[0]!.timeout).toBeGreaterThan(0)
    })
  )

  it.scopedLive("concurrent requests for one node make exactly one connection", () =>
    Effect.gen(function* () {
      const a = yield* makeNode("join-a")
      const b = yield* makeNode("join-b")
      // What each side announces: one connection added, forward on a's side, reverse on b's.
      const added = (node: TestNode) =>
        Effect.gen(function* () {
          const seen: Array<ConnectionEvent> = []
          const events = yield* node.cm.events
          yield* events.pipe(
            Stream.runForEach((e) => Effect.sync(() => void (e._tag === "ConnectionAdded" && seen.push(e)))),
            Effect.forkScoped
          )
          return seen
        })
      const [addedOnA, addedOnB] = [yield* added(a), yield* added(b)]
      // Using getConnectionWithAddress from 20 fibers at once.
      const handles = yield* Effect.forEach(
        Array.from({ length: 20 }, () => 0),
        () => a.cm.getConnectionWithAddress(b.nodeId, b.address),
        { concurrency: "unbounded" }
      )
      expect(new Set(handles.map((h) => h.connection.id)).size).toBe(1)
      expect(yield* a.cm.listConnections).toHaveLength(1)
      yield* eventually(
        Effect.sync(() => addedOnB.length),
        (n) => n > 0
      )
      // Time for any second connection to show up on either side.
      yield* Effect.sleep("300 millis")
      expect(addedOnA).toEqual([
        {
          _tag: "ConnectionAdded",
          nodeId: b.nodeId,
          host: "127.0.0.1",
          port: b.address.port,
          direction: "forward"
        }
      ])
      expect(addedOnB).toEqual([
        {
          _tag: "ConnectionAdded",
          nodeId: a.nodeId,
          host: "127.0.0.1",
          port: a.address.port,
          direction: "reverse"
        }
      ])
      expect(yield* b.cm.listConnections).toHaveLength(1)
      // One QUIC connection on the wire: not 20 dials of which 19 were dropped.
      expect(yield* a.quicConnections).toBe(1)
      expect(yield* b.quicConnections).toBe(1)
    })
  )

  it.scopedLive("destroyConnection removes and closes it on both sides", () =>
    Effect.gen(function* () {
      const a = yield* makeNode("destroy-a")
      const b = yield* makeNode("destroy-b")
      const h = yield* a.cm.getConnectionWithAddress(b.nodeId, b.address)
      yield* a.cm.destroyConnection(b.nodeId)
      expect(yield* a.cm.hasConnection(b.nodeId)).toBe(false)
      const reason = yield* h.connection.closed.pipe(Effect.timeout("2 seconds"))
      expect(reason._tag).toBe("Local")
      const gone = yield* eventually(b.cm.hasConnection(a.nodeId), (x) => !x).pipe(Effect.option)
      expect(gone).toEqual(Option.some(false))
    })
  )
})

describe("ping", () => {
  it.scopedLive("with an address: true for the node there, false for a wrong NodeId or nobody", () =>
    Effect.gen(function* () {
      const a = yield* makeNode("ping-a")
      const b = yield* makeNode("ping-b")
      expect(yield* a.cm.pingNode(b.nodeId, b.address)).toBe(true)
      // Mismatched NodeId at b's address.
      expect(yield* a.cm.pingNode(nodeIdOf("somebody-else"), b.address, { timeout: "2 seconds" })).toBe(false)
      // Nothing at that address.
      expect(yield* a.cm.pingNode(b.nodeId, deadAddress, { timeout: "500 millis" })).toBe(false)
      // A node nobody knows.
      expect(yield* a.cm.pingNode(nodeIdOf("nonexistent"), undefined, { timeout: "500 millis" })).toBe(false)
    })
  )

  it.scopedLive("with an address different from the existing connection's, checks that exact address", () =>
    Effect.gen(function* () {
      const a = yield* makeNode("ping2-a")
      const b = yield* makeNode("ping2-b")
      yield* a.cm.getConnectionWithAddress(b.nodeId, b.address)
      expect(
        yield* a.cm.pingNode(
          b.nodeId,
          { host: "127.0.0.1", port: b.address.port + 1 },
          { timeout: "500 millis" }
        )
      ).toBe(false)
      expect(yield* a.cm.pingNode(b.nodeId)).toBe(true)
    })
  )

  it.scopedLive("a dead peer reads false within the ping timeout, not the keep-alive timeout", () =>
    Effect.gen(function* () {
      const a = yield* makeNode("dead-a")
      const b = yield* makeNode("dead-b")
      yield* a.cm.getConnectionWithAddress(b.nodeId, b.address)
      // b dies as a killed process does, without a goodbye: from now on its socket reads
      // nothing and sends nothing (no CONNECTION_CLOSE leaves it, nothing sent to it is answered).
      const socket = (yield* b.internals).socket as unknown as {
        socket: Dgram.Socket
        socketSend: (...args: ReadonlyArray<unknown>) => Promise<number>
      }
      yield* Effect.sync(() => {
        socket.socket.removeAllListeners("message")
        socket.socketSend = () => Promise.resolve(0)
      })
      // a heard no goodbye: it still holds the connection.
      expect(yield* a.cm.hasConnection(b.nodeId)).toBe(true)
      const started = Date.now()
      const alive = yield* a.cm.pingNode(b.nodeId, undefined, { timeout: "1 second" })
      expect(alive).toBe(false)
      expect(Date.now() - started).toBeLessThan(3000)
    })
  )
})

describe("getting connections", () => {
  it.scopedLive("connect timeout given by the caller, and interruption, leave nothing behind", () =>
    Effect.gen(function* () {
      const a = yield* makeNode("timeout-a")
      const target = nodeIdOf("timeout-target")
      const started = Date.now()
      const exit = yield* a.cm
        .getConnectionWithAddress(target, deadAddress, { timeout: "400 millis" })
        .pipe(Effect.exit)
      expect(Exit.isFailure(exit)).toBe(true)
      expect(Date.now() - started).toBeLessThan(2500)
      if (Exit.isFailure(exit)) expect(String(exit.cause)).toMatch(/timeout/)
      const fiber = yield* a.cm
        .getConnectionWithAddress(target, deadAddress, { timeout: "30 seconds" })
        .pipe(Effect.fork)
      yield* Effect.sleep("200 millis")
      const t0 = Date.now()
      yield* Fiber.interrupt(fiber)
      expect(Date.now() - t0).toBeLessThan(2000)
      expect(yield* a.cm.listConnections).toHaveLength(0)
      // A later dial to a live node is not blocked by the abandoned one.
      const b = yield* makeNode("timeout-b")
      yield* a.cm.getConnectionWithAddress(b.nodeId, b.address, { timeout: "5 seconds" })
      expect(yield* a.cm.listConnections).toHaveLength(1)
    })
  )

  it.scopedLive("multi-connection: one node over several addresses, ending once it is connected", () =>
    Effect.gen(function* () {
      const a = yield* makeNode("multi-a")
      const b = yield* makeNode("multi-b", { host: "::" })
      const started = Date.now()
      const connected = yield* a.cm.getMultiConnection(
        [b.nodeId],
        [{ host: "127.0.0.1", port: b.address.port }, { host: "::1", port: b.address.port }, deadAddress],
        { timeout: "10 seconds" }
      )
      expect(connected.map(NodeId.encode)).toEqual([NodeId.encode(b.nodeId)])
      // It did not wait for the dead address's 10 s timeout.
      expect(Date.now() - started).toBeLessThan(5000)
      expect(yield* a.cm.listConnections).toHaveLength(1)
    })
  )

  it.scopedLive("multi-connection: several nodes over several addresses, and over one address", () =>
    Effect.gen(function* () {
      const a = yield* makeNode("multi2-a")
      const b = yield* makeNode("multi2-b")
      const c = yield* makeNode("multi2-c")
      const both = yield* a.cm.getMultiConnection([b.nodeId, c.nodeId], [b.address, c.address])
      expect(new Set(both.map(NodeId.encode))).toEqual(
        new Set([NodeId.encode(b.nodeId), NodeId.encode(c.nodeId)])
      )
      const d = yield* makeNode("multi2-d")
      const e = yield* makeNode("multi2-e")
      // Only e's address: any wanted node may be there; e is found, d is not.
      const one = yield* a.cm.getMultiConnection([d.nodeId, e.nodeId], [e.address], { timeout: "3 seconds" })
      expect(one.map(NodeId.encode)).toEqual([NodeId.encode(e.nodeId)])
      const none = yield* a.cm
        .getMultiConnection([nodeIdOf("nobody")], [deadAddress], { timeout: "300 millis" })
        .pipe(Effect.flip)
      expect(none._tag).toBe("MultiConnectionError")
    })
  )
})

describe("idle timeout", () => {
  it.scoped(
    "an unused connection is destroyed after connectionIdleTimeoutTime; use extends it; seeds are exempt",
    () =>
      Effect.gen(function* () {
        const b = yield* makeNode("idle-b")
        const s = yield* makeNode("idle-seed")
        const a = yield* makeNode("idle-a", {
          config: { connectionIdleTimeoutTime: Duration.seconds(60), seedNodes: [seedOf(s)] }
        })
        // The seed first, so that dialling b signals through an existing seed connection
        // (an interrupted QUIC dial cleans up on real timers, which TestClock does not move).
        yield* a.cm.getConnectionWithAddress(s.nodeId, s.address)
        yield* a.cm.getConnectionWithAddress(b.nodeId, b.address)
        yield* TestClock.adjust("50 seconds")
        expect(yield* a.cm.hasConnection(b.nodeId)).toBe(true)
        // Using it restarts the timer.
        // Using it restarts the timer on both sides (b counts our calls as use).
        yield* a.cm.withConnection(b.nodeId, (h) => h.client.ping)
        yield* TestClock.adjust("50 seconds")
        expect(yield* a.cm.hasConnection(b.nodeId)).toBe(true)
        yield* TestClock.adjust("11 seconds")
        expect(yield* a.cm.hasConnection(b.nodeId)).toBe(false)
        // The seed connection is never idle-collected.
        yield* TestClock.adjust("10 minutes")
        expect(yield* a.cm.hasConnection(s.nodeId)).toBe(true)
        expect((yield* a.cm.listConnections)[0]!.timeout).toBeUndefined()
      })
  )
})

describe("withConnectionStream", () => {
  it.scoped(
    "holds the connection's use while the stream runs (the idle timer does not close it), and lets go after",
    () =>
      Effect.gen(function* () {
        // Only a's idle timer is under test: b (which sees no traffic while a's stream runs here)
        // keeps idle connections for an hour.
        const b = yield* makeNode("stream-b", { config: { connectionIdleTimeoutTime: Duration.hours(1) } })
        const s = yield* makeNode("stream-seed")
        const a = yield* makeNode("stream-a", {
          config: { connectionIdleTimeoutTime: Duration.seconds(60), seedNodes: [seedOf(s)] }
        })
        // The seed first, as in the idle timeout test: dialling b then signals through it.
        yield* a.cm.getConnectionWithAddress(s.nodeId, s.address)
        yield* a.cm.getConnectionWithAddress(b.nodeId, b.address)
        const usage = Effect.map(a.cm.listConnections, (l) =>
          l.find((c) => c.nodeId === NodeId.encode(b.nodeId))
        )
        // A stream that answers once over the connection, then runs until we end it.
        const items = yield* Queue.unbounded<Option.Option<string>>()
        const running = yield* a.cm
          .withConnectionStream(b.nodeId, (h) =>
            Stream.fromEffect(h.client.ping.pipe(Effect.as("pong"))).pipe(
              Stream.concat(
                Stream.fromQueue(items).pipe(
                  Stream.takeWhile(Option.isSome),
                  Stream.map((x) => x.value)
                )
              )
            )
          )
          .pipe(Stream.runCollect, Effect.fork)
        yield* eventually(usage, (c) => c?.usageCount === 1).pipe(Effect.withClock(Clock.make()))
        expect(yield* usage).toMatchObject({ usageCount: 1, timeout: undefined })
        // Ten idle timeouts pass while the stream runs: the connection stays.
        yield* TestClock.adjust("10 minutes")
        expect(yield* usage).toMatchObject({ usageCount: 1, timeout: undefined })
        yield* Queue.offerAll(items, [Option.some("last"), Option.none()])
        expect(Chunk.toReadonlyArray(yield* Fiber.join(running))).toEqual(["pong", "last"])
        // Ended: the use is released and the idle timer runs from now.
        expect(yield* usage).toMatchObject({ usageCount: 0, timeout: 60_000 })
        yield* TestClock.adjust("59 seconds")
        expect(yield* a.cm.hasConnection(b.nodeId)).toBe(true)
        yield* TestClock.adjust("2 seconds")
        expect(yield* a.cm.hasConnection(b.nodeId)).toBe(false)
      })
  )
})

describe("Kademlia", () => {
  it.scopedLive("findNode: locally, through a remote node, and not found", () =>
    Effect.gen(function* () {
      const a = yield* makeNode("find-a")
      const b = yield* makeNode("find-b")
      const c = yield* makeNode("find-c")
      // b knows c; a knows only b.
      yield* b.graph.setNode(c.nodeId, { ...c.address, scope: "local" })
      yield* a.graph.setNode(b.nodeId, { ...b.address, scope: "local" })
      const local = yield* a.cm.findNode(b.nodeId)
      expect(Option.map(local, (x) => x.port)).toEqual(Option.some(b.address.port))
      const remote = yield* a.cm.findNode(c.nodeId, { timeout: "5 seconds" })
      expect(Option.map(remote, (x) => x.port)).toEqual(Option.some(c.address.port))
      // Found nodes are connected and remembered.
      expect(yield* a.cm.hasConnection(c.nodeId)).toBe(true)
      expect(Option.isSome(yield* a.graph.getNode(c.nodeId))).toBe(true)
      const missing = yield* a.cm.findNode(nodeIdOf("find-missing"), { timeout: "3 seconds" })
      expect(Option.isNone(missing)).toBe(true)
    })
  )

  it.scopedLive("receives at most 20 closest nodes, never including the caller", () =>
    Effect.gen(function* () {
      const a = yield* makeNode("closest-a")
      const b = yield* makeNode("closest-b", { k: 40 })
      for (let i = 0; i < 40; i++)
        yield* b.graph.setNode(nodeIdOf(`closest-n${i}`), {
          host: "127.0.0.1",
          port: 10_000 + i,
          scope: "local"
        })
      yield* b.graph.setNode(a.nodeId, { ...a.address, scope: "local" })
      const target = nodeIdOf("closest-target")
      yield* a.graph.setNode(b.nodeId, { ...b.address, scope: "local" })
      const got = yield* a.cm.getRemoteNodeClosestNodes(b.nodeId, target)
      expect(got).toHaveLength(20)
      expect(got.some((c) => NodeId.equals(c.nodeId, a.nodeId))).toBe(false)
      const expected = (yield* b.graph.getClosestNodes(target, 41))
        .filter((c) => !NodeId.equals(c.nodeId, a.nodeId))
        .slice(0, 20)
        .map((c) => NodeId.encode(c.nodeId))
      expect(got.map((c) => NodeId.encode(c.nodeId))).toEqual(expected)
    })
  )
})

describe("events", () => {
  it.scopedLive("publishes connections added and removed", () =>
    Effect.gen(function* () {
      const a = yield* makeNode("events-a")
      const b = yield* makeNode("events-b")
      const stream = yield* a.cm.events
      const collected = yield* stream.pipe(Stream.take(2), Stream.runCollect, Effect.fork)
      yield* Effect.sleep("50 millis")
      yield* a.cm.getConnectionWithAddress(b.nodeId, b.address)
      yield* a.cm.destroyConnection(b.nodeId, "test")
      const events = Chunk.toReadonlyArray(yield* Fiber.join(collected).pipe(Effect.timeout("3 seconds")))
      expect(events.map((e) => e._tag)).toEqual(["ConnectionAdded", "ConnectionRemoved"])
      expect(events[0]).toMatchObject({ direction: "forward", port: b.address.port })
      expect(events[1]).toMatchObject({ reason: "test" })
    })
  )
})

describe("failures and cleanup", () => {
  it.scopedLive("an unexpected socket stop stops the manager with a typed failure", () =>
    Effect.gen(function* () {
      const a = yield* makeNode("fail-a")
      const b = yield* makeNode("fail-b")
      const events = yield* a.cm.events
      const managerError = yield* events.pipe(
        Stream.filter((e) => e._tag === "ManagerError"),
        Stream.runHead,
        Effect.fork
      )
      yield* a.cm.getConnectionWithAddress(b.nodeId, b.address)
      const internals = yield* a.internals
      yield* Effect.promise(() => internals.socket.stop({ force: true }))
      const error = yield* a.cm.failure.pipe(Effect.flip, Effect.timeout("5 seconds"))
      expect(error._tag).toBe("ConnectionManagerStopped")
      expect(error.message).toMatch(/socket/)
      const event = yield* Fiber.join(managerError).pipe(Effect.timeout("2 seconds"))
      expect(Option.map(event, (e) => e._tag)).toEqual(Option.some("ManagerError"))
      expect(yield* a.cm.listConnections).toHaveLength(0)
    })
  )

  it.scopedLive("interrupting a lookup leaves no dial, fiber or half-open connection behind", () =>
    Effect.gen(function* () {
      const a = yield* makeNode("interrupt-a")
      const b = yield* makeNode("interrupt-b")
      const blackHole = yield* Effect.acquireRelease(
        Effect.async<Dgram.Socket>((resume) => {
          const socket = Dgram.createSocket("udp4")
          socket.bind(0, "127.0.0.1", () => resume(Effect.succeed(socket)))
        }),
        (socket) => Effect.sync(() => socket.close())
      )
      // Three silent nodes and one live one: the lookup is mid-flight when interrupted.
      for (let i = 0; i < 3; i++)
        yield* a.graph.setNode(nodeIdOf(`interrupt-ghost-${i}`), {
          host: "127.0.0.1",
          port: blackHole.address().port,
          scope: "local"
        })
      yield* a.graph.setNode(b.nodeId, { ...b.address, scope: "local" })
      const before = yield* a.diagnostics
      const lookup = yield* a.cm
        .getClosestGlobalNodes(nodeIdOf("interrupt-target"), { timeout: "60 seconds" })
        .pipe(Effect.fork)
      yield* eventually(a.diagnostics, (d) => d.pendingDials >= 3)
      yield* Fiber.interrupt(lookup)
      const after = yield* eventually(
        a.diagnostics,
        (d) =>
          d.pendingDials === 0 &&
          d.inboundInProgress === 0 &&
          // No fiber per connection: what is left is idle connections, not fibers.
          d.backgroundFibers === 0
      )
      expect(after.pendingDials).toBe(0)
      expect(before.pendingDials).toBe(0)
      // Only b answered; every connection left is a complete, usable one.
      for (const c of yield* a.cm.listConnections) expect(c.nodeId).toBe(NodeId.encode(b.nodeId))
      const quic = yield* a.quicConnections
      expect(quic).toBe(after.connections + after.standbyConnections)
    })
  )
})

describe("more of the reference's behaviour", () => {
  it.scopedLive("multi-connection resolves a hostname to all its addresses and records it", () =>
    Effect.gen(function* () {
      const a = yield* makeNode("hostname-a", { host: "::" })
      const b = yield* makeNode("hostname-b", { host: "::" })
      const connected = yield* a.cm.getMultiConnection(
        [b.nodeId],
        [{ host: "localhost", port: b.address.port }]
      )
      expect(connected.map(NodeId.encode)).toEqual([NodeId.encode(b.nodeId)])
      const [info] = yield* a.cm.listConnections
      expect(info!.hostname).toBe("localhost")
      expect(["127.0.0.1", "::1"]).toContain(info!.host)
    })
  )

  it.scopedLive(
    "multi-connection resolves a hostname through the Dns service, and says why one did not",
    () =>
      Effect.gen(function* () {
        const b = yield* makeNode("static-dns-b")
        const a = yield* makeNode("static-dns-a", {
          dns: Dns.layerStatic({ "b.example": ["127.0.0.1"] })
        })
        const connected = yield* a.cm.getMultiConnection(
          [b.nodeId],
          [{ host: "B.example.", port: b.address.port }]
        )
        expect(connected.map(NodeId.encode)).toEqual([NodeId.encode(b.nodeId)])
        const [info] = yield* a.cm.listConnections
        expect(info).toMatchObject({ hostname: "B.example.", host: "127.0.0.1", port: b.address.port })
        // A name the resolver does not know: nothing to dial, and the error names the lookup.
        const c = yield* makeNode("static-dns-c", { dns: Dns.layerStatic({}) })
        const error = yield* c.cm
          .getMultiConnection([b.nodeId], [{ host: "nowhere.example", port: b.address.port }], {
            timeout: "1 second"
          })
          .pipe(Effect.flip)
        expect(error._tag).toBe("MultiConnectionError")
        expect(error.detail).toMatch(/cannot resolve nowhere\.example: .*ENOTFOUND/)
      })
  )

  it.scopedLive("work that fails with a connection error destroys the connection on release", () =>
    Effect.gen(function* () {
      const a = yield* makeNode("connerr-a")
      const b = yield* makeNode("connerr-b")
      const h = yield* a.cm.getConnectionWithAddress(b.nodeId, b.address)
      const failed = yield* a.cm
        .withConnection(b.nodeId, () =>
          Effect.fail(
            new ConnectionError({ connectionId: h.connection.id, reason: "stream", detail: "test" })
          )
        )
        .pipe(Effect.flip)
      expect(failed._tag).toBe("ConnectionError")
      expect(yield* a.cm.hasConnection(b.nodeId)).toBe(false)
      // An ordinary failure of the work leaves the connection alone.
      yield* a.cm.getConnectionWithAddress(b.nodeId, b.address)
      yield* a.cm.withConnection(b.nodeId, () => Effect.fail("business as usual")).pipe(Effect.flip)
      expect(yield* a.cm.hasConnection(b.nodeId)).toBe(true)
    })
  )

  it.scopedLive("refreshBuckets looks up stale buckets once, then not again until they age", () =>
    Effect.gen(function* () {
      const a = yield* makeNode("refresh-a")
      const b = yield* makeNode("refresh-b")
      yield* a.graph.setNode(b.nodeId, { ...b.address, scope: "local" })
      const first = yield* a.cm.refreshBuckets({ timeout: "3 seconds" })
      expect(first).toBe(1)
      const bucket = NodeId.bucketIndex(a.nodeId, b.nodeId)
      expect(Option.isSome(yield* a.graph.getBucketRefreshedAt(bucket))).toBe(true)
      expect(yield* a.cm.refreshBuckets({ timeout: "3 seconds" })).toBe(0)
    })
  )
})

describe("finding before connecting", () => {
  it.scopedLive("pingNode and getConnection find a node they never met through the network", () =>
    Effect.gen(function* () {
      const a = yield* makeNode("reach-a")
      const b = yield* makeNode("reach-b")
      const c = yield* makeNode("reach-c")
      const d = yield* makeNode("reach-d")
      yield* b.graph.setNode(c.nodeId, { ...c.address, scope: "local" })
      yield* b.graph.setNode(d.nodeId, { ...d.address, scope: "local" })
      yield* a.graph.setNode(b.nodeId, { ...b.address, scope: "local" })
      // The lookup inside dials the target itself: that dial must not wait on the outer one.
      expect(yield* a.cm.pingNode(c.nodeId, undefined, { timeout: "6 seconds" })).toBe(true)
      const h = yield* a.cm.getConnection(d.nodeId, { timeout: "6 seconds" })
      expect(h.connection.remotePort).toBe(d.address.port)
    })
  )
})

describe("seed connections", () => {
  it.scoped("a node's calls keep its seed from idle-collecting their connection", () =>
    Effect.gen(function* () {
      const s = yield* makeNode("keep-seed")
      const a = yield* makeNode("keep-a", { config: { seedNodes: [seedOf(s)] } })
      yield* a.cm.getConnectionWithAddress(s.nodeId, s.address)
      yield* eventually(s.cm.hasConnection(a.nodeId), (x) => x).pipe(Effect.withClock(Clock.make()))
      // Two idle periods pass on both sides in steps (real time lets the pings cross).
      for (let i = 0; i < 8; i++) {
        yield* TestClock.adjust("15 seconds")
        yield* Effect.sleep("50 millis").pipe(Effect.withClock(Clock.make()))
      }
      expect(yield* s.cm.hasConnection(a.nodeId)).toBe(true)
      expect(yield* a.cm.hasConnection(s.nodeId)).toBe(true)
    })
  )
})
