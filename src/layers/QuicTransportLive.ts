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
 * its errors become `DialError` / `ConnectionError` / `TransportError`. The machinery lives in
 * `src/internal/`: the connection (`quicConnection`), dialling (`quicDial`), certificates and
 * crypto (`quicTls`), the inbound handshake cap and its refusals (`quicHandshakeGate`,
 * `quicRefusal`), connections over relayed circuits and a relay's forwarding of them
 * (`quicCircuit`, `circuitShim`, `circuitFrames`, `circuitDatagrams`), the socket's receive buffer (`udpReceiveBuffer`), error mapping
 * (`quicErrors`) and every use of js-quic's private members (`quicPatches`).
 */

import type { QUICConnection } from "@matrixai/quic"
import { QUICServer, QUICSocket, errors as quicErrors, events as quicEvents } from "@matrixai/quic"
import { Deferred, Duration, Effect, Exit, FiberSet, Layer, Queue, Runtime, type Scope, Stream } from "effect"
import { CircuitDatagrams } from "../internal/circuitDatagrams.js"
import { Circuits } from "../internal/quicCircuit.js"
import { type ConnectionContext, WrappedConnection } from "../internal/quicConnection.js"
import { makeDial } from "../internal/quicDial.js"
import { describe } from "../internal/quicErrors.js"
import { inboundGate } from "../internal/quicGate.js"
import { installHandshakeGate } from "../internal/quicHandshakeGate.js"
import {
  dropSendsWhenStopped,
  quicConnectionCount,
  silentLogger,
  udpSocketOf
} from "../internal/quicPatches.js"
import { makeServerCrypto, verifyCallback } from "../internal/quicTls.js"
import { shortfallWarning, sizeReceiveBuffer } from "../internal/udpReceiveBuffer.js"
import { KeyRing, type TlsConfig } from "../services/KeyRing.js"
import {
  type QuicConnection,
  QuicTransport,
  QuicTransportConfig,
  type QuicTransportOptions,
  type QuicTransportService,
  TransportError
} from "../services/QuicTransport.js"

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

/** js-quic objects under a transport, for tests that need to break them. */
export interface TransportInternals {
  readonly socket: QUICSocket
  readonly server: QUICServer
  /** The transport's relayed circuits (`shims`: how many are open). */
  readonly circuits: Circuits
  /** Its circuit datagrams: the circuits it forwards as a relay, its ends, what it dropped. */
  readonly datagrams: CircuitDatagrams
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

/**
 * The transport and, beside it, its js-quic socket and server. For tests only: stopping those
 * directly is what an unexpected failure looks like to the transport. Use `make` otherwise.
 */
export const makeWithInternals: Effect.Effect<
  { readonly transport: QuicTransportService; readonly internals: TransportInternals },
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
  dropSendsWhenStopped(socket)
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
  // Its receive buffer, sized for bursts of inbound handshakes.
  const receiveBuffer = sizeReceiveBuffer(udpSocketOf(socket), options.receiveBufferSize)
  const shortfall = shortfallWarning(receiveBuffer)
  if (shortfall !== undefined) yield* Effect.logWarning(shortfall)

  // The server, sharing the socket.
  const timings = quicTimings(options)
  let serverTls = yield* keyRing.tlsConfig
  // A ConnectionGater in context refuses peers in the TLS check and at `admit` (quicGate).
  const gated = yield* inboundGate
  const server = new QUICServer({
    socket,
    crypto: makeServerCrypto(),
    config: {
      key: serverTls.keyPrivatePem,
      cert: serverTls.certChainPem,
      verifyPeer: true,
      verifyCallback: verifyCallback(runtime, keyRing, gated.check),
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

  // Inbound handshakes: at most `maxInboundHandshakes` at once, each holding its slot from
  // the moment js-quic makes the connection until `admit` (below) has verified it.
  const gate = installHandshakeGate(server, socket, options.maxInboundHandshakes, refreshServerTls)

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

  const isStopping = () => stopping
  const dial = makeDial({
    socket,
    keyRing,
    runtime,
    connections: ctx,
    connectTimeout: options.connectTimeout,
    timings,
    isStopping
  })
  // Circuit datagrams share the socket: a listener beside js-quic's takes them (circuitDatagrams).
  const udp = udpSocketOf(socket)
  const datagrams = new CircuitDatagrams(udp)
  yield* Effect.acquireRelease(
    Effect.sync(() => udp.on("message", datagrams.onMessage)),
    () => Effect.sync(() => udp.off("message", datagrams.onMessage))
  )
  const circuits = new Circuits({
    socket,
    dial,
    connectTimeout: options.connectTimeout,
    isStopping,
    datagrams
  })
  const forwardDatagrams: NonNullable<QuicTransportService["forwardDatagrams"]> = (ends, forwardOptions) =>
    Effect.map(
      Effect.acquireRelease(
        Effect.sync(() => datagrams.forward(ends.a, ends.b, forwardOptions)),
        (forward) => Effect.sync(forward.stop)
      ),
      (forward) => forward.forwarding
    )

  // Inbound: wrap at once (streams must not be missed), then authenticate and offer.
  const incoming = yield* Queue.unbounded<QuicConnection>()
  const handshaken = yield* Queue.unbounded<QUICConnection>()
  yield* listen(server, quicEvents.EventQUICServerConnection.name, (evt: { detail: QUICConnection }) => {
    Queue.unsafeOffer(handshaken, evt.detail)
  })
  const admit = (raw: QUICConnection) =>
    keyRing.verifyCertChain(raw.getRemoteCertsChain()).pipe(
      Effect.flatMap((remoteNodeId) => gated.admit(remoteNodeId, raw.remoteHost)),
      Effect.matchEffect({
        onFailure: (e) => Effect.promise(() => raw.stop(gated.stopOptions(e))),
        onSuccess: (remoteNodeId) =>
          Effect.sync(() => {
            const via = circuits.circuitOf(raw)
            return new WrappedConnection(ctx, raw, "reverse", remoteNodeId, undefined, via?.relay, via?.peer)
          }).pipe(
            // A dialler that rejects our certificate closes right after the handshake. A relayed
            // connection goes to its circuit, which carries only one.
            Effect.flatMap((connection) =>
              Effect.suspend(() => {
                if (connection.isClosing()) return Effect.void
                const refused = circuits.attach(connection)
                return refused === undefined ? Queue.offer(incoming, connection) : connection.close(refused)
              })
            )
          )
      }),
      Effect.ensuring(Effect.sync(gate.release))
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
    // (Not `dial` itself, whose second parameter is the circuits'.)
    dial: (dialOptions) => dial(dialOptions),
    incoming: Stream.fromQueue(incoming),
    dialCircuit: circuits.dialCircuit,
    acceptCircuit: circuits.acceptCircuit,
    forwardDatagrams,
    sendDatagram,
    failure: Deferred.await(failure),
    stats: Effect.sync(() => ({
      connections: ctx.live.size,
      quicConnections: quicConnectionCount(socket),
      handshakesInProgress: gate.inProgress,
      handshakesHighWater: gate.highWater,
      handshakesRefused: gate.refused,
      maxInboundHandshakes: gate.cap,
      receiveBufferRequested: receiveBuffer.requested,
      receiveBufferGranted: receiveBuffer.granted
    }))
  }
  return { transport: service, internals: { socket, server, circuits, datagrams } }
})

export const make: Effect.Effect<
  QuicTransportService,
  TransportError,
  KeyRing | QuicTransportConfig | Scope.Scope
> = Effect.map(makeWithInternals, (built) => built.transport)

/** The live transport: binds on build, closes every connection, the server and the socket on release. */
export const layer: Layer.Layer<QuicTransport, TransportError, KeyRing | QuicTransportConfig> = Layer.scoped(
  QuicTransport,
  make
)
