/**
 * Relay: a node that splices a stream from one node with a stream to another, so that two
 * nodes that cannot reach each other directly still connect. The relay is blind: it forwards
 * bytes as they come (the nodes run their own end-to-end encrypted, NodeId-authenticated
 * connection over the spliced stream) and never reads them.
 *
 * Two of the node's own protocols carry it (`internal/relay/wire.ts` has the messages):
 * - HOP, node → relay: RESERVE (keep me reachable through you) or CONNECT (a circuit to a
 *   target). A reservation lasts while its HOP stream stays open, at most `reservationDuration`;
 *   the node renews it by reserving again. A granted CONNECT's HOP stream becomes the circuit.
 * - STOP, relay → target: CONNECT-FROM, naming the source as the relay's connection proved it;
 *   the target accepts (its STOP stream becomes the other half of the circuit) or refuses.
 *
 * `internal/relay/server.ts` is the relay's side (`makeRelayServer(options, host)`),
 * `internal/relay/client.ts` the nodes' (`reserve`, `connect`, `serveStop`). Refusals travel as
 * status codes and arrive as `RelayRefused`.
 */
import type { Socket } from "@effect/platform"
import { Context, Data, Duration, type Effect, type Option, type Scope } from "effect"
import type * as NodeId from "./NodeId.js"
import type { ProtocolId } from "./Protocols.js"
import type { DatagramForwarding, ForwardOptions } from "./QuicTransport.js"

export interface RelayOptions {
  /** Nodes holding a reservation at once. Default 128. */
  readonly maxReservations: number
  /** Circuits open (or being opened) at once. Default 256. */
  readonly maxCircuits: number
  /**
   * A circuit on which no byte moved either way for this long is ended. Default 60 s (longer
   * than the connection manager's 10 s keep-alive, whose packets keep a used circuit busy).
   */
  readonly circuitIdleTimeout: Duration.DurationInput
  /**
   * The byte rate of one circuit, both directions together (a burst of 100 ms of it passes at
   * once). Default 1 MiB/s; `Infinity` for no cap.
   */
  readonly circuitBytesPerSecond: number
  /** How long one reservation lasts before the relay ends it (the node reserves again). Default 1 h. */
  readonly reservationDuration: Duration.DurationInput
  /** How long the relay waits for a node's request, and for a target's answer. Default 10 s. */
  readonly messageTimeout: Duration.DurationInput
  /**
   * HOP requests (reservations and circuits, refused ones and malformed ones included) taken
   * from one node per second; past it the relay refuses with "rate-limited" before reading the
   * request. Default 10.
   */
  readonly hopRequestsPerSecond: number
  /** Sees every chunk (or datagram) the relay forwards, before it is forwarded (a test hook). */
  readonly tap?: ((bytes: Uint8Array) => void) | undefined
}

export const defaults: RelayOptions = {
  maxReservations: 128,
  maxCircuits: 256,
  circuitIdleTimeout: Duration.seconds(60),
  circuitBytesPerSecond: 1024 * 1024,
  reservationDuration: Duration.hours(1),
  messageTimeout: Duration.seconds(10),
  hopRequestsPerSecond: 10
}

/** Why a relay (or the target behind it) said no. */
export type RelayRefusedReason =
  /** The node serves no relay (or has stopped serving). */
  | "not-a-relay"
  /** The relay holds its maximum of reservations. */
  | "reservation-limit"
  /** The relay has its maximum of circuits open. */
  | "circuit-limit"
  /** The target holds no reservation with the relay. */
  | "no-reservation"
  /** The target refused the circuit. */
  | "target-refused"
  /** The relay could not reach the target, or the target gave no valid answer in time. */
  | "target-unreachable"
  /** The request is not allowed (e.g. a circuit to the requester itself). */
  | "denied"
  /** A message was not valid, too long, or did not arrive in time. */
  | "malformed"
  /** The node sent more requests than the relay takes from one node per second. */
  | "rate-limited"

/** Every reason; its place here (from 1) is its status code on the wire: append, never reorder. */
export const refusedReasons: ReadonlyArray<RelayRefusedReason> = [
  "not-a-relay",
  "reservation-limit",
  "circuit-limit",
  "no-reservation",
  "target-refused",
  "target-unreachable",
  "denied",
  "malformed",
  "rate-limited"
]

/** A relay refused a reservation or a circuit (`relay`: which relay, when known). */
export class RelayRefused extends Data.TaggedError("RelayRefused")<{
  readonly reason: RelayRefusedReason
  readonly detail: string
  readonly relay?: NodeId.NodeIdEncoded | undefined
  readonly cause?: unknown
}> {
  override get message() {
    const who = this.relay === undefined ? "the relay" : `relay ${this.relay}`
    return `${who} refused (${this.reason}): ${this.detail.replace(/\s+/g, " ")}`
  }
}

export interface RelayStats {
  /** Reservations held now. */
  readonly reservations: number
  /** Circuits open now (including those waiting for their target's answer). */
  readonly circuits: number
  /** Bytes forwarded on circuits since the relay started, both directions counted. */
  readonly bytesForwarded: number
  /** Requests refused since the relay started, by reason. */
  readonly refused: Readonly<Record<RelayRefusedReason, number>>
}

/** What a relay needs from its node's connection manager. */
export interface RelayHost {
  /** Opens a stream of `protocol` on the connection already held to `nodeId` (never dials). */
  readonly openStream: (
    nodeId: NodeId.NodeId,
    protocol: ProtocolId
  ) => Effect.Effect<Socket.Socket, unknown, Scope.Scope>
  /** Keeps the connection to `nodeId` in use while the scope is open. */
  readonly hold: (nodeId: NodeId.NodeId) => Effect.Effect<void, unknown, Scope.Scope>
  /**
   * Forwards a circuit's datagrams between the nodes `a` and `b` while the scope is open (the
   * transport's `forwardDatagrams`, at the addresses of the connections held to them); none when
   * it cannot (a connection that is itself relayed, or a transport that forwards no datagrams).
   * Without it every circuit is spliced.
   */
  readonly forward?: (
    a: NodeId.NodeId,
    b: NodeId.NodeId,
    options: ForwardOptions
  ) => Effect.Effect<Option.Option<DatagramForwarding>, never, Scope.Scope>
}

/**
 * A test hook: when the node's context has one, it sees every chunk the node's relay forwards
 * (the NAT lab checks that a relay never sees a connection's plaintext).
 */
export class RelayTap extends Context.Tag("quicmesh/RelayTap")<RelayTap, (bytes: Uint8Array) => void>() {}
