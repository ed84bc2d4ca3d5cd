/**
 * The simulated world: its scheduler, trace, hosts and links, and the connections between
 * its endpoints. On a connection, everything one side sends (stream opens, bytes, FIN,
 * close) reaches the other in order after the link latency. Bytes are never lost; across a
 * partition they are held until it heals, and a connection that stays cut for its max idle
 * timeout closes with IdleTimeout on each side.
 *
 * The other parts of the world: `dial.ts` (handshakes), `packets.ts` and `nat.ts` (packets
 * and NATs), `endpoint.ts` (a node's transport), `streams.ts` and `connection.ts`, and
 * `circuit.ts` (connections over relay circuits, which no partition or NAT between their two
 * hosts affects: their packets travel on the circuit's stream).
 */
import { Socket } from "@effect/platform"
import type { Clock, Effect } from "effect"
import type { CloseReason } from "../../services/QuicTransport.js"
import type { SimNetworkOptions, SimNetworkStats } from "../../services/SimNetwork.js"
import type { CircuitDial } from "./circuit.js"
import { describeReason, type Pair, peerReason, type SimConnection } from "./connection.js"
import { type HostState, Hosts } from "./hosts.js"
import { Links } from "./links.js"
import { makePrng } from "./prng.js"
import { Scheduler, type TimerClock } from "./scheduler.js"
import { type SimSocket, SimStream } from "./streams.js"
import { TraceLog } from "./trace.js"

export class World {
  readonly scheduler: Scheduler
  readonly log: TraceLog
  readonly hosts = new Hosts()
  readonly links: Links
  endpointCount = 0
  openEnds = 0
  pendingDials = 0
  pairCounter = 0
  readonly pairs = new Set<Pair>()
  /** Relay circuit dials whose hello may still arrive, by token (`circuit.ts`). */
  readonly circuitDials = new Map<number, CircuitDial>()
  circuitCounter = 0
  /** Ends holding what they sent while their link is cut. */
  private readonly stalled = new Set<SimConnection>()

  constructor(
    seed: number,
    clock: Clock.Clock,
    runFork: (effect: Effect.Effect<void>) => unknown,
    /** The clock's own timers when it has them (SimRuntime's virtual clock): no fiber per wake-up. */
    timers: TimerClock | undefined,
    options: SimNetworkOptions,
    traceLimit: number
  ) {
    this.scheduler = new Scheduler(clock, runFork, timers)
    this.log = new TraceLog(clock, traceLimit)
    this.links = new Links(makePrng(seed), this.log, options)
  }

  /**
   * Cuts `a` off from `b`. A connection across the cut closes with IdleTimeout on each side
   * unless healed within the side's max idle timeout; what it sends meanwhile is held.
   */
  partition(a: Set<HostState>, b: Set<HostState>): number {
    const id = this.links.partition(a, b)
    const now = this.scheduler.now()
    for (const pair of this.pairs) {
      if (
        pair.blockedSince !== undefined ||
        pair.circuit !== undefined ||
        !this.links.blocked(pair.a.ep.host, pair.b.ep.host)
      )
        continue
      pair.blockedSince = now
      for (const end of [pair.a, pair.b]) {
        if (end.reason !== undefined) continue
        this.scheduler.schedule(end.ep.idleMs, () => {
          if (end.reason === undefined && pair.blockedSince === now)
            this.closeConnection(end, { _tag: "IdleTimeout" }, "none")
        })
      }
    }
    return id
  }

  /** Heals one partition, or all: connections no longer cut deliver what they held. */
  heal(id: number | undefined) {
    this.links.heal(id)
    for (const pair of this.pairs)
      if (pair.blockedSince !== undefined && !this.links.blocked(pair.a.ep.host, pair.b.ep.host))
        pair.blockedSince = undefined
    for (const end of [...this.stalled]) {
      if (this.links.blocked(end.ep.host, end.peer.ep.host)) continue
      this.stalled.delete(end)
      const held = end.held ?? []
      end.held = undefined
      for (const run of held) this.sendOnConnection(end, run)
    }
  }

  /**
   * Sends something to the peer end: in order, after the latency, held while the link is cut;
   * on a relayed connection, as a packet of `size` bytes through its circuit.
   */
  sendOnConnection(from: SimConnection, run: () => void, size = 0) {
    const circuit = from.pair.circuit
    if (circuit !== undefined) return circuit.sideOf(from).send(run, size)
    if (from.held !== undefined) {
      from.held.push(run)
      return
    }
    const a = from.ep.host
    const b = from.peer.ep.host
    if (this.links.blocked(a, b)) {
      from.held = [run]
      this.stalled.add(from)
      return
    }
    const at = Math.max(from.lastAt, this.scheduler.now() + this.links.delay(a, b))
    from.lastAt = at
    this.scheduler.scheduleAt(at, run)
  }

  openStream(end: SimConnection): SimSocket {
    const stream = new SimStream(this, end)
    end.streams ??= new Set()
    end.streams.add(stream)
    this.log.add("stream", end.ep.label, `${end.remoteHost}:${end.remotePort}`, end.id)
    this.sendOnConnection(end, () => {
      const peer = end.peer
      if (peer.reason !== undefined) return
      peer.streams ??= new Set()
      peer.streams.add(stream)
      peer.dispatch.offer(stream.acceptorSocket)
    })
    return stream.openerSocket
  }

  /**
   * Closes one end. `notify`: "peer" tells the peer (it closes with Peer after the latency),
   * "idle" lets the peer find out by its idle timeout, "none" is for an end closed by news
   * from the peer.
   */
  closeConnection(end: SimConnection, reason: CloseReason, notify: "peer" | "idle" | "none") {
    if (end.reason !== undefined) return
    end.reason = reason
    this.openEnds--
    if (end.registered) end.ep.ends.delete(end)
    let closedError: Socket.SocketError | undefined
    for (const stream of end.streams ?? []) {
      const socket = stream.socketOf(end)
      socket.writeEnded = true
      const pipe = socket.readPipe
      if (!pipe.done) {
        closedError ??= new Socket.SocketGenericError({
          reason: "Read",
          cause: `connection closed (${describeReason(reason)})`
        })
        pipe.error = closedError
        pipe.notify()
      }
    }
    end.streams = undefined
    end.dispatch.close(reason)
    this.log.add(
      "close",
      end.ep.label,
      `${end.remoteHost}:${end.remotePort}`,
      `${end.id} ${describeReason(reason)}`
    )
    const peer = end.peer
    if (notify === "peer")
      this.sendOnConnection(end, () => this.closeConnection(peer, peerReason(reason), "none"))
    else if (notify === "idle" && peer.reason === undefined)
      this.scheduler.schedule(peer.ep.idleMs, () =>
        this.closeConnection(peer, { _tag: "IdleTimeout" }, "none")
      )
    if (end.held !== undefined && notify !== "peer") {
      end.held = undefined
      this.stalled.delete(end)
    }
    if (peer.reason !== undefined) {
      this.pairs.delete(end.pair)
    }
    end.pair.circuit?.sideOf(end).stop()
  }

  stats(): SimNetworkStats {
    const streams = new Set<SimStream>()
    for (const pair of this.pairs) {
      for (const s of pair.a.streams ?? []) streams.add(s)
      for (const s of pair.b.streams ?? []) streams.add(s)
    }
    return {
      hosts: this.hosts.count,
      endpoints: this.endpointCount,
      openConnectionEnds: this.openEnds,
      pendingDials: this.pendingDials,
      openStreams: streams.size,
      scheduledEvents: this.scheduler.size,
      traceEvents: this.log.count
    }
  }
}
