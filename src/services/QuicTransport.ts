/**
 * QuicTransport: one UDP port carrying a QUIC server and every outgoing connection,
 * mutually authenticated by NodeId. The interface names no `@matrixai/quic` type so that
 * the simulated network (SimNetwork) can implement it in memory.
 */
import type { Socket } from "@effect/platform"
import { Context, Data, type Duration, type Effect, Layer, type Scope, type Stream } from "effect"
import type { Address } from "./Address.js"
import { defaults as managerDefaults } from "./ConnectionManagerConfig.js"
import type { NodeId } from "./NodeId.js"

export type ConnectionDirection = "forward" | "reverse"

export type CloseReason =
  | { readonly _tag: "Local"; readonly detail?: string }
  | { readonly _tag: "Peer"; readonly detail?: string }
  | { readonly _tag: "IdleTimeout" }
  | { readonly _tag: "Error"; readonly detail: string }

export interface QuicConnection {
  /** Unique per transport, stable for the connection's life (logging, tie-breaking). */
  readonly id: string
  readonly remoteNodeId: NodeId
  readonly remoteHost: string
  readonly remotePort: number
  readonly localHost: string
  readonly localPort: number
  /** "forward" when we dialled, "reverse" when the peer did. */
  readonly direction: ConnectionDirection
  /**
   * The NodeId the peer renewed its key from, when its verified certificate chain shows one
   * (the leaf signed by the previous key); undefined otherwise, and where the transport does
   * not tell (the simulated network).
   */
  readonly remoteRenewedFrom?: NodeId | undefined
  /**
   * The relay whose circuit carries this connection's packets (`dialCircuit` / `acceptCircuit`);
   * undefined for a direct connection. `remoteHost`/`remotePort` of a relayed connection are the
   * peer's address as the relay observes it (`Circuit.peer`), else the circuit's local end.
   */
  readonly relay?: NodeId | undefined
  /**
   * The wire the peer speaks for the agent RPC: `polykey` for a peer whose certificate is in
   * Polykey's format without quicmesh's marker (a Polykey node), else `quicmesh` (also when
   * left out).
   */
  readonly speaks?: PeerWire | undefined
  /**
   * Opens a bidirectional stream. Closing the scope ends our side of it.
   */
  readonly openStream: Effect.Effect<Socket.Socket, ConnectionError, Scope.Scope>
  /** Streams the peer opens, each as a Socket; ends when the connection closes. Single consumer. */
  readonly acceptedStreams: Stream.Stream<Socket.Socket>
  /**
   * Runs `onStream` on every stream the peer opens (those already waiting first), each in a
   * fiber of its own started when the stream arrives: while no stream comes, nothing waits,
   * so an idle connection costs no fiber. Lasts until the scope closes (which interrupts the
   * stream fibers still running) or the connection closes. The same single consumer as
   * `acceptedStreams`: use one or the other. The fibers start from the transport's runtime.
   */
  readonly handleStreams: (
    onStream: (socket: Socket.Socket) => Effect.Effect<void>
  ) => Effect.Effect<void, never, Scope.Scope>
  /**
   * Runs `f` in a fiber of its own once the connection has closed (at once if it has). `f` is
   * called at the close itself; when it returns `Effect.void` (nothing to do) no fiber starts.
   */
  readonly whenClosed: (f: (reason: CloseReason) => Effect.Effect<void>) => Effect.Effect<void>
  /** Closes the connection (idempotent); completes once it is closed. */
  readonly close: (reason?: string) => Effect.Effect<void>
  /** Completes when the connection is closed, for whatever reason. */
  readonly closed: Effect.Effect<CloseReason>
}

export interface DialOptions {
  readonly host: string
  readonly port: number
  /** The connection succeeds only if the peer proves it owns one of these NodeIds. */
  readonly expectedNodeIds: ReadonlyArray<NodeId>
  /** Defaults to the transport's connect timeout. */
  readonly timeout?: Duration.DurationInput
  /**
   * `run` is called once, outside any fiber, if the dial is still in progress `after` it
   * started, and never once it has ended: the caller's slow-path work (hole-punch signalling)
   * starts then, with no fiber waiting beside every dial.
   */
  readonly whenSlow?: { readonly after: Duration.DurationInput; readonly run: () => void } | undefined
}

/**
 * A path to one peer through a relay, for a QUIC connection between the two: the relay sees
 * only that connection's packets, encrypted end to end by the two nodes' own TLS, and each side
 * still proves its NodeId in the handshake. The packets travel
 * - as datagrams when `datagrams` is given: each sent to the relay's address with the circuit's
 *   id in front, and forwarded by the relay to the other end (`forwardDatagrams`); `socket`
 *   carries nothing then;
 * - else as frames on `socket`, a stream the relay splices to one to the peer: ending the
 *   stream (either side, or the relay) ends the circuit.
 * The end of the circuit closes the connection over it.
 */
export interface Circuit {
  readonly socket: Socket.Socket
  /**
   * Datagram forwarding by the relay: the circuit's id, and the relay's address as our
   * connection to it has it. The relay ends the circuit's stream once it is set up; the circuit
   * then lasts until either end or the relay ends it (a datagram saying so), or `until`.
   */
  readonly datagrams?: CircuitDatagrams | undefined
  /** Completes when the circuit can carry nothing more: the connection to its relay has closed. */
  readonly until?: Effect.Effect<unknown> | undefined
  /** The relay's NodeId (the connection's `relay`). */
  readonly relay: NodeId
  /**
   * On the accepting side, the node the relay named as the circuit's source: the connection
   * over the circuit must prove it (one that proves another NodeId, even the relay's, is closed).
   */
  readonly source?: NodeId | undefined
  /**
   * The peer's address as the relay observes it (its connection to the relay): the relayed
   * connection's `remoteHost`/`remotePort` when given (else the circuit's local end).
   */
  readonly peer?: { readonly host: string; readonly port: number } | undefined
}

/** A circuit's datagram path: its id (`CIRCUIT_ID_BYTES`), and where its relay takes datagrams. */
export interface CircuitDatagrams {
  readonly id: Uint8Array
  readonly host: string
  readonly port: number
}

/** The length of a circuit's id. */
export const CIRCUIT_ID_BYTES = 8

/** What a relay's transport needs to forward one circuit's datagrams (`forwardDatagrams`). */
export interface ForwardOptions {
  /** Both directions together, in bytes per second (`Infinity`: no cap); a datagram over it is dropped. */
  readonly bytesPerSecond: number
  /** Sees every datagram before it is forwarded (a test hook). */
  readonly tap?: ((bytes: Uint8Array) => void) | undefined
  /** Told the size of every datagram forwarded. */
  readonly forwarded: (bytes: number) => void
  /** Told when one of the two ends says its end of the circuit is gone (the forwarding goes on until its scope closes). */
  readonly ended?: (() => void) | undefined
}

/** A relay's forwarding of one circuit's datagrams, while its scope lasts. */
export interface DatagramForwarding {
  readonly id: Uint8Array
  /** When a datagram last passed either way (ms since 1970), or the forwarding began. */
  readonly lastActive: () => number
}

/** The agent RPC wires a peer may speak. */
export type PeerWire = "quicmesh" | "polykey"

/** Dialling failed. A `mismatch` names both NodeIds. */
export class DialError extends Data.TaggedError("DialError")<{
  readonly host: string
  readonly port: number
  readonly reason:
    | "timeout"
    | "unreachable"
    | "mismatch"
    | "tls"
    | "stopped"
    | "invalid-address"
    /** The peer refused the handshake explicitly (busy), again until the dial's timeout. */
    | "refused"
  readonly detail: string
}> {
  override get message() {
    return `dial ${this.host}:${this.port} failed (${this.reason}): ${this.detail}`
  }
}

/** An operation on an open connection failed (it closed, a stream could not be opened). */
export class ConnectionError extends Data.TaggedError("ConnectionError")<{
  readonly connectionId: string
  readonly reason: "closed" | "stream" | "error"
  readonly detail: string
}> {
  override get message() {
    return `connection ${this.connectionId}: ${this.reason}: ${this.detail}`
  }
}

/** The socket or server failed or stopped without being asked to. */
export class TransportError extends Data.TaggedError("TransportError")<{
  readonly reason: "bind" | "socket" | "server" | "stopped" | "send"
  readonly detail: string
  readonly cause?: unknown
}> {
  override get message() {
    return `transport ${this.reason}: ${this.detail}`
  }
}

export interface QuicTransportService {
  /** The bound host and port. */
  readonly host: string
  readonly port: number
  /** Dial a peer; the connection is closed when the scope closes. */
  readonly dial: (options: DialOptions) => Effect.Effect<QuicConnection, DialError, Scope.Scope>
  /** Authenticated inbound connections. Single consumer; the transport closes them when it stops. */
  readonly incoming: Stream.Stream<QuicConnection>
  /**
   * Dials a peer over a relayed circuit (the dialling side): a QUIC connection, mutually
   * authenticated as `dial`'s, whose packets travel on `circuit.socket`; its `relay` is the
   * circuit's. The connection closes when the scope closes or the circuit's stream ends.
   * Optional: a transport without it cannot use relays.
   */
  readonly dialCircuit?: (
    circuit: Circuit,
    options: { readonly expectedNodeIds: ReadonlyArray<NodeId>; readonly timeout?: Duration.DurationInput }
  ) => Effect.Effect<QuicConnection, DialError, Scope.Scope>
  /**
   * Serves the accepting side of a relayed circuit for as long as it lasts: the connection the
   * peer makes over it arrives on `incoming` (authenticated like any other, `relay` set). Ends
   * when the circuit's stream ends, the connection over it closes, or no handshake completed
   * within the connect timeout; ending (or interrupting) it closes that connection.
   */
  readonly acceptCircuit?: (circuit: Circuit) => Effect.Effect<void>
  /**
   * The relay's side of a datagram circuit: until the scope closes, datagrams carrying the
   * returned id are forwarded from `a` to `b` and back (only from those two addresses, exactly);
   * closing the scope tells both ends the circuit has ended. Optional: without it a relay
   * splices the circuit's streams instead.
   */
  readonly forwardDatagrams?: (
    ends: { readonly a: Address; readonly b: Address },
    options: ForwardOptions
  ) => Effect.Effect<DatagramForwarding, never, Scope.Scope>
  /** Raw datagram over the shared socket (hole punching). */
  readonly sendDatagram: (host: string, port: number, data: Uint8Array) => Effect.Effect<void, TransportError>
  /** Fails when the socket or server stops without being asked to; never succeeds. */
  readonly failure: Effect.Effect<never, TransportError>
  /**
   * What the transport holds right now (diagnostics: the agent's status, tests). Optional: a
   * transport that keeps no such counts leaves it out.
   */
  readonly stats?: Effect.Effect<TransportStats>
}

/** A transport's connections and inbound handshakes right now. */
export interface TransportStats {
  /** Connections handed out and not yet closed (forward and reverse). */
  readonly connections: number
  /** Connections in the QUIC socket's map, including handshakes in progress. */
  readonly quicConnections: number
  /** Inbound connections started but not yet handshaken and verified. */
  readonly handshakesInProgress: number
  /** The most `handshakesInProgress` has ever been. */
  readonly handshakesHighWater: number
  /**
   * Inbound connection attempts refused at the `maxInboundHandshakes` cap (counted per
   * packet: a client that retransmits its Initial counts again).
   */
  readonly handshakesRefused: number
  /** The cap on `handshakesInProgress` (the transport's `maxInboundHandshakes`). */
  readonly maxInboundHandshakes: number
  /** The UDP receive buffer asked for (the transport's `receiveBufferSize`; 0: the kernel's default). */
  readonly receiveBufferRequested: number
  /** The UDP receive buffer the kernel holds for the socket, as it reports it (Linux: twice what it granted). */
  readonly receiveBufferGranted: number
}

export class QuicTransport extends Context.Tag("quicmesh/QuicTransport")<
  QuicTransport,
  QuicTransportService
>() {}

export interface QuicTransportOptions {
  readonly host: string
  readonly port: number
  readonly reuseAddr: boolean
  readonly ipv6Only: boolean
  readonly keepAliveInterval: Duration.Duration
  readonly maxIdleTimeout: Duration.Duration
  readonly connectTimeout: Duration.Duration
  /**
   * Inbound connections whose handshake (and NodeId verification) may be in progress at once.
   * At the cap, further inbound attempts are refused before any connection state is made: the
   * client gets a QUIC CONNECTION_REFUSED close with the reason "busy: …" (quicmesh's own
   * dials retry it within their timeout); established connections and our own dials are not
   * affected.
   */
  readonly maxInboundHandshakes: number
  /**
   * Bytes of kernel receive buffer asked for the UDP socket (`SO_RCVBUF`), so that a burst of
   * handshakes is not dropped before it is read; 0 leaves the kernel's default. The kernel caps
   * it at `net.core.rmem_max` (the transport logs a warning naming it when it does);
   * `stats.receiveBufferGranted` says what was granted.
   */
  readonly receiveBufferSize: number
}

export class QuicTransportConfig extends Context.Tag("quicmesh/QuicTransportConfig")<
  QuicTransportConfig,
  QuicTransportOptions
>() {
  static readonly defaults: QuicTransportOptions = {
    host: "::",
    port: 0,
    reuseAddr: false,
    ipv6Only: false,
    // The options a node shares with its manager take the manager's defaults (NodeConfig).
    keepAliveInterval: managerDefaults.connectionKeepAliveIntervalTime,
    maxIdleTimeout: managerDefaults.connectionKeepAliveTimeoutTime,
    connectTimeout: managerDefaults.connectionConnectTimeoutTime,
    maxInboundHandshakes: managerDefaults.maxInboundPending,
    receiveBufferSize: 4 * 1024 * 1024
  }
  static readonly layer = (options: Partial<QuicTransportOptions> = {}) =>
    Layer.succeed(QuicTransportConfig, { ...QuicTransportConfig.defaults, ...options })
}
