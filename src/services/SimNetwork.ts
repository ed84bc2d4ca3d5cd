/**
 * SimNetwork: a simulated world of hosts, NATs and links in which each node's
 * `QuicTransport` is an in-memory endpoint. Its layers are in `src/layers/SimWorld.ts`; the
 * world itself in `src/internal/simNetwork/` (`world.ts` and the modules it names: the
 * scheduler, hosts, links and partitions, NATs, packets, dials, connections, streams, the
 * transport endpoint, the trace and the PRNG).
 *
 * - Hosts have IPv4-looking addresses: public ones `1.0.x.y`, NATed ones a private
 *   `10.x.y.z` behind a NAT whose external address is public.
 * - Every delay is taken on the Effect Clock (TestClock in tests) and every random choice
 *   (jitter, loss) comes from a PRNG seeded by `SimNetworkOptions.seed`; each event is
 *   appended to a trace whose SHA-256 (`traceHash`) is the same for the same seed and scenario.
 */
import { Context, type Duration, type Effect, type Scope } from "effect"
import type { NodeId } from "./NodeId.js"
import type { CloseReason, QuicConnection, QuicTransportService, TransportError } from "./QuicTransport.js"

/**
 * How a host is attached:
 * - `none`: a public address, reachable by anyone.
 * - `full-cone`: endpoint-independent mapping and filtering (anyone may send to a mapping once
 *   it exists, i.e. after any outbound packet from that port).
 * - `restricted`: endpoint-independent mapping, address-and-port-dependent filtering (inbound
 *   from X:p only after we sent to X:p).
 * - `symmetric`: a new external port per destination, filtered like `restricted`.
 */
export type NatType = "none" | "full-cone" | "restricted" | "symmetric"

export interface SimHost {
  /** The address a transport binds (private for a NATed host). */
  readonly host: string
  /** The address others see: the NAT's external address, or `host` itself when public. */
  readonly publicHost: string
  readonly nat: NatType
}

/** Link properties; anything not given falls back to the world's defaults. */
export interface LinkOptions {
  /** One-way delay. */
  readonly latency?: Duration.DurationInput
  /** Extra one-way delay, uniform in [0, jitter] (whole milliseconds), drawn per packet. */
  readonly jitter?: Duration.DurationInput
  /** Probability that a handshake packet or datagram is lost (stream bytes are reliable, as in QUIC). */
  readonly loss?: number
}

export interface SimNetworkOptions extends LinkOptions {
  /** Seed of every random choice the world makes. */
  readonly seed: number | string
  /** How many trace events are kept in memory (the hash covers all of them). Default 100 000. */
  readonly traceLimit?: number
}

export type TraceKind =
  | "bind"
  | "unbind"
  | "crash"
  | "dial"
  | "drop"
  | "mismatch"
  | "timeout"
  | "connect"
  | "accept"
  | "close"
  | "stream"
  | "datagram"
  | "partition"
  | "heal"
  | "link"
  /** A connection over a relay circuit: its handshake, connect, refusal and each side's stop. */
  | "circuit"

export interface TraceEvent {
  /** Milliseconds of virtual time since the world was created. */
  readonly at: number
  readonly kind: TraceKind
  readonly from: string
  readonly to: string
  readonly detail: string
}

export interface SimNetworkStats {
  readonly hosts: number
  /** Bound transports. */
  readonly endpoints: number
  /** Connection ends not yet closed (a connection open on both sides counts twice). */
  readonly openConnectionEnds: number
  /** Dials whose outcome is not yet known. */
  readonly pendingDials: number
  /** Streams still registered on open connections. */
  readonly openStreams: number
  /** Events waiting in the world's scheduler. */
  readonly scheduledEvents: number
  readonly traceEvents: number
}

/** One node's transport settings in the world. */
export interface SimTransportOptions {
  /** A host from `addHost`; when absent a new host is added with `nat`. */
  readonly host?: string
  /** 0 or absent: the host's next free port. */
  readonly port?: number
  /** Only used when the host is created here. Default "none". */
  readonly nat?: NatType
  /** Default dial timeout. Default 15 s. */
  readonly connectTimeout?: Duration.DurationInput
  /** How long a connection waits for a silent peer before closing with IdleTimeout. Default 30 s. */
  readonly maxIdleTimeout?: Duration.DurationInput
}

/**
 * One end of a simulated connection seen as an ordered message channel, for layers that carry
 * calls without encoding bytes (PeerRpcSim). What one end sends runs at the other end after
 * the link's delay, in order with everything else sent on the connection (stream bytes
 * included), held while the link is cut, and never once the receiving end has closed. These
 * are plain synchronous members: they are meant for `Effect.async` callbacks in the world's
 * (virtual) time.
 */
export interface SimChannel extends QuicConnection {
  /** The other end of the connection. */
  readonly peer: SimChannel
  /** False once this end has closed. */
  readonly isOpen: boolean
  /** A slot for the layer that uses the channel (e.g. what serves this end). */
  state: unknown
  /** Sends `run` to the peer end; false (nothing sent) when this end is closed. */
  readonly send: (run: () => void) => boolean
  /** Calls `f` once when this end closes; returns a canceller. Not called if already closed. */
  readonly onClose: (f: (reason: CloseReason) => void) => () => void
}

export interface SimNetworkService {
  /** The seed as a 32-bit number. */
  readonly seed: number
  /** Adds a host; `host` may name the (bind) address, otherwise one is allocated. */
  readonly addHost: (options?: { readonly nat?: NatType; readonly host?: string }) => Effect.Effect<SimHost>
  /** The host owning an address (bind address or NAT external address). */
  readonly hostInfo: (address: string) => Effect.Effect<SimHost | undefined>
  /** Sets the defaults used by links without their own settings. */
  readonly setDefaults: (options: LinkOptions) => Effect.Effect<void>
  /** Sets the properties of the link between two hosts (either address of each). */
  readonly setLink: (a: string, b: string, options: LinkOptions) => Effect.Effect<void>
  /**
   * Nothing passes between a host of `a` and a host of `b` until healed: dials and datagrams
   * are dropped, bytes on established connections are held (delivered on heal), and a
   * connection silent for its max idle timeout closes with IdleTimeout. Returns an id for `heal`.
   */
  readonly partition: (a: Iterable<string>, b: Iterable<string>) => Effect.Effect<number>
  /** Heals one partition, or all of them. */
  readonly heal: (id?: number) => Effect.Effect<void>
  /**
   * The transport(s) on a host (one port, or all) die: their connections close locally with
   * Error, peers notice only after their max idle timeout (IdleTimeout), the address is freed
   * (a new transport may bind it again: a restart) and the transport's `failure` fails.
   */
  readonly crash: (host: string, port?: number) => Effect.Effect<void>
  /** Whether a transport is bound at this (bind) address. */
  readonly isBound: (host: string, port: number) => Effect.Effect<boolean>
  /** Binds a transport endpoint for `nodeId`; it is stopped when the scope closes. */
  readonly bind: (
    options: SimTransportOptions,
    nodeId: NodeId
  ) => Effect.Effect<QuicTransportService, TransportError, Scope.Scope>
  /** The channel view of a connection of this world (undefined for any other connection). */
  readonly channel: (connection: QuicConnection) => SimChannel | undefined
  /**
   * Runs `run` after `ms` of virtual time on the world's scheduler (no fiber, no sleep of its
   * own): for timeouts of channel calls. Plain synchronous, like `SimChannel`.
   */
  readonly schedule: (ms: number, run: () => void) => void
  /** Every trace event kept so far (see `traceLimit`). */
  readonly trace: Effect.Effect<ReadonlyArray<TraceEvent>>
  /** Hex SHA-256 of every trace event so far. */
  readonly traceHash: Effect.Effect<string>
  readonly stats: Effect.Effect<SimNetworkStats>
  /**
   * Stops the whole network at once, to end a simulation quickly: from now on nothing sent
   * arrives and no timer of the network fires (a dial in progress never completes). The
   * transports stay bound until their scopes close; closing them then tells no peer (every
   * peer is going too), which halves the work of tearing a large world down.
   */
  readonly halt: Effect.Effect<void>
}

export class SimNetwork extends Context.Tag("quicmesh/SimNetwork")<SimNetwork, SimNetworkService>() {}
