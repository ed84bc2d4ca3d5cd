/**
 * The relay protocol on the simulated network (SimRuntime's virtual clock): a relay R, a node B
 * reserving with it and serving STOP, a node A making circuits to B through it. R's RelayHost
 * is made here from the connections R accepted.
 */
import { randomBytes } from "node:crypto"
import { Socket } from "@effect/platform"
import { describe, expect, it } from "@effect/vitest"
import {
  Clock,
  Deferred,
  Duration,
  Effect,
  ExecutionStrategy,
  Exit,
  Fiber,
  Option,
  Predicate,
  Queue,
  Scope,
  Stream
} from "effect"
import * as ProtocolWire from "../src/internal/protocolWire.js"
import type { ChunkReader } from "../src/internal/quicStreamSocket.js"
import * as RelayClient from "../src/internal/relay/client.js"
import { makeRelayServer } from "../src/internal/relay/server.js"
import * as Wire from "../src/internal/relay/wire.js"
import * as StreamRouter from "../src/internal/streamRouter.js"
import * as SimNet from "../src/layers/SimWorld.js"
import { simulate } from "../src/programs/SimRuntime.js"
import * as NodeId from "../src/services/NodeId.js"
import * as Protocols from "../src/services/Protocols.js"
import type { Circuit, ForwardOptions, QuicConnection } from "../src/services/QuicTransport.js"
import { type RelayHost, type RelayOptions, RelayRefused } from "../src/services/Relay.js"
import { idOf } from "./fixtures/simPair.js"

const encoder = new TextEncoder()
const decoder = new TextDecoder()
const relayId = NodeId.canonical(idOf(1))
const aId = NodeId.canonical(idOf(2))
const bId = NodeId.canonical(idOf(3))

type Reader = Socket.Socket & ChunkReader

/** A circuit as B's STOP handler received it; completing `done` ends B's side. */
interface Arrival {
  readonly source: NodeId.NodeId
  readonly relay: NodeId.NodeId
  /** The source's address as the relay told it. */
  readonly peer: { readonly host: string; readonly port: number } | undefined
  readonly socket: Reader
  /** The datagram path, when the relay forwards the circuit's datagrams. */
  readonly datagrams: Circuit["datagrams"]
  readonly done: Deferred.Deferred<void>
}

const asReader = (socket: Socket.Socket): Reader => {
  if (!ProtocolWire.isChunkReader(socket)) throw new Error("not a chunk reader")
  return socket
}

/** Reads exactly `n` bytes (fails if the stream ends first). */
const readBytes = (reader: ChunkReader, n: number) =>
  Effect.gen(function* () {
    const parts: Array<Uint8Array> = []
    let got = 0
    while (got < n) {
      const chunk = yield* reader.readChunk
      if (chunk === undefined) return yield* Effect.fail("the stream ended early")
      parts.push(chunk)
      got += chunk.length
    }
    return Buffer.concat(parts)
  })

/** How the stream ends: "fin" (after any bytes) or "reset". */
const readEnd = (reader: ChunkReader) =>
  Effect.gen(function* () {
    for (;;) if ((yield* reader.readChunk) === undefined) return "fin" as const
  }).pipe(Effect.orElseSucceed(() => "reset" as const))

/** Writes on `socket` for as long as the test's scope lasts (releasing a writer ends the stream). */
const writerOf = (socket: Socket.Socket) => socket.writer

const routeOn = (connection: QuicConnection, protocols: Protocols.ProtocolsService) =>
  connection.handleStreams((socket) =>
    StreamRouter.route(socket, connection, undefined, protocols, "5 seconds")
  )

/**
 * R (relay), A and B, A and B each connected to R; B serves STOP with `decide` and hands its
 * circuits to `arrivals`. `holds` counts R's open holds by node.
 */
/** A stand-in for the transport's datagram forwarding: what the relay asked of it. */
interface FakeForwarding {
  /** Forwardings open now, by circuit id (hex): their options. */
  readonly open: Map<string, ForwardOptions>
  /** Forwardings stopped so far (each would have sent END to both ends). */
  stopped: number
  /** When a datagram last passed, for every forwarding. */
  lastAt: number
}

const relayWorld = (
  options: Partial<RelayOptions>,
  decide: (source: NodeId.NodeId) => Effect.Effect<RelayRefused | undefined> = () =>
    Effect.succeed(undefined),
  forwarding?: FakeForwarding
) =>
  Effect.gen(function* () {
    const sim = yield* SimNet.make({ seed: 1, latency: "10 millis", jitter: 0 })
    const r = yield* sim.bind({}, relayId)
    const ta = yield* sim.bind({}, aId)
    const tb = yield* sim.bind({}, bId)
    const atRelay = new Map<string, QuicConnection>()
    const holds = new Map<string, number>()
    const count = (nodeId: NodeId.NodeId, by: number) =>
      Effect.sync(() => holds.set(NodeId.encode(nodeId), (holds.get(NodeId.encode(nodeId)) ?? 0) + by))
    const host: RelayHost = {
      openStream: (nodeId, protocol) => {
        const connection = atRelay.get(NodeId.encode(nodeId))
        return connection === undefined ? Effect.fail("no connection") : Protocols.open(connection, protocol)
      },
      hold: (nodeId) => Effect.acquireRelease(count(nodeId, 1), () => count(nodeId, -1)),
      ...(forwarding === undefined
        ? {}
        : {
            forward: (_a, _b, forwardOptions) =>
              Effect.acquireRelease(
                Effect.sync(() => {
                  const id = Uint8Array.from(randomBytes(8))
                  forwarding.open.set(Buffer.from(id).toString("hex"), forwardOptions)
                  return id
                }),
                (id) =>
                  Effect.sync(() => {
                    forwarding.open.delete(Buffer.from(id).toString("hex"))
                    forwarding.stopped++
                  })
              ).pipe(Effect.map((id) => Option.some({ id, lastActive: () => forwarding.lastAt })))
          })
    }
    const relayScope = yield* Scope.fork(yield* Effect.scope, ExecutionStrategy.sequential)
    const relay = yield* Scope.extend(makeRelayServer(options, host), relayScope)
    const relayProtocols = Protocols.make([[Wire.HOP_PROTOCOL, relay.handleHop]])
    yield* Effect.forkScoped(
      Stream.runForEach(r.incoming, (connection) =>
        Effect.zipRight(
          Effect.sync(() => atRelay.set(NodeId.encode(connection.remoteNodeId), connection)),
          routeOn(connection, relayProtocols)
        )
      )
    )
    const arrivals = yield* Queue.unbounded<Arrival>()
    const serveStop: Protocols.StreamHandler = (socket, caller) =>
      RelayClient.serveStop(socket, caller, decide, (source, circuit) =>
        Effect.gen(function* () {
          const done = yield* Deferred.make<void>()
          yield* Queue.offer(arrivals, {
            source,
            relay: circuit.relay,
            peer: circuit.peer,
            socket: asReader(circuit.socket),
            datagrams: circuit.datagrams,
            done
          })
          yield* Deferred.await(done)
        })
      )
    const bProtocols = Protocols.make([[Wire.STOP_PROTOCOL, serveStop]])
    const a = yield* ta.dial({ host: r.host, port: r.port, expectedNodeIds: [relayId] })
    const b = yield* tb.dial({ host: r.host, port: r.port, expectedNodeIds: [relayId] })
    yield* routeOn(b, bProtocols)
    yield* Effect.sleep("1 second")
    return { a, b, relay, relayScope, holds, arrivals, atRelay }
  })

type World = Effect.Effect.Success<ReturnType<typeof relayWorld>>

/** B reserves; A opens a circuit to B; both ends of it. */
const circuit = (w: World) =>
  Effect.gen(function* () {
    const reservation = yield* RelayClient.reserve(w.b)
    const made = yield* RelayClient.connect(w.a, bId, "5 seconds")
    const arrival = yield* Queue.take(w.arrivals)
    return { reservation, a: asReader(made.socket), aPeer: made.peer, aDatagrams: made.datagrams, arrival }
  })

const refusalOf = <A>(effect: Effect.Effect<A, unknown, Scope.Scope>) =>
  Effect.gen(function* () {
    const error = yield* Effect.flip(effect)
    if (!(error instanceof RelayRefused)) return yield* Effect.die(error)
    return error
  })

/** A test on virtual time in a fresh `relayWorld(options, decide)`. */
const inWorld = (
  name: string,
  options: Partial<RelayOptions>,
  body: (w: World) => Effect.Effect<void, unknown, Scope.Scope>,
  decide?: (source: NodeId.NodeId) => Effect.Effect<RelayRefused | undefined>,
  forwarding?: FakeForwarding
) =>
  it.effect(name, () =>
    simulate(() => Effect.flatMap(relayWorld(options, decide, forwarding), body), { seed: 1 })
  )

const now = Clock.currentTimeMillis

/** Sends `bytes` on a new HOP stream from A: the relay's first `count` answers, and how it ended the stream. */
const rawHop = (w: World, bytes: ReadonlyArray<number>, count = 1) =>
  Effect.scoped(
    Effect.gen(function* () {
      const socket = asReader(yield* Protocols.open(w.a, Wire.HOP_PROTOCOL))
      yield* (yield* writerOf(socket))(new Uint8Array(bytes))
      const answers: Array<Wire.Status> = []
      for (let i = 0; i < count; i++)
        answers.push(yield* Wire.readMessage(socket, Wire.parseStatus, "20 seconds"))
      return { answers, end: yield* readEnd(socket) }
    })
  )

/** The detail of the "malformed" refusal that ended a raw HOP stream. */
const malformedDetail = (raw: Effect.Effect.Success<ReturnType<typeof rawHop>>) => {
  expect(raw.end).toBe("fin")
  const last = raw.answers[raw.answers.length - 1]!
  if (!Predicate.isTagged(last, "Refused")) throw new Error("the relay accepted")
  expect(last.reason).toBe("malformed")
  return last.detail
}

const tapped: Array<Uint8Array> = []
let decisions = 0

describe("Relay", () => {
  inWorld(
    "reserve, connect: bytes flow both ways through the splice, the tap sees them, stats count them",
    { tap: (bytes) => tapped.push(bytes.slice()) },
    (w) =>
      Effect.gen(function* () {
        const start = yield* now
        const { reservation, a, aPeer, arrival } = yield* circuit(w)
        expect(NodeId.equals(reservation.relay, relayId)).toBe(true)
        // Each end learns the other's address as the relay's connection to it shows it.
        const seen = (id: NodeId.NodeId) => {
          const c = w.atRelay.get(NodeId.encode(id))!
          return { host: c.remoteHost, port: c.remotePort }
        }
        expect(arrival.peer).toEqual(seen(aId))
        expect(aPeer).toEqual(seen(bId))
        expect(reservation.until - start).toBeGreaterThanOrEqual(Duration.toMillis("1 hour"))
        expect(reservation.until - start).toBeLessThan(Duration.toMillis("1 hour") + 1000)
        expect(NodeId.equals(arrival.source, aId)).toBe(true)
        expect(NodeId.equals(arrival.relay, relayId)).toBe(true)
        const writeA = yield* writerOf(a)
        const writeB = yield* writerOf(arrival.socket)
        yield* writeA(encoder.encode("ping from A"))
        expect(decoder.decode(yield* readBytes(arrival.socket, 11))).toBe("ping from A")
        yield* writeB(encoder.encode("pong from B!"))
        expect(decoder.decode(yield* readBytes(a, 12))).toBe("pong from B!")
        expect(decoder.decode(Buffer.concat(tapped))).toBe("ping from Apong from B!")
        const stats = yield* w.relay.stats
        expect(stats).toMatchObject({ reservations: 1, circuits: 1, bytesForwarded: 23 })
        expect(Object.values(stats.refused).every((n) => n === 0)).toBe(true)
        // R holds B's connection for the reservation and for the circuit, A's for the circuit.
        expect(w.holds.get(NodeId.encode(bId))).toBe(2)
        expect(w.holds.get(NodeId.encode(aId))).toBe(1)
      })
  )

  inWorld("ending one side ends the other (both ways); the circuit is no longer counted", {}, (w) =>
    Effect.gen(function* () {
      const first = yield* circuit(w)
      yield* (yield* writerOf(first.a))(new Socket.CloseEvent(1000))
      expect(yield* readEnd(first.arrival.socket)).toBe("fin")
      yield* Deferred.succeed(first.arrival.done, undefined)
      const socket = asReader((yield* RelayClient.connect(w.a, bId, "5 seconds")).socket)
      const arrival = yield* Queue.take(w.arrivals)
      yield* Deferred.succeed(arrival.done, undefined)
      expect(yield* readEnd(socket)).toBe("fin")
      yield* Effect.sleep("1 second")
      expect((yield* w.relay.stats).circuits).toBe(0)
      expect(w.holds.get(NodeId.encode(aId))).toBe(0)
    })
  )

  inWorld(
    "refusals: no reservation for the target, a circuit to the requester itself, a node that serves no relay",
    {},
    (w) =>
      Effect.gen(function* () {
        const none = yield* refusalOf(RelayClient.connect(w.a, bId, "5 seconds"))
        expect(none.reason).toBe("no-reservation")
        expect(none.relay).toBe(NodeId.encode(relayId))
        expect(none.message).toMatch(
          /^relay v\w+ refused \(no-reservation\): node v\w+ holds no reservation here$/
        )
        yield* RelayClient.reserve(w.a)
        expect((yield* refusalOf(RelayClient.connect(w.a, aId, "5 seconds"))).reason).toBe("denied")
        // B serves STOP but no relay: reserving with it is refused as not-a-relay.
        const notRelay = yield* refusalOf(RelayClient.reserve(w.atRelay.get(NodeId.encode(bId))!))
        expect(notRelay.reason).toBe("not-a-relay")
        const stats = yield* w.relay.stats
        expect(stats.refused).toMatchObject({ "no-reservation": 1, denied: 1 })
        expect(stats).toMatchObject({ reservations: 1, circuits: 0, bytesForwarded: 0 })
      })
  )

  inWorld(
    "limits: reservations over maxReservations and circuits over maxCircuits are refused; the circuit open goes on",
    { maxReservations: 1, maxCircuits: 1 },
    (w) =>
      Effect.gen(function* () {
        const { reservation, a, arrival } = yield* circuit(w)
        expect((yield* refusalOf(RelayClient.reserve(w.a))).reason).toBe("reservation-limit")
        // B renewing is no new reservation: granted, and the one it replaces ends at once.
        const renewed = yield* RelayClient.reserve(w.b)
        expect(renewed.until).toBeGreaterThan(reservation.until - 1)
        const renewedAt = yield* now
        yield* reservation.held
        expect((yield* now) - renewedAt).toBeLessThan(100)
        expect(Option.isNone(yield* Fiber.poll(yield* Effect.fork(renewed.held)))).toBe(true)
        expect((yield* refusalOf(RelayClient.connect(w.a, bId, "5 seconds"))).reason).toBe("circuit-limit")
        yield* (yield* writerOf(a))(encoder.encode("still here"))
        expect(decoder.decode(yield* readBytes(arrival.socket, 10))).toBe("still here")
        const stats = yield* w.relay.stats
        expect(stats).toMatchObject({ reservations: 1, circuits: 1, bytesForwarded: 10 })
        expect(stats.refused).toMatchObject({ "reservation-limit": 1, "circuit-limit": 1 })
      })
  )

  inWorld(
    "the target refuses (target-refused, with its detail) or does not answer (target-unreachable, within messageTimeout)",
    { messageTimeout: "3 seconds" },
    (w) =>
      Effect.gen(function* () {
        yield* RelayClient.reserve(w.b)
        const refused = yield* refusalOf(RelayClient.connect(w.a, bId, "5 seconds"))
        expect(refused.reason).toBe("target-refused")
        expect(refused.detail).toBe(`not ${NodeId.encode(aId)}`)
        const start = yield* now
        const silent = yield* refusalOf(RelayClient.connect(w.a, bId, "5 seconds"))
        expect(silent.reason).toBe("target-unreachable")
        expect(silent.detail).toMatch(/no valid answer/)
        expect((yield* now) - start).toBeGreaterThanOrEqual(3000)
        expect((yield* now) - start).toBeLessThan(3100)
        const stats = yield* w.relay.stats
        expect(stats.refused).toMatchObject({ "target-refused": 1, "target-unreachable": 1 })
        expect(stats.circuits).toBe(0)
      }),
    // B refuses the first circuit and never answers for the next.
    (source) =>
      decisions++ === 0
        ? Effect.succeed(new RelayRefused({ reason: "denied", detail: `not ${NodeId.encode(source)}` }))
        : Effect.never
  )

  inWorld(
    "a circuit with no byte either way for circuitIdleTimeout ends on both sides; a byte restarts the wait",
    { circuitIdleTimeout: "60 seconds" },
    (w) =>
      Effect.gen(function* () {
        const { a, arrival } = yield* circuit(w)
        yield* Effect.sleep("30 seconds")
        yield* (yield* writerOf(a))(encoder.encode("x"))
        expect(decoder.decode(yield* readBytes(arrival.socket, 1))).toBe("x")
        const sent = yield* now
        const ends = yield* Effect.fork(readEnd(arrival.socket))
        expect(yield* readEnd(a)).toBe("reset")
        expect((yield* now) - sent).toBeGreaterThanOrEqual(60_000)
        expect((yield* now) - sent).toBeLessThan(60_100)
        expect(yield* Fiber.join(ends)).toBe("reset")
        yield* Effect.sleep("1 second")
        expect((yield* w.relay.stats).circuits).toBe(0)
      })
  )

  it.effect(
    "circuitBytesPerSecond paces a transfer (virtual time); uncapped it takes a few link delays",
    () =>
      simulate(
        () =>
          Effect.gen(function* () {
            const transfer = (options: Partial<RelayOptions>) =>
              Effect.scoped(
                Effect.gen(function* () {
                  const { a, arrival } = yield* circuit(yield* relayWorld(options))
                  const write = yield* writerOf(a)
                  const start = yield* now
                  for (let i = 0; i < 10; i++) yield* write(new Uint8Array(5000).fill(i))
                  const got = yield* readBytes(arrival.socket, 50_000)
                  expect(got[49_999]).toBe(9)
                  return (yield* now) - start
                })
              )
            // 50 000 bytes at 10 000 B/s: 5 s, less the 100 ms burst.
            const capped = yield* transfer({ circuitBytesPerSecond: 10_000 })
            expect(capped).toBeGreaterThanOrEqual(4900)
            expect(capped).toBeLessThan(5000)
            expect(yield* transfer({ circuitBytesPerSecond: Number.POSITIVE_INFINITY })).toBeLessThan(100)
          }),
        { seed: 1 }
      )
  )

  inWorld(
    "malformed requests (unknown type, wrong size, oversized, incomplete, bytes after RESERVE) are refused as malformed and end the stream",
    { messageTimeout: "10 seconds" },
    (w) =>
      Effect.gen(function* () {
        expect(malformedDetail(yield* rawHop(w, [0, 2, 0x09, 0]))).toBe(
          "type 0x9 where RESERVE or CONNECT was expected"
        )
        expect(malformedDetail(yield* rawHop(w, [0, 5, 0x02, 1, 2, 3, 4]))).toBe(
          "CONNECT of 5 bytes (33 expected)"
        )
        expect(malformedDetail(yield* rawHop(w, [0x10, 0x00, 0x01]))).toBe(
          "a message of 4096 bytes (at most 256)"
        )
        const start = yield* now
        expect(malformedDetail(yield* rawHop(w, [0, 33, 0x02]))).toMatch(/^no complete message within 10s/)
        expect((yield* now) - start).toBeGreaterThanOrEqual(10_000)
        expect((yield* now) - start).toBeLessThan(10_100)
        // A reservation is granted, then ended by the byte sent after RESERVE.
        const extra = yield* rawHop(w, [0, 1, 0x01, 0xff], 2)
        expect(extra.answers[0]!._tag).toBe("Ok")
        expect(malformedDetail(extra)).toBe("bytes after RESERVE")
        expect(yield* w.relay.stats).toMatchObject({ reservations: 0, refused: { malformed: 5 } })
      })
  )

  inWorld(
    "one node's requests: bad ones count too, the 11th in a second and a flood are rate-limited; other nodes and the open circuit go on",
    {},
    (w) =>
      Effect.gen(function* () {
        const { a, arrival } = yield* circuit(w)
        // A's first window (its circuit's CONNECT) ends; ten bad requests in the next one.
        yield* Effect.sleep("1 second")
        const start = yield* now
        const stranger = NodeId.canonical(idOf(9))
        const reasons: Array<string> = []
        for (let i = 0; i < 4; i++)
          reasons.push((yield* refusalOf(RelayClient.connect(w.a, stranger, "5 seconds"))).reason)
        for (let i = 0; i < 3; i++)
          reasons.push((yield* refusalOf(RelayClient.connect(w.a, aId, "5 seconds"))).reason)
        for (let i = 0; i < 3; i++) {
          malformedDetail(yield* rawHop(w, [0x10, 0x00, 0x01]))
          reasons.push("malformed")
        }
        expect(reasons).toEqual([
          ...Array(4).fill("no-reservation"),
          ...Array(3).fill("denied"),
          ...Array(3).fill("malformed")
        ])
        // The eleventh, a valid CONNECT, is refused before it is read.
        const limited = yield* refusalOf(RelayClient.connect(w.a, bId, "5 seconds"))
        expect(limited.reason).toBe("rate-limited")
        expect(limited.message).toBe(
          `relay ${NodeId.encode(relayId)} refused (rate-limited): more than 10 requests in a second from node ${NodeId.encode(aId)}`
        )
        const flood = yield* Effect.forEach(
          Array.from({ length: 30 }, () => refusalOf(RelayClient.connect(w.a, bId, "5 seconds"))),
          (refusal) => refusal,
          { concurrency: "unbounded" }
        )
        expect(flood.map((r) => r.reason)).toEqual(Array(30).fill("rate-limited"))
        expect((yield* now) - start).toBeLessThan(1000)
        // Another node is not limited by A's flood; the circuit open carries bytes both ways.
        yield* RelayClient.reserve(w.b)
        yield* (yield* writerOf(a))(encoder.encode("after"))
        expect(decoder.decode(yield* readBytes(arrival.socket, 5))).toBe("after")
        yield* (yield* writerOf(arrival.socket))(encoder.encode("flood"))
        expect(decoder.decode(yield* readBytes(a, 5))).toBe("flood")
        expect(yield* w.relay.stats).toMatchObject({
          reservations: 1,
          circuits: 1,
          refused: { "rate-limited": 31, "no-reservation": 4, denied: 3, malformed: 3 }
        })
        // A new second: A is taken again.
        yield* Effect.sleep(Duration.millis(1000 - ((yield* now) - start)))
        yield* RelayClient.connect(w.a, bId, "5 seconds")
        const next = yield* Queue.take(w.arrivals)
        expect(NodeId.equals(next.source, aId)).toBe(true)
      })
  )

  inWorld(
    "hopRequestsPerSecond sets the limit: the third request in a second is refused",
    { hopRequestsPerSecond: 2 },
    (w) =>
      Effect.gen(function* () {
        yield* RelayClient.reserve(w.b)
        yield* RelayClient.connect(w.a, bId, "5 seconds")
        yield* RelayClient.reserve(w.a)
        expect((yield* refusalOf(RelayClient.connect(w.a, bId, "5 seconds"))).reason).toBe("rate-limited")
        expect((yield* refusalOf(RelayClient.reserve(w.a))).reason).toBe("rate-limited")
        expect((yield* w.relay.stats).refused["rate-limited"]).toBe(2)
      })
  )

  inWorld(
    "a reservation ends at reservationDuration; stopping the relay ends reservations and circuits",
    { reservationDuration: "1 minute" },
    (w) =>
      Effect.gen(function* () {
        const start = yield* now
        const first = yield* RelayClient.reserve(w.b)
        expect(first.until - start).toBeLessThan(60_100)
        yield* first.held
        expect((yield* now) - start).toBeGreaterThanOrEqual(60_000)
        expect((yield* now) - start).toBeLessThan(60_100)
        expect((yield* refusalOf(RelayClient.connect(w.a, bId, "5 seconds"))).reason).toBe("no-reservation")
        expect(w.holds.get(NodeId.encode(bId))).toBe(0)
        const { reservation, a, arrival } = yield* circuit(w)
        const stopAt = yield* now
        yield* Scope.close(w.relayScope, Exit.void)
        yield* reservation.held
        expect(yield* readEnd(a)).toBe("reset")
        expect(yield* readEnd(arrival.socket)).toBe("reset")
        expect((yield* now) - stopAt).toBeLessThan(100)
        const stopped = yield* refusalOf(RelayClient.reserve(w.b))
        expect(stopped.reason).toBe("not-a-relay")
        expect(stopped.detail).toBe("the relay has stopped")
        expect(yield* w.relay.stats).toMatchObject({ reservations: 0, circuits: 0 })
      })
  )

  it("status codes are positional: rate-limited, appended last, is code 9 and round-trips", () => {
    const bytes = Wire.encodeStatus({ _tag: "Refused", reason: "rate-limited", detail: "slow down" })
    expect(bytes[3]).toBe(9)
    expect(Wire.encodeStatus({ _tag: "Refused", reason: "malformed", detail: "" })[3]).toBe(8)
    expect(Wire.parseStatus(bytes)).toMatchObject({
      _tag: "Done",
      value: { _tag: "Refused", reason: "rate-limited", detail: "slow down" }
    })
  })

  it("STATUS round trip: until kept to the millisecond, a long detail cut to 200 bytes", () => {
    const until = Date.UTC(2125, 0, 1) + 123
    const ok = Wire.parseStatus(Wire.encodeStatus({ _tag: "Ok", until }))
    expect(ok).toMatchObject({ _tag: "Done", value: { _tag: "Ok", until } })
    const long = Wire.parseStatus(
      Wire.encodeStatus({ _tag: "Refused", reason: "denied", detail: "é".repeat(300) })
    )
    expect(long).toMatchObject({
      _tag: "Done",
      value: { _tag: "Refused", reason: "denied", detail: "é".repeat(100) }
    })
  })

  {
    const forwarding: FakeForwarding = { open: new Map(), stopped: 0, lastAt: 0 }
    inWorld(
      "a forwarded circuit: both streams end once it is set up; it lasts until an end's END, the idle timeout or the relay's stop",
      { circuitIdleTimeout: "60 seconds" },
      (w) =>
        Effect.gen(function* () {
          const holdsOf = (id: NodeId.NodeId) => w.holds.get(NodeId.encode(id)) ?? 0
          // 1. The END of an end.
          forwarding.lastAt = yield* now
          const first = yield* circuit(w)
          const id = Buffer.from(first.aDatagrams!.id).toString("hex")
          expect(Buffer.from(first.arrival.datagrams!.id).toString("hex")).toBe(id)
          expect([...forwarding.open.keys()]).toEqual([id])
          expect(yield* readEnd(first.a)).toBe("fin")
          expect(yield* readEnd(first.arrival.socket)).toBe("fin")
          expect((yield* w.relay.stats).circuits).toBe(1)
          expect(holdsOf(aId)).toBe(1)
          forwarding.open.get(id)!.ended!()
          yield* Effect.sleep("10 millis")
          expect((yield* w.relay.stats).circuits).toBe(0)
          expect(forwarding.stopped).toBe(1)
          expect(holdsOf(aId)).toBe(0)

          // 2. The idle timeout, by the forwarding's clock: a datagram at 30 s restarts the wait.
          forwarding.lastAt = yield* now
          yield* circuit(w)
          yield* Effect.sleep("30 seconds")
          forwarding.lastAt = yield* now
          yield* Effect.sleep("59 seconds")
          expect((yield* w.relay.stats).circuits).toBe(1)
          yield* Effect.sleep("2 seconds")
          expect((yield* w.relay.stats).circuits).toBe(0)
          expect(forwarding.stopped).toBe(2)

          // 3. The relay's stop.
          forwarding.lastAt = yield* now
          yield* circuit(w)
          expect(forwarding.open.size).toBe(1)
          yield* Scope.close(w.relayScope, Exit.void)
          expect(forwarding.open.size).toBe(0)
          expect(forwarding.stopped).toBe(3)
        }),
      undefined,
      forwarding
    )
  }
})
