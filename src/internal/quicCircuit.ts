/**
 * quicCircuit: QUIC connections over relayed circuits (`dialCircuit`, `acceptCircuit`). Each
 * circuit gets a shim (circuitShim): a UDP socket beside the transport's that carries the
 * packets of one connection on the circuit (as circuit datagrams through the relay, or as frames
 * on the circuit's stream). The transport's own QUIC client dials the
 * shim, or its own server accepts a connection from it, exactly as over a direct path: retry
 * tokens, both sides' NodeId certificates, the connection gate and the handshake cap all apply;
 * the relay sees only the QUIC packets, encrypted end to end.
 *
 * The shims live on the transport's host, or on loopback when it binds a wildcard address, so
 * their packets never leave the machine. An inbound connection from an accepting shim's address
 * is that circuit's (`circuitOf`, `attach`); a circuit carries one connection.
 */
import { Socket } from "@effect/platform"
import type { QUICConnection, QUICSocket } from "@matrixai/quic"
import { Deferred, Duration, Effect, ExecutionStrategy, Exit, Scope } from "effect"
import * as NodeId from "../services/NodeId.js"
import { type Circuit, DialError, type DialOptions } from "../services/QuicTransport.js"
import type { CircuitDatagrams } from "./circuitDatagrams.js"
import * as CircuitShim from "./circuitShim.js"
import { unmapHost, type WrappedConnection } from "./quicConnection.js"
import type { DialVia } from "./quicDial.js"

/** What the circuits of a transport use of it. */
export interface CircuitContext {
  readonly socket: QUICSocket
  readonly dial: (
    options: DialOptions,
    via: DialVia
  ) => Effect.Effect<WrappedConnection, DialError, Scope.Scope>
  readonly connectTimeout: Duration.Duration
  readonly isStopping: () => boolean
  /** The transport's circuit datagrams (a datagram circuit's packets go through it). */
  readonly datagrams: CircuitDatagrams
}

/** An accepting circuit: the connection that came over it, once one has. */
interface Accepting {
  readonly relay: NodeId.NodeId
  readonly peer: Circuit["peer"]
  readonly source: NodeId.NodeId | undefined
  readonly arrived: Deferred.Deferred<WrappedConnection>
  connection: WrappedConnection | undefined
}

/** The CloseReason detail of a connection whose circuit ended. */
const circuitClosed = (why: string) => `relay circuit closed: ${why}`

/**
 * Where a transport's shims bind: its own host, or loopback for a wildcard (IPv6 loopback only
 * when the socket takes no IPv4).
 */
export const shimHostOf = (socket: QUICSocket): string => {
  const host = unmapHost(socket.host)
  if (host === "0.0.0.0") return "127.0.0.1"
  if (host === "::") return socket.type === "ipv6" ? "::1" : "127.0.0.1"
  return host
}

export class Circuits {
  /** The shims open now (dialling and accepting). */
  shims = 0
  private readonly host: string
  /** Accepting circuits by their shim's port (every shim binds `host`). */
  private readonly accepting = new Map<number, Accepting>()

  constructor(private readonly cc: CircuitContext) {
    this.host = shimHostOf(cc.socket)
  }

  /** The accepting circuit `raw` came over (its relay and peer); undefined for a direct connection. */
  circuitOf(raw: QUICConnection): Pick<Accepting, "relay" | "peer"> | undefined {
    if (this.accepting.size === 0) return undefined
    const entry = this.accepting.get(raw.remotePort)
    return entry !== undefined && unmapHost(raw.remoteHost) === this.host ? entry : undefined
  }

  /**
   * Hands an admitted connection to its circuit (nothing to do for a direct one); refused when its circuit
   * already carries a connection, has ended, or was brought for another source: why, for the
   * caller to close it with.
   */
  attach(connection: WrappedConnection): string | undefined {
    if (connection.relay === undefined) return undefined
    const entry = this.accepting.get(connection.pathPort)
    if (entry === undefined || entry.connection !== undefined) return "a relay circuit carries one connection"
    if (entry.source !== undefined && !NodeId.equals(entry.source, connection.remoteNodeId))
      return `the relay named ${NodeId.encode(entry.source)} as this circuit's source`
    entry.connection = connection
    Deferred.unsafeDone(entry.arrived, Exit.succeed(connection))
    return undefined
  }

  /** A shim for `circuit`, counted while its scope lasts. */
  private openShim(circuit: Circuit) {
    return Effect.acquireRelease(
      Effect.sync(() => {
        this.shims++
      }),
      () =>
        Effect.sync(() => {
          this.shims--
        })
    ).pipe(Effect.zipRight(CircuitShim.open(circuit, this.host, this.cc.socket.port, this.cc.datagrams)))
  }

  /** The transport's `dialCircuit`. */
  readonly dialCircuit = (
    circuit: Circuit,
    options: {
      readonly expectedNodeIds: ReadonlyArray<NodeId.NodeId>
      readonly timeout?: Duration.DurationInput
    }
  ): Effect.Effect<WrappedConnection, DialError, Scope.Scope> =>
    Effect.gen(this, function* () {
      const via = `through relay ${NodeId.encode(circuit.relay)}`
      // The circuit's own scope: the connection closes first, then the shim ends the stream.
      const scope = yield* Effect.scope.pipe(
        Effect.flatMap((parent) => Scope.fork(parent, ExecutionStrategy.sequential))
      )
      const connect = Effect.gen(this, function* () {
        const shim = yield* this.openShim(circuit).pipe(
          Effect.mapError(
            (e) => new DialError({ host: this.host, port: 0, reason: "unreachable", detail: e.detail })
          )
        )
        // The circuit's end fails the dial, or closes the connection made over it.
        const ended = new AbortController()
        let carried: WrappedConnection | undefined
        yield* shim.ended.pipe(
          Effect.flatMap((why) => {
            ended.abort(circuitClosed(why))
            return carried === undefined ? Effect.void : carried.closeWithError(circuitClosed(why))
          }),
          Effect.forkIn(scope)
        )
        const dialOptions: DialOptions = {
          host: shim.host,
          port: shim.port,
          expectedNodeIds: options.expectedNodeIds,
          ...(options.timeout !== undefined ? { timeout: options.timeout } : {})
        }
        const connection = yield* this.cc.dial(dialOptions, {
          relay: circuit.relay,
          ended: ended.signal,
          peer: circuit.peer
        })
        carried = connection
        const why = shim.endReason()
        if (why !== undefined) yield* connection.closeWithError(circuitClosed(why))
        // The connection's end closes the circuit.
        yield* connection.whenClosed(() => Scope.close(scope, Exit.void))
        return connection
      })
      return yield* connect.pipe(
        Scope.extend(scope),
        Effect.mapError(
          (e) =>
            new DialError({ host: e.host, port: e.port, reason: e.reason, detail: `${via}: ${e.detail}` })
        ),
        Effect.onExit((exit) => (Exit.isSuccess(exit) ? Effect.void : Scope.close(scope, exit)))
      )
    })

  /** The transport's `acceptCircuit`. */
  readonly acceptCircuit = (circuit: Circuit): Effect.Effect<void> =>
    Effect.scoped(
      Effect.gen(this, function* () {
        if (this.cc.isStopping()) return yield* endStream(circuit.socket)
        const shim = yield* this.openShim(circuit)
        const entry: Accepting = {
          relay: circuit.relay,
          peer: circuit.peer,
          source: circuit.source,
          arrived: yield* Deferred.make<WrappedConnection>(),
          connection: undefined
        }
        // Once registered, the circuit closes the connection it carries at its end, whenever
        // that comes (even between the connection's arrival and this fiber's next step).
        yield* Effect.acquireRelease(
          Effect.sync(() => this.accepting.set(shim.port, entry)),
          () => this.retire(shim, entry)
        )
        const connection = yield* Deferred.await(entry.arrived).pipe(
          Effect.raceFirst(Effect.as(shim.ended, undefined)),
          Effect.timeoutTo({
            duration: this.cc.connectTimeout,
            onTimeout: () => undefined,
            onSuccess: (c) => c
          })
        )
        if (connection !== undefined) yield* Effect.raceFirst(shim.ended, connection.closed)
      }).pipe(
        Effect.catchTag("CircuitShimError", (e) =>
          Effect.logWarning(`cannot accept a relayed connection: ${e.message}`).pipe(
            Effect.zipRight(endStream(circuit.socket))
          )
        )
      )
    )

  /**
   * An accepting circuit ends: it takes no connection any more, and the one it carries is
   * closed. (A handshake still in progress over it can no longer complete: the server drops it
   * after the connect timeout, as any stalled handshake.)
   */
  private retire(shim: CircuitShim.CircuitShim, entry: Accepting): Effect.Effect<void> {
    this.accepting.delete(shim.port)
    return entry.connection === undefined
      ? Effect.void
      : entry.connection.closeWithError(circuitClosed(shim.endReason() ?? "stopped"))
  }
}

/** Ends a circuit's stream that carried nothing (bounded: the relay may take nothing more). */
const endStream = (socket: Socket.Socket) =>
  Effect.scoped(Effect.flatMap(socket.writer, (write) => write(new Socket.CloseEvent(1000)))).pipe(
    Effect.ignore,
    Effect.timeoutOption(Duration.seconds(2)),
    Effect.asVoid
  )
