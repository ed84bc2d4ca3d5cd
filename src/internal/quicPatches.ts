/**
 * quicPatches: every place quicmesh reaches past `@matrixai/quic`'s public API, one function
 * each. The members used here are private (not in js-quic's typings, or `protected` there),
 * so they may change in any release: package.json pins js-quic to the exact version they were
 * read from, and `test/quicPatches.test.ts` checks each one on real js-quic objects.
 */
import type { Socket as DgramSocket } from "node:dgram"
import type Logger from "@matrixai/logger"
import {
  native,
  type QUICConnection,
  type QUICServer,
  type QUICSocket,
  type QUICStream,
  errors as quicErrors
} from "@matrixai/quic"

/**
 * A logger that drops everything. js-quic logs every state change at INFO through the
 * `@matrixai/logger` it is given; it calls only `debug`, `info` and `getChild` on it (`warn`
 * and `error` are here for safety). The object stands in for a `Logger`, whose class it is not.
 */
export const silentLogger: Logger = (() => {
  const noop = () => {}
  const logger = { debug: noop, info: noop, warn: noop, error: noop, getChild: () => logger }
  return logger as unknown as Logger
})()

/**
 * The error a js-quic connection closed with (or is closing with), if any: js-quic records each
 * error it dispatches in `errorLast` (protected in its typings, `null` until then) as it
 * handles it, before it closes the connection. Read instead of listening for the errors: a
 * listener costs each connection ~0.3 KiB (js-quic's wrapper closure, its records and the
 * EventTarget's).
 */
export const connectionError = (connection: QUICConnection): unknown =>
  (connection as unknown as { errorLast?: unknown }).errorLast ?? undefined

/**
 * The streams a js-quic connection has now, from its `streamMap` (a `Map` of stream id to
 * `QUICStream`, not in its typings): the peer's streams that arrived before we listened.
 */
export const existingStreams = (connection: QUICConnection): ReadonlyArray<QUICStream> => {
  const map = (connection as unknown as { streamMap?: Map<number, QUICStream> }).streamMap
  return map ? [...map.values()] : []
}

/**
 * How many more bidirectional streams the peer lets a js-quic connection open now: quiche's
 * `peer_streams_left_bidi` on the connection's native `conn` (not in js-quic's typings). The
 * peer's limit counts every stream ever opened against the credit it has granted so far
 * (100 at first, raised by MAX_STREAMS frames as it collects finished streams), so a stream
 * that ended on our side may still hold its credit.
 */
export const peerStreamsLeft = (connection: QUICConnection): number =>
  (connection as unknown as { conn: { peerStreamsLeftBidi: () => number } }).conn.peerStreamsLeftBidi()

/**
 * How many connections a js-quic socket routes packets to: the size of its `connectionMap`
 * (not in its typings), which holds every connection from its start, handshakes included,
 * until it has stopped.
 */
export const quicConnectionCount = (socket: QUICSocket): number =>
  (socket as unknown as { connectionMap: { size: number } }).connectionMap.size

/** The packet header js-quic's socket parses (quiche's `Header`; the fields read here). */
export interface PacketHeader {
  readonly ty: number
  readonly version: number
  readonly dcid: Uint8Array
  readonly scid: Uint8Array
  readonly token?: Uint8Array | null
}

/** Where a packet came from, as js-quic's socket passes it on. */
export interface RemoteInfo {
  readonly host: string
  readonly port: number
}

/** quiche's packet type of an Initial packet. */
export const initialPacketType: number = native.Type.Initial

/**
 * `QUICServer.acceptConnection` (not in js-quic's typings): the socket calls it for each
 * packet of a connection it does not know, and it answers with a version negotiation or a
 * stateless retry (no state made), or makes, starts and returns a server connection (an
 * Initial packet with a valid retry token), or drops the packet (`undefined`).
 */
export type AcceptConnection = (
  remoteInfo: RemoteInfo,
  header: PacketHeader,
  dcid: unknown,
  data: Uint8Array
) => Promise<QUICConnection | undefined>

/**
 * Replaces `server.acceptConnection` by `wrap(original)`, the original bound to the server:
 * the one point where an inbound connection can be refused before js-quic makes any state.
 */
export const wrapAcceptConnection = (
  server: QUICServer,
  wrap: (accept: AcceptConnection) => AcceptConnection
): void => {
  const internal = server as unknown as { acceptConnection: AcceptConnection }
  internal.acceptConnection = wrap(internal.acceptConnection.bind(server))
}

/**
 * Whether `token` is a retry token `server` minted for `host` (`QUICServer.validateToken`,
 * protected in js-quic's typings: an HMAC check of the token's signature and address).
 */
export const isOurRetryToken = async (
  server: QUICServer,
  token: Uint8Array,
  host: string
): Promise<boolean> => {
  const internal = server as unknown as {
    validateToken: (token: Buffer, host: string) => Promise<unknown>
  }
  return (await internal.validateToken(Buffer.from(token), host)) !== undefined
}

/**
 * Makes `socket` drop what its connections send once it has stopped, instead of failing: a
 * js-quic client checks that its socket runs, then calls `send_` (a member not in js-quic's
 * typings), which fails with `ErrorQUICSocketNotRunning` if the socket stopped in between; the
 * client turns that into an internal error that it throws from an event handler, an uncaught
 * exception that would end the process. A stopped socket sends nothing, as UDP would; its
 * connections then end as they do when the socket stops.
 */
export const dropSendsWhenStopped = (socket: QUICSocket): void => {
  const target = socket as unknown as { send_: (...params: ReadonlyArray<unknown>) => Promise<unknown> }
  const send = target.send_.bind(socket)
  target.send_ = (...params) =>
    send(...params).catch((error: unknown) => {
      if (!(error instanceof quicErrors.ErrorQUICSocketNotRunning)) throw error
    })
}

/**
 * The node `dgram` socket under a started js-quic socket (its `socket`, protected in js-quic's
 * typings): made by `QUICSocket.start`, bound before it returns.
 */
export const udpSocketOf = (socket: QUICSocket): DgramSocket =>
  (socket as unknown as { socket: DgramSocket }).socket
