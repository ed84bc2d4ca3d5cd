/**
 * Simulated connections: a `Pair` of ends, one per endpoint, each a `QuicConnection` and a
 * `SimChannel`. What an end sends (stream opens, bytes, closes, channel messages) goes
 * through the world (`World.sendOnConnection`); streams the peer opens, and the close, are
 * handed to whoever serves the end by its `Dispatch`.
 */
import type { Socket } from "@effect/platform"
import { Effect, Predicate, type Scope, type Stream } from "effect"
import * as NodeId from "../../services/NodeId.js"
import { type CloseReason, ConnectionError, type QuicConnection } from "../../services/QuicTransport.js"
import type { SimChannel } from "../../services/SimNetwork.js"
import { Dispatch } from "../connectionDispatch.js"
import type { CircuitPath } from "./circuit.js"
import type { Endpoint } from "./endpoint.js"
import { inspect, type SimStream } from "./streams.js"
import type { World } from "./world.js"

/** The two ends of one connection: `a` the dialler's, `b` the listener's. */
export interface Pair {
  readonly id: number
  a: SimConnection
  b: SimConnection
  /** Set while the two hosts are partitioned: the time the cut started (never for a relayed pair). */
  blockedSince: number | undefined
  /** The relay circuit carrying the connection; undefined for a direct one. */
  readonly circuit: CircuitPath | undefined
}

/** Closed by this side, with the detail given if any. */
export const localReason = (detail?: string): CloseReason =>
  detail === undefined ? { _tag: "Local" } : { _tag: "Local", detail }
/** What the peer sees of a close: Peer, with the detail of a local close. */
export const peerReason = (reason: CloseReason): CloseReason =>
  Predicate.isTagged(reason, "Local") && reason.detail !== undefined
    ? { _tag: "Peer", detail: reason.detail }
    : { _tag: "Peer" }

/** A close reason as text: its tag, and its detail if any. */
export const describeReason = (reason: CloseReason) =>
  "detail" in reason && reason.detail !== undefined ? `${reason._tag}: ${reason.detail}` : reason._tag

/** One end of a simulated connection. */
export class SimConnection implements QuicConnection, SimChannel {
  reason: CloseReason | undefined = undefined
  /** SimChannel: the slot of the layer using this end as a channel. */
  state: unknown = undefined
  /** Counted in its endpoint's `ends` (the listener's end only once accepted). */
  registered = false
  /** Its open streams (made on the first one: most ends of a simulated world never open any). */
  streams: Set<SimStream> | undefined = undefined
  /** Delivery time of the last thing sent to the peer (keeps the connection in order). */
  lastAt = 0
  /** What was sent while the link is cut, in order. */
  held: Array<() => void> | undefined = undefined
  peer!: SimConnection

  constructor(
    readonly world: World,
    readonly pair: Pair,
    readonly ep: Endpoint,
    readonly id: string,
    readonly direction: "forward" | "reverse",
    readonly remoteNodeId: NodeId.NodeId,
    readonly remoteHost: string,
    readonly remotePort: number
  ) {
    this.dispatch = new Dispatch(ep.fork)
  }
  /** Streams the peer opens and the close, handed to whoever serves this end (no fiber waits). */
  readonly dispatch: Dispatch

  get localHost() {
    return this.ep.host.host
  }
  /** The relay of this end's circuit, for a relayed connection. */
  get relay(): NodeId.NodeId | undefined {
    return this.pair.circuit?.sideOf(this).relay
  }
  /** A compact form for logs and test output (the object graph behind is the whole world). */
  toJSON() {
    return {
      _id: "SimConnection",
      id: this.id,
      direction: this.direction,
      local: `${this.localHost}:${this.localPort}`,
      remote: `${this.remoteHost}:${this.remotePort}`,
      remoteNodeId: NodeId.encode(this.remoteNodeId),
      ...(this.pair.circuit === undefined ? {} : { relay: NodeId.encode(this.relay!) }),
      closed: this.reason === undefined ? false : describeReason(this.reason)
    }
  }
  [inspect]() {
    return this.toJSON()
  }
  get localPort() {
    return this.ep.port
  }
  get openStream(): Effect.Effect<Socket.Socket, ConnectionError, Scope.Scope> {
    return Effect.acquireRelease(
      Effect.suspend(() => {
        if (this.reason !== undefined)
          return Effect.fail(
            new ConnectionError({
              connectionId: this.id,
              reason: "closed",
              detail: `connection is closed (${describeReason(this.reason)})`
            })
          )
        return Effect.succeed(this.world.openStream(this))
      }),
      (socket) => Effect.sync(() => socket.shutdown())
    )
  }
  get acceptedStreams(): Stream.Stream<Socket.Socket> {
    return this.dispatch.acceptedStreams
  }
  // Methods, not arrow-function fields: a world holds hundreds of thousands of ends, and a
  // field would be a closure per end.
  handleStreams(onStream: Parameters<QuicConnection["handleStreams"]>[0]) {
    return this.dispatch.handleStreams(onStream)
  }
  whenClosed(f: Parameters<QuicConnection["whenClosed"]>[0]) {
    return this.dispatch.whenClosed(f)
  }
  get closed(): Effect.Effect<CloseReason> {
    return this.dispatch.closed
  }
  close(reason?: string): Effect.Effect<void> {
    return Effect.sync(() => this.world.closeConnection(this, localReason(reason), "peer"))
  }

  // -- SimChannel --

  get isOpen() {
    return this.reason === undefined
  }
  send(run: () => void): boolean {
    if (this.reason !== undefined) return false
    const peer = this.peer
    this.world.sendOnConnection(this, () => {
      if (peer.reason === undefined) run()
    })
    return true
  }
  onClose(f: (reason: CloseReason) => void): () => void {
    return this.dispatch.listenClose(f)
  }
}
