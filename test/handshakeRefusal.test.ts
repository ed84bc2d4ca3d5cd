/**
 * The transport's answers to a handshake storm, over real QUIC on loopback: an inbound
 * handshake over `maxInboundHandshakes` gets an explicit refusal (CONNECTION_REFUSED, reason
 * "busy: …") that a raw js-quic client reports and quicmesh's dialer retries until a slot
 * frees; the UDP socket's receive buffer is sized as asked, and a shortfall is logged.
 */
import { describe, expect, it } from "@effect/vitest"
import { QUICClient, QUICSocket, errors as quicErrors } from "@matrixai/quic"
import { Deferred, Effect, Either, Exit, Fiber, Layer, Logger, Schedule, Scope, Stream } from "effect"
import { busyReason } from "../src/internal/quicHandshakeGate.js"
import { silentLogger } from "../src/internal/quicPatches.js"
import { clientCrypto } from "../src/internal/quicTls.js"
import * as KeyRingTest from "../src/layers/KeyRingTest.js"
import * as QuicTransportLive from "../src/layers/QuicTransportLive.js"
import { KeyRing } from "../src/services/KeyRing.js"
import type * as NodeId from "../src/services/NodeId.js"
import { QuicTransportConfig, type QuicTransportOptions } from "../src/services/QuicTransport.js"

/**
 * A transport on 127.0.0.1 with `seed`'s KeyRing. `holdVerification`, when given, is awaited
 * by every certificate check until it completes: a handshake in progress holds its slot.
 */
const makeNode = (
  seed: string,
  options: Partial<QuicTransportOptions> = {},
  holdVerification?: Deferred.Deferred<void>
) =>
  Effect.gen(function* () {
    const scope = yield* Scope.make()
    yield* Effect.addFinalizer(() => Scope.close(scope, Exit.void))
    const keyRingLayer =
      holdVerification === undefined
        ? KeyRingTest.layer(seed)
        : Layer.effect(
            KeyRing,
            Effect.map(KeyRing, (keyRing) => ({
              ...keyRing,
              verifyCertChain: (certs: ReadonlyArray<Uint8Array>) =>
                Effect.zipRight(Deferred.await(holdVerification), keyRing.verifyCertChain(certs))
            }))
          ).pipe(Layer.provide(KeyRingTest.layer(seed)))
    const context = yield* Layer.buildWithScope(
      Layer.merge(keyRingLayer, QuicTransportConfig.layer({ host: "127.0.0.1", ...options })),
      scope
    )
    const transport = yield* QuicTransportLive.make.pipe(Effect.provide(context), Scope.extend(scope))
    const nodeId: NodeId.NodeId = yield* Effect.flatMap(KeyRing, (k) => k.nodeId).pipe(
      Effect.provide(context)
    )
    const stats = transport.stats ?? Effect.die("the live transport keeps stats")
    return { transport, nodeId, stats, context }
  })

/** A raw js-quic client's handshake with `port`: the error it fails with (or "connected"). */
const rawHandshake = (port: number, seed: string) =>
  Effect.gen(function* () {
    const tls = yield* Effect.flatMap(KeyRing, (k) => k.tlsConfig).pipe(
      Effect.provide(KeyRingTest.layer(seed))
    )
    const socket = new QUICSocket({ logger: silentLogger })
    yield* Effect.acquireRelease(
      Effect.promise(() => socket.start({ host: "127.0.0.1" })),
      () => Effect.promise(() => socket.stop({ force: true }).catch(() => undefined))
    )
    return yield* Effect.promise(() =>
      QUICClient.createQUICClient(
        {
          host: "127.0.0.1",
          port,
          socket,
          crypto: clientCrypto,
          config: { key: tls.keyPrivatePem, cert: tls.certChainPem, verifyPeer: false },
          logger: silentLogger
        },
        { timer: 20_000 }
      ).then(
        (client) => client.destroy({ force: true }).then(() => "connected" as unknown),
        (error: unknown) => error
      )
    )
  })

describe("inbound handshakes over the cap", () => {
  it.scopedLive("are refused explicitly: the client sees CONNECTION_REFUSED with the reason busy", () =>
    Effect.gen(function* () {
      const server = yield* makeNode("hr-server", { maxInboundHandshakes: 0 })
      const error = yield* rawHandshake(server.transport.port, "hr-raw")
      expect(error).toBeInstanceOf(quicErrors.ErrorQUICConnectionPeer)
      const data = (error as { data: { errorCode: number; isApp: boolean; reason: Uint8Array } }).data
      expect(data.errorCode).toBe(0x2) // CONNECTION_REFUSED
      expect(data.isApp).toBe(false)
      expect(new TextDecoder().decode(data.reason)).toBe(busyReason)
      // One Initial refused: the client stopped at the refusal instead of retransmitting.
      expect(yield* server.stats).toMatchObject({
        handshakesRefused: 1,
        handshakesInProgress: 0,
        quicConnections: 0
      })
    })
  )

  it.scopedLive("a quicmesh dial that is only refused fails with reason refused, naming busy", () =>
    Effect.gen(function* () {
      const server = yield* makeNode("hr-full", { maxInboundHandshakes: 0 })
      const client = yield* makeNode("hr-client")
      const error = yield* client.transport
        .dial({
          host: "127.0.0.1",
          port: server.transport.port,
          expectedNodeIds: [server.nodeId],
          timeout: "1 second"
        })
        .pipe(Effect.flip)
      expect(error.reason).toBe("refused")
      expect(error.message).toContain(`peer refused the connection: ${busyReason}`)
      // Retried within its timeout: refused more than once.
      expect((yield* server.stats).handshakesRefused).toBeGreaterThan(1)
    })
  )

  it.scopedLive("a quicmesh dial refused at the cap is retried and gets in once a slot frees", () =>
    Effect.gen(function* () {
      const hold = yield* Deferred.make<void>()
      const server = yield* makeNode("hr-cap1", { maxInboundHandshakes: 1 }, hold)
      yield* Stream.runDrain(server.transport.incoming).pipe(Effect.forkScoped)
      const first = yield* makeNode("hr-first")
      const second = yield* makeNode("hr-second")
      const dial = (node: typeof first) =>
        node.transport
          .dial({
            host: "127.0.0.1",
            port: server.transport.port,
            expectedNodeIds: [server.nodeId],
            timeout: "30 seconds"
          })
          .pipe(
            Effect.map((c) => c.remoteNodeId),
            Effect.either,
            Effect.fork
          )
      // The first handshake takes the only slot and holds it (its certificate check waits).
      const firstDial = yield* dial(first)
      yield* server.stats.pipe(
        Effect.repeat({ until: (s) => s.handshakesInProgress === 1, schedule: Schedule.spaced("5 millis") })
      )
      // The second is refused, and asks again (and is refused again) while the slot is held.
      const secondDial = yield* dial(second)
      yield* server.stats.pipe(
        Effect.repeat({ until: (s) => s.handshakesRefused >= 2, schedule: Schedule.spaced("5 millis") }),
        Effect.timeoutFail({
          duration: "20 seconds",
          onTimeout: () => new Error("the refused dial did not ask again")
        })
      )
      expect(secondDial.unsafePoll()).toBeNull()
      // The slot frees: both get in.
      yield* Deferred.succeed(hold, undefined)
      const [a, b] = yield* Effect.all([Fiber.join(firstDial), Fiber.join(secondDial)])
      expect(Either.isRight(a) && Either.isRight(b)).toBe(true)
      expect(yield* server.stats).toMatchObject({ handshakesHighWater: 1 })
    })
  )
})

describe("the UDP receive buffer", () => {
  it.scopedLive("is asked for as configured, and what the kernel grants is in the stats", () =>
    Effect.gen(function* () {
      const node = yield* makeNode("hr-buffer", { receiveBufferSize: 256 * 1024 })
      const stats = yield* node.stats
      expect(stats.receiveBufferRequested).toBe(256 * 1024)
      // Linux reports twice the granted size; 256 KiB is within any rmem_max used for these tests.
      expect(stats.receiveBufferGranted).toBe(process.platform === "linux" ? 512 * 1024 : 256 * 1024)
    })
  )

  it.scopedLive("a grant below the request logs one warning naming net.core.rmem_max", () =>
    Effect.gen(function* () {
      const warnings: Array<string> = []
      const capture = Logger.make(({ logLevel, message }) => {
        if (logLevel._tag === "Warning") warnings.push(String(message))
      })
      // 1 GiB: far above any rmem_max.
      const node = yield* makeNode("hr-short", { receiveBufferSize: 1024 ** 3 }).pipe(
        Effect.provide(Logger.replace(Logger.defaultLogger, capture))
      )
      const stats = yield* node.stats
      expect(stats.receiveBufferGranted).toBeGreaterThan(0)
      expect(stats.receiveBufferGranted).toBeLessThan(1024 ** 3)
      expect(warnings).toHaveLength(1)
      expect(warnings[0]).toContain("net.core.rmem_max")
      expect(warnings[0]).toContain(`granted ${stats.receiveBufferGranted}`)
    })
  )
})
