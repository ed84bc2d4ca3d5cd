/**
 * Application-protocol bench (issue #17): two full nodes (`nodeLayer` of
 * bench/connectionManagerChild.ts: KeyRingTest, in-memory NodeGraph, QuicTransportLive, agent
 * RPC, ConnectionManager) in this process on loopback QUIC, A holding a connection to B; each
 * figure against a baseline measured in the same run:
 *
 * 1. Application RPC round trip, 1 caller: `AppRpc.make(BenchRpcs, { protocol: "bench/1" })`
 *    served by B, `withClient(nodeIdB, (client) => client.ping({ nonce }))` from A (a method of
 *    the same schema as `nodesPing`, its nonce checked as the agent client checks its own),
 *    against the built-in `nodesPing` on the same connection
 *    (`withConnection(nodeIdB, (handle) => handle.client.ping)`). Both get the connection by
 *    NodeId and count as its use. Rounds alternate the order; median latency over all calls.
 * 2. Raw application stream throughput: A opens `ConnectionManager.openStream(nodeIdB, "bench-sink/1")`
 *    (B serves it with `Protocols.handle`: the handler counts the bytes until A's FIN, then
 *    answers the count and ends the stream), writes BENCH_APP_STREAM_MIB MiB in
 *    BENCH_APP_CHUNK_KIB KiB writes (each awaited), ends its side and waits for the count; against
 *    the same transfer over a raw `@matrixai/quic` stream (a QUICServer with B's certificate
 *    counting the same way, a QUICClient with A's certificate checking B's NodeId, on a socket
 *    of its own, js-quic's default flow-control windows as the transport uses). Timed from
 *    opening the stream to reading the count. Interleaved pairs (the order alternates); the
 *    ratio is the median of per-pair ratios (higher is better).
 * 3. Calls/s with 32 concurrent application callers (each making BENCH_APP_CALLS_PER_CALLER
 *    calls in a row) against 32 concurrent `nodesPing` callers on the same connection; rounds
 *    alternate the order; median of rounds.
 *
 * Scale with BENCH_APP_ROUNDS (8: rounds of parts 1 and 3), BENCH_APP_SEQUENTIAL (100: calls per
 * round and kind in part 1), BENCH_APP_CALLERS (32), BENCH_APP_CALLS_PER_CALLER (8),
 * BENCH_APP_STREAM_MIB (8), BENCH_APP_CHUNK_KIB (64), BENCH_APP_STREAM_PAIRS (3: timed transfers
 * of each kind, after one untimed warm-up transfer of 1 MiB of each); BENCH_APP_SKIP=rpc,stream
 * leaves parts out (rpc: 1 and 3). js-quic moves bulk data on loopback at 1 to 2 MiB/s on
 * a loaded 2-core machine (see also the bulk test in test/Protocols.test.ts), so the default
 * transfer is 8 MiB (part 2 then takes under a minute); BENCH_APP_STREAM_MIB=64 for the size
 * the issue suggests.
 */

import { Rpc, RpcGroup } from "@effect/rpc"
import type { QUICConnection, QUICStream } from "@matrixai/quic"
import { QUICServer, events as quicEvents } from "@matrixai/quic"
import { Context, Effect, Exit, Layer, Schema, Scope } from "effect"
import * as AppRpc from "../src/services/AppRpc.js"
import { ConnectionManager, type ConnectionManagerService } from "../src/services/ConnectionManager.js"
import { KeyRing } from "../src/services/KeyRing.js"
import type * as NodeId from "../src/services/NodeId.js"
import * as Protocols from "../src/services/Protocols.js"
import { nodeLayer } from "./connectionManagerChild.js"
import {
  nodeIdVerifier,
  quietLogger,
  type RawTls,
  rawDial,
  serverCrypto,
  startSocket,
  stopRaw
} from "./rawQuic.js"
import { sendToSink, sinkHandler } from "./sinkStream.js"
import {
  type BenchResult,
  type BenchSuite,
  callsPerSecond,
  envInt,
  median,
  quantile,
  timeSequential
} from "./types.js"

const ROUNDS = envInt("BENCH_APP_ROUNDS", 8)
const SEQUENTIAL_PER_ROUND = envInt("BENCH_APP_SEQUENTIAL", 100)
const CONCURRENT_CALLERS = envInt("BENCH_APP_CALLERS", 32)
const CALLS_PER_CALLER = envInt("BENCH_APP_CALLS_PER_CALLER", 8)
const STREAM_MIB = envInt("BENCH_APP_STREAM_MIB", 8)
const CHUNK_KIB = envInt("BENCH_APP_CHUNK_KIB", 64)
const STREAM_PAIRS = envInt("BENCH_APP_STREAM_PAIRS", 3)
const SKIP = new Set((process.env.BENCH_APP_SKIP ?? "").split(",").filter((s) => s.length > 0))

const LATENCY_TARGET = 1.1
const THROUGHPUT_TARGET = 0.9
const CONCURRENT_TARGET = 0.9
const WARMUP_CALLS = 50

const SUITE = "appProtocols"
const log = (text: string) => process.stderr.write(`  ${SUITE}: ${text}\n`)

// ---- the application's group and stream protocol ---------------------------------------------

/** A trivial ping-like method: the schema of the agent's `nodesPing`. */
const Ping = Rpc.make("ping", {
  payload: { nonce: Schema.String },
  success: Schema.Struct({ nonce: Schema.String })
})
class BenchRpcs extends RpcGroup.make(Ping) {}

const Bench = AppRpc.make(BenchRpcs, { protocol: "bench/1" })
const benchHandlers = BenchRpcs.toLayer({ ping: ({ nonce }) => Effect.succeed({ nonce }) })

const SINK = Protocols.ProtocolId.unsafeMake("bench-sink/1")
const encoder = new TextEncoder()
const decoder = new TextDecoder()

/** A raw js-quic server with `tls` that answers every stream as `sinkHandler` does. */
const startRawSink = async (tls: RawTls, verify: (certs: Array<Uint8Array>) => Promise<undefined>) => {
  const server = new QUICServer({
    crypto: serverCrypto(),
    config: {
      key: tls.keyPrivatePem,
      cert: tls.certChainPem,
      verifyPeer: true,
      verifyCallback: verify
    },
    logger: quietLogger
  })
  const sink = async (stream: QUICStream) => {
    const reader = stream.readable.getReader()
    let received = 0
    while (true) {
      const { done, value } = await reader.read()
      if (done) break
      received += value.length
    }
    const writer = stream.writable.getWriter()
    await writer.write(encoder.encode(String(received)))
    await writer.close()
  }
  server.addEventListener(quicEvents.EventQUICServerConnection.name, (evt: Event) => {
    const connection = (evt as unknown as { detail: QUICConnection }).detail
    connection.addEventListener(quicEvents.EventQUICConnectionStream.name, (e: Event) => {
      void sink((e as unknown as { detail: QUICStream }).detail).catch(() => undefined)
    })
  })
  await server.start({ host: "127.0.0.1", port: 0 })
  return server
}

/** One raw transfer of `chunks` writes of `chunk` on a new stream; resolves with the count answered. */
const rawTransfer = async (connection: QUICConnection, chunk: Uint8Array, chunks: number) => {
  const stream = connection.newStream("bidi")
  const reading = (async () => {
    const reader = stream.readable.getReader()
    const parts: Uint8Array[] = []
    while (true) {
      const { done, value } = await reader.read()
      if (done) return Number(decoder.decode(Buffer.concat(parts)))
      parts.push(value.slice())
    }
  })()
  const writer = stream.writable.getWriter()
  for (let i = 0; i < chunks; i++) await writer.write(chunk)
  await writer.close()
  return reading
}

/** Parts 1 and 3: application RPC vs nodesPing on A's connection to B, 1 caller and concurrent callers. */
const roundTrips = (a: ConnectionManagerService, nodeIdB: NodeId.NodeId) =>
  Effect.gen(function* () {
    log(
      `round trips: ${ROUNDS} rounds of ${SEQUENTIAL_PER_ROUND} calls, and ${CONCURRENT_CALLERS} callers × ${CALLS_PER_CALLER}`
    )
    let nonceCounter = 0
    const appPing = Effect.suspend(() => {
      const nonce = `${++nonceCounter}`
      return Bench.withClient(nodeIdB, (client) => client.ping({ nonce })).pipe(
        Effect.flatMap((r) => (r.nonce === nonce ? Effect.void : Effect.dieMessage("wrong nonce")))
      )
    })
    type Kind = "app" | "agent"
    const calls = {
      app: Effect.orDie(appPing),
      agent: Effect.orDie(a.withConnection(nodeIdB, (handle) => handle.client.ping))
    } satisfies Record<Kind, unknown>
    const sequential = (kind: Kind) => timeSequential(SEQUENTIAL_PER_ROUND, () => calls[kind])
    const concurrent = (kind: Kind) => callsPerSecond(CONCURRENT_CALLERS, CALLS_PER_CALLER, () => calls[kind])
    const kinds: ReadonlyArray<Kind> = ["agent", "app"]
    // Warm-up: the application client and its stream, JIT.
    for (const kind of kinds) for (let i = 0; i < WARMUP_CALLS; i++) yield* calls[kind]
    for (const kind of kinds) yield* concurrent(kind)
    const latencies: Record<Kind, number[]> = { app: [], agent: [] }
    const rates: Record<Kind, number[]> = { app: [], agent: [] }
    for (let round = 0; round < ROUNDS; round++) {
      const order = round % 2 === 0 ? kinds : [...kinds].reverse()
      for (const kind of order) latencies[kind].push(...(yield* sequential(kind)))
      for (const kind of order) rates[kind].push(yield* concurrent(kind))
    }
    const lat = median(latencies.app)
    const base = median(latencies.agent)
    const rate = median(rates.app)
    const baseRate = median(rates.agent)
    const rows: BenchResult[] = [
      {
        suite: SUITE,
        name: "application RPC round trip (AppRpc withClient), existing connection, 1 caller, median",
        value: lat,
        unit: "ms",
        baselineName: "nodesPing (withConnection + client.ping), same connection",
        baseline: base,
        ratio: lat / base,
        target: `≤ ${LATENCY_TARGET.toFixed(2)}×`,
        met: lat / base <= LATENCY_TARGET,
        notes:
          `${ROUNDS} alternating rounds of ${SEQUENTIAL_PER_ROUND}; ` +
          `p90 ${quantile(latencies.app, 0.9).toFixed(3)} ms vs ${quantile(latencies.agent, 0.9).toFixed(3)} ms`
      },
      {
        suite: SUITE,
        name: `application RPC, ${CONCURRENT_CALLERS} concurrent callers`,
        value: rate,
        unit: "calls/s",
        baselineName: `${CONCURRENT_CALLERS} concurrent nodesPing callers, same connection`,
        baseline: baseRate,
        ratio: rate / baseRate,
        target: `≥ ${CONCURRENT_TARGET.toFixed(2)}×`,
        met: rate / baseRate >= CONCURRENT_TARGET,
        notes: `higher is better; ${CALLS_PER_CALLER} calls per caller, median of ${ROUNDS} rounds`
      }
    ]
    return rows
  })

/** Part 2: a raw application stream through the manager vs a raw js-quic stream, MiB/s. */
const streamThroughput = (
  a: ConnectionManagerService,
  ctxA: Context.Context<KeyRing>,
  ctxB: Context.Context<KeyRing | ConnectionManager>
) =>
  Effect.scoped(
    Effect.gen(function* () {
      const nodeIdB = Context.get(ctxB, ConnectionManager).nodeId
      const chunk = new Uint8Array(CHUNK_KIB * 1024).fill(7)
      const chunks = Math.max(1, Math.round((STREAM_MIB * 1024) / CHUNK_KIB))
      const mib = (chunks * chunk.length) / 2 ** 20
      const warmChunks = Math.max(1, Math.round(1024 / CHUNK_KIB))
      log(`stream throughput: ${STREAM_PAIRS} pairs of ${mib} MiB in ${CHUNK_KIB} KiB writes`)
      const keyRingA = Context.get(ctxA, KeyRing)
      const keyRingB = Context.get(ctxB, KeyRing)
      const tlsA = yield* keyRingA.tlsConfig
      const tlsB = yield* keyRingB.tlsConfig
      // The raw baseline: B's certificate on a server counting bytes, A's on a client that checks
      // B's NodeId; the server checks the client's chain as QuicTransportLive's does.
      const raw = yield* Effect.acquireRelease(
        Effect.promise(async () => {
          const server = await startRawSink(tlsB, async (certs) => {
            const exit = await Effect.runPromiseExit(keyRingB.verifyCertChain(certs))
            return Exit.isSuccess(exit) ? undefined : (298 as never)
          })
          const socket = await startSocket("127.0.0.1")
          const client = await rawDial({
            socket,
            host: "127.0.0.1",
            port: server.port,
            tls: tlsA,
            verify: nodeIdVerifier(keyRingA, nodeIdB)
          })
          return { server, socket, client }
        }),
        stopRaw
      )
      type Kind = "app" | "raw"
      /** One timed transfer of `n` writes of `kind`: MiB/s. */
      const transfer = (kind: Kind, n = chunks) =>
        Effect.gen(function* () {
          const t0 = performance.now()
          const received =
            kind === "raw"
              ? yield* Effect.promise(() => rawTransfer(raw.client.connection, chunk, n))
              : yield* Effect.orDie(sendToSink(a.openStream(nodeIdB, SINK), chunk, n))
          const ms = performance.now() - t0
          const sent = n * chunk.length
          if (received !== sent)
            return yield* Effect.dieMessage(`${kind}: ${received} of ${sent} bytes arrived`)
          return sent / 2 ** 20 / (ms / 1000)
        })
      // Warm-up: the stream code paths, JIT.
      yield* transfer("raw", warmChunks)
      yield* transfer("app", warmChunks)
      const rates: Record<Kind, number[]> = { app: [], raw: [] }
      const ratios: number[] = []
      for (let i = 0; i < STREAM_PAIRS; i++) {
        const order: ReadonlyArray<Kind> = i % 2 === 0 ? ["raw", "app"] : ["app", "raw"]
        const pair: Record<Kind, number> = { app: 0, raw: 0 }
        for (const kind of order) pair[kind] = yield* transfer(kind)
        rates.app.push(pair.app)
        rates.raw.push(pair.raw)
        ratios.push(pair.app / pair.raw)
      }
      const ratio = median(ratios)
      const row: BenchResult = {
        suite: SUITE,
        name: `raw application stream (openStream + Protocols.handle), ${mib} MiB in ${CHUNK_KIB} KiB writes`,
        value: median(rates.app),
        unit: "MiB/s",
        baselineName: "raw js-quic stream, same certificates",
        baseline: median(rates.raw),
        ratio,
        target: `≥ ${THROUGHPUT_TARGET.toFixed(2)}×`,
        met: ratio >= THROUGHPUT_TARGET,
        notes:
          `higher is better; ${STREAM_PAIRS} interleaved pairs, ratio = median of per-pair ratios ` +
          `(min ${Math.min(...ratios).toFixed(2)}, max ${Math.max(...ratios).toFixed(2)}); ` +
          `timed from opening the stream to the receiver's count`
      }
      return row
    })
  )

// ---- the run --------------------------------------------------------------------------------

const program = Effect.gen(function* () {
  const results: BenchResult[] = []
  const scope = yield* Scope.make()
  const ctxA = yield* Layer.buildWithScope(nodeLayer("bench-app-a"), scope).pipe(Effect.orDie)
  const ctxB = yield* Layer.buildWithScope(nodeLayer("bench-app-b"), scope).pipe(Effect.orDie)
  const a = Context.get(ctxA, ConnectionManager)
  const b = Context.get(ctxB, ConnectionManager)
  const nodeIdB = b.nodeId
  // B serves the group and the sink; A holds a connection to B.
  yield* Layer.buildWithScope(
    Bench.layer.pipe(Layer.provide(benchHandlers), Layer.provide(Layer.succeedContext(ctxB))),
    scope
  )
  yield* Context.get(ctxB, Protocols.Protocols).handle(SINK, sinkHandler).pipe(Scope.extend(scope))
  yield* a.getConnectionWithAddress(nodeIdB, { host: b.host, port: b.port }).pipe(Effect.orDie)

  // The application client is reached through A's services, provided once for the whole part.
  if (!SKIP.has("rpc")) results.push(...(yield* roundTrips(a, nodeIdB).pipe(Effect.provide(ctxA))))

  if (!SKIP.has("stream")) results.push(yield* streamThroughput(a, ctxA, ctxB))

  yield* Scope.close(scope, Exit.void)
  return results
})

export const suite: BenchSuite = {
  name: SUITE,
  run: () => Effect.runPromise(program)
}
