/**
 * Application protocols on node connections: raw streams by NodeId through two managers on
 * loopback QUIC, and on the simulated network (PeerRpcSim's direct mode), with the stream
 * router refusing what it does not serve.
 */

import * as v8 from "node:v8"
import * as vm from "node:vm"
import type { Socket } from "@effect/platform"
import { describe, expect, it } from "@effect/vitest"
import { Context, Deferred, Duration, Effect, Either, Exit, Option, type Scope } from "effect"
import * as ProtocolWire from "../src/internal/protocolWire.js"
import * as PeerRpcSim from "../src/layers/PeerRpcSim.js"
import type { Contact } from "../src/services/Contact.js"
import * as NodeId from "../src/services/NodeId.js"
import type { AgentHandlers } from "../src/services/PeerRpc.js"
import * as Protocols from "../src/services/Protocols.js"
import type { QuicConnection } from "../src/services/QuicTransport.js"
import { makeNode, type TestNode } from "./fixtures/cmNode.js"
import { idOf, simPair } from "./fixtures/simPair.js"

const id = Protocols.ProtocolId.unsafeMake
const encoder = new TextEncoder()
const decoder = new TextDecoder()

/** Writes `data` then ends our side (FIN), leaving the read side open. */
const writeAll = (socket: Socket.Socket, chunks: ReadonlyArray<Uint8Array | string>) =>
  Effect.scoped(
    Effect.flatMap(socket.writer, (write) => Effect.forEach(chunks, (c) => write(c), { discard: true }))
  )

/** Everything the peer sends until it ends the stream. */
const readAll = (socket: Socket.Socket) =>
  Effect.gen(function* () {
    const parts: Uint8Array[] = []
    yield* socket.run((chunk) => {
      parts.push(chunk.slice())
    })
    return decoder.decode(Buffer.concat(parts))
  })

/** A protocol that answers `tag:` + what it read, and records its callers. */
const echo =
  (tag: string, callers: Contact[] = []): Protocols.StreamHandler =>
  (socket, caller) =>
    Effect.gen(function* () {
      callers.push(caller)
      const text = yield* readAll(socket)
      yield* writeAll(socket, [`${tag}:${text}`])
    }).pipe(Effect.orDie)

/** The heap in use after a full collection. */
const heapAfterGc = () => {
  v8.setFlagsFromString("--expose-gc")
  const gc = vm.runInNewContext("gc") as () => void
  gc()
  return process.memoryUsage().heapUsed
}

const registryOf = (node: TestNode) => Context.get(node.ctx, Protocols.Protocols)

const twoNodes = (config: { readonly rpcCallTimeoutTime?: Duration.Duration } = {}) =>
  Effect.gen(function* () {
    const a = yield* makeNode("proto-a", { config })
    const b = yield* makeNode("proto-b", { config })
    yield* a.cm.getConnectionWithAddress(b.nodeId, b.address)
    return { a, b }
  })

/** A raw stream on a's connection to b with `bytes` written first (no header of ours). */
const rawStream = (
  a: TestNode,
  b: TestNode,
  bytes: Uint8Array
): Effect.Effect<Socket.Socket, unknown, Scope.Scope> =>
  Effect.gen(function* () {
    const handle = yield* a.cm.acquireConnection(b.nodeId)
    const socket = yield* handle.connection.openStream
    const write = yield* socket.writer
    yield* write(bytes)
    return socket
  })

/** What the acceptor answered on a raw stream, and how the stream ended. */
const answerOf = (socket: Socket.Socket) =>
  Effect.gen(function* () {
    const parts: Uint8Array[] = []
    const exit = yield* Effect.exit(
      socket.run((chunk) => {
        parts.push(chunk.slice())
      })
    )
    return { bytes: new Uint8Array(Buffer.concat(parts)), reset: Exit.isFailure(exit) }
  })

describe("ProtocolId", () => {
  it("accepts segment(/segment)* and refuses anything else with a clear message", () => {
    expect(Either.isRight(Protocols.ProtocolId.make("notes/1"))).toBe(true)
    expect(Either.isRight(Protocols.ProtocolId.make("files.v2/chunk-stream_3"))).toBe(true)
    for (const [text, why] of [
      ["", "empty"],
      ["notes//1", 'segment ""'],
      ["no spaces", 'segment "no spaces"'],
      ["a".repeat(65), "1-64 characters"],
      ["quicmesh/agent", "reserved"]
    ] as const) {
      const made = Protocols.ProtocolId.make(text)
      expect(Either.isLeft(made)).toBe(true)
      if (Either.isLeft(made)) {
        expect(made.left._tag).toBe("InvalidProtocolIdError")
        expect(made.left.message).toContain(why)
      }
    }
    expect(() => Protocols.ProtocolId.unsafeMake("bad id")).toThrow(/invalid protocol id/)
  })

  it.effect("layerWith refuses an invalid id", () =>
    Effect.gen(function* () {
      const error = yield* Effect.flip(
        Effect.provide(Protocols.Protocols, Protocols.layerWith({ "bad id": () => Effect.void }))
      )
      expect(error._tag).toBe("InvalidProtocolIdError")
    })
  )
})

describe("Protocols over QUIC", () => {
  it.scopedLive("a raw round trip by NodeId: the handler sees the caller's NodeId", () =>
    Effect.gen(function* () {
      const { a, b } = yield* twoNodes()
      const callers: Contact[] = []
      yield* registryOf(b).handle(id("echo/1"), echo("echo", callers))
      const socket = yield* a.cm.openStream(b.nodeId, id("echo/1"))
      yield* writeAll(socket, ["hello ", "world"])
      expect(yield* readAll(socket)).toBe("echo:hello world")
      expect(callers).toHaveLength(1)
      expect(NodeId.equals(callers[0]!.nodeId, a.nodeId)).toBe(true)
      expect(callers[0]!.port).toBe(a.address.port)
      // The stream counts as use of the connection while its scope is open.
      const info = (yield* a.cm.listConnections).find((c) => c.nodeId === NodeId.encode(b.nodeId))
      expect(info?.usageCount).toBe(1)
    })
  )

  it.scopedLive("an unknown protocol is refused at once with a typed error; the connection goes on", () =>
    Effect.gen(function* () {
      const { a, b } = yield* twoNodes()
      const start = Date.now()
      const error = yield* Effect.flip(Effect.scoped(a.cm.openStream(b.nodeId, id("nobody/1"))))
      expect(error._tag).toBe("UnsupportedProtocolError")
      if (error._tag === "UnsupportedProtocolError") {
        expect(error.detail).toContain("not served")
        expect(error.nodeId).toBe(NodeId.encode(b.nodeId))
      }
      expect(Date.now() - start).toBeLessThan(2000)
      // A handler registered for a scope only: refused again once the scope closed.
      yield* Effect.scoped(registryOf(b).handle(id("brief/1"), echo("brief")))
      const again = yield* Effect.flip(Effect.scoped(a.cm.openStream(b.nodeId, id("brief/1"))))
      expect(again._tag).toBe("UnsupportedProtocolError")
      // The agent RPC on the same connection still answers.
      expect(yield* a.cm.pingNode(b.nodeId)).toBe(true)
      const client = (yield* a.cm.acquireConnection(b.nodeId)).client
      yield* client.ping
    })
  )

  it.scopedLive("two protocols at once on one connection, and optimistic opening", () =>
    Effect.gen(function* () {
      const { a, b } = yield* twoNodes()
      yield* registryOf(b).handle(id("one/1"), echo("one"))
      yield* registryOf(b).handle(id("two/1"), echo("two"))
      const [s1, s2] = yield* Effect.all([
        a.cm.openStream(b.nodeId, id("one/1")),
        a.cm.openStream(b.nodeId, id("two/1"))
      ])
      yield* writeAll(s2, ["second"])
      yield* writeAll(s1, ["first"])
      const [r1, r2] = yield* Effect.all([readAll(s1), readAll(s2)], { concurrency: 2 })
      expect(r1).toBe("one:first")
      expect(r2).toBe("two:second")
      expect((yield* a.cm.listConnections).length).toBe(1)

      const handle = yield* a.cm.acquireConnection(b.nodeId)
      const fast = yield* Protocols.openOptimistic(handle.connection, id("one/1"))
      yield* writeAll(fast, ["now"])
      expect(yield* readAll(fast)).toBe("one:now")
      const refused = yield* Protocols.openOptimistic(handle.connection, id("three/1"))
      yield* writeAll(refused, ["ignored"])
      const failure = yield* Effect.flip(readAll(refused))
      const refusal = Protocols.refusalOf(failure)
      expect(Option.isSome(refusal) && refusal.value.detail).toContain("not served")
    })
  )

  it.scopedLive("bad headers refuse that stream only", () =>
    Effect.gen(function* () {
      const { a, b } = yield* twoNodes({ rpcCallTimeoutTime: Duration.millis(500) })
      yield* registryOf(b).handle(id("echo/1"), echo("echo"))
      // A first byte that is neither an agent frame nor a protocol header: reset.
      const garbage = yield* answerOf(yield* rawStream(a, b, new Uint8Array([0x55, 1, 2, 3])))
      expect(garbage.bytes.length).toBe(0)
      expect(garbage.reset).toBe(true)
      // An empty id, then an id that is no ProtocolId: refused with the reason.
      const empty = yield* answerOf(yield* rawStream(a, b, new Uint8Array([0xa7, 0])))
      expect(empty.bytes[0]).toBe(ProtocolWire.STATUS_REFUSED)
      expect(decoder.decode(empty.bytes.subarray(2))).toContain("empty protocol id")
      const long = yield* answerOf(yield* rawStream(a, b, ProtocolWire.encodeHeader("x".repeat(255))))
      expect(decoder.decode(long.bytes.subarray(2))).toContain("not a valid protocol id")
      // A header that never finishes: refused after the call timeout.
      const start = Date.now()
      const stalled = yield* answerOf(yield* rawStream(a, b, new Uint8Array([0xa7, 10, 0x61])))
      expect(Date.now() - start).toBeGreaterThanOrEqual(450)
      expect(decoder.decode(stalled.bytes.subarray(2))).toContain("did not arrive in time")
      // Everything else on the connection goes on.
      expect((yield* a.cm.listConnections).length).toBe(1)
      const socket = yield* a.cm.openStream(b.nodeId, id("echo/1"))
      yield* writeAll(socket, ["still"])
      expect(yield* readAll(socket)).toBe("echo:still")
      expect(yield* a.cm.pingNode(b.nodeId)).toBe(true)
    })
  )

  // Loopback js-quic moves well under 1 MiB/s with a slow reader (the full 100 MiB did not end
  // within 510 s on an idle CI machine): the suite sends 12 MiB; QUICMESH_BULK_MIB=100 runs the
  // full size.
  const bulkMiB = Number(process.env.QUICMESH_BULK_MIB ?? 12)
  it.scopedLive(
    `${bulkMiB} MiB through a raw stream with a slow reader: the sender waits, its memory stays bounded`,
    () =>
      Effect.gen(function* () {
        const { a, b } = yield* twoNodes()
        const total = bulkMiB * 1024 * 1024
        const chunk = new Uint8Array(64 * 1024).fill(7)
        let sent = 0
        let received = 0
        let outstanding = 0
        const reading = yield* Deferred.make<void>()
        const done = yield* Deferred.make<number>()
        yield* registryOf(b).handle(id("bulk/1"), (socket) =>
          Effect.gen(function* () {
            // Slow at first: nothing is read until the sender has had time to fill the window.
            yield* Deferred.await(reading)
            yield* socket.run((data) => {
              received += data.length
            })
            yield* Deferred.succeed(done, received)
          }).pipe(Effect.orDie)
        )
        const socket = yield* a.cm.openStream(b.nodeId, id("bulk/1"))
        const base = heapAfterGc()
        const sender = yield* Effect.fork(
          Effect.scoped(
            Effect.flatMap(socket.writer, (write) =>
              Effect.whileLoop({
                while: () => sent < total,
                body: () => write(chunk),
                step: () => {
                  sent += chunk.length
                  outstanding = Math.max(outstanding, sent - received)
                }
              })
            )
          )
        )
        // Wait for the sender to stall: no progress for 1 s (a loaded machine fills the window
        // slowly), or more sent than any window would take, or 30 s.
        let stalledMs = 0
        let last = -1
        for (let waited = 0; stalledMs < 1000 && sent < 4 * 1024 * 1024 && waited < 30_000; waited += 250) {
          yield* Effect.sleep(Duration.millis(250))
          stalledMs = sent === last ? stalledMs + 250 : 0
          last = sent
        }
        // Flow control: the sender is held at the stream window while nobody reads, and holds
        // no more than that in memory.
        expect(stalledMs).toBeGreaterThanOrEqual(1000)
        expect(sent).toBeLessThan(4 * 1024 * 1024)
        expect(heapAfterGc() - base).toBeLessThan(16 * 1024 * 1024)
        yield* Deferred.succeed(reading, undefined)
        yield* Effect.orDie(sender.await)
        expect(yield* Deferred.await(done)).toBe(total)
        // Never more than a few windows written ahead of what the reader took.
        expect(outstanding).toBeLessThan(8 * 1024 * 1024)
        expect(heapAfterGc() - base).toBeLessThan(16 * 1024 * 1024)
      }),
    bulkMiB * 5_000 + 10_000
  )
})

/** Agent handlers that do nothing (the direct simulation's calls are not on streams). */
const noHandlers: AgentHandlers = {
  touch: () => Effect.void,
  closestNodes: () => Effect.succeed([]),
  holePunchSignal: () => Effect.void
}

/** Both ends of a simulated connection, `b` serving `registry` through PeerRpcSim. */
const simServed = <A, E>(
  f: (t: {
    readonly a: QuicConnection
    readonly registry: Protocols.ProtocolsService
  }) => Effect.Effect<A, E, Scope.Scope>
) =>
  simPair(({ sim, a, b }) =>
    Effect.gen(function* () {
      const registry = Protocols.make()
      const rpc = PeerRpcSim.make(sim, Duration.seconds(5), registry)
      yield* rpc.serve(b, noHandlers)
      return yield* f({ a, registry })
    })
  )

describe("Protocols on the simulated network", () => {
  it.effect("a raw round trip; the handler sees the caller's NodeId", () =>
    simServed(({ a, registry }) =>
      Effect.gen(function* () {
        const callers: Contact[] = []
        yield* registry.handle(id("echo/1"), echo("echo", callers))
        const socket = yield* Protocols.open(a, id("echo/1"))
        yield* writeAll(socket, ["sim"])
        expect(yield* readAll(socket)).toBe("echo:sim")
        expect(NodeId.equals(callers[0]!.nodeId, idOf(1))).toBe(true)
      })
    )
  )

  it.effect("unknown protocols and bad headers are refused; two protocols run at once", () =>
    simServed(({ a, registry }) =>
      Effect.gen(function* () {
        yield* registry.handle(id("one/1"), echo("one"))
        yield* registry.handle(id("two/1"), echo("two"))
        const error = yield* Effect.flip(Effect.scoped(Protocols.open(a, id("three/1"))))
        expect(error._tag).toBe("UnsupportedProtocolError")
        const garbage = yield* Effect.scoped(
          Effect.gen(function* () {
            const socket = yield* a.openStream
            yield* writeAll(socket, [new Uint8Array([0x42])])
            return yield* answerOf(socket)
          })
        )
        expect(garbage.reset).toBe(true)
        const [s1, s2] = yield* Effect.all([Protocols.open(a, id("one/1")), Protocols.open(a, id("two/1"))])
        yield* writeAll(s1, [encoder.encode("x")])
        yield* writeAll(s2, ["y"])
        expect(yield* Effect.all([readAll(s1), readAll(s2)], { concurrency: 2 })).toEqual(["one:x", "two:y"])
      })
    )
  )
})
