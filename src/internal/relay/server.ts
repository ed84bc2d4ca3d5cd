/**
 * The relay's side: `handleHop` serves the HOP streams nodes open to it.
 *
 * - RESERVE: within `maxReservations` (a node that holds one already renews it), the relay
 *   holds the caller's connection, answers OK with the reservation's end, and keeps the stream
 *   open. The reservation ends at `reservationDuration`, when the node ends the stream (or sends
 *   anything more on it), when the node reserves again on another stream, or when the relay
 *   stops; the relay then ends the stream.
 * - CONNECT target: refused for the caller itself, a target without a reservation, or over
 *   `maxCircuits`; else the relay opens STOP on its connection to the target, names the caller
 *   (as its connection proved it) and how it carries the circuit (PATH), waits for the
 *   target's status (at most `messageTimeout`), and answers the caller (OK, PATH). Where the
 *   host can (`RelayHost.forward`: both nodes on direct connections), the circuit's packets go
 *   as datagrams the transport forwards: both streams end once the circuit is set up, and the
 *   circuit lasts, in a scope of its own, until an end says it left (END), nothing moved for
 *   `circuitIdleTimeout`, or the relay stops (each ending sends END to both ends). Else the
 *   relay splices the two streams (`splice.ts`) until one ends.
 *
 * - Every HOP stream counts against its node's `hopRequestsPerSecond` (by the NodeId its
 *   connection proved), whatever it asks and whether or not it is valid; one over the limit is
 *   refused "rate-limited" before its request is read. The windows are kept for at most
 *   `RATE_TABLE_CAPACITY` nodes (the oldest window goes first).
 *
 * Every refusal is a STATUS with its code, then the end of the stream, counted by reason.
 */
import {
  Clock,
  Deferred,
  Duration,
  Effect,
  Either,
  ExecutionStrategy,
  Exit,
  Option,
  Predicate,
  Queue,
  Scope
} from "effect"
import type { Contact } from "../../services/Contact.js"
import * as NodeId from "../../services/NodeId.js"
import type { StreamHandler } from "../../services/Protocols.js"
import type { ForwardOptions } from "../../services/QuicTransport.js"
import {
  defaults,
  type RelayHost,
  type RelayOptions,
  RelayRefused,
  type RelayRefusedReason,
  type RelayStats,
  refusedReasons
} from "../../services/Relay.js"
import type { ChunkReader } from "../quicStreamSocket.js"
import { RateWindows } from "../rateWindows.js"
import { makeSplicer, type SpliceEnd } from "./splice.js"
import * as Wire from "./wire.js"

export interface RelayServer {
  /** The HOP handler: serve it as `Wire.HOP_PROTOCOL` on the node's streams. */
  readonly handleHop: StreamHandler
  readonly stats: Effect.Effect<RelayStats>
}

type Writer = SpliceEnd["write"]

/** Nodes whose request rate the relay keeps track of at once. */
export const RATE_TABLE_CAPACITY = 4096

/**
 * One reservation; `ended` completes when a newer one of the same node replaces it. `at` is
 * the node's address as its connection shows it, told to the sources of its circuits.
 */
interface Held {
  readonly ended: Deferred.Deferred<void>
  readonly at: { readonly host: string; readonly port: number }
}

/** Two messages in one write. */
const joined = (first: Uint8Array, second: Uint8Array): Uint8Array => {
  const out = new Uint8Array(first.length + second.length)
  out.set(first)
  out.set(second, first.length)
  return out
}

const detailOf = (cause: unknown): string =>
  Predicate.hasProperty(cause, "message") ? String(cause.message) : String(cause)

/** The relay, serving until the scope closes (which ends its reservations and circuits). */
export const makeRelayServer = (
  options: Partial<RelayOptions>,
  host: RelayHost
): Effect.Effect<RelayServer, never, Scope.Scope> =>
  Effect.gen(function* () {
    const config: RelayOptions = { ...defaults, ...options }
    const relayScope = yield* Effect.scope
    const reservationMs = Duration.toMillis(config.reservationDuration)
    const stopped = yield* Deferred.make<void>()
    yield* Effect.addFinalizer(() => Deferred.succeed(stopped, undefined))
    const reservations = new Map<NodeId.NodeIdEncoded, Held>()
    const requests = new RateWindows(config.hopRequestsPerSecond, 1000, RATE_TABLE_CAPACITY)
    const counters = { circuits: 0, bytesForwarded: 0 }
    const splicer = yield* makeSplicer({
      idleMs: Duration.toMillis(config.circuitIdleTimeout),
      bytesPerSecond: config.circuitBytesPerSecond,
      tap: config.tap,
      counters
    })
    const forwardOptions: ForwardOptions = {
      bytesPerSecond: config.circuitBytesPerSecond,
      tap: config.tap,
      forwarded: (bytes) => {
        counters.bytesForwarded += bytes
      }
    }
    // Circuits an end said it left (END): closed one at a time by one fiber.
    const ending = yield* Queue.unbounded<Scope.CloseableScope>()
    yield* Queue.take(ending).pipe(
      Effect.flatMap((circuit) => Scope.close(circuit, Exit.void)),
      Effect.forever,
      Effect.forkScoped
    )
    const refused = Object.fromEntries(refusedReasons.map((reason) => [reason, 0])) as Record<
      RelayRefusedReason,
      number
    >

    const refuse = (write: Writer, reason: RelayRefusedReason, detail: string) =>
      Effect.suspend(() => {
        refused[reason]++
        return Effect.ignore(write(Wire.encodeStatus({ _tag: "Refused", reason, detail })))
      })

    /** Until the node ends its reservation's stream: "ended", or "bytes" if it sent any. */
    const awaitEnd = (reader: ChunkReader) =>
      Effect.matchEffect(reader.readChunk, {
        onFailure: () => Effect.succeed("ended" as const),
        onSuccess: (chunk) => Effect.succeed(chunk === undefined ? ("ended" as const) : ("bytes" as const))
      })

    const reserve = (reader: ChunkReader, write: Writer, caller: Contact) =>
      Effect.gen(function* () {
        const key = NodeId.encode(caller.nodeId)
        const mine: Held = {
          ended: yield* Deferred.make<void>(),
          at: { host: caller.host, port: caller.port }
        }
        const previous = reservations.get(key)
        if (previous === undefined && reservations.size >= config.maxReservations)
          return yield* refuse(
            write,
            "reservation-limit",
            `the relay holds its maximum of ${config.maxReservations} reservations`
          )
        reservations.set(key, mine)
        if (previous !== undefined) yield* Deferred.succeed(previous.ended, undefined)
        yield* Effect.addFinalizer(() =>
          Effect.sync(() => {
            if (reservations.get(key) === mine) reservations.delete(key)
          })
        )
        yield* Effect.ignore(host.hold(caller.nodeId))
        const until = (yield* Clock.currentTimeMillis) + reservationMs
        yield* write(Wire.encodeStatus({ _tag: "Ok", until }))
        const end = yield* awaitEnd(reader).pipe(
          Effect.raceFirst(Effect.as(Effect.sleep(reservationMs), "expired" as const)),
          Effect.raceFirst(Effect.as(Deferred.await(mine.ended), "renewed" as const)),
          Effect.raceFirst(Effect.as(Deferred.await(stopped), "stopped" as const))
        )
        if (end === "bytes") yield* refuse(write, "malformed", "bytes after RESERVE")
      })

    /** The target's STOP stream, accepted for `source`, or the refusal to answer the source. */
    const openStop = (target: NodeId.NodeId, source: Contact, path: Uint8Array) =>
      Effect.gen(function* () {
        const unreachable = (detail: string) =>
          new RelayRefused({
            reason: "target-unreachable",
            detail: `node ${NodeId.encode(target)}: ${detail}`
          })
        const socket = yield* host.openStream(target, Wire.STOP_PROTOCOL).pipe(
          Effect.timeoutFail({ duration: config.messageTimeout, onTimeout: () => "no stream in time" }),
          Effect.mapError((cause) => unreachable(detailOf(cause)))
        )
        const reader = yield* Wire.chunkReader(socket)
        const write = yield* socket.writer
        yield* Effect.mapError(
          write(
            joined(Wire.encodeConnectFrom(source.nodeId, { host: source.host, port: source.port }), path)
          ),
          (cause) => unreachable(detailOf(cause))
        )
        const status = yield* Wire.readMessage(reader, Wire.parseStatus, config.messageTimeout).pipe(
          Effect.mapError((cause) => unreachable(`no valid answer: ${detailOf(cause)}`))
        )
        if (Predicate.isTagged(status, "Refused"))
          return yield* new RelayRefused({ reason: "target-refused", detail: status.detail })
        return { reader, write } satisfies SpliceEnd
      })

    const connect = (reader: ChunkReader, write: Writer, caller: Contact, target: NodeId.NodeId) =>
      Effect.gen(function* () {
        if (NodeId.equals(target, caller.nodeId))
          return yield* refuse(write, "denied", "a circuit to the requester itself")
        const reservation = reservations.get(NodeId.encode(target))
        if (reservation === undefined)
          return yield* refuse(
            write,
            "no-reservation",
            `node ${NodeId.encode(target)} holds no reservation here`
          )
        if (counters.circuits >= config.maxCircuits)
          return yield* refuse(
            write,
            "circuit-limit",
            `the relay has its maximum of ${config.maxCircuits} circuits`
          )
        // The circuit's own scope (the relay's child): it outlives this stream when the
        // transport forwards the circuit's datagrams; else it ends with the splice.
        const circuit = yield* Scope.fork(relayScope, ExecutionStrategy.sequential)
        let adopted = false
        yield* Effect.addFinalizer(() => (adopted ? Effect.void : Scope.close(circuit, Exit.void)))
        counters.circuits++
        yield* Scope.addFinalizer(
          circuit,
          Effect.sync(() => {
            counters.circuits--
          })
        )
        const forwarding =
          host.forward === undefined
            ? Option.none()
            : yield* Scope.extend(
                host.forward(caller.nodeId, target, {
                  ...forwardOptions,
                  ended: () => Queue.unsafeOffer(ending, circuit)
                }),
                circuit
              )
        const path = Wire.encodePath(Option.getOrUndefined(forwarding)?.id)
        const stop = yield* Effect.either(openStop(target, caller, path))
        if (Either.isLeft(stop)) return yield* refuse(write, stop.left.reason, stop.left.detail)
        yield* Scope.extend(Effect.ignore(host.hold(caller.nodeId)), circuit)
        yield* Scope.extend(Effect.ignore(host.hold(target)), circuit)
        yield* write(joined(Wire.encodeStatus({ _tag: "Ok", until: 0, observed: reservation.at }), path))
        if (Option.isNone(forwarding)) return yield* splicer.splice({ reader, write }, stop.right)
        // Forwarded: the two streams end here, the circuit goes on as datagrams.
        adopted = true
        yield* splicer.adopt(forwarding.value.lastActive, circuit)
      })

    const handleHop: StreamHandler = (socket, caller) =>
      Effect.gen(function* () {
        const reader = yield* Wire.chunkReader(socket)
        const write = yield* socket.writer
        if (yield* Deferred.isDone(stopped))
          return yield* refuse(write, "not-a-relay", "the relay has stopped")
        if (requests.exceeded(NodeId.encode(caller.nodeId), yield* Clock.currentTimeMillis))
          return yield* refuse(
            write,
            "rate-limited",
            `more than ${config.hopRequestsPerSecond} requests in a second from node ${NodeId.encode(caller.nodeId)}`
          )
        const request = yield* Effect.either(
          Wire.readMessage(reader, Wire.parseHopRequest, config.messageTimeout)
        )
        if (Either.isLeft(request))
          return Predicate.isTagged(request.left, "RelayRefused")
            ? yield* refuse(write, request.left.reason, request.left.detail)
            : undefined
        const asked = request.right
        return Predicate.isTagged(asked, "Connect")
          ? yield* connect(reader, write, caller, asked.target)
          : yield* reserve(reader, write, caller)
      }).pipe(Effect.scoped, Effect.ignore)

    const stats = Effect.sync(
      (): RelayStats => ({
        reservations: reservations.size,
        circuits: counters.circuits,
        bytesForwarded: counters.bytesForwarded,
        refused: { ...refused }
      })
    )
    return { handleHop, stats }
  })
