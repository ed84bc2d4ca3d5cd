/**
 * Connections over relay circuits in the simulated network (`dialCircuit` / `acceptCircuit`):
 * nodes A and B, each behind a symmetric NAT (they cannot dial each other), connect through a
 * public node R whose two streams (A's to R, R's to B) the test splices as a relay would. On
 * SimRuntime's virtual clock, 10 ms links.
 */
import { Socket } from "@effect/platform"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Fiber, Option, type Scope, Stream } from "effect"
import * as SimNet from "../src/layers/SimWorld.js"
import { type SimContext, simulate } from "../src/programs/SimRuntime.js"
import * as NodeId from "../src/services/NodeId.js"
import type { CloseReason, QuicConnection, QuicTransportService } from "../src/services/QuicTransport.js"
import type { NatType, SimNetworkService } from "../src/services/SimNetwork.js"
import { idOf } from "./fixtures/simPair.js"
import { readAll, writeAll } from "./fixtures/socketText.js"

const LATENCY = 10
const IDLE_MS = 5000
const circuitClosed: CloseReason = { _tag: "Error", detail: "relay circuit closed" }

interface Node {
  readonly id: NodeId.NodeId
  readonly t: QuicTransportService
  /** Every inbound connection so far. */
  readonly inbound: Array<QuicConnection>
}

const node = (sim: SimNetworkService, n: number, nat: NatType) =>
  Effect.gen(function* () {
    const t = yield* sim.bind({ nat, maxIdleTimeout: `${IDLE_MS} millis` }, idOf(n))
    const inbound: Array<QuicConnection> = []
    yield* Effect.forkScoped(Stream.runForEach(t.incoming, (c) => Effect.sync(() => inbound.push(c))))
    return { id: idOf(n), t, inbound } satisfies Node
  })

/** Lets every fiber woken at this virtual time run first. */
const idle = Effect.sleep(0)

/** Waits (in steps of 1 ms of virtual time) until `n` has `count` inbound connections. */
const inboundCount = (n: Node, count: number) =>
  Effect.sleep("1 millis").pipe(Effect.repeat({ until: () => n.inbound.length >= count }))

const firstStream = (connection: QuicConnection) =>
  Effect.map(Stream.runHead(connection.acceptedStreams), Option.getOrThrow)

/** What the test's relay forwarded, both ways. */
interface Forwarded {
  readonly chunks: Array<Uint8Array>
}

const pipeTo = (
  from: Socket.Socket,
  to: Socket.Socket,
  forwarded: Forwarded,
  alter: (c: Uint8Array) => Uint8Array
) =>
  Effect.scoped(
    Effect.flatMap(to.writer, (write) =>
      from.run((chunk) => {
        forwarded.chunks.push(chunk)
        return write(alter(chunk))
      })
    )
  )

const closeSocket = (socket: Socket.Socket) =>
  Effect.ignore(Effect.scoped(Effect.flatMap(socket.writer, (write) => write(new Socket.CloseEvent(1000)))))

/** A relay's splice: bytes both ways until either side ends, then both streams close. */
const splice = (
  x: Socket.Socket,
  y: Socket.Socket,
  forwarded: Forwarded,
  alter: (c: Uint8Array) => Uint8Array
) =>
  Effect.raceFirst(
    pipeTo(x, y, forwarded, alter),
    pipeTo(y, x, forwarded, (c) => c)
  ).pipe(Effect.ignore, Effect.ensuring(Effect.zipRight(closeSocket(x), closeSocket(y))))

/**
 * R public, A and B behind symmetric NATs, each connected to R; A's stream to R spliced with R's
 * stream to B. `alter` changes what goes from A to B.
 */
const relayWorld = (sim: SimNetworkService, alter: (c: Uint8Array) => Uint8Array = (c) => c) =>
  Effect.gen(function* () {
    const r = yield* node(sim, 3, "none")
    const a = yield* node(sim, 1, "symmetric")
    const b = yield* node(sim, 2, "symmetric")
    const aToR = yield* a.t.dial({ host: r.t.host, port: r.t.port, expectedNodeIds: [r.id] })
    const bToR = yield* b.t.dial({ host: r.t.host, port: r.t.port, expectedNodeIds: [r.id] })
    yield* inboundCount(r, 2)
    const fromNode = (n: Node) => r.inbound.find((c) => NodeId.equals(c.remoteNodeId, n.id))!
    const legA = yield* aToR.openStream
    const atR = yield* firstStream(fromNode(a))
    const rToB = yield* fromNode(b).openStream
    const legB = yield* firstStream(bToR)
    const forwarded: Forwarded = { chunks: [] }
    const relay = yield* Effect.forkScoped(splice(atR, rToB, forwarded, alter))
    return { r, a, b, legA, legB, forwarded, relay, bSeenByR: fromNode(b) }
  })

type RelayWorld = Effect.Effect.Success<ReturnType<typeof relayWorld>>

/** B serves its side of the circuit (for `source`, when given); A dials over it expecting `expected` (default B). */
const dialOver = (w: RelayWorld, expected?: ReadonlyArray<NodeId.NodeId>, source?: NodeId.NodeId) =>
  Effect.gen(function* () {
    const accepting = yield* Effect.forkScoped(
      w.b.t.acceptCircuit!({ socket: w.legB, relay: w.r.id, source })
    )
    const dial = yield* Effect.fork(
      w.a.t.dialCircuit!({ socket: w.legA, relay: w.r.id }, { expectedNodeIds: expected ?? [w.b.id] })
    )
    return { accepting, dial: yield* Fiber.await(dial) }
  })

/** A relayed connection from A to B: A's end, B's end and B's acceptCircuit fiber. */
const relayed = (w: RelayWorld) =>
  Effect.gen(function* () {
    const { accepting, dial } = yield* dialOver(w)
    const aEnd = yield* dial
    yield* inboundCount(w.b, 1)
    return { aEnd, bEnd: w.b.inbound[0]!, accepting }
  })

const run = <A, E>(
  f: (sim: SimNetworkService, ctx: SimContext) => Effect.Effect<A, E, Scope.Scope>,
  seed = 1
) =>
  simulate(
    (ctx) => Effect.flatMap(SimNet.make({ seed, latency: `${LATENCY} millis` }), (sim) => f(sim, ctx)),
    { seed: 1 }
  )

const sameId = (a: NodeId.NodeId | undefined, b: NodeId.NodeId) => a !== undefined && NodeId.equals(a, b)

describe("SimNetwork relay circuits", () => {
  it.effect("A reaches B over the circuit, which a direct dial cannot; both ends name the relay", () =>
    run((sim, ctx) =>
      Effect.gen(function* () {
        const w = yield* relayWorld(sim)
        // B's NAT mapping towards R filters anyone else: A's direct dial never gets an answer.
        const direct = yield* w.a.t
          .dial({
            host: w.bSeenByR.remoteHost,
            port: w.bSeenByR.remotePort,
            expectedNodeIds: [w.b.id],
            timeout: "1 second"
          })
          .pipe(Effect.flip)
        expect(direct.reason).toBe("timeout")

        const started = ctx.clock.elapsed
        const { dial } = yield* dialOver(w)
        const aEnd = yield* dial
        // Hello A→R→B, reply B→R→A: one round trip over both legs.
        expect(ctx.clock.elapsed - started).toBe(4 * LATENCY)
        expect(sameId(aEnd.relay, w.r.id)).toBe(true)
        expect(NodeId.equals(aEnd.remoteNodeId, w.b.id)).toBe(true)
        expect(aEnd.direction).toBe("forward")
        expect(w.b.inbound).toHaveLength(0)
        // The Finished reaches B two legs later: its end arrives on `incoming`.
        yield* Effect.sleep(`${2 * LATENCY - 1} millis`)
        expect(w.b.inbound).toHaveLength(0)
        yield* Effect.sleep("1 millis")
        yield* idle
        expect(w.b.inbound).toHaveLength(1)
        const bEnd = w.b.inbound[0]!
        expect(sameId(bEnd.relay, w.r.id)).toBe(true)
        expect(NodeId.equals(bEnd.remoteNodeId, w.a.id)).toBe(true)
        expect(bEnd.direction).toBe("reverse")
        // Direct connections carry no relay.
        expect(w.r.inbound.every((c) => c.relay === undefined)).toBe(true)
      })
    )
  )

  it.effect(
    "streams work both ways; the relay forwards packets, never the data; no A–B partition applies",
    () =>
      run((sim, ctx) =>
        Effect.gen(function* () {
          const w = yield* relayWorld(sim)
          const { aEnd, bEnd } = yield* relayed(w)
          yield* sim.partition([w.a.t.host], [w.b.t.host])
          const echo = yield* Effect.fork(
            Effect.flatMap(firstStream(bEnd), (s) =>
              Effect.flatMap(readAll(s), (text) => writeAll(s, [`echo:${text}`]))
            )
          )
          const started = ctx.clock.elapsed
          const toB = yield* aEnd.openStream
          yield* writeAll(toB, ["marker-4f1c9"])
          expect(yield* readAll(toB)).toBe("echo:marker-4f1c9")
          // Open, bytes and FIN reach B two legs later; the echo and its FIN come back as late.
          expect(ctx.clock.elapsed - started).toBe(4 * LATENCY)
          yield* Fiber.join(echo)

          const fromA = yield* Effect.fork(Effect.flatMap(firstStream(aEnd), readAll))
          const toA = yield* bEnd.openStream
          yield* writeAll(toA, ["from B"])
          expect(yield* Fiber.join(fromA)).toBe("from B")

          const forwarded = Buffer.concat(w.forwarded.chunks)
          expect(forwarded.length).toBeGreaterThan("marker-4f1c9".length + "from B".length)
          expect(forwarded.toString("latin1")).not.toContain("marker")
          expect(forwarded.toString("latin1")).not.toContain("from B")
        })
      )
  )

  it.effect("a wrong expected NodeId fails the dial with mismatch naming both; B gets no connection", () =>
    run((sim) =>
      Effect.gen(function* () {
        const w = yield* relayWorld(sim)
        const { accepting, dial } = yield* dialOver(w, [idOf(9)])
        expect(Exit.isFailure(dial)).toBe(true)
        const error = yield* Effect.flip(dial)
        expect(error._tag).toBe("DialError")
        expect(error.reason).toBe("mismatch")
        expect(error.detail).toContain(NodeId.encode(idOf(9)))
        expect(error.detail).toContain(NodeId.encode(w.b.id))
        // B saw the mismatch in the hello and ended its side: acceptCircuit returns, nothing arrived.
        const refusals = (yield* sim.trace).filter(
          (e) => e.kind === "circuit" && e.detail.startsWith("refused")
        )
        expect(refusals.map((e) => [e.from, e.detail])).toEqual([
          [`${w.b.t.host}:${w.b.t.port}`, "refused: the dialler expects another NodeId"]
        ])
        yield* Fiber.join(accepting)
        yield* Effect.sleep("1 second")
        expect(w.b.inbound).toHaveLength(0)
        // Only the two direct connections to R remain (two ends each).
        expect((yield* sim.stats).openConnectionEnds).toBe(4)
      })
    )
  )

  it.effect(
    "B takes over a circuit only the source the relay named; A, proving another NodeId, gets no connection",
    () =>
      run((sim) =>
        Effect.gen(function* () {
          const w = yield* relayWorld(sim)
          const { accepting, dial } = yield* dialOver(w, undefined, w.r.id)
          expect(Exit.isFailure(dial)).toBe(true)
          const refusals = (yield* sim.trace).filter(
            (e) => e.kind === "circuit" && e.detail.startsWith("refused")
          )
          expect(refusals.map((e) => e.detail)).toEqual([
            `refused: the relay named ${NodeId.encode(w.r.id)} as this circuit's source`
          ])
          yield* Fiber.join(accepting)
          expect(w.b.inbound).toHaveLength(0)
        })
      )
  )

  it.effect("a circuit whose first bytes are not a hello ends; the dial fails with a DialError", () =>
    run((sim) =>
      Effect.gen(function* () {
        let first = true
        const w = yield* relayWorld(sim, (chunk) => {
          if (!first) return chunk
          first = false
          const altered = chunk.slice()
          altered[0] = 0x47
          return altered
        })
        const { accepting, dial } = yield* dialOver(w)
        const error = yield* Effect.flip(dial)
        expect(error._tag).toBe("DialError")
        expect(error.reason).toBe("unreachable")
        yield* Fiber.join(accepting)
        expect(w.b.inbound).toHaveLength(0)
        const refused = (yield* sim.trace).filter(
          (e) => e.kind === "circuit" && e.detail.startsWith("refused")
        )
        expect(refused).toHaveLength(1)
      })
    )
  )

  it.effect("crashing the relay closes both ends with 'relay circuit closed' within the idle timeout", () =>
    run((sim, ctx) =>
      Effect.gen(function* () {
        const w = yield* relayWorld(sim)
        const { aEnd, bEnd, accepting } = yield* relayed(w)
        const crashed = ctx.clock.elapsed
        yield* sim.crash(w.r.t.host)
        const aClosed = yield* Effect.fork(aEnd.closed)
        const bClosed = yield* Effect.fork(bEnd.closed)
        yield* Effect.sleep(`${IDLE_MS - 1} millis`)
        expect(Option.isNone(yield* Fiber.poll(aClosed))).toBe(true)
        expect(Option.isNone(yield* Fiber.poll(bClosed))).toBe(true)
        expect(yield* Fiber.join(aClosed)).toEqual(circuitClosed)
        expect(yield* Fiber.join(bClosed)).toEqual(circuitClosed)
        expect(ctx.clock.elapsed - crashed).toBe(IDLE_MS)
        yield* Fiber.join(accepting)
        expect(Exit.isFailure(yield* Effect.exit(aEnd.openStream))).toBe(true)
      })
    )
  )

  it.effect("the relay ending the circuit closes both ends one leg later", () =>
    run((sim, ctx) =>
      Effect.gen(function* () {
        const w = yield* relayWorld(sim)
        const { aEnd, bEnd, accepting } = yield* relayed(w)
        const ended = ctx.clock.elapsed
        yield* Fiber.interrupt(w.relay)
        expect(yield* aEnd.closed).toEqual(circuitClosed)
        expect(yield* bEnd.closed).toEqual(circuitClosed)
        expect(ctx.clock.elapsed - ended).toBe(LATENCY)
        yield* Fiber.join(accepting)
      })
    )
  )

  it.effect("a close reaches the peer through the relay; interrupting acceptCircuit closes B's end", () =>
    run((sim, ctx) =>
      Effect.gen(function* () {
        const w = yield* relayWorld(sim)
        const first = yield* relayed(w)
        const closedAt = ctx.clock.elapsed
        yield* first.aEnd.close("bye")
        expect(yield* first.bEnd.closed).toEqual({ _tag: "Peer", detail: "bye" })
        expect(ctx.clock.elapsed - closedAt).toBe(2 * LATENCY)
        // B's side ended the circuit too: acceptCircuit returns and the relay's splice ends.
        yield* Fiber.join(first.accepting)
        expect(Exit.isSuccess(yield* Fiber.await(w.relay))).toBe(true)

        const again = yield* relayWorld(sim)
        const second = yield* relayed(again)
        yield* Fiber.interrupt(second.accepting)
        expect(yield* second.bEnd.closed).toEqual({ _tag: "Local", detail: "circuit released" })
        expect(yield* second.aEnd.closed).toEqual({ _tag: "Peer", detail: "circuit released" })
      })
    )
  )

  it.effect("the same seed gives the same trace hash, which shows the circuit; another seed another", () =>
    Effect.gen(function* () {
      const scenario = (seed: number) =>
        simulate(
          () =>
            Effect.gen(function* () {
              const sim = yield* SimNet.make({ seed, latency: `${LATENCY} millis`, jitter: "5 millis" })
              const w = yield* relayWorld(sim)
              const { aEnd, bEnd } = yield* relayed(w)
              const fromA = yield* Effect.fork(Effect.flatMap(firstStream(bEnd), readAll))
              const toB = yield* aEnd.openStream
              yield* writeAll(toB, ["hello over the relay"])
              expect(yield* Fiber.join(fromA)).toBe("hello over the relay")
              yield* aEnd.close("done")
              yield* bEnd.closed
              const trace = yield* sim.trace
              return {
                hash: yield* sim.traceHash,
                circuit: trace.filter((e) => e.kind === "circuit").map((e) => e.detail)
              }
            }),
          { seed: 1 }
        )
      const first = yield* scenario(11)
      const second = yield* scenario(11)
      const other = yield* scenario(12)
      expect(second.hash).toBe(first.hash)
      expect(other.hash).not.toBe(first.hash)
      expect(first.circuit).toContain("hello #1")
      expect(first.circuit.some((d) => /^connect sim\d+f$/.test(d))).toBe(true)
      expect(first.circuit.filter((d) => d.startsWith("stop"))).toHaveLength(2)
    })
  )
})
