/**
 * Transport bench: a cold dial (QUIC + TLS handshake, NodeId verified) through
 * `QuicTransport` against the same dial made with raw `@matrixai/quic` — same certificates,
 * same verification (KeyRing.verifyCertChain), same injected-socket pattern, same server.
 *
 * The two kinds run in interleaved pairs (which one goes first alternates), so that load
 * from other processes hits both alike; the reported ratio is the median of the per-pair
 * ratios, which a burst of noise during a few pairs does not move. Connections close in the
 * background (a closed QUIC connection drains for ~3 PTO before it is gone; waiting for that
 * would only make the run longer) after a 2 ms pause that lets the close's immediate work
 * finish before the next timed dial; every close is awaited before the run ends.
 *
 * `BENCH_TRANSPORT_PAIRS` overrides the number of pairs.
 */

import { createHmac, randomFillSync } from "node:crypto"
import { QUICClient, QUICServer, QUICSocket } from "@matrixai/quic"
import { Effect, Exit, Fiber, Layer, Scope, Stream } from "effect"
import * as KeyRingTest from "../src/layers/KeyRingTest.js"
import * as QuicTransportLive from "../src/layers/QuicTransportLive.js"
import { KeyRing } from "../src/services/KeyRing.js"
import * as NodeId from "../src/services/NodeId.js"
import { QuicTransport, QuicTransportConfig } from "../src/services/QuicTransport.js"
import { type BenchResult, type BenchSuite, median, quantile } from "./types.js"

const PAIRS = Number(process.env.BENCH_TRANSPORT_PAIRS ?? 300)
const WARMUP = 20
const TARGET = 1.1

const node = (seed: string) =>
  QuicTransportLive.layer.pipe(
    Layer.provideMerge(KeyRingTest.layer(seed)),
    Layer.provide(QuicTransportConfig.layer({ host: "::" }))
  )

/** Lets the immediate part of a close (CONNECTION_CLOSE out, the peer's handling) happen untimed. */
const settle = () => new Promise<void>((resolve) => setTimeout(resolve, 2))

const quiet = (() => {
  const noop = () => {}
  const logger = { debug: noop, info: noop, warn: noop, error: noop, getChild: () => logger }
  return logger as never
})()

const program = Effect.gen(function* () {
  const scope = yield* Scope.make()
  const a = yield* Layer.buildWithScope(node("bench-transport-a"), scope)
  const b = yield* Layer.buildWithScope(node("bench-transport-b"), scope)
  const transportA = a.unsafeMap.get(QuicTransport.key) as QuicTransport["Type"]
  const keyRingA = a.unsafeMap.get(KeyRing.key) as KeyRing["Type"]
  const transportB = b.unsafeMap.get(QuicTransport.key) as QuicTransport["Type"]
  const keyRingB = b.unsafeMap.get(KeyRing.key) as KeyRing["Type"]
  const nodeIdB = yield* keyRingB.nodeId
  const tlsA = yield* keyRingA.tlsConfig
  // B's side just accepts (the transport admits and queues its inbound connections).
  yield* Stream.runDrain(transportB.incoming).pipe(Effect.forkIn(scope))

  // The raw baseline: its own socket shared with a server, A's certificate, same checks.
  const rawSocket = new QUICSocket({ logger: quiet })
  yield* Effect.promise(() => rawSocket.start({ host: "::", port: 0 }))
  const hmacKey = randomFillSync(new Uint8Array(32)).buffer
  const sign = async (k: ArrayBuffer, d: ArrayBuffer) => {
    const h = createHmac("sha256", Buffer.from(k)).update(Buffer.from(d)).digest()
    return h.buffer.slice(h.byteOffset, h.byteOffset + h.byteLength) as ArrayBuffer
  }
  const rawServer = new QUICServer({
    socket: rawSocket,
    crypto: {
      key: hmacKey,
      ops: { sign, verify: async (k, d, s) => Buffer.from(await sign(k, d)).equals(Buffer.from(s)) }
    },
    config: { key: tlsA.keyPrivatePem, cert: tlsA.certChainPem, verifyPeer: true },
    logger: quiet
  })
  yield* Effect.promise(() => rawServer.start())
  const rawVerify = async (certs: Array<Uint8Array>) => {
    const exit = await Effect.runPromiseExit(keyRingA.verifyCertChain(certs))
    return Exit.isSuccess(exit) && NodeId.equals(exit.value, nodeIdB) ? undefined : (298 as never)
  }
  const rawClosing: Array<Promise<unknown>> = []
  const rawDial = async () => {
    const t0 = performance.now()
    const client = await QUICClient.createQUICClient({
      host: "127.0.0.1",
      port: transportB.port,
      socket: rawSocket,
      crypto: {
        ops: { randomBytes: async (data: ArrayBuffer) => void randomFillSync(new Uint8Array(data)) }
      },
      config: {
        key: tlsA.keyPrivatePem,
        cert: tlsA.certChainPem,
        verifyPeer: true,
        verifyCallback: rawVerify,
        keepAliveIntervalTime: 10_000,
        maxIdleTimeout: 30_000
      },
      logger: quiet
    })
    const elapsed = performance.now() - t0
    rawClosing.push(client.destroy({ force: true }))
    await settle()
    return elapsed
  }

  const transportClosing: Array<Fiber.RuntimeFiber<void>> = []
  const transportDial = Effect.gen(function* () {
    const dialScope = yield* Scope.make()
    const t0 = performance.now()
    yield* transportA
      .dial({ host: "127.0.0.1", port: transportB.port, expectedNodeIds: [nodeIdB] })
      .pipe(Scope.extend(dialScope), Effect.orDie)
    const elapsed = performance.now() - t0
    transportClosing.push(yield* Scope.close(dialScope, Exit.void).pipe(Effect.fork))
    yield* Effect.promise(settle)
    return elapsed
  })

  const viaTransport: number[] = []
  const raw: number[] = []
  const ratios: number[] = []
  for (let i = 0; i < WARMUP + PAIRS; i++) {
    // Alternate which goes first so neither always follows the other.
    let t: number
    let r: number
    if (i % 2 === 0) {
      t = yield* transportDial
      r = yield* Effect.promise(rawDial)
    } else {
      r = yield* Effect.promise(rawDial)
      t = yield* transportDial
    }
    if (i >= WARMUP) {
      viaTransport.push(t)
      raw.push(r)
      ratios.push(t / r)
    }
  }

  yield* Fiber.joinAll(transportClosing)
  yield* Effect.promise(() => Promise.all(rawClosing))
  yield* Effect.promise(() => rawServer.stop({ force: true }))
  yield* Effect.promise(() => rawSocket.stop({ force: true }))
  yield* Scope.close(scope, Exit.void)

  const medT = median(viaTransport)
  const medR = median(raw)
  const ratio = median(ratios)
  const results: BenchResult[] = [
    {
      suite: "transport",
      name: "cold dial (QUIC + TLS + NodeId check), median",
      value: medT,
      unit: "ms",
      baselineName: "raw @matrixai/quic QUICClient",
      baseline: medR,
      ratio,
      target: `≤ ${TARGET.toFixed(2)}×`,
      met: ratio <= TARGET,
      notes:
        `${PAIRS} interleaved pairs; ratio = median of per-pair ratios ` +
        `(p25 ${quantile(ratios, 0.25).toFixed(2)}, p75 ${quantile(ratios, 0.75).toFixed(2)}); ` +
        `ratio of medians ${(medT / medR).toFixed(2)}; ` +
        `p90 ${quantile(viaTransport, 0.9).toFixed(2)} ms vs ${quantile(raw, 0.9).toFixed(2)} ms`
    }
  ]
  return results
})

export const suite: BenchSuite = {
  name: "transport",
  run: () => Effect.runPromise(program)
}
