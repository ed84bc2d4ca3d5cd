/**
 * quicHandshakeGate: the cap on inbound handshakes in progress at once.
 *
 * js-quic's server makes a connection for each Initial packet that carries a retry token
 * (`acceptConnection`). That step is wrapped to count the attempts in progress, from then until
 * the transport has verified the connection (`release`), and to drop new ones at the cap before
 * any state is made: the cheapest refusal there is (the client retransmits, and gets in if a
 * slot has freed by then). Packets that make no state (the token-less Initial answered by a
 * stateless retry, version negotiation) pass through; other long-header packets for unknown
 * connections are dropped, as js-quic would.
 */
import type { QUICServer } from "@matrixai/quic"
import { initialPacketType, wrapAcceptConnection } from "./quicPatches.js"

/** The gate's counts; `release` frees the slot of a connection the server has returned. */
export class HandshakeGate {
  /** Inbound connections started but not yet released. */
  inProgress = 0
  /** The most `inProgress` has ever been. */
  highWater = 0
  /** Attempts dropped at the cap (per packet). */
  refused = 0
  /** The cap on `inProgress` (at least 0). */
  readonly cap: number
  /** Frees one slot (a plain function, so that it can be passed as is). */
  readonly release = (): void => {
    this.inProgress--
  }
  constructor(maxInboundHandshakes: number) {
    this.cap = Math.max(0, maxInboundHandshakes)
  }
}

/**
 * Puts a gate of `maxInboundHandshakes` slots in front of `server`'s inbound connections.
 * `beforeAccept` runs just before a connection is made (the server's TLS config can be brought
 * up to date there). Each connection the server returns holds a slot until `release`; one that
 * fails to start, or a packet whose token is invalid, frees it at once.
 */
export const installHandshakeGate = (
  server: QUICServer,
  maxInboundHandshakes: number,
  beforeAccept: () => void
): HandshakeGate => {
  const gate = new HandshakeGate(maxInboundHandshakes)
  wrapAcceptConnection(server, (acceptConnection) => (remoteInfo, header, dcid, data) => {
    if (header.ty !== initialPacketType) return Promise.resolve(undefined)
    if (header.token === undefined || header.token === null || header.token.byteLength === 0)
      return acceptConnection(remoteInfo, header, dcid, data)
    if (gate.inProgress >= gate.cap) {
      gate.refused++
      return Promise.resolve(undefined)
    }
    gate.inProgress++
    if (gate.inProgress > gate.highWater) gate.highWater = gate.inProgress
    beforeAccept()
    return acceptConnection(remoteInfo, header, dcid, data).then(
      (connection) => {
        // No connection (a bad token): nothing to admit. Otherwise the transport releases the slot.
        if (connection === undefined) gate.release()
        return connection
      },
      (error: unknown) => {
        gate.release()
        throw error
      }
    )
  })
  return gate
}
