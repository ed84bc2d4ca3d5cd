/**
 * Agent RPC bench: a warm `nodesPing` round trip through RpcServerLive / RpcClientLive over
 * QuicTransportLive on loopback, in both stream modes (a new QUIC stream per call, and one
 * multiplexed stream per client), against raw `@matrixai/quic`: echo of the same bytes
 * over a NEW bidirectional stream per call (write, FIN, read to the peer's FIN), between
 * a raw QUICClient and QUICServer with the same certificates. Sequential calls (1 caller,
 * median latency) and 32 concurrent callers (calls/s), rounds alternating between the
 * three so that machine load affects them alike.
 */
import { Effect, Exit, Fiber, Layer, Scope, Stream } from "effect"
import * as KeyRingTest from "../src/layers/KeyRingTest.js"
import * as QuicTransportLive from "../src/layers/QuicTransportLive.js"
import * as RpcClientLive from "../src/layers/RpcClientLive.js"
import * as RpcServerLive from "../src/layers/RpcServerLive.js"
import { KeyRing } from "../src/services/KeyRing.js"
import { QuicTransport, QuicTransportConfig } from "../src/services/QuicTransport.js"
import { type AgentClient, RpcConfig, RpcServer, type RpcStreamMode } from "../src/services/RpcServer.js"
import { rawEcho, rawEchoPair } from "./rawQuic.js"
import { pingHandlers } from "./sinkStream.js"
import {
  type BenchResult,
  type BenchSuite,
  callsPerSecond,
  median,
  quantile,
  timeSequential
} from "./types.js"

const ROUNDS = 6
const SEQUENTIAL_PER_ROUND = 40
const CONCURRENT_CALLERS = 32
const CALLS_PER_CALLER = 4
const TARGET = 1.0

const node = (seed: string) =>
  QuicTransportLive.layer.pipe(
    Layer.provideMerge(KeyRingTest.layer(seed)),
    Layer.provide(QuicTransportConfig.layer({ host: "127.0.0.1" }))
  )

const program = Effect.gen(function* () {
  const scope = yield* Scope.make()
  const a = yield* Layer.buildWithScope(node("bench-rpc-a"), scope)
  const b = yield* Layer.buildWithScope(node("bench-rpc-b"), scope)
  const transportA = a.unsafeMap.get(QuicTransport.key) as QuicTransport["Type"]
  const transportB = b.unsafeMap.get(QuicTransport.key) as QuicTransport["Type"]
  const keyRingB = b.unsafeMap.get(KeyRing.key) as KeyRing["Type"]
  const nodeIdB = yield* keyRingB.nodeId
  const incoming = yield* Effect.fork(Stream.runHead(transportB.incoming))
  const connA = yield* transportA
    .dial({ host: "127.0.0.1", port: transportB.port, expectedNodeIds: [nodeIdB] })
    .pipe(Scope.extend(scope), Effect.orDie)
  const connB = yield* Fiber.join(incoming).pipe(Effect.flatten)
  const server = (yield* Layer.buildWithScope(
    RpcServerLive.layer.pipe(Layer.provide(pingHandlers), Layer.provide(RpcConfig.layerDefaults)),
    scope
  )).unsafeMap.get(RpcServer.key) as RpcServer["Type"]
  yield* server.serve(connB).pipe(Scope.extend(scope))
  const clients: Record<RpcStreamMode, AgentClient> = {
    "per-call": yield* RpcClientLive.make(connA, { ...RpcConfig.defaults, rpcStreamMode: "per-call" }).pipe(
      Scope.extend(scope)
    ),
    multiplexed: yield* RpcClientLive.make(connA, {
      ...RpcConfig.defaults,
      rpcStreamMode: "multiplexed"
    }).pipe(Scope.extend(scope))
  }
  const raw = yield* rawEchoPair(yield* keyRingB.tlsConfig).pipe(Scope.extend(scope))
  // The same payload size as a ping request frame, echoed.
  const rawBytes = new Uint8Array(48).fill(7)

  const ping = (client: AgentClient, i: number) => client.nodesPing({ nonce: `n${i}` })
  type Kind = "raw" | RpcStreamMode
  const once = (kind: Kind, i: number): Effect.Effect<unknown> =>
    kind === "raw"
      ? Effect.promise(() => rawEcho(raw.client.connection, rawBytes))
      : Effect.orDie(ping(clients[kind], i))
  const sequential = (kind: Kind) => timeSequential(SEQUENTIAL_PER_ROUND, (i) => once(kind, i))
  const concurrent = (kind: Kind) =>
    callsPerSecond(CONCURRENT_CALLERS, CALLS_PER_CALLER, (i) => once(kind, i))

  const kinds: ReadonlyArray<Kind> = ["raw", "per-call", "multiplexed"]
  // Warm-up: streams, JIT.
  for (const kind of kinds) for (let i = 0; i < 20; i++) yield* once(kind, i)
  const latencies: Record<Kind, number[]> = { raw: [], "per-call": [], multiplexed: [] }
  const throughput: Record<Kind, number[]> = { raw: [], "per-call": [], multiplexed: [] }
  for (let round = 0; round < ROUNDS; round++) {
    const order = round % 2 === 0 ? kinds : [...kinds].reverse()
    for (const kind of order) latencies[kind].push(...(yield* sequential(kind)))
    for (const kind of order) throughput[kind].push(yield* concurrent(kind))
  }
  yield* Scope.close(scope, Exit.void)

  const rawLatency = median(latencies.raw)
  const rawRate = median(throughput.raw)
  const results: BenchResult[] = []
  for (const mode of ["per-call", "multiplexed"] as const) {
    const lat = median(latencies[mode])
    const isDefault = mode === RpcConfig.defaults.rpcStreamMode
    results.push({
      suite: "rpc",
      name: `nodesPing round trip, 1 caller, ${mode}${isDefault ? " (default)" : ""}, median`,
      value: lat,
      unit: "ms",
      baselineName: "raw js-quic echo, new stream per call",
      baseline: rawLatency,
      ratio: lat / rawLatency,
      ...(isDefault ? { target: `≤ ${TARGET.toFixed(2)}×`, met: lat / rawLatency <= TARGET } : {}),
      notes: `p90 ${quantile(latencies[mode], 0.9).toFixed(2)} ms vs ${quantile(latencies.raw, 0.9).toFixed(2)} ms; ${(1000 / lat) | 0} calls/s`
    })
    const rate = median(throughput[mode])
    results.push({
      suite: "rpc",
      name: `nodesPing, ${CONCURRENT_CALLERS} concurrent callers, ${mode}${isDefault ? " (default)" : ""}`,
      value: rate,
      unit: "calls/s",
      baselineName: "raw js-quic echo, new stream per call",
      baseline: rawRate,
      ratio: rate / rawRate,
      notes: "higher is better; median of rounds"
    })
  }
  return results
})

export const suite: BenchSuite = {
  name: "rpc",
  run: () => Effect.runPromise(program)
}
