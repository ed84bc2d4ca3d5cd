/**
 * Connection-manager bench, each figure against a raw `@matrixai/quic` baseline measured in
 * the same run (helpers in bench/rawQuic.ts):
 *
 * 1. Cold `withConnection` to a known peer that we hold no connection to (NodeGraph lookup,
 *    dial + NodeId check, map entry, RPC client and server set-up, a trivial body), against a
 *    raw QUICClient dial with the same certificates and the same NodeId check to the same
 *    peer. Interleaved pairs (the order alternates); the ratio is the median of per-pair
 *    ratios. After every iteration the connection is destroyed in the background (a QUIC
 *    close drains for ~3 PTO) after a 2 ms untimed pause, as bench/transport.ts does.
 * 2. `withConnection` + `client.ping` on an existing connection, against a raw echo over a new
 *    bidirectional stream on an existing raw connection (as bench/rpc.ts): 1 caller (median
 *    latency, calls/s) and 32 concurrent callers (calls/s); rounds alternate between the two.
 * 3. Memory per connection with many connections held at once: the peers are full nodes in
 *    child processes (bench/connectionManagerChild.ts `peers`), and each measuring side runs
 *    in a fresh child process of its own (`memory cm` / `memory raw`): warm-up connections
 *    (the manager also makes one call on each, so that the RPC client's code is compiled),
 *    2.5 s, heap/RSS after gc, N more connections, 2.5 s (idle RPC clients close after 1 s),
 *    heap/RSS after gc; the delta divided by N. BENCH_CM_MEMORY_ROUNDS (3) rounds, each with fresh
 *    peers; each figure is the median over the rounds.
 * 4. Lookups on a loopback network of full nodes: 3 seeds in this process, the other nodes spread
 *    over BENCH_CM_NET_PROCESSES child processes (bench/connectionManagerChild.ts `net`), each
 *    building its nodes and joining them through the seeds with `syncNodeGraph`,
 *    BENCH_CM_NET_CONCURRENCY at a time; then time (measured in the asking node's process) and
 *    RPC queries per `getClosestGlobalNodes` of a random existing target from a random node,
 *    asked over the child's stdin.
 *
 * 1b. The same cold `withConnection` from a node with a seed configured (every dial to a non-seed
 *    node then also sends a hole-punch signal through the seeds): reported, no target.
 *
 * Scale with BENCH_CM_PAIRS (300), BENCH_CM_SEEDED_PAIRS (40), BENCH_CM_CONNECTIONS (1000, as the
 * target names), BENCH_CM_NODES (200), BENCH_CM_LOOKUPS (50), BENCH_CM_PEERS_PER_PROCESS (250),
 * BENCH_CM_NET_PROCESSES (4), BENCH_CM_NET_CONCURRENCY (6: joins at a time per process); time budgets
 * (seconds) BENCH_CM_MEMORY_WARM (64 connections before the baseline reading, both sides),
 * BENCH_CM_MEMORY_BUDGET_S (150: connecting the manager's connections; the raw side
 * then opens as many as the manager holds), BENCH_CM_JOIN_BUDGET_S (210: building and joining
 * the lookup network, joins still running 20 s later are stopped and left out; the figures name how many
 * nodes joined; keeps the part near 5 minutes. Measured with other work on the 2 cores (load 2
 * to 7): 130 of 200 joined in 270 s at 2 joins at a time per process, 170 in 310 s at 6 (no
 * cut-off then), 113 in 230 s at 6 with the cut-off (part 4 took 4.4 min); joins take 17 to 40 s
 * each at that size), BENCH_CM_LOOKUP_BUDGET_S (30);
 * BENCH_CM_SKIP=cold,seeded,warm,memory,lookup leaves parts out.
 */

import { type ChildProcess, spawn } from "node:child_process"
import { createInterface } from "node:readline"
import { fileURLToPath } from "node:url"
import { Context, Effect, Exit, Fiber, Layer, Option, Scope } from "effect"
import { ConnectionManager, type ConnectionManagerService } from "../src/services/ConnectionManager.js"
import * as CMConfig from "../src/services/ConnectionManagerConfig.js"
import type { Contact } from "../src/services/Contact.js"
import { KeyRing } from "../src/services/KeyRing.js"
import { NodeGraph } from "../src/services/NodeGraph.js"
import * as NodeId from "../src/services/NodeId.js"
import {
  decodeId,
  type LookupReport,
  type MemoryKind,
  type MemoryReport,
  type NetReport,
  type NetStats,
  nodeLayer,
  type PeerInfo
} from "./connectionManagerChild.js"
import { nodeIdVerifier, rawDial, rawEcho, rawEchoPair, startSocket } from "./rawQuic.js"
import { type BenchResult, type BenchSuite, envInt, median, quantile } from "./types.js"

const PAIRS = envInt("BENCH_CM_PAIRS", 300)
const CONNECTIONS = envInt("BENCH_CM_CONNECTIONS", 1000)
const NODES = envInt("BENCH_CM_NODES", 200)
const LOOKUPS = envInt("BENCH_CM_LOOKUPS", 50)
const PEERS_PER_PROCESS = envInt("BENCH_CM_PEERS_PER_PROCESS", 250)
const NET_PROCESSES = envInt("BENCH_CM_NET_PROCESSES", 4)
const NET_CONCURRENCY = envInt("BENCH_CM_NET_CONCURRENCY", 6)
const SEEDED_PAIRS = envInt("BENCH_CM_SEEDED_PAIRS", 40)
const JOIN_BUDGET_MS = envInt("BENCH_CM_JOIN_BUDGET_S", 210) * 1000
const LOOKUP_BUDGET_MS = envInt("BENCH_CM_LOOKUP_BUDGET_S", 30) * 1000
const MEMORY_BUDGET_MS = envInt("BENCH_CM_MEMORY_BUDGET_S", 150) * 1000
const SKIP = new Set((process.env.BENCH_CM_SKIP ?? "").split(",").filter((s) => s.length > 0))

const COLD_WARMUP = 20
const COLD_TARGET = 1.15
const WARM_TARGET = 1.0
const WARM_ROUNDS = 6
const SEQUENTIAL_PER_ROUND = 40
const CONCURRENT_CALLERS = 32
const CALLS_PER_CALLER = 4
const MEMORY_TARGET = 1.2
// Connections made before the baseline reading (both sides): the JIT has compiled the hot paths by then.
const MEMORY_WARM = envInt("BENCH_CM_MEMORY_WARM", 64)
const MEMORY_ROUNDS = envInt("BENCH_CM_MEMORY_ROUNDS", 3)
const SEEDS = 3

const SUITE = "connectionManager"
const log = (text: string) => process.stderr.write(`  connectionManager: ${text}\n`)
const settle = () => new Promise<void>((resolve) => setTimeout(resolve, 2))
const kib = (bytes: number) => bytes / 1024

/** Builds a full node into `scope`. */
const buildNode = (
  scope: Scope.Scope,
  seed: string,
  config: Parameters<typeof nodeLayer>[1] = {}
): Effect.Effect<{ cm: ConnectionManagerService; ctx: Context.Context<unknown> }> =>
  Effect.map(Layer.buildWithScope(nodeLayer(seed, config), scope).pipe(Effect.orDie), (ctx) => ({
    cm: Context.get(ctx, ConnectionManager),
    ctx: ctx as Context.Context<unknown>
  }))

const graphOf = (ctx: Context.Context<unknown>) => Context.get(ctx as Context.Context<NodeGraph>, NodeGraph)
const keyRingOf = (ctx: Context.Context<unknown>) => Context.get(ctx as Context.Context<KeyRing>, KeyRing)

// ---- 1 and 2: cold and warm withConnection ---------------------------------------------------

const coldAndWarm = Effect.gen(function* () {
  const results: BenchResult[] = []
  const scope = yield* Scope.make()
  const a = yield* buildNode(scope, "bench-cm-a")
  const b = yield* buildNode(scope, "bench-cm-b")
  const nodeIdB = b.cm.nodeId
  const keyRingA = keyRingOf(a.ctx)
  const tlsA = yield* keyRingA.tlsConfig
  yield* graphOf(a.ctx)
    .setNode(nodeIdB, { host: b.cm.host, port: b.cm.port, scope: "local" })
    .pipe(Effect.orDie)

  /** Interleaved pairs: cold `withConnection` from `cm` to B, and a raw dial to B. */
  const coldPairs = (cm: ConnectionManagerService, pairs: number) =>
    Effect.gen(function* () {
      // The raw baseline: a socket of its own, A's certificate, B's NodeId checked the same way.
      const rawSocket = yield* Effect.promise(() => startSocket("127.0.0.1"))
      const verify = nodeIdVerifier(keyRingA, nodeIdB)
      const rawClosing: Array<Promise<unknown>> = []
      const rawCold = async () => {
        const t0 = performance.now()
        const client = await rawDial({
          socket: rawSocket,
          host: b.cm.host,
          port: b.cm.port,
          tls: tlsA,
          verify
        })
        const elapsed = performance.now() - t0
        rawClosing.push(client.destroy({ force: true }))
        await settle()
        return elapsed
      }
      const cmClosing: Array<Fiber.RuntimeFiber<void>> = []
      let notCold = 0
      const cmCold = Effect.gen(function* () {
        if (yield* cm.hasConnection(nodeIdB)) notCold++
        const t0 = performance.now()
        yield* cm.withConnection(nodeIdB, () => Effect.void).pipe(Effect.orDie)
        const elapsed = performance.now() - t0
        cmClosing.push(yield* Effect.fork(cm.destroyConnection(nodeIdB, "bench")))
        yield* Effect.promise(settle)
        return elapsed
      })
      const viaCm: number[] = []
      const raw: number[] = []
      const ratios: number[] = []
      const warmup = Math.min(COLD_WARMUP, Math.ceil(pairs / 5))
      for (let i = 0; i < warmup + pairs; i++) {
        let c: number
        let r: number
        if (i % 2 === 0) {
          c = yield* cmCold
          r = yield* Effect.promise(rawCold)
        } else {
          r = yield* Effect.promise(rawCold)
          c = yield* cmCold
        }
        if (i >= warmup) {
          viaCm.push(c)
          raw.push(r)
          ratios.push(c / r)
        }
      }
      yield* Fiber.joinAll(cmClosing)
      yield* Effect.promise(() => Promise.all(rawClosing))
      yield* Effect.promise(() => rawSocket.stop({ force: true }))
      const ratio = median(ratios)
      const notes =
        `${pairs} interleaved pairs to the same full-node peer; ratio = median of per-pair ratios ` +
        `(p25 ${quantile(ratios, 0.25).toFixed(2)}, p75 ${quantile(ratios, 0.75).toFixed(2)}); ` +
        `ratio of medians ${(median(viaCm) / median(raw)).toFixed(2)}; ` +
        `p90 ${quantile(viaCm, 0.9).toFixed(2)} ms vs ${quantile(raw, 0.9).toFixed(2)} ms` +
        (notCold > 0 ? `; ${notCold} iterations found a connection still open` : "")
      return { value: median(viaCm), baseline: median(raw), ratio, notes }
    })

  if (!SKIP.has("cold")) {
    log(`cold withConnection vs raw dial, ${PAIRS} pairs`)
    const r = yield* coldPairs(a.cm, PAIRS)
    results.push({
      suite: SUITE,
      name: "withConnection, new peer (dial + NodeId + map + RPC client, trivial body), no seeds, median",
      value: r.value,
      unit: "ms",
      baselineName: "raw QUICClient dial, same certs + NodeId check",
      baseline: r.baseline,
      ratio: r.ratio,
      target: `≤ ${COLD_TARGET.toFixed(2)}×`,
      met: r.ratio <= COLD_TARGET,
      notes: r.notes
    })
  }

  if (!SKIP.has("seeded")) {
    // The same, from a node with a seed configured (B connected to it too): a dial to a
    // non-seed node also asks the seeds to relay a hole-punch signal to it.
    log(`cold withConnection with a seed configured, ${SEEDED_PAIRS} pairs`)
    const seed = yield* buildNode(scope, "bench-cm-seed")
    const seedNodes: ReadonlyArray<Contact> = [
      { nodeId: seed.cm.nodeId, host: seed.cm.host, port: seed.cm.port }
    ]
    const a2 = yield* buildNode(scope, "bench-cm-a", { seedNodes })
    for (const n of [a2, b])
      yield* n.cm
        .getMultiConnection([seed.cm.nodeId], [{ host: seed.cm.host, port: seed.cm.port }])
        .pipe(Effect.orDie)
    yield* graphOf(a2.ctx)
      .setNode(nodeIdB, { host: b.cm.host, port: b.cm.port, scope: "local" })
      .pipe(Effect.orDie)
    const r = yield* coldPairs(a2.cm, SEEDED_PAIRS)
    results.push({
      suite: SUITE,
      name: "withConnection, new peer, 1 seed configured (hole-punch signal via the seed), median",
      value: r.value,
      unit: "ms",
      baselineName: "raw QUICClient dial, same certs + NodeId check",
      baseline: r.baseline,
      ratio: r.ratio,
      notes: `${r.notes}; the target above applies to the dial itself (no seeds)`
    })
  }

  if (!SKIP.has("warm")) {
    log("withConnection + ping on an existing connection vs raw echo")
    yield* a.cm.getConnection(nodeIdB).pipe(Effect.orDie)
    const rawPair = yield* rawEchoPair(yield* keyRingOf(b.ctx).tlsConfig).pipe(Scope.extend(scope))
    const rawConnection = rawPair.client.connection
    // About the size of a ping request frame.
    const rawBytes = new Uint8Array(48).fill(7)
    type Kind = "cm" | "raw"
    const once = (kind: Kind): Effect.Effect<unknown> =>
      kind === "raw"
        ? Effect.promise(() => rawEcho(rawConnection, rawBytes))
        : Effect.orDie(a.cm.withConnection(nodeIdB, (h) => h.client.ping))
    const sequential = (kind: Kind) =>
      Effect.gen(function* () {
        const out: number[] = []
        const t0 = performance.now()
        for (let i = 0; i < SEQUENTIAL_PER_ROUND; i++) {
          const t = performance.now()
          yield* once(kind)
          out.push(performance.now() - t)
        }
        return { latencies: out, rate: SEQUENTIAL_PER_ROUND / ((performance.now() - t0) / 1000) }
      })
    const concurrent = (kind: Kind) =>
      Effect.gen(function* () {
        const t0 = performance.now()
        yield* Effect.forEach(
          Array.from({ length: CONCURRENT_CALLERS }),
          () => Effect.repeatN(once(kind), CALLS_PER_CALLER - 1),
          { concurrency: "unbounded", discard: true }
        )
        return (CONCURRENT_CALLERS * CALLS_PER_CALLER) / ((performance.now() - t0) / 1000)
      })
    const kinds: ReadonlyArray<Kind> = ["raw", "cm"]
    for (const kind of kinds) for (let i = 0; i < 30; i++) yield* once(kind)
    const latencies: Record<Kind, number[]> = { raw: [], cm: [] }
    const rate1: Record<Kind, number[]> = { raw: [], cm: [] }
    const rate32: Record<Kind, number[]> = { raw: [], cm: [] }
    for (let round = 0; round < WARM_ROUNDS; round++) {
      const order = round % 2 === 0 ? kinds : [...kinds].reverse()
      for (const kind of order) {
        const s = yield* sequential(kind)
        latencies[kind].push(...s.latencies)
        rate1[kind].push(s.rate)
      }
      for (const kind of order) rate32[kind].push(yield* concurrent(kind))
    }
    const lat = median(latencies.cm)
    const rawLat = median(latencies.raw)
    results.push(
      {
        suite: SUITE,
        name: "withConnection + ping, existing connection, 1 caller, median",
        value: lat,
        unit: "ms",
        baselineName: "raw echo on a new stream, existing connection",
        baseline: rawLat,
        ratio: lat / rawLat,
        target: `≤ ${WARM_TARGET.toFixed(2)}×`,
        met: lat / rawLat <= WARM_TARGET,
        notes:
          `${WARM_ROUNDS} alternating rounds of ${SEQUENTIAL_PER_ROUND}; ` +
          `p90 ${quantile(latencies.cm, 0.9).toFixed(3)} ms vs ${quantile(latencies.raw, 0.9).toFixed(3)} ms`
      },
      {
        suite: SUITE,
        name: "withConnection + ping, existing connection, 1 caller",
        value: median(rate1.cm),
        unit: "calls/s",
        baselineName: "raw echo on a new stream",
        baseline: median(rate1.raw),
        ratio: median(rate1.cm) / median(rate1.raw),
        notes: "higher is better; median of rounds"
      },
      {
        suite: SUITE,
        name: `withConnection + ping, existing connection, ${CONCURRENT_CALLERS} concurrent callers`,
        value: median(rate32.cm),
        unit: "calls/s",
        baselineName: "raw echo on a new stream",
        baseline: median(rate32.raw),
        ratio: median(rate32.cm) / median(rate32.raw),
        notes: `higher is better; ${CALLS_PER_CALLER} calls per caller, median of rounds`
      }
    )
  }
  yield* Scope.close(scope, Exit.void)
  return results
})

// ---- 3: memory per connection ----------------------------------------------------------------

// The child runs the same way as this file: compiled JavaScript under `npm run bench`, or
// TypeScript through tsx when run standalone.
const compiled = import.meta.url.endsWith(".js")
const childPath = fileURLToPath(
  new URL(`./connectionManagerChild.${compiled ? "js" : "ts"}`, import.meta.url)
)

const startChild = (args: ReadonlyArray<string>) =>
  spawn(process.execPath, ["--expose-gc", ...(compiled ? [] : ["--import", "tsx"]), childPath, ...args], {
    stdio: ["pipe", "pipe", "inherit"]
  })

/** The first stdout line of `child` that is a JSON object with `key`. */
const lineOf = <A>(child: ChildProcess, key: string): Promise<A> =>
  new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stdout! })
    lines.on("line", (line) => {
      if (!line.startsWith("{")) return
      const parsed = JSON.parse(line) as Record<string, A>
      if (key in parsed) {
        lines.close()
        resolve(parsed[key]!)
      }
    })
    child.once("exit", (code) => reject(new Error(`child exited (${code}) before "${key}"`)))
  })

interface MemoryRound {
  readonly cm: MemoryReport
  readonly raw: MemoryReport
  readonly transport: MemoryReport
  readonly processes: number
}

/** One round: fresh peer processes, then each side measured in a fresh process of its own. */
const memoryRound = async (round: number): Promise<MemoryRound> => {
  const total = CONNECTIONS + MEMORY_WARM
  const processes = Math.ceil(total / PEERS_PER_PROCESS)
  log(`memory round ${round}: ${total} peer nodes in ${processes} processes`)
  const t0 = performance.now()
  const peerChildren = Array.from({ length: processes }, (_, i) =>
    startChild([
      "peers",
      String(Math.min(PEERS_PER_PROCESS, total - i * PEERS_PER_PROCESS)),
      `bench-cm-peer-${round}-${i}`
    ])
  )
  try {
    const peers = (
      await Promise.all(peerChildren.map((c) => lineOf<ReadonlyArray<PeerInfo>>(c, "peers")))
    ).flat()
    log(`memory: peers up in ${((performance.now() - t0) / 1000).toFixed(1)} s`)
    const measure = async (kind: MemoryKind, toPeers: ReadonlyArray<PeerInfo>, budgetMs?: number) => {
      const child = startChild([
        "memory",
        kind,
        String(MEMORY_WARM),
        ...(budgetMs === undefined ? [] : [String(budgetMs)])
      ])
      const report = lineOf<MemoryReport>(child, "memory")
      child.stdin.write(`${JSON.stringify({ peers: toPeers })}\n`)
      try {
        return await report
      } finally {
        if (child.exitCode === null) child.kill()
      }
    }
    // The manager first, within the budget; then as many raw connections as the manager
    // holds. Different identities, so the peers never take one side's connection for the other's.
    const cm = await measure("cm", peers, MEMORY_BUDGET_MS)
    log(`memory: manager ${cm.held}/${cm.connections} in ${(cm.connectMs / 1000).toFixed(1)} s`)
    const raw = await measure("raw", peers.slice(0, MEMORY_WARM + cm.held))
    log(`memory: raw ${raw.held}/${raw.connections} in ${(raw.connectMs / 1000).toFixed(1)} s`)
    const transport = await measure("transport", peers.slice(0, MEMORY_WARM + cm.held))
    log(`memory: transport ${transport.held}/${transport.connections}`)
    return { cm, raw, transport, processes }
  } finally {
    for (const c of peerChildren) {
      c.stdin?.end()
      if (c.exitCode === null) setTimeout(() => c.exitCode === null && c.kill(), 2000).unref()
    }
  }
}

/**
 * MEMORY_ROUNDS rounds; each figure is the median over the rounds (value, baseline and ratio
 * each), with every round's ratio in the notes: one round's RSS ratio moves by ±0.12 from run to
 * run of the same code.
 */
const memory = async (): Promise<BenchResult[]> => {
  const rounds: Array<MemoryRound> = []
  for (let i = 1; i <= MEMORY_ROUNDS; i++) rounds.push(await memoryRound(i))
  const per = (r: MemoryReport, x: number) => kib(x) / r.held
  const figure = (pick: (r: MemoryReport) => number) => {
    const cm = rounds.map((r) => per(r.cm, pick(r.cm)))
    const raw = rounds.map((r) => per(r.raw, pick(r.raw)))
    const ratios = rounds.map((_, i) => cm[i]! / raw[i]!)
    return { value: median(cm), baseline: median(raw), ratio: median(ratios), ratios }
  }
  const heap = figure((r) => r.heapDelta)
  const rss = figure((r) => r.rssDelta)
  const perRound = (ratios: ReadonlyArray<number>) => ratios.map((x) => `${x.toFixed(2)}×`).join(", ")
  const mid = (pick: (r: MemoryRound) => number) => median(rounds.map(pick))
  const held = Math.round(mid((r) => r.cm.held))
  const how =
    `median of ${rounds.length} rounds; ${held} connections held at once (${CONNECTIONS} wanted, ${MEMORY_BUDGET_MS / 1000} s budget; ` +
    `+${MEMORY_WARM} before the baseline reading) to full nodes in ${rounds[0]!.processes} peer processes; ` +
    `each side measured in a fresh process after gc, delta / connections held; ` +
    `held ${rounds.map((r) => `${r.cm.held}/${r.cm.connections} vs ${r.raw.held}/${r.raw.connections}`).join("; ")} attempted; ` +
    `connect time ${(mid((r) => r.cm.connectMs) / 1000).toFixed(1)} s vs ${(mid((r) => r.raw.connectMs) / 1000).toFixed(1)} s (32 at a time)`
  const perOf = (side: (r: MemoryRound) => MemoryReport, pick: (r: MemoryReport) => number) =>
    mid((r) => per(side(r), pick(side(r)))).toFixed(1)
  const cmSide = (r: MemoryRound) => r.cm
  const rawSide = (r: MemoryRound) => r.raw
  const transportSide = (r: MemoryRound) => r.transport
  const result = (what: string, f: ReturnType<typeof figure>, notes: string): BenchResult => ({
    suite: SUITE,
    name: `memory per connection (${held} held), ${what}`,
    value: f.value,
    unit: "KiB",
    baselineName: "raw QUICClients on one QUICSocket",
    baseline: f.baseline,
    ratio: f.ratio,
    target: `≤ ${MEMORY_TARGET.toFixed(2)}×`,
    met: f.ratio <= MEMORY_TARGET,
    notes: `${notes}; per round ${perRound(f.ratios)}`
  })
  return [
    result(
      "JS heap",
      heap,
      `${how}; external ${perOf(cmSide, (r) => r.externalDelta)} vs ${perOf(rawSide, (r) => r.externalDelta)} KiB; ` +
        `V8 heap reserved (heapTotal) ${perOf(cmSide, (r) => r.heapTotalDelta)} vs ${perOf(rawSide, (r) => r.heapTotalDelta)} KiB; ` +
        `QuicTransport dials alone (same method): heap ${perOf(transportSide, (r) => r.heapDelta)} KiB, ` +
        `RSS ${perOf(transportSide, (r) => r.rssDelta)} KiB per connection`
    ),
    result("RSS", rss, "RSS includes quiche's native state; same method as the heap figure")
  ]
}

// ---- 4: lookups on a loopback network ---------------------------------------------------------

/** A child's stdout as a request/response channel: one JSON line answers each command, in order. */
const channel = (child: ChildProcess) => {
  const waiting: Array<(value: Record<string, unknown>) => void> = []
  const lines = createInterface({ input: child.stdout! })
  lines.on("line", (line) => {
    if (line.startsWith("{")) waiting.shift()?.(JSON.parse(line) as Record<string, unknown>)
  })
  return <A>(key: string, command?: unknown): Promise<A> =>
    new Promise((resolve, reject) => {
      const onExit = (code: number | null) => reject(new Error(`child exited (${code}) before "${key}"`))
      child.once("exit", onExit)
      waiting.push((parsed) => {
        child.off("exit", onExit)
        if (key in parsed) resolve(parsed[key] as A)
        else reject(new Error(`child answered ${JSON.stringify(parsed)}, not "${key}"`))
      })
      if (command !== undefined) child.stdin!.write(`${JSON.stringify(command)}\n`)
    })
}

const lookups = async (): Promise<BenchResult[]> => {
  const scope = Effect.runSync(Scope.make())
  const t0 = performance.now()
  const idle = { connectionIdleTimeoutTime: CMConfig.defaults.connectionIdleTimeoutTime }
  // The seeds live in this process; the other nodes in NET_PROCESSES children.
  const seeds = await Effect.runPromise(
    Effect.forEach(
      Array.from({ length: SEEDS }, (_, i) => i),
      (i) => buildNode(scope, `bench-cm-net-seed-${i}`, idle)
    )
  )
  const seedPeers: ReadonlyArray<PeerInfo> = seeds.map((s) => ({
    nodeId: NodeId.encode(s.cm.nodeId),
    host: s.cm.host,
    port: s.cm.port
  }))
  // The seeds know one another.
  for (const s of seeds)
    for (const o of seeds)
      if (o !== s)
        await Effect.runPromise(
          graphOf(s.ctx)
            .setNode(o.cm.nodeId, { host: o.cm.host, port: o.cm.port, scope: "local" })
            .pipe(Effect.orDie)
        )
  const others = NODES - SEEDS
  const processes = Math.max(1, Math.min(NET_PROCESSES, others))
  log(
    `lookup: ${others} nodes in ${processes} processes joining through ${SEEDS} seeds, ` +
      `${NET_CONCURRENCY} at a time per process (budget ${JOIN_BUDGET_MS / 1000} s)`
  )
  const children = Array.from({ length: processes }, (_, i) =>
    startChild([
      "net",
      String(Math.floor(others / processes) + (i < others % processes ? 1 : 0)),
      `bench-cm-net-${i}`,
      JSON.stringify(seedPeers),
      String(Math.max(0, JOIN_BUDGET_MS - (performance.now() - t0))),
      String(NET_CONCURRENCY)
    ])
  )
  const ask = children.map(channel)
  try {
    const nets = await Promise.all(ask.map((f) => f<NetReport>("net")))
    const joinSeconds = (performance.now() - t0) / 1000
    // Every node of the network: a seed (here) or node `index` of child `child`.
    type Member = { readonly peer: PeerInfo; readonly child: number; readonly index: number }
    const all: Member[] = [
      ...seedPeers.map((peer, index) => ({ peer, child: -1, index })),
      ...nets.flatMap((n, child) => n.nodes.map((peer, index) => ({ peer, child, index })))
    ]
    const joinTimes = nets.flatMap((n) => [...n.joinMs])
    log(`lookup: ${all.length} nodes joined in ${joinSeconds.toFixed(1)} s`)
    let tableSize = 0
    let connectionsHeld = 0
    for (const s of seeds) {
      tableSize += await Effect.runPromise(graphOf(s.ctx).size)
      connectionsHeld += (await Effect.runPromise(s.cm.listConnections)).length
    }
    for (const stats of await Promise.all(ask.map((f) => f<NetStats>("stats", { stats: true })))) {
      tableSize += stats.tableSize
      connectionsHeld += stats.connections
    }

    const times: number[] = []
    const queries: number[] = []
    const rounds: number[] = []
    let found = 0
    let alreadyKnown = 0
    const random = (n: number) => Math.floor(Math.random() * n)
    const l0 = performance.now()
    for (let i = 0; i < LOOKUPS && performance.now() - l0 < LOOKUP_BUDGET_MS; i++) {
      const from = all[random(all.length)]!
      let to = from
      while (to === from) to = all[random(all.length)]!
      let r: LookupReport
      if (from.child >= 0)
        r = await ask[from.child]!<LookupReport>("lookup", {
          lookup: { from: from.index, target: to.peer.nodeId, port: to.peer.port }
        })
      else {
        const seed = seeds[from.index]!
        const target = decodeId(to.peer.nodeId)
        const known = Option.isSome(await Effect.runPromise(graphOf(seed.ctx).getNode(target)))
        const t = performance.now()
        const res = await Effect.runPromise(seed.cm.getClosestGlobalNodes(target))
        r = {
          ms: performance.now() - t,
          queries: res.stats.queries,
          rounds: res.stats.rounds,
          found: Option.isSome(res.address) && res.address.value.port === to.peer.port,
          known
        }
      }
      times.push(r.ms)
      queries.push(r.queries)
      rounds.push(r.rounds)
      if (r.found) found++
      if (r.known) alreadyKnown++
    }
    const how =
      `${all.length} of ${NODES} full nodes on loopback: ${SEEDS} seeds in the bench process, the others in ` +
      `${processes} child processes (join budget ${JOIN_BUDGET_MS / 1000} s), joined through the seeds with ` +
      `syncNodeGraph, ${NET_CONCURRENCY} at a time per process, in ${joinSeconds.toFixed(0)} s ` +
      `(join median ${median(joinTimes).toFixed(0)} ms, p95 ${quantile(joinTimes, 0.95).toFixed(0)} ms); ` +
      `mean table size ${(tableSize / all.length).toFixed(1)}, ${(connectionsHeld / all.length).toFixed(1)} ` +
      `connections per node; k 20, alpha 3; ${times.length} lookups of random existing targets from random ` +
      `nodes (time measured in the asking node's process), ${found} found, ${alreadyKnown} targets already ` +
      `in the asking node's table`
    return [
      {
        suite: SUITE,
        name: `lookup (getClosestGlobalNodes), ${all.length} nodes, median`,
        value: median(times),
        unit: "ms",
        notes: how
      },
      { suite: SUITE, name: `lookup, ${all.length} nodes, p95`, value: quantile(times, 0.95), unit: "ms" },
      {
        suite: SUITE,
        name: `lookup, ${all.length} nodes, RPC queries per lookup, median`,
        value: median(queries),
        unit: "queries",
        notes:
          `p95 ${quantile(queries, 0.95)}, mean ${(queries.reduce((x, y) => x + y, 0) / queries.length).toFixed(1)}; ` +
          `rounds median ${median(rounds)}, max ${Math.max(...rounds)}`
      }
    ]
  } finally {
    for (const c of children) {
      c.stdin?.end()
      if (c.exitCode === null) setTimeout(() => c.exitCode === null && c.kill(), 2000).unref()
    }
    // The seeds' connections drain for a while on close: give it a few seconds, no longer.
    await Effect.runPromise(
      Scope.close(scope, Exit.void).pipe(Effect.disconnect, Effect.timeout("5 seconds"), Effect.option)
    )
  }
}

export const suite: BenchSuite = {
  name: SUITE,
  run: async () => {
    const results: BenchResult[] = []
    if (["cold", "seeded", "warm"].some((part) => !SKIP.has(part)))
      results.push(...(await Effect.runPromise(coldAndWarm)))
    if (!SKIP.has("memory")) results.push(...(await memory()))
    if (!SKIP.has("lookup")) results.push(...(await lookups()))
    return results
  }
}
