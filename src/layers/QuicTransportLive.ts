/**
 * QuicTransportLive: `QuicTransport` over `@matrixai/quic`.
 *
 * One `QUICSocket` carries the `QUICServer` and every outgoing `QUICClient` (js-quic's
 * "injected socket"), so the source port of our dials is the port we listen on. Both sides
 * present the KeyRing's certificate chain and verify the peer's with
 * `KeyRing.verifyCertChain`; a dial succeeds only if the peer's NodeId is one we expect.
 *
 * js-quic is promise and event based. Its events are bridged here with listeners held by
 * scopes, its promises with `Effect.async` (interruption aborts the pending attempt), and
 * its errors become `DialError` / `ConnectionError` / `TransportError`.
 */

import { createHmac, randomFillSync, timingSafeEqual } from "node:crypto"
import { isIPv4, isIPv6 } from "node:net"
import type { Socket } from "@effect/platform"
import type Logger from "@matrixai/logger"
import type { QUICConnection, QUICStream, TLSVerifyCallback } from "@matrixai/quic"
import {
  QUICClient,
  QUICServer,
  QUICSocket,
  errors as quicErrors,
  events as quicEvents
} from "@matrixai/quic"
import {
  Cause,
  Deferred,
  Duration,
  Effect,
  Exit,
  type Fiber,
  FiberSet,
  Layer,
  Queue,
  Runtime,
  Scope,
  Stream
} from "effect"
import { Dispatch } from "../internal/connectionDispatch.js"
import * as QuicStreamSocket from "../internal/quicStreamSocket.js"
import { KeyRing, type KeyRingService, type TlsConfig } from "../services/KeyRing.js"
import * as NodeId from "../services/NodeId.js"
import {
  type CloseReason,
  ConnectionError,
  DialError,
  type DialOptions,
  type QuicConnection,
  QuicTransport,
  QuicTransportConfig,
  type QuicTransportOptions,
  type QuicTransportService,
  TransportError
} from "../services/QuicTransport.js"

// ---------------------------------------------------------------------------------------------
// js-quic plumbing

/** quiche's packet type of an Initial packet (`Type.Initial`). */
const QUICHE_TYPE_INITIAL = 0

/** `QUICServer.acceptConnection` (internal to js-quic): called for packets of unknown connections. */
type AcceptConnection = (
  remoteInfo: unknown,
  header: { readonly ty: number; readonly token?: Uint8Array | null },
  dcid: unknown,
  data: unknown
) => Promise<QUICConnection | undefined>

/** TLS alert "bad_certificate" as a QUIC crypto error (0x100 + 42). */
const CRYPTO_BAD_CERTIFICATE = 0x100 + 42

/** js-quic logs every state change at INFO; we keep it quiet. */
const silentLogger: Logger = (() => {
  const noop = () => {}
  const logger = { debug: noop, info: noop, warn: noop, error: noop, getChild: () => logger }
  return logger as unknown as Logger
})()

const toArrayBuffer = (bytes: Uint8Array): ArrayBuffer =>
  bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer

/** The server signs retry tokens and derives connection ids with an HMAC key of its own. */
const makeServerCrypto = () => {
  const key = toArrayBuffer(randomFillSync(new Uint8Array(32)))
  const hmac = (k: ArrayBuffer, data: ArrayBuffer) =>
    createHmac("sha256", Buffer.from(k)).update(Buffer.from(data)).digest()
  return {
    key,
    ops: {
      sign: async (k: ArrayBuffer, data: ArrayBuffer) => toArrayBuffer(hmac(k, data)),
      verify: async (k: ArrayBuffer, data: ArrayBuffer, sig: ArrayBuffer) => {
        const expected = hmac(k, data)
        const given = Buffer.from(sig)
        return expected.length === given.length && timingSafeEqual(expected, given)
      }
    }
  }
}

const clientCrypto = {
  ops: {
    randomBytes: async (data: ArrayBuffer) => {
      randomFillSync(new Uint8Array(data))
    }
  }
}

/** The events js-quic objects dispatch (`@matrixai/events` Evented). */
interface Evented {
  addEventListener(type: string, listener: (evt: never) => void): void
  removeEventListener(type: string, listener: (evt: never) => void): void
}

/** A listener that lives exactly as long as the current scope. */
const listen = <A>(target: Evented, type: string, listener: (evt: A) => void) =>
  Effect.acquireRelease(
    Effect.sync(() => target.addEventListener(type, listener)),
    () => Effect.sync(() => target.removeEventListener(type, listener))
  )

const describe = (e: unknown): string => {
  if (e instanceof Error) {
    const cause = (e as { cause?: unknown }).cause
    const own = e.message || e.constructor.name
    return cause instanceof Error ? `${own} (${describe(cause)})` : own
  }
  return String(e)
}

/** "::ffff:1.2.3.4" → "1.2.3.4": a dual-stack socket reports IPv4 peers as mapped. */
const unmapHost = (host: string): string => {
  const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(host)
  return m ? m[1]! : host
}

const textDecoder = new TextDecoder()

/** The reason a js-quic connection error stands for. */
const closeReasonOf = (error: unknown): CloseReason => {
  const data = (error as { data?: { reason?: Uint8Array; errorCode?: number; isApp?: boolean } }).data
  const reasonText = data?.reason && data.reason.byteLength > 0 ? textDecoder.decode(data.reason) : undefined
  const detail =
    reasonText ??
    (error instanceof Error && error.message !== "" ? error.message : (error as object).constructor.name)
  if (error instanceof quicErrors.ErrorQUICConnectionIdleTimeout) return { _tag: "IdleTimeout" }
  if (
    error instanceof quicErrors.ErrorQUICConnectionPeerTLS ||
    error instanceof quicErrors.ErrorQUICConnectionPeer
  )
    return { _tag: "Peer", detail }
  if (error instanceof quicErrors.ErrorQUICConnectionLocal) return { _tag: "Local", detail }
  return { _tag: "Error", detail: describe(error) }
}

/**
 * The error a js-quic connection closed with (or is closing with), if any: js-quic records each
 * error it dispatches in `errorLast` (protected in its typings) as it handles it, before it
 * closes the connection. Read instead of listening for the errors: a listener costs each
 * connection ~0.3 KiB (js-quic's wrapper closure, its records and the EventTarget's).
 */
const connectionError = (connection: QUICConnection): unknown =>
  (connection as unknown as { errorLast?: unknown }).errorLast ?? undefined

/** js-quic keeps the connection's streams in `streamMap` (not in its typings). */
const existingStreams = (connection: QUICConnection): ReadonlyArray<QUICStream> => {
  const map = (connection as unknown as { streamMap?: Map<number, QUICStream> }).streamMap
  return map ? [...map.values()] : []
}

const isValidHost = (host: string) => isIPv4(host) || isIPv6(host) || /^[a-zA-Z0-9.-]{1,253}$/.test(host)

// ---------------------------------------------------------------------------------------------
// Connections

interface LiveConnection {
  readonly connection: QuicConnection
  /** Closes without waiting (transport shutdown). */
  readonly closeNow: (reason: string) => Promise<void>
}

interface ConnectionContext {
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
class WrappedConnection implements QuicConnection, LiveConnection {
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
   */
  constructor(
    private readonly ctx: ConnectionContext,
    private readonly raw: QUICConnection,
    readonly direction: QuicConnection["direction"],
    readonly remoteNodeId: NodeId.NodeId,
    private readonly client: QUICClient | undefined
  ) {
    this.number = ctx.nextNumber()
    this.dispatch = new Dispatch(ctx.fork)
    this.remoteHost = unmapHost(raw.remoteHost)
    this.remotePort = raw.remotePort
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

  get openStream(): Effect.Effect<Socket.Socket, ConnectionError, Scope.Scope> {
    return Effect.acquireRelease(
      Effect.suspend(() => {
        if (this.isClosing() || this.raw.closed)
          return Effect.fail(
            new ConnectionError({ connectionId: this.id, reason: "closed", detail: "connection is closed" })
          )
        return Effect.try({
          try: () => this.raw.newStream("bidi"),
          catch: (e) =>
            new ConnectionError({
              connectionId: this.id,
              reason: e instanceof quicErrors.ErrorQUICConnectionNotRunning ? "closed" : "stream",
              detail: describe(e)
            })
        }).pipe(Effect.map((stream) => QuicStreamSocket.make(stream)))
      }),
      (socket) => socket.close()
    )
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
    return Effect.suspend(() => {
      this.reason ??= this.closingReason() ?? {
        _tag: "Local",
        ...(text !== undefined ? { detail: text } : {})
      }
      return Effect.promise(() => this.closeNow(text ?? ""))
    }).pipe(Effect.zipRight(this.closed), Effect.asVoid)
  }

  get closed(): Effect.Effect<CloseReason> {
    return this.dispatch.closed
  }
}

// A finalizer of the scope's own, not Effect.addFinalizer: the latter keeps the dialling
// fiber's FiberRefs. The close effect is built when the scope closes, not held until then.
const closeWithScope = (connection: QuicConnection) =>
  Effect.flatMap(Effect.scope, (scope) =>
    Scope.addFinalizerExit(scope, () => connection.close("dial scope closed"))
  )

/**
 * What a dial's certificate check found. js-quic keeps a connection's verify callback (its
 * config) as long as the connection: the callback holds this object, not the dial's closures,
 * and the NodeIds it expected are let go once the dial has settled.
 */
class DialCheck {
  expected: ReadonlyArray<NodeId.NodeId> | undefined
  verified: NodeId.NodeId | undefined
  rejection: { readonly reason: "tls" | "mismatch"; readonly detail: string } | undefined
  constructor(expected: ReadonlyArray<NodeId.NodeId>) {
    this.expected = expected
  }

  accept(exit: Exit.Exit<NodeId.NodeId, unknown>): boolean {
    if (Exit.isFailure(exit)) {
      const error = Cause.squash(exit.cause)
      this.rejection = { reason: "tls", detail: `peer certificate rejected: ${describe(error)}` }
      return false
    }
    const actual = exit.value
    const expected = this.expected ?? []
    if (!expected.some((e) => NodeId.equals(e, actual))) {
      this.rejection = {
        reason: "mismatch",
        detail: `expected NodeId ${expected.map(NodeId.encode).join(", ")}, peer proved ${NodeId.encode(actual)}`
      }
      return false
    }
    this.verified = actual
    return true
  }
}

/** The server's check: any valid chain. */
const acceptValid = { accept: Exit.isSuccess }

// ---------------------------------------------------------------------------------------------
// The transport

/** What a live transport holds right now (tests and diagnostics). */
export interface TransportStats {
  /** Wrapped connections not yet closed (forward and reverse). */
  readonly connections: number
  /** Connections in js-quic's socket map, including handshakes in progress. */
  readonly quicConnections: number
  /** Inbound connections started but not yet handshaken and verified. */
  readonly handshakesInProgress: number
  /** The most `handshakesInProgress` has ever been. */
  readonly handshakesHighWater: number
  /**
   * Inbound connection attempts dropped at the `maxInboundHandshakes` cap (counted per
   * packet: a client that retransmits its Initial counts again).
   */
  readonly handshakesRefused: number
  /** The cap on `handshakesInProgress` (the transport's `maxInboundHandshakes`). */
  readonly maxInboundHandshakes: number
}

/** js-quic objects under a transport, for tests that need to break them. */
export interface TransportInternals {
  readonly socket: QUICSocket
  readonly server: QUICServer
}

const statsOf = new WeakMap<QuicTransportService, () => TransportStats>()
const internalsOf = new WeakMap<QuicTransportService, TransportInternals>()

/** Counts for a transport built by this module; `undefined` for any other implementation. */
export const stats = (transport: QuicTransportService): TransportStats | undefined =>
  statsOf.get(transport)?.()

/**
 * The js-quic socket and server of a transport built by this module (tests only: stopping
 * them directly is what an unexpected failure looks like to the transport).
 */
export const unsafeInternals = (transport: QuicTransportService): TransportInternals | undefined =>
  internalsOf.get(transport)

// The callback returned is anonymous (no per-connection function name) and holds only these three.
const verifyCallback =
  (
    runtime: Runtime.Runtime<never>,
    keyRing: KeyRingService,
    check: { readonly accept: (result: Exit.Exit<NodeId.NodeId, unknown>) => boolean }
  ): TLSVerifyCallback =>
  async (certs) => {
    const exit = await Runtime.runPromiseExit(runtime)(keyRing.verifyCertChain(certs))
    return check.accept(exit) ? undefined : (CRYPTO_BAD_CERTIFICATE as never)
  }

/**
 * js-quic refuses a keep-alive interval that is not below the idle timeout (every connection
 * would fail); such a keep-alive could not keep anything alive anyway, so it is left out.
 */
const quicTimings = (options: QuicTransportOptions) => {
  const keepAliveIntervalTime = Duration.toMillis(options.keepAliveInterval)
  const maxIdleTimeout = Duration.toMillis(options.maxIdleTimeout)
  return keepAliveIntervalTime < maxIdleTimeout
    ? { keepAliveIntervalTime, maxIdleTimeout }
    : { maxIdleTimeout }
}

export const make: Effect.Effect<
  QuicTransportService,
  TransportError,
  KeyRing | QuicTransportConfig | Scope.Scope
> = Effect.gen(function* () {
  const options = yield* QuicTransportConfig
  const keyRing = yield* KeyRing
  const runtime = yield* Effect.runtime<never>()
  const failure = yield* Deferred.make<never, TransportError>()
  let stopping = false

  // The socket, first in, last out.
  const socket = new QUICSocket({ logger: silentLogger })
  yield* Effect.acquireRelease(
    Effect.tryPromise({
      try: () =>
        socket.start({
          host: options.host,
          port: options.port,
          reuseAddr: options.reuseAddr,
          ipv6Only: options.ipv6Only
        }),
      catch: (cause) =>
        new TransportError({
          reason: "bind",
          detail: `cannot bind ${options.host}:${options.port}: ${describe(cause)}`,
          cause
        })
    }),
    () => Effect.promise(() => socket.stop({ force: true }).catch(() => undefined))
  )

  // The server, sharing the socket.
  const timings = quicTimings(options)
  let serverTls = yield* keyRing.tlsConfig
  const server = new QUICServer({
    socket,
    crypto: makeServerCrypto(),
    config: {
      key: serverTls.keyPrivatePem,
      cert: serverTls.certChainPem,
      verifyPeer: true,
      verifyCallback: verifyCallback(runtime, keyRing, acceptValid),
      ...timings
    },
    // An inbound handshake gets as long as our dials do; one that stalls (its client gone
    // silent) would otherwise hold a `maxInboundHandshakes` slot until the idle timeout.
    minIdleTimeout: Duration.toMillis(options.connectTimeout),
    logger: silentLogger
  })

  // Key renewal: a new connection takes the KeyRing's current certificate; existing ones keep
  // theirs. Reading the KeyRing's TLS config is an in-memory read, done for every inbound
  // connection about to be made (below), so a renewal applies as soon as `renew` returns.
  const readTls = Runtime.runSyncExit(runtime)
  const useServerTls = (next: TlsConfig) => {
    if (next === serverTls) return
    serverTls = next
    server.updateConfig({ key: next.keyPrivatePem, cert: next.certChainPem })
  }
  const refreshServerTls = () => {
    const current = readTls(keyRing.tlsConfig)
    if (Exit.isSuccess(current)) useServerTls(current.value)
  }

  // Inbound handshakes. js-quic's server makes a connection for each Initial packet that
  // carries a retry token (`acceptConnection`). That step is wrapped to count the attempts in
  // progress, from then until `admit` (below) has verified the connection, and to drop new
  // ones at the cap before any state is made: the cheapest refusal there is (the client
  // retransmits, and gets in if a slot has freed by then). Packets that make no state (the
  // token-less Initial answered by a stateless retry, version negotiation) pass through;
  // other long-header packets for unknown connections are dropped, as js-quic would.
  const cap = Math.max(0, options.maxInboundHandshakes)
  let inProgress = 0
  let highWater = 0
  let refused = 0
  const releaseHandshake = () => {
    inProgress--
  }
  const serverInternal = server as unknown as { acceptConnection: AcceptConnection }
  const acceptConnection = serverInternal.acceptConnection.bind(server)
  serverInternal.acceptConnection = (remoteInfo, header, dcid, data) => {
    if (header.ty !== QUICHE_TYPE_INITIAL) return Promise.resolve(undefined)
    if (header.token === undefined || header.token === null || header.token.byteLength === 0)
      return acceptConnection(remoteInfo, header, dcid, data)
    if (inProgress >= cap) {
      refused++
      return Promise.resolve(undefined)
    }
    inProgress++
    if (inProgress > highWater) highWater = inProgress
    refreshServerTls()
    return acceptConnection(remoteInfo, header, dcid, data).then(
      (connection) => {
        // No connection (a bad token): nothing to admit. Otherwise `admit` releases the slot.
        if (connection === undefined) releaseHandshake()
        return connection
      },
      (error: unknown) => {
        releaseHandshake()
        throw error
      }
    )
  }

  yield* Effect.acquireRelease(
    Effect.tryPromise({
      try: () => server.start(),
      catch: (cause) => new TransportError({ reason: "server", detail: describe(cause), cause })
    }),
    () => Effect.promise(() => server.stop({ isApp: true, force: true }).catch(() => undefined))
  )

  // An unexpected stop of the socket or the server fails `failure`.
  const unexpected = (reason: "socket" | "server", detail: string) => (evt: { detail?: unknown }) => {
    if (stopping) return
    Deferred.unsafeDone(
      failure,
      Exit.fail(
        new TransportError({
          // The server reports its socket stopping (before the socket's own event arrives).
          reason: evt.detail instanceof quicErrors.ErrorQUICServerSocketNotRunning ? "socket" : reason,
          detail: evt.detail === undefined ? detail : `${detail}: ${describe(evt.detail)}`,
          cause: evt.detail
        })
      )
    )
  }
  yield* listen(
    socket,
    quicEvents.EventQUICSocketStopped.name,
    unexpected("socket", "the UDP socket stopped")
  )
  yield* listen(socket, quicEvents.EventQUICSocketError.name, unexpected("socket", "socket error"))
  yield* listen(server, quicEvents.EventQUICServerError.name, unexpected("server", "server error"))
  yield* listen(
    server,
    quicEvents.EventQUICServerStopped.name,
    unexpected("server", "the QUIC server stopped")
  )

  // Connections: tracked so that the transport closes them all when it stops.
  const fibers = yield* FiberSet.make<unknown, unknown>()
  let counter = 0
  const idPrefix = `${socket.port}-`
  // Fibers for connection events (a peer's stream, a close) start from the transport's runtime:
  // one captured here, not one per connection.
  const ctx: ConnectionContext = {
    fork: Runtime.runFork(yield* Effect.runtime<never>()),
    live: new Set(),
    idPrefix,
    nextNumber: () => ++counter,
    localHost: socket.host,
    localPort: socket.port
  }

  // Inbound: wrap at once (streams must not be missed), then authenticate and offer.
  const incoming = yield* Queue.unbounded<QuicConnection>()
  const handshaken = yield* Queue.unbounded<QUICConnection>()
  yield* listen(server, quicEvents.EventQUICServerConnection.name, (evt: { detail: QUICConnection }) => {
    Queue.unsafeOffer(handshaken, evt.detail)
  })
  const admit = (raw: QUICConnection) =>
    keyRing.verifyCertChain(raw.getRemoteCertsChain()).pipe(
      Effect.matchEffect({
        onFailure: () => Effect.promise(() => raw.stop({ isApp: false, errorCode: 1, force: true })),
        onSuccess: (remoteNodeId) =>
          Effect.sync(() => new WrappedConnection(ctx, raw, "reverse", remoteNodeId, undefined)).pipe(
            // A dialler that rejects our certificate closes right after the handshake.
            Effect.flatMap((connection) =>
              connection.isClosing() ? Effect.void : Queue.offer(incoming, connection)
            )
          )
      }),
      Effect.ensuring(Effect.sync(releaseHandshake))
    )
  yield* Queue.take(handshaken).pipe(Effect.flatMap(admit), Effect.forever, FiberSet.run(fibers))

  // Renewals also reach the server between inbound connections (a KeyRing whose reads are
  // not synchronous is covered by this alone).
  yield* keyRing.changes.pipe(
    Stream.runForEach((next) => Effect.sync(() => useServerTls(next))),
    FiberSet.run(fibers)
  )

  // Shutdown, in this order: stop admitting, close every connection, then (finalizers above)
  // the server and the socket.
  yield* Effect.addFinalizer(() =>
    Effect.gen(function* () {
      stopping = true
      yield* Queue.shutdown(incoming)
      yield* Queue.shutdown(handshaken)
      const all = [...ctx.live]
      yield* Effect.promise(() => Promise.all(all.map((c) => c.closeNow("transport stopping"))))
      yield* Effect.forEach(all, (c) => c.connection.closed, { concurrency: "unbounded", discard: true })
      yield* FiberSet.clear(fibers)
    })
  )

  const dial = (dialOptions: DialOptions): Effect.Effect<QuicConnection, DialError, Scope.Scope> => {
    const { host, port, expectedNodeIds } = dialOptions
    const fail = (reason: DialError["reason"], detail: string) =>
      new DialError({ host, port, reason, detail })
    if (!Number.isInteger(port) || port < 1 || port > 65535 || !isValidHost(host))
      return Effect.fail(fail("invalid-address", `not a valid address: ${host}:${port}`))
    if (expectedNodeIds.length === 0) return Effect.fail(fail("mismatch", "no expected NodeId given"))
    const timeout =
      dialOptions.timeout === undefined ? options.connectTimeout : Duration.decode(dialOptions.timeout)
    const timeoutMs = Duration.toMillis(timeout)

    const attempt = (current: TlsConfig) => {
      const check = new DialCheck(expectedNodeIds)
      return Effect.async<QUICClient, DialError>((resume) => {
        const controller = new AbortController()
        const slow = dialOptions.whenSlow
        const slowTimer =
          slow === undefined
            ? undefined
            : setTimeout(slow.run, Duration.toMillis(Duration.decode(slow.after)))
        slowTimer?.unref()
        const pending = QUICClient.createQUICClient(
          {
            host,
            port,
            socket,
            crypto: clientCrypto,
            config: {
              key: current.keyPrivatePem,
              cert: current.certChainPem,
              verifyPeer: true,
              verifyCallback: verifyCallback(runtime, keyRing, check),
              ...timings
            },
            logger: silentLogger
          },
          { signal: controller.signal, timer: timeoutMs }
        )
        let abandoned = false
        const settled = pending.then(
          (client) => {
            clearTimeout(slowTimer)
            check.expected = undefined
            if (abandoned) return client.destroy({ force: true }).catch(() => undefined)
            resume(Effect.succeed(client))
          },
          (error: unknown) => {
            clearTimeout(slowTimer)
            check.expected = undefined
            if (abandoned) return
            const rejection = check.rejection
            resume(Effect.fail(rejection ? fail(rejection.reason, rejection.detail) : classify(error)))
          }
        )
        return Effect.promise(() => {
          abandoned = true
          clearTimeout(slowTimer)
          controller.abort(new Error("dial interrupted"))
          return settled
        })
      }).pipe(Effect.map((client) => ({ client, remoteNodeId: check.verified! })))
    }

    const classify = (error: unknown): DialError => {
      if (
        error instanceof quicErrors.ErrorQUICClientCreateTimeout ||
        error instanceof quicErrors.ErrorQUICConnectionStartTimeout
      )
        return fail("timeout", `no connection within ${Duration.format(timeout)}`)
      if (stopping || error instanceof quicErrors.ErrorQUICServerSocketNotRunning)
        return fail("stopped", "the transport is stopping")
      if (
        error instanceof quicErrors.ErrorQUICHostInvalid ||
        error instanceof quicErrors.ErrorQUICClientInvalidHost
      )
        return fail("invalid-address", describe(error))
      if (error instanceof quicErrors.ErrorQUICClientInvalidArgument)
        return fail("unreachable", describe(error))
      if (error instanceof quicErrors.ErrorQUICConnectionIdleTimeout) return fail("timeout", "no answer")
      if (
        error instanceof quicErrors.ErrorQUICConnectionLocalTLS ||
        error instanceof quicErrors.ErrorQUICConnectionPeerTLS
      )
        return fail("tls", describe(error))
      if (error instanceof quicErrors.ErrorQUICConnectionPeer)
        return fail("unreachable", `peer refused: ${describe(error)}`)
      return fail("unreachable", describe(error))
    }

    // The attempt itself is interruptible (the caller); once it has produced a connection,
    // the connection is registered and tied to the caller's scope atomically. The timeout is
    // js-quic's own timer: it aborts the attempt like an interruption does, without a race
    // fiber on the hot path.
    return Effect.uninterruptibleMask((restore) =>
      restore(
        stopping
          ? Effect.fail(fail("stopped", "the transport is stopping"))
          : Effect.flatMap(keyRing.tlsConfig, attempt)
      ).pipe(
        Effect.flatMap(({ client, remoteNodeId }) =>
          Effect.sync(() => new WrappedConnection(ctx, client.connection, "forward", remoteNodeId, client))
        ),
        Effect.tap(closeWithScope)
      )
    )
  }

  const sendDatagram = (host: string, port: number, data: Uint8Array) =>
    Effect.tryPromise({
      try: () => socket.send(data, port, host),
      catch: (cause) =>
        new TransportError({
          reason: "send",
          detail: `datagram to ${host}:${port}: ${describe(cause)}`,
          cause
        })
    }).pipe(Effect.asVoid)

  const service: QuicTransportService = {
    host: socket.host,
    port: socket.port,
    dial,
    incoming: Stream.fromQueue(incoming),
    sendDatagram,
    failure: Deferred.await(failure)
  }
  statsOf.set(service, () => ({
    connections: ctx.live.size,
    quicConnections: (socket as unknown as { connectionMap: { size: number } }).connectionMap.size,
    handshakesInProgress: inProgress,
    handshakesHighWater: highWater,
    handshakesRefused: refused,
    maxInboundHandshakes: cap
  }))
  internalsOf.set(service, { socket, server })
  return service
})

/** The live transport: binds on build, closes every connection, the server and the socket on release. */
export const layer: Layer.Layer<QuicTransport, TransportError, KeyRing | QuicTransportConfig> = Layer.scoped(
  QuicTransport,
  make
)
