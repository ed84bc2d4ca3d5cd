/**
 * The nodes' side of a relay.
 *
 * - `reserve(connection)`: RESERVE on a HOP stream to the relay at the other end; the
 *   reservation holds while that stream stays open, that is, while the caller's scope does
 *   (closing it ends the reservation) and until the relay ends it (`held` completes then: at
 *   its `until`, when the node reserved again on another stream, or when the relay stops).
 * - `connect(connection, target, timeout)`: CONNECT on a HOP stream; once the relay answers OK
 *   and says how it carries the circuit (PATH), the stream is the circuit to `target` (closing
 *   the scope ends it), with its datagram path when the relay forwards datagrams.
 * - `serveStop(socket, caller, decide, run)`: the target's STOP handler: reads which node the
 *   relay brings and the circuit's PATH, asks `decide`, answers, and runs the circuit with `run`.
 *
 * A refusal is a `RelayRefused` naming the relay; a relay that serves no relay protocol is
 * "not-a-relay"; a stream that fails is the connection's `ConnectionError`.
 */
import type { Socket } from "@effect/platform"
import { Duration, Effect, Either, ExecutionStrategy, Exit, Fiber, Option, Predicate, Scope } from "effect"
import type { Contact } from "../../services/Contact.js"
import * as NodeId from "../../services/NodeId.js"
import * as Protocols from "../../services/Protocols.js"
import { type Circuit, ConnectionError, type QuicConnection } from "../../services/QuicTransport.js"
import { RelayRefused } from "../../services/Relay.js"
import type { Parsed } from "../protocolWire.js"
import type { ChunkReader } from "../quicStreamSocket.js"
import * as Wire from "./wire.js"

/** A reservation held with a relay. */
export interface Reservation {
  readonly relay: NodeId.NodeId
  /** When the relay ends it unless renewed (ms since 1970, by the relay's clock). */
  readonly until: number
  /** Completes when the reservation has ended (the relay ended its stream, or the stream failed). */
  readonly held: Effect.Effect<void>
}

/** How long `reserve` and `serveStop` wait for an answer unless told. */
export const defaultTimeout = Duration.seconds(10)

const streamError = (connection: QuicConnection, cause: unknown) =>
  new ConnectionError({
    connectionId: connection.id,
    reason: "stream",
    detail: `the relay stream failed: ${Predicate.hasProperty(cause, "message") ? String(cause.message) : String(cause)}`
  })

/** Runs `effect` in a scope of its own, kept in the caller's on success and closed on failure. */
const keptOnSuccess = <A, E>(effect: Effect.Effect<A, E, Scope.Scope>): Effect.Effect<A, E, Scope.Scope> =>
  Effect.flatMap(Effect.scope, (parent) =>
    Effect.flatMap(Scope.fork(parent, ExecutionStrategy.sequential), (child) =>
      Scope.extend(effect, child).pipe(Effect.onError((cause) => Scope.close(child, Exit.failCause(cause))))
    )
  )

/**
 * Opens HOP on `connection`, sends `message`, and reads the relay's OK (its `until`), and then
 * its PATH when `path` (an OK to a CONNECT).
 */
const ask = (
  connection: QuicConnection,
  message: Uint8Array,
  timeout: Duration.DurationInput,
  path: boolean
) =>
  Effect.gen(function* () {
    const relay = NodeId.encode(connection.remoteNodeId)
    const socket = yield* Protocols.open(connection, Wire.HOP_PROTOCOL, { timeout }).pipe(
      Effect.catchTag("UnsupportedProtocolError", (refusal) =>
        Effect.fail(new RelayRefused({ reason: "not-a-relay", detail: refusal.detail, relay }))
      )
    )
    const reader = yield* Wire.chunkReader(socket)
    const write = yield* socket.writer
    yield* Effect.mapError(write(message), (cause) => streamError(connection, cause))
    const read = <A>(parse: (bytes: Uint8Array) => Parsed<A>) =>
      Wire.readMessage(reader, parse, timeout).pipe(
        Effect.mapError((cause) =>
          Predicate.isTagged(cause, "RelayRefused")
            ? new RelayRefused({ reason: cause.reason, detail: `its answer: ${cause.detail}`, relay })
            : streamError(connection, cause)
        )
      )
    const status = yield* read(Wire.parseStatus)
    if (Predicate.isTagged(status, "Refused"))
      return yield* new RelayRefused({ reason: status.reason, detail: status.detail, relay })
    const carried = path ? yield* read(Wire.parsePath) : noPath
    return { socket, reader, until: status.until, observed: status.observed, path: carried }
  })

const noPath: Wire.Path = { id: undefined }

/** The circuit's datagram path, when the relay forwards its datagrams: the relay at its address as we reach it. */
const datagramsOf = (
  path: Wire.Path,
  relay: { readonly host: string; readonly port: number }
): Circuit["datagrams"] =>
  path.id === undefined ? undefined : { id: path.id, host: relay.host, port: relay.port }

/** Reads `reader` until its stream ends or fails. */
const untilEnd = (reader: ChunkReader): Effect.Effect<void> =>
  Effect.flatMap(Effect.either(reader.readChunk), (read) =>
    Either.isRight(read) && read.right !== undefined ? untilEnd(reader) : Effect.void
  )

/** Reserves with the relay at the other end of `connection` (see the module comment). */
export const reserve = (
  connection: QuicConnection,
  options?: { readonly timeout?: Duration.DurationInput }
): Effect.Effect<Reservation, RelayRefused | ConnectionError, Scope.Scope> =>
  keptOnSuccess(
    Effect.gen(function* () {
      const { reader, until } = yield* ask(
        connection,
        Wire.reserve,
        options?.timeout ?? defaultTimeout,
        false
      )
      const watch = yield* Effect.forkScoped(untilEnd(reader))
      return { relay: connection.remoteNodeId, until, held: Effect.asVoid(Fiber.await(watch)) }
    })
  )

/**
 * A circuit to `target` through the relay at the other end of `connection`: the spliced
 * stream, once the relay answered OK within `timeout` (else "target-unreachable").
 */
export const connect = (
  connection: QuicConnection,
  target: NodeId.NodeId,
  timeout: Duration.DurationInput
): Effect.Effect<Circuit, RelayRefused | ConnectionError, Scope.Scope> =>
  keptOnSuccess(
    Effect.map(
      ask(connection, Wire.encodeConnect(target), timeout, true),
      (asked): Circuit => ({
        socket: asked.socket,
        relay: connection.remoteNodeId,
        peer: asked.observed,
        datagrams: datagramsOf(asked.path, { host: connection.remoteHost, port: connection.remotePort }),
        until: connection.closed
      })
    ).pipe(
      Effect.timeoutFail({
        duration: timeout,
        onTimeout: () =>
          new RelayRefused({
            reason: "target-unreachable",
            detail: `no circuit to ${NodeId.encode(target)} within ${Duration.format(timeout)}`,
            relay: NodeId.encode(connection.remoteNodeId)
          })
      })
    )
  )

/**
 * Serves one STOP stream the relay `caller` opened: reads the source it names (within
 * `timeout`, else a "malformed" answer), refuses with `decide`'s refusal if it gives one, else
 * answers OK and runs `run` on the stream (the circuit) until it returns; the stream then ends.
 */
export const serveStop = (
  socket: Socket.Socket,
  caller: Contact,
  decide: (source: NodeId.NodeId) => Effect.Effect<RelayRefused | undefined>,
  run: (source: NodeId.NodeId, circuit: Circuit) => Effect.Effect<void>,
  options?: { readonly timeout?: Duration.DurationInput }
): Effect.Effect<void> =>
  Effect.gen(function* () {
    const reader = yield* Wire.chunkReader(socket)
    const write = yield* socket.writer
    const timeout = options?.timeout ?? defaultTimeout
    const source = yield* Effect.either(
      Effect.zip(
        Wire.readMessage(reader, Wire.parseConnectFrom, timeout),
        Wire.readMessage(reader, Wire.parsePath, timeout)
      )
    )
    if (Either.isLeft(source)) {
      if (Predicate.isTagged(source.left, "RelayRefused"))
        yield* write(Wire.encodeStatus({ _tag: "Refused", reason: "malformed", detail: source.left.detail }))
      return
    }
    const [from, path] = source.right
    const refusal = Option.fromNullable(yield* decide(from.source))
    if (Option.isSome(refusal)) {
      const { reason, detail } = refusal.value
      return yield* write(Wire.encodeStatus({ _tag: "Refused", reason, detail }))
    }
    yield* write(Wire.encodeStatus({ _tag: "Ok", until: 0 }))
    yield* run(from.source, {
      socket,
      relay: caller.nodeId,
      peer: from.observed,
      datagrams: datagramsOf(path, caller),
      source: from.source
    })
  }).pipe(Effect.scoped, Effect.ignore)
