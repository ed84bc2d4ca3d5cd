/**
 * quicConnection: a started js-quic `QUICConnection` as a `QuicConnection`. Peer streams become
 * `Socket`s handed to whoever serves the connection (`Dispatch`); the close reason is ours when
 * we closed it, otherwise the error js-quic recorded. Every connection of a transport shares
 * one `ConnectionContext`, which also tracks the live ones so the transport can close them all.
 */
import type { Socket } from "@effect/platform"
import type { QUICClient, QUICConnection, QUICStream } from "@matrixai/quic"
import { errors as quicErrors, events as quicEvents } from "@matrixai/quic"
import { Clock, Duration, Effect, type Fiber, Scope, type Stream } from "effect"
import type * as NodeId from "../services/NodeId.js"
import {
  type CloseReason,
  ConnectionError,
  type PeerWire,
  type QuicConnection
} from "../services/QuicTransport.js"
import { renewedFrom } from "./certificates.js"
import { Dispatch } from "./connectionDispatch.js"
import { isPolykeyCertificate } from "./polykey/certificateFormat.js"
import { closeReasonOf, describe } from "./quicErrors.js"
import { connectionError, existingStreams, peerStreamsLeft } from "./quicPatches.js"
import * as QuicStreamSocket from "./quicStreamSocket.js"

/** How often an `openStream` that waits for the peer's stream credit looks again. */
const CREDIT_POLL = Duration.millis(2)
/** How long an `openStream` waits for the peer's stream credit before it fails. */
const CREDIT_WAIT = Duration.seconds(30)

/** "::ffff:1.2.3.4" → "1.2.3.4": a dual-stack socket reports IPv4 peers as mapped. */
export const unmapHost = (host: string): string => {
  const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(host)
  return m ? m[1]! : host
}

export interface LiveConnection {
  readonly connection: QuicConnection
  /** Closes without waiting (transport shutdown). */
  readonly closeNow: (reason: string) => Promise<void>
}

/** What the connections of one transport share. */
export interface ConnectionContext {
  readonly fork: (effect: Effect.Effect<void>) => Fiber.RuntimeFiber<void>
  readonly live: Set<LiveConnection>
  /** A connection's id is `${idPrefix}${n}`, n counting from 1 (the string made when asked for). */
  readonly idPrefix: string
  readonly nextNumber: () => number
  /** The shared socket's address: every connection's local end. */
  readonly localHost: string
  readonly localPort: number
}

/**
 * A started js-quic connection, wrapped. The peer streams it already has are taken from its
 * stream map and the listener for new ones is added in the same synchronous step, so no
 * stream slips between the two. A class with getters: a transport may hold thousands of
 * idle connections, and each costs only its fields until something uses it.
 */
export class WrappedConnection implements QuicConnection, LiveConnection {
  private readonly number: number
  readonly remoteHost: string
  readonly remotePort: number
  /** Set by our own close; otherwise the reason is the error js-quic recorded (`connectionError`). */
  private reason: CloseReason | undefined
  private stopping: Promise<void> | undefined
  /** Streams from the peer and the close, handed to whoever serves the connection. */
  private readonly dispatch: Dispatch

  /**
   * @param client The dial's QUICClient (a forward connection), destroyed to close it; a
   *   reverse connection is stopped itself.
   * @param relay The relay whose circuit carries the connection (quicCircuit); undefined for a
   *   direct one.
   * @param peer A relayed connection's peer address as the relay observes it (`Circuit.peer`):
   *   its remoteHost/remotePort instead of the circuit's local end.
   */
  constructor(
    private readonly ctx: ConnectionContext,
    private readonly raw: QUICConnection,
    readonly direction: QuicConnection["direction"],
    readonly remoteNodeId: NodeId.NodeId,
    private readonly client: QUICClient | undefined,
    readonly relay: NodeId.NodeId | undefined = undefined,
    peer: { readonly host: string; readonly port: number } | undefined = undefined
  ) {
    this.number = ctx.nextNumber()
    this.dispatch = new Dispatch(ctx.fork)
    this.remoteHost = peer === undefined ? unmapHost(raw.remoteHost) : peer.host
    this.remotePort = peer === undefined ? raw.remotePort : peer.port
    for (const stream of existingStreams(raw)) this.onStream(stream)
    // The connection itself listens (`handleEvent`): no closures per connection.
    raw.addEventListener(quicEvents.EventQUICConnectionStream.name, this)
    ctx.live.add(this)
    // The connection's end: `closedP` resolves once quiche has closed it, whatever the cause.
    void raw.closedP.then(() => this.finish())
  }

  handleEvent(evt: Event): void {
    if (evt instanceof quicEvents.EventQUICConnectionStream) this.onStream(evt.detail)
  }

  /** Why the connection closed or is closing, if it is. */
  private closingReason(): CloseReason | undefined {
    if (this.reason !== undefined) return this.reason
    const error = connectionError(this.raw)
    return error === undefined ? undefined : closeReasonOf(error)
  }

  private onStream(stream: QUICStream) {
    if (stream.type !== "bidi" || stream.initiated !== "peer") return
    this.dispatch.offer(QuicStreamSocket.make(stream))
  }

  private finish() {
    this.raw.removeEventListener(quicEvents.EventQUICConnectionStream.name, this)
    this.ctx.live.delete(this)
    const reason: CloseReason = this.closingReason() ?? { _tag: "Error", detail: "connection closed" }
    this.dispatch.close(reason)
  }

  /** The port the packets come from: the remote port, or a relayed connection's local circuit end. */
  get pathPort(): number {
    return this.raw.remotePort
  }

  /** Read from the peer's leaf certificate at each call: a Polykey node's, or quicmesh's. */
  get speaks(): PeerWire {
    const leaf = this.raw.getRemoteCertsChain()[0]
    return leaf !== undefined && isPolykeyCertificate(leaf) ? "polykey" : "quicmesh"
  }

  /** Read from the peer's (verified) chain at each call. */
  get remoteRenewedFrom(): NodeId.NodeId | undefined {
    return renewedFrom(this.raw.getRemoteCertsChain())
  }

  get localHost(): string {
    return this.ctx.localHost
  }

  get localPort(): number {
    return this.ctx.localPort
  }

  get id(): string {
    return `${this.ctx.idPrefix}${this.number}`
  }

  get connection(): QuicConnection {
    return this
  }

  /** Closes without waiting (transport shutdown). */
  closeNow(text: string): Promise<void> {
    if (this.stopping === undefined) {
      const reason = new TextEncoder().encode(text)
      const stop = this.client
        ? this.client.destroy({ isApp: true, errorCode: 0, reason, force: true })
        : this.raw.stop({ isApp: true, errorCode: 0, reason, force: true })
      this.stopping = stop.catch(() => undefined)
    }
    return this.stopping
  }

  isClosing(): boolean {
    return this.reason !== undefined || this.stopping !== undefined || connectionError(this.raw) !== undefined
  }

  /**
   * Opens a stream once the peer's stream credit allows one. js-quic 2.0.9 must never be asked
   * for a stream past the peer's limit: it fails that stream without moving on to the next
   * stream id, and its next `newStream` reuses the id, which it treats as a broken invariant,
   * destroying the whole connection. So while the peer grants no credit (its MAX_STREAMS come
   * as it collects finished streams) the open waits, looking again every `CREDIT_POLL`, for up
   * to `CREDIT_WAIT`. The check and the `newStream` run in one synchronous step; the wait is
   * interruptible (a caller's timeout ends it).
   */
  get openStream(): Effect.Effect<Socket.Socket, ConnectionError, Scope.Scope> {
    return Effect.flatMap(Effect.zip(Effect.scope, Clock.currentTimeMillis), ([scope, now]) =>
      this.openIn(scope, now + Duration.toMillis(CREDIT_WAIT))
    )
  }

  /** Opens a stream whose close `scope` owns (only a stream opened adds a finalizer to it). */
  private openIn(scope: Scope.Scope, deadline: number): Effect.Effect<Socket.Socket, ConnectionError> {
    const attempt = Effect.uninterruptible(
      Effect.tap(this.streamIfCredit, (socket) =>
        socket === undefined ? Effect.void : Scope.addFinalizer(scope, socket.close())
      )
    )
    return Effect.flatMap(attempt, (socket) =>
      socket !== undefined
        ? Effect.succeed(socket)
        : Effect.flatMap(Clock.currentTimeMillis, (now) =>
            now >= deadline
              ? Effect.fail(
                  new ConnectionError({
                    connectionId: this.id,
                    reason: "stream",
                    detail: `the peer allows no more streams at once, and freed none within ${Duration.format(CREDIT_WAIT)}`
                  })
                )
              : Effect.zipRight(Effect.sleep(CREDIT_POLL), this.openIn(scope, deadline))
          )
    )
  }

  /** A new stream, or undefined while the peer grants no credit for one. */
  private get streamIfCredit(): Effect.Effect<
    QuicStreamSocket.QuicStreamSocket | undefined,
    ConnectionError
  > {
    return Effect.suspend(() => {
      if (this.isClosing() || this.raw.closed)
        return Effect.fail(
          new ConnectionError({ connectionId: this.id, reason: "closed", detail: "connection is closed" })
        )
      if (peerStreamsLeft(this.raw) === 0) return Effect.succeed(undefined)
      return Effect.try({
        try: () => QuicStreamSocket.make(this.raw.newStream("bidi")),
        catch: (e) =>
          new ConnectionError({
            connectionId: this.id,
            reason: e instanceof quicErrors.ErrorQUICConnectionNotRunning ? "closed" : "stream",
            detail: describe(e)
          })
      })
    })
  }

  handleStreams(
    onStream: (socket: Socket.Socket) => Effect.Effect<void>
  ): Effect.Effect<void, never, Scope.Scope> {
    return this.dispatch.handleStreams(onStream)
  }

  whenClosed(f: (reason: CloseReason) => Effect.Effect<void>): Effect.Effect<void> {
    return this.dispatch.whenClosed(f)
  }

  get acceptedStreams(): Stream.Stream<Socket.Socket> {
    return this.dispatch.acceptedStreams
  }

  // A method, not a per-connection closure.
  close(text?: string): Effect.Effect<void> {
    return this.closeFor(text ?? "", { _tag: "Local", ...(text !== undefined ? { detail: text } : {}) })
  }

  /**
   * Closes because what carries the connection failed (its relay circuit ended): the reason is
   * `Error` with `detail`, unless the connection had closed already. Completes once it is closed.
   */
  closeWithError(detail: string): Effect.Effect<void> {
    return this.closeFor(detail, { _tag: "Error", detail })
  }

  private closeFor(text: string, reason: CloseReason): Effect.Effect<void> {
    return Effect.suspend(() => {
      this.reason ??= this.closingReason() ?? reason
      return Effect.promise(() => this.closeNow(text))
    }).pipe(Effect.zipRight(this.closed), Effect.asVoid)
  }

  get closed(): Effect.Effect<CloseReason> {
    return this.dispatch.closed
  }
}

/**
 * Closes `connection` when the current scope closes. A finalizer of the scope's own, not
 * Effect.addFinalizer: the latter keeps the dialling fiber's FiberRefs. The close effect is
 * built when the scope closes, not held until then.
 */
export const closeWithScope = (connection: QuicConnection) =>
  Effect.flatMap(Effect.scope, (scope) =>
    Scope.addFinalizerExit(scope, () => connection.close("dial scope closed"))
  )
