/**
 * quicHandshakeGate: the cap on inbound handshakes in progress at once, and the explicit
 * refusal of the attempts over it.
 *
 * js-quic's server makes a connection for each Initial packet that carries a retry token
 * (`acceptConnection`). That step is wrapped to count the attempts in progress, from then until
 * the transport has verified the connection (`release`). At the cap, an attempt whose retry
 * token is ours (the client has shown it receives at its address) is answered with a stateless
 * refusal — an Initial packet closing the connection with CONNECTION_REFUSED and the reason
 * `busyReason` (quicRefusal) — before any state is made; the client reports it and may try
 * again later. An attempt with a token that is not ours is dropped. Packets that make no state
 * (the token-less Initial answered by a stateless retry, version negotiation) pass through;
 * other long-header packets for unknown connections are dropped, as js-quic would.
 */
import type { QUICServer, QUICSocket } from "@matrixai/quic"
import {
  initialPacketType,
  isOurRetryToken,
  type PacketHeader,
  type RemoteInfo,
  wrapAcceptConnection
} from "./quicPatches.js"
import { initialPacketNumber, quicVersion1, refusalPacket } from "./quicRefusal.js"

/** The reason phrase of a refusal at the cap. */
export const busyReason = "busy: too many handshakes in progress"

/** The gate's counts; `release` frees the slot of a connection the server has returned. */
export class HandshakeGate {
  /** Inbound connections started but not yet released. */
  inProgress = 0
  /** The most `inProgress` has ever been. */
  highWater = 0
  /** Attempts refused at the cap (per packet: a client that retransmits counts again). */
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
 * Puts a gate of `maxInboundHandshakes` slots in front of `server`'s inbound connections
 * (`socket` is the server's, for the refusals). `beforeAccept` runs just before a connection is
 * made (the server's TLS config can be brought up to date there). Each connection the server
 * returns holds a slot until `release`; one that fails to start, or a packet whose token is
 * invalid, frees it at once.
 */
export const installHandshakeGate = (
  server: QUICServer,
  socket: QUICSocket,
  maxInboundHandshakes: number,
  beforeAccept: () => void
): HandshakeGate => {
  const gate = new HandshakeGate(maxInboundHandshakes)
  const refuse = async (
    remoteInfo: RemoteInfo,
    header: PacketHeader,
    token: Uint8Array,
    data: Uint8Array
  ) => {
    if (!(await isOurRetryToken(server, token, remoteInfo.host))) return undefined
    gate.refused++
    const acked = initialPacketNumber(data, header.dcid)
    const packet = refusalPacket(header.scid, header.dcid, acked, busyReason)
    await socket.send(packet, remoteInfo.port, remoteInfo.host).catch(() => undefined)
    return undefined
  }
  wrapAcceptConnection(server, (acceptConnection) => (remoteInfo, header, dcid, data) => {
    if (header.ty !== initialPacketType) return Promise.resolve(undefined)
    const token = header.token
    if (token === undefined || token === null || token.byteLength === 0)
      return acceptConnection(remoteInfo, header, dcid, data)
    if (gate.inProgress >= gate.cap)
      return header.version === quicVersion1
        ? refuse(remoteInfo, header, token, data)
        : Promise.resolve(undefined)
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
