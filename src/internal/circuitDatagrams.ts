/**
 * circuitDatagrams: the datagram path of relayed circuits, on a transport's own UDP socket.
 *
 * A circuit datagram is `[0x00][circuit id: 8 bytes][QUIC packet]`; a circuit's END is
 * `[0x01][circuit id]` alone. A first byte of 0 or 1 is never a QUIC v1 packet (its fixed bit
 * is clear): js-quic's socket reads one as a short header naming no connection of its and
 * drops it before making any state, and this module's listener, on the same socket, takes it:
 * - on a node at one end of a circuit (`addEnd`), a datagram with the circuit's id from the
 *   relay's address is delivered without its header, and an END from it ends the circuit;
 *   `sendEnd` tells the relay that our end is gone;
 * - on the relay (`forward`), a datagram with a forwarded id from one of the circuit's two
 *   ends, exactly (host and port), is sent on unchanged to the other end, within the circuit's
 *   byte rate (pacing by a theoretical arrival time, a burst of `BURST_MS` of it; a datagram
 *   over it is dropped, as a full link drops it, and QUIC inside slows down). An END from an
 *   end is reported (`ForwardOptions.ended`); stopping a forwarding sends END to both ends.
 * Anything else is dropped. Sends are not awaited: one that fails is lost, as UDP loses it (a
 * lost END leaves the circuit to the relay's idle timeout and the QUIC connection's own).
 */
import { randomBytes } from "node:crypto"
import type { RemoteInfo, Socket as UdpSocket } from "node:dgram"
import { isIPv4 } from "node:net"
import type { Address } from "../services/Address.js"
import { CIRCUIT_ID_BYTES, type DatagramForwarding, type ForwardOptions } from "../services/QuicTransport.js"
import { unmapHost } from "./quicConnection.js"

/** The first byte of every circuit datagram. */
export const CIRCUIT_DATAGRAM = 0x00
/** The first byte of a circuit's END. */
export const CIRCUIT_END = 0x01
/** Type byte and id. */
export const HEADER_BYTES = 1 + CIRCUIT_ID_BYTES
/** The burst allowed above a circuit's rate, in milliseconds of it. */
export const BURST_MS = 100

/** An address as the socket sends to it, and as its datagrams arrive from it (unmapped). */
interface Peer {
  readonly sendHost: string
  readonly host: string
  readonly port: number
}

interface End {
  readonly relay: Peer
  readonly deliver: (packet: Uint8Array) => void
  readonly ended: () => void
}

interface Forward extends DatagramForwarding {
  readonly a: Peer
  readonly b: Peer
  readonly options: ForwardOptions
  lastAt: number
  due: number
}

const keyOf = (bytes: Uint8Array, offset: number): string =>
  Buffer.from(bytes.buffer, bytes.byteOffset + offset, CIRCUIT_ID_BYTES).toString("latin1")

const from = (peer: Peer, info: RemoteInfo) =>
  info.port === peer.port && unmapHost(info.address) === peer.host

/** Datagram sends are not awaited: one that fails is lost, as UDP loses it. */
const ignore = () => {}

export class CircuitDatagrams {
  private readonly ends = new Map<string, End>()
  private readonly forwards = new Map<string, Forward>()
  /** Datagrams dropped: unknown id, wrong sender, or over a circuit's rate. */
  dropped = 0

  constructor(
    private readonly udp: UdpSocket,
    private readonly now: () => number = Date.now
  ) {}

  /** The socket's `message` listener. */
  readonly onMessage = (data: Buffer, info: RemoteInfo): void => {
    const type = data[0]
    if (type === CIRCUIT_DATAGRAM) {
      if (data.length > HEADER_BYTES && this.onData(data, info)) return
    } else if (type === CIRCUIT_END) {
      if (data.length === HEADER_BYTES && this.onEnd(data, info)) return
    } else return
    this.dropped++
  }

  /** A circuit datagram: delivered or forwarded, or not (false). */
  private onData(data: Buffer, info: RemoteInfo): boolean {
    const key = keyOf(data, 1)
    const end = this.ends.get(key)
    if (end !== undefined && from(end.relay, info)) {
      end.deliver(data.subarray(HEADER_BYTES))
      return true
    }
    const forward = this.forwards.get(key)
    if (forward === undefined) return false
    const to = from(forward.a, info) ? forward.b : from(forward.b, info) ? forward.a : undefined
    if (to === undefined || !this.pace(forward, data.length)) return false
    forward.options.tap?.(data)
    this.udp.send(data, to.port, to.sendHost, ignore)
    forward.options.forwarded(data.length)
    return true
  }

  /** A circuit's END, from its relay (to an end) or from one of its ends (to the relay); false if neither. */
  private onEnd(data: Buffer, info: RemoteInfo): boolean {
    const key = keyOf(data, 1)
    const end = this.ends.get(key)
    if (end !== undefined && from(end.relay, info)) {
      this.ends.delete(key)
      end.ended()
      return true
    }
    const forward = this.forwards.get(key)
    if (forward === undefined || !(from(forward.a, info) || from(forward.b, info))) return false
    forward.options.ended?.()
    return true
  }

  /** Whether `bytes` more may pass now; if so, counted. */
  private pace(forward: Forward, bytes: number): boolean {
    const now = this.now()
    forward.lastAt = now
    const rate = forward.options.bytesPerSecond
    if (!Number.isFinite(rate)) return true
    const due = Math.max(now, forward.due) + (bytes * 1000) / rate
    if (due - now > BURST_MS) return false
    forward.due = due
    return true
  }

  /** The address `address` as this socket sends to it: IPv4 mapped into IPv6 on a dual-stack socket. */
  private peer(address: Address): Peer {
    const host = unmapHost(address.host)
    const sendHost = this.udp.address().family === "IPv6" && isIPv4(host) ? `::ffff:${host}` : host
    return { sendHost, host, port: address.port }
  }

  /** Sends `packet` on the circuit `id` to its relay at `relay`. */
  send(id: Uint8Array, relay: Address, packet: Uint8Array): void {
    const datagram = Buffer.allocUnsafe(HEADER_BYTES + packet.length)
    datagram[0] = CIRCUIT_DATAGRAM
    datagram.set(id, 1)
    datagram.set(packet, HEADER_BYTES)
    this.udp.send(datagram, relay.port, this.peer(relay).sendHost, ignore)
  }

  /** Sends the circuit `id`'s END to `to`. */
  sendEnd(id: Uint8Array, to: Address): void {
    const datagram = Buffer.allocUnsafe(HEADER_BYTES)
    datagram[0] = CIRCUIT_END
    datagram.set(id, 1)
    this.udp.send(datagram, to.port, this.peer(to).sendHost, ignore)
  }

  /**
   * Delivers the circuit `id`'s datagrams from `relay` to `deliver`, and its END to `ended`
   * (once; the circuit is then removed), until the returned function is called.
   */
  addEnd(
    id: Uint8Array,
    relay: Address,
    deliver: (packet: Uint8Array) => void,
    ended: () => void
  ): () => void {
    const key = keyOf(id, 0)
    const end: End = { relay: this.peer(relay), deliver, ended }
    this.ends.set(key, end)
    return () => {
      if (this.ends.get(key) === end) this.ends.delete(key)
    }
  }

  /**
   * Forwards a new circuit's datagrams between `a` and `b` (see the module comment) until
   * `stop` is called, which sends END to both.
   */
  forward(
    a: Address,
    b: Address,
    options: ForwardOptions
  ): { readonly forwarding: DatagramForwarding; readonly stop: () => void } {
    let id: Uint8Array
    let key: string
    do {
      id = randomBytes(CIRCUIT_ID_BYTES)
      key = keyOf(id, 0)
    } while (this.forwards.has(key) || this.ends.has(key))
    const now = this.now()
    const forward: Forward = {
      id,
      a: this.peer(a),
      b: this.peer(b),
      options,
      lastAt: now,
      due: now,
      lastActive: () => forward.lastAt
    }
    this.forwards.set(key, forward)
    const stop = () => {
      if (this.forwards.get(key) !== forward) return
      this.forwards.delete(key)
      this.sendEnd(id, a)
      this.sendEnd(id, b)
    }
    return { forwarding: forward, stop }
  }

  /** Circuits forwarded now (as a relay), and circuit ends open now. */
  get sizes(): { readonly forwarded: number; readonly ends: number } {
    return { forwarded: this.forwards.size, ends: this.ends.size }
  }
}
