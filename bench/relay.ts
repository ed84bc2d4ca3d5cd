/**
 * Relay bench (issue #20). The relay R is a full node started with `relay: true` (built as
 * bench/connectionManagerChild.ts builds its nodes) in a child process of its own, so that the
 * memory and CPU it reports are the relay's alone. The other nodes live in this process as bare
 * transports (KeyRingTest + QuicTransportLive on 127.0.0.1) speaking the relay protocol the way
 * the connection manager does (`internal/relay/client.ts`): a target connects to R, reserves,
 * and serves STOP on that connection; a source connects to R and makes circuits (CONNECT); a
 * relayed connection is the source's QUIC connection to the target over a circuit
 * (`dialCircuit` / `acceptCircuit`), authenticated end to end. R runs uncapped here
 * (`relayCircuitBytesPerSecond` Infinity; the default cap, 1 MiB/s per circuit, would otherwise
 * set the relayed throughput) and with the default request limit (10 HOP requests per second
 * per node), which the circuit openings below stay under.
 *
 * 1. Relay memory per idle circuit (first, on the fresh relay): BENCH_RELAY_PAIRS source and
 *    target pairs (each target reserved), 2 warm circuits per pair, then the relay's reading
 *    (after full collections), then BENCH_RELAY_CIRCUITS more circuits spread over the pairs,
 *    opened at 9 per second per source and held open with no byte on them, then the reading
 *    again: RSS and heap growth over the circuits R holds (its own count). Target ≤ 64 KiB RSS.
 *    A target takes at most 100 circuits through one relay connection at once (js-quic's
 *    stream limit), hence the pairs.
 * 2. Relayed RPC round trip: S and T, the agent RPC (`nodesPing`, RpcServerLive on T,
 *    RpcClientLive on S) on a relayed connection against a direct one between the same two
 *    transports; sequential calls, rounds alternating the order; median. Target ≤ 2.0×.
 * 3. Relayed stream throughput: BENCH_RELAY_STREAM_MIB MiB in BENCH_RELAY_CHUNK_KIB KiB writes
 *    on a protocol stream that T counts (answering the count at S's FIN), relayed against
 *    direct, interleaved pairs; the ratio is the median of per-pair ratios (higher is better).
 *    Target ≥ 0.5×.
 * 4. Relay CPU per relayed MiB: R's user + system CPU over the relayed transfers of part 3,
 *    divided by the MiB R forwarded during them (its `bytesForwarded`, both directions: the
 *    packets with the data, the acknowledgements back). Measured, no target.
 *
 * Scale with BENCH_RELAY_CIRCUITS (200), BENCH_RELAY_PAIRS (8), BENCH_RELAY_ROUNDS (6),
 * BENCH_RELAY_SEQUENTIAL (40 calls per round and kind), BENCH_RELAY_STREAM_MIB (4),
 * BENCH_RELAY_CHUNK_KIB (64), BENCH_RELAY_STREAM_PAIRS (3).
 */

import { type ChildProcess, spawn } from "node:child_process"
import { createInterface } from "node:readline"
import { fileURLToPath, pathToFileURL } from "node:url"
import { Context, Deferred, Duration, Effect, Layer, Scope, Stream } from "effect"
import * as RelayClient from "../src/internal/relay/client.js"
import * as Wire from "../src/internal/relay/wire.js"
import * as StreamRouter from "../src/internal/streamRouter.js"
import * as KeyRingTest from "../src/layers/KeyRingTest.js"
import * as QuicTransportLive from "../src/layers/QuicTransportLive.js"
import * as RpcClientLive from "../src/layers/RpcClientLive.js"
import * as RpcServerLive from "../src/layers/RpcServerLive.js"
import { ConnectionManager } from "../src/services/ConnectionManager.js"
import { KeyRing } from "../src/services/KeyRing.js"
import * as NodeId from "../src/services/NodeId.js"
import * as Protocols from "../src/services/Protocols.js"
import {
  type Circuit,
  type QuicConnection,
  QuicTransport,
  QuicTransportConfig
} from "../src/services/QuicTransport.js"
import { RpcConfig, RpcServer } from "../src/services/RpcServer.js"
import { decodeId, nodeLayer, type PeerInfo } from "./connectionManagerChild.js"
import { pingHandlers, sendToSink, sinkHandler } from "./sinkStream.js"
import {
  type BenchResult,
  type BenchSuite,
  envInt,
  gcHard,
  median,
  quantile,
  timeSequential
} from "./types.js"

const CIRCUITS = envInt("BENCH_RELAY_CIRCUITS", 200)
const PAIRS = envInt("BENCH_RELAY_PAIRS", 8)
const ROUNDS = envInt("BENCH_RELAY_ROUNDS", 6)
const SEQUENTIAL = envInt("BENCH_RELAY_SEQUENTIAL", 40)
const STREAM_MIB = envInt("BENCH_RELAY_STREAM_MIB", 4)
const CHUNK_KIB = envInt("BENCH_RELAY_CHUNK_KIB", 64)
const STREAM_PAIRS = envInt("BENCH_RELAY_STREAM_PAIRS", 3)

const LATENCY_TARGET = 2.0
const THROUGHPUT_TARGET = 0.5
const MEMORY_TARGET_KIB = 64
const WARM_PER_PAIR = 2
/** Between two circuit openings of one source: under the relay's 10 requests per second. */
const OPENING_GAP = Duration.millis(111)

const SUITE = "relay"
const log = (text: string) => process.stderr.write(`  ${SUITE}: ${text}\n`)

/** What the relay process reports of itself. */
interface RelayReading {
  readonly rss: number
  readonly heapUsed: number
  /** User + system CPU since the process started, ms. */
  readonly cpuMs: number
  readonly circuits: number
  readonly bytesForwarded: number
}

// ---- the relay's process ----------------------------------------------------------------------

/**
 * `relay <maxCircuits>`: the relay node; prints `{"relay":{"nodeId","host","port"}}`, then
 * answers each stdin line `{"measure":{"gc":boolean}}` with `{"measure":RelayReading}`; exits
 * when stdin ends.
 */
const runRelay = async (maxCircuits: number) => {
  const scope = Effect.runSync(Scope.make())
  const ctx = await Effect.runPromise(
    Layer.buildWithScope(
      nodeLayer("bench-relay-r", {
        relay: true,
        relayMaxCircuits: maxCircuits,
        relayCircuitBytesPerSecond: Number.POSITIVE_INFINITY,
        relayCircuitIdleTimeout: Duration.minutes(10)
      }),
      scope
    )
  )
  const cm = Context.get(ctx, ConnectionManager)
  const relay: PeerInfo = { nodeId: NodeId.encode(cm.nodeId), host: cm.host, port: cm.port }
  process.stdout.write(`${JSON.stringify({ relay })}\n`)
  const lines = createInterface({ input: process.stdin })
  lines.on("line", async (line) => {
    const asked = JSON.parse(line) as { readonly measure: { readonly gc: boolean } }
    if (asked.measure.gc) await gcHard()
    const memory = process.memoryUsage()
    const cpu = process.cpuUsage()
    const server = (await Effect.runPromise(cm.relays)).server
    const measure: RelayReading = {
      rss: memory.rss,
      heapUsed: memory.heapUsed,
      cpuMs: (cpu.user + cpu.system) / 1000,
      circuits: server?.circuits ?? 0,
      bytesForwarded: server?.bytesForwarded ?? 0
    }
    process.stdout.write(`${JSON.stringify({ measure })}\n`)
  })
  lines.on("close", () => process.exit(0))
}

// ---- this process: the relay's child, and the bare nodes -------------------------------------

const compiled = import.meta.url.endsWith(".js")

/** The relay's process, its first line, and a way to ask it for readings one at a time. */
const startRelay = (maxCircuits: number) =>
  Effect.acquireRelease(
    Effect.promise(async () => {
      const child: ChildProcess = spawn(
        process.execPath,
        [
          "--expose-gc",
          ...(compiled ? [] : ["--import", "tsx"]),
          fileURLToPath(import.meta.url),
          "relay",
          String(maxCircuits)
        ],
        { stdio: ["pipe", "pipe", "inherit"] }
      )
      const waiting: Array<{ resolve: (o: Record<string, unknown>) => void; reject: (e: Error) => void }> = []
      createInterface({ input: child.stdout! }).on("line", (line) => {
        if (line.startsWith("{")) waiting.shift()?.resolve(JSON.parse(line))
      })
      child.once("exit", (code) => {
        for (const w of waiting.splice(0)) w.reject(new Error(`the relay process exited (${code})`))
      })
      const next = <A>(key: string) =>
        new Promise<A>((resolve, reject) =>
          waiting.push({
            resolve: (o) =>
              key in o ? resolve(o[key] as A) : reject(new Error(`the relay answered ${JSON.stringify(o)}`)),
            reject
          })
        )
      const info = await next<PeerInfo>("relay")
      const measure = (gc: boolean) =>
        Effect.promise(() => {
          const answer = next<RelayReading>("measure")
          child.stdin!.write(`${JSON.stringify({ measure: { gc } })}\n`)
          return answer
        })
      return { child, info, nodeId: decodeId(info.nodeId), measure }
    }),
    ({ child }) => Effect.sync(() => child.stdin!.end())
  )

type Relay = Effect.Effect.Success<ReturnType<typeof startRelay>>

/** KeyRingTest + QuicTransportLive on 127.0.0.1, in the caller's scope. */
const bareNode = (seed: string) =>
  Effect.gen(function* () {
    const ctx = yield* Layer.build(
      QuicTransportLive.layer.pipe(
        Layer.provideMerge(KeyRingTest.layer(seed)),
        Layer.provide(QuicTransportConfig.layer({ host: "127.0.0.1" }))
      )
    ).pipe(Effect.orDie)
    return { transport: Context.get(ctx, QuicTransport), nodeId: yield* Context.get(ctx, KeyRing).nodeId }
  })

type BareNode = Effect.Effect.Success<ReturnType<typeof bareNode>>

/** `node`'s connection to the relay, the streams R opens on it served by `protocols` (others refused at once). */
const toRelay = (node: BareNode, relay: Relay, protocols = Protocols.make()) =>
  Effect.gen(function* () {
    const connection = yield* node.transport.dial({
      host: relay.info.host,
      port: relay.info.port,
      expectedNodeIds: [relay.nodeId]
    })
    yield* connection.handleStreams((socket) =>
      StreamRouter.route(socket, connection, undefined, protocols, "5 seconds")
    )
    return connection
  }).pipe(Effect.orDie)

/** A target: connected to R, reserved with it, serving STOP with `run` for every circuit R brings. */
const makeTarget = (
  seed: string,
  relay: Relay,
  run: (node: BareNode, circuit: Circuit) => Effect.Effect<void>
) =>
  Effect.gen(function* () {
    const node = yield* bareNode(seed)
    const stop: Protocols.StreamHandler = (socket, caller) =>
      RelayClient.serveStop(
        socket,
        caller,
        () => Effect.succeed(undefined),
        (_source, circuit) => run(node, circuit)
      )
    const connection = yield* toRelay(node, relay, Protocols.make([[Wire.STOP_PROTOCOL, stop]]))
    yield* Effect.orDie(RelayClient.reserve(connection))
    return node
  })

// ---- 1: memory per idle circuit --------------------------------------------------------------

const idleCircuits = (relay: Relay) =>
  Effect.scoped(
    Effect.gen(function* () {
      const perPair = Math.ceil(CIRCUITS / PAIRS)
      log(`memory: ${PAIRS} pairs, ${WARM_PER_PAIR} warm circuits each, then ${perPair} more each`)
      const release = yield* Deferred.make<void>()
      const pairs = yield* Effect.forEach(
        Array.from({ length: PAIRS }, (_, i) => i),
        (i) =>
          Effect.gen(function* () {
            const target = yield* makeTarget(`bench-relay-t${i}`, relay, () => Deferred.await(release))
            const source = yield* toRelay(yield* bareNode(`bench-relay-s${i}`), relay)
            return { target, source }
          })
      )
      /** `count` circuits from each source to its target, one every OPENING_GAP, held open. */
      const open = (count: number) =>
        Effect.forEach(
          pairs,
          ({ source, target }) =>
            Effect.forEach(
              Array.from({ length: count }, (_, i) => i),
              (i) =>
                Effect.zipRight(
                  i === 0 ? Effect.void : Effect.sleep(OPENING_GAP),
                  Effect.orDie(RelayClient.connect(source, target.nodeId, "10 seconds"))
                ),
              { discard: true }
            ),
          { concurrency: "unbounded", discard: true }
        )
      yield* open(WARM_PER_PAIR)
      // The relay's first calls to the bare nodes (refused at once) and the warm circuits settle.
      yield* Effect.sleep("2500 millis")
      const before = yield* relay.measure(true)
      const t0 = performance.now()
      yield* open(perPair)
      const openMs = performance.now() - t0
      yield* Effect.sleep("1 second")
      const after = yield* relay.measure(true)
      yield* Deferred.succeed(release, undefined)
      const held = after.circuits - before.circuits
      const rss = (after.rss - before.rss) / held / 1024
      const heap = (after.heapUsed - before.heapUsed) / held / 1024
      const row: BenchResult = {
        suite: SUITE,
        name: "relay memory per idle circuit (RSS growth / circuits held)",
        value: rss,
        unit: "KiB",
        target: `≤ ${MEMORY_TARGET_KIB} KiB`,
        met: rss <= MEMORY_TARGET_KIB,
        notes:
          `${held} circuits over ${PAIRS} source/target pairs (opened in ${(openMs / 1000).toFixed(1)} s), ` +
          `heap ${heap.toFixed(1)} KiB per circuit; the relay's own process, after full collections`
      }
      return row
    })
  )

// ---- 2-4: round trips, throughput, CPU --------------------------------------------------------

const SINK = Protocols.ProtocolId.unsafeMake("bench-relay-sink/1")
/** `chunks` writes of `chunk` on a new sink stream of `connection`, FIN, and the count answered. */
const transfer = (connection: QuicConnection, chunk: Uint8Array, chunks: number) =>
  sendToSink(Protocols.open(connection, SINK), chunk, chunks).pipe(Effect.orDie)

type Kind = "relayed" | "direct"

const relayedAndDirect = (relay: Relay) =>
  Effect.scoped(
    Effect.gen(function* () {
      // T serves the agent RPC and the sink on every connection it gets, direct or relayed.
      const t = yield* makeTarget("bench-relay-t", relay, (node, circuit) =>
        node.transport.acceptCircuit === undefined ? Effect.void : node.transport.acceptCircuit(circuit)
      )
      const server = Context.get(
        yield* Layer.build(
          RpcServerLive.layer.pipe(
            Layer.provide(pingHandlers),
            Layer.provide(RpcConfig.layerDefaults),
            Layer.provide(Layer.succeed(Protocols.Protocols, Protocols.make([[SINK, sinkHandler]])))
          )
        ),
        RpcServer
      )
      const scope = yield* Effect.scope
      yield* Stream.runForEach(t.transport.incoming, (c) => Scope.extend(server.serve(c), scope)).pipe(
        Effect.forkScoped
      )
      const s = yield* bareNode("bench-relay-s")
      const sToRelay = yield* toRelay(s, relay)
      const dialCircuit = s.transport.dialCircuit
      if (dialCircuit === undefined) return yield* Effect.dieMessage("the transport carries no circuits")
      const connections: Record<Kind, QuicConnection> = {
        direct: yield* Effect.orDie(
          s.transport.dial({ host: "127.0.0.1", port: t.transport.port, expectedNodeIds: [t.nodeId] })
        ),
        relayed: yield* Effect.orDie(
          Effect.flatMap(RelayClient.connect(sToRelay, t.nodeId, "10 seconds"), (circuit) =>
            dialCircuit(circuit, { expectedNodeIds: [t.nodeId] })
          )
        )
      }
      const clients = {
        direct: yield* RpcClientLive.make(connections.direct),
        relayed: yield* RpcClientLive.make(connections.relayed)
      }
      const kinds: ReadonlyArray<Kind> = ["relayed", "direct"]
      const ping = (kind: Kind, i: number) => Effect.orDie(clients[kind].nodesPing({ nonce: `n${i}` }))

      log(`round trips: ${ROUNDS} rounds of ${SEQUENTIAL} calls of each kind`)
      for (const kind of kinds) for (let i = 0; i < 20; i++) yield* ping(kind, i)
      const latencies: Record<Kind, Array<number>> = { relayed: [], direct: [] }
      for (let round = 0; round < ROUNDS; round++)
        for (const kind of round % 2 === 0 ? kinds : [...kinds].reverse())
          latencies[kind].push(...(yield* timeSequential(SEQUENTIAL, (i) => ping(kind, i))))

      const chunk = new Uint8Array(CHUNK_KIB * 1024).fill(7)
      const chunks = Math.max(1, Math.round((STREAM_MIB * 1024) / CHUNK_KIB))
      const mib = (chunks * chunk.length) / 2 ** 20
      log(`stream throughput: ${STREAM_PAIRS} pairs of ${mib} MiB in ${CHUNK_KIB} KiB writes`)
      const relayWork = { cpuMs: 0, bytes: 0 }
      /** One timed transfer: MiB/s (the relay's CPU and bytes added up for a relayed one). */
      const timed = (kind: Kind, n: number) =>
        Effect.gen(function* () {
          const start = kind === "relayed" ? yield* relay.measure(false) : undefined
          const t0 = performance.now()
          const received = yield* transfer(connections[kind], chunk, n)
          const ms = performance.now() - t0
          if (start !== undefined) {
            const end = yield* relay.measure(false)
            relayWork.cpuMs += end.cpuMs - start.cpuMs
            relayWork.bytes += end.bytesForwarded - start.bytesForwarded
          }
          if (received !== n * chunk.length)
            return yield* Effect.dieMessage(`${kind}: ${received} of ${n * chunk.length} bytes arrived`)
          return (n * chunk.length) / 2 ** 20 / (ms / 1000)
        })
      const warm = Math.max(1, Math.round(1024 / CHUNK_KIB))
      for (const kind of kinds) yield* timed(kind, warm)
      relayWork.cpuMs = 0
      relayWork.bytes = 0
      const rates: Record<Kind, Array<number>> = { relayed: [], direct: [] }
      const ratios: Array<number> = []
      for (let i = 0; i < STREAM_PAIRS; i++) {
        const pair: Record<Kind, number> = { relayed: 0, direct: 0 }
        for (const kind of i % 2 === 0 ? kinds : [...kinds].reverse()) pair[kind] = yield* timed(kind, chunks)
        rates.relayed.push(pair.relayed)
        rates.direct.push(pair.direct)
        ratios.push(pair.relayed / pair.direct)
      }

      const lat = median(latencies.relayed)
      const base = median(latencies.direct)
      const ratio = median(ratios)
      const forwardedMib = relayWork.bytes / 2 ** 20
      const rows: Array<BenchResult> = [
        {
          suite: SUITE,
          name: "relayed RPC round trip (nodesPing over a circuit), 1 caller, median",
          value: lat,
          unit: "ms",
          baselineName: "nodesPing on a direct connection, same two transports",
          baseline: base,
          ratio: lat / base,
          target: `≤ ${LATENCY_TARGET.toFixed(1)}×`,
          met: lat / base <= LATENCY_TARGET,
          notes: `${ROUNDS} alternating rounds of ${SEQUENTIAL}; p90 ${quantile(latencies.relayed, 0.9).toFixed(2)} ms vs ${quantile(latencies.direct, 0.9).toFixed(2)} ms; the relay in a process of its own`
        },
        {
          suite: SUITE,
          name: `relayed stream throughput, ${mib} MiB in ${CHUNK_KIB} KiB writes`,
          value: median(rates.relayed),
          unit: "MiB/s",
          baselineName: "the same transfer on a direct connection",
          baseline: median(rates.direct),
          ratio,
          target: `≥ ${THROUGHPUT_TARGET.toFixed(1)}×`,
          met: ratio >= THROUGHPUT_TARGET,
          notes:
            `higher is better; ${STREAM_PAIRS} interleaved pairs, ratio = median of per-pair ratios ` +
            `(min ${Math.min(...ratios).toFixed(2)}, max ${Math.max(...ratios).toFixed(2)}); relay uncapped (default cap 1 MiB/s per circuit)`
        },
        {
          suite: SUITE,
          name: "relay CPU per relayed MiB (user + system)",
          value: relayWork.cpuMs / forwardedMib,
          unit: "ms/MiB",
          notes: `${forwardedMib.toFixed(1)} MiB forwarded (both directions, circuit datagrams with their QUIC packets) for ${STREAM_PAIRS * mib} MiB of stream data, ${relayWork.cpuMs.toFixed(0)} ms of CPU`
        }
      ]
      return rows
    })
  )

const program = Effect.scoped(
  Effect.gen(function* () {
    const relay = yield* startRelay(CIRCUITS + PAIRS * WARM_PER_PAIR + 64)
    const memory = yield* idleCircuits(relay)
    const rest = yield* relayedAndDirect(relay)
    return [...rest, memory]
  })
)

export const suite: BenchSuite = {
  name: SUITE,
  run: () => Effect.runPromise(program)
}

const isMain = process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href
if (isMain && process.argv[2] === "relay") await runRelay(Number(process.argv[3]))
