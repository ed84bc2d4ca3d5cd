/**
 * Child processes of the connection-manager bench (bench/connectionManager.ts), run as
 * `node --expose-gc build/bench/bench/connectionManagerChild.js <mode> …` (compiled, under
 * `npm run bench`) or `node --expose-gc --import tsx bench/connectionManagerChild.ts <mode> …`:
 *
 * - `peers <count> <seedPrefix> [full|light]`: `count` full nodes (KeyRingTest + in-memory NodeGraph +
 *   QuicTransportLive + agent RPC + ConnectionManager; `light`: KeyRingTest + QuicTransportLive
 *   accepting) on 127.0.0.1, then one stdout line
 *   `{"peers":[{"nodeId","host","port"},…]}`; exits when stdin ends.
 * - `memory <cm|transport|raw> <warm> [budgetMs]`: reads one stdin line `{"peers":[…]}` and opens a
 *   connection to every peer from this fresh process (through one ConnectionManager, one QuicTransport (dial only), or
 *   as raw js-quic clients from one QUICSocket with the same certificate checks); the first `warm`
 *   ones before the baseline reading, the rest after (none started once `budgetMs` has gone
 *   by); prints `{"memory":{…}}` and exits.
 * - `net <count> <seedPrefix> <seedsJson> [budgetMs] [concurrency]`: `count` full nodes (seeds
 *   `[{"nodeId","host","port"},…]` configured, the default idle timeout), each built and joined
 *   with `syncNodeGraph`, `concurrency` (6) at a time, none started once `budgetMs` has gone by
 *   and those still joining 20 s later stopped and left out;
 *   progress on stderr, then `{"net":{"nodes":[{"nodeId","host","port"},…],"joinMs":[…]}}` (the
 *   nodes that joined, in order). Then answers stdin lines, one stdout line each:
 *   `{"lookup":{"from":i,"target":"<NodeIdEncoded>","port":p}}` runs `getClosestGlobalNodes` on
 *   node `i` → `{"lookup":{"ms","queries","rounds","found","known"}}` (`found`: the address
 *   found has port `p`; `known`: the target was in node `i`'s table before);
 *   `{"stats":true}` → `{"stats":{"tableSize","connections"}}` (sums over the nodes). Exits when
 *   stdin ends.
 *
 * The measuring side runs in a process of its own for each kind so that neither inherits
 * pages the other freed (RSS does not shrink back after a close).
 */

import { createInterface } from "node:readline"
import { pathToFileURL } from "node:url"
import { writeHeapSnapshot } from "node:v8"
import type { QUICClient } from "@matrixai/quic"
import { Context, Effect, Either, Layer, Option, Scope, Stream } from "effect"
import * as KeyRingTest from "../src/layers/KeyRingTest.js"
import * as NodeGraphMemory from "../src/layers/NodeGraphMemory.js"
import * as NodeLive from "../src/layers/NodeLive.js"
import * as QuicTransportLive from "../src/layers/QuicTransportLive.js"
import { ConnectionManager, ConnectionManagerDiagnostics } from "../src/services/ConnectionManager.js"
import * as CMConfig from "../src/services/ConnectionManagerConfig.js"
import type { Contact } from "../src/services/Contact.js"
import { KeyRing } from "../src/services/KeyRing.js"
import { NodeGraph } from "../src/services/NodeGraph.js"
import * as NodeId from "../src/services/NodeId.js"
import { QuicTransport, QuicTransportConfig } from "../src/services/QuicTransport.js"
import { nodeIdVerifier, rawDial, startSocket } from "./rawQuic.js"
import { gcHard } from "./types.js"

export interface PeerInfo {
  readonly nodeId: string
  readonly host: string
  readonly port: number
}

export interface MemoryReport {
  readonly kind: MemoryKind
  /** Connections attempted after the baseline reading, and how many are held at the end. */
  readonly connections: number
  readonly held: number
  readonly heapDelta: number
  readonly rssDelta: number
  readonly externalDelta: number
  /** V8 heap reserved (heapTotal): the part of RSS that is the JS heap with its free space. */
  readonly heapTotalDelta: number
  readonly connectMs: number
  readonly failures: number
}

/** Runs `f` on every item with at most `n` in flight; none is started after `deadline` (ms, performance.now). */
export const pool = async <A>(
  items: ReadonlyArray<A>,
  n: number,
  f: (a: A) => Promise<unknown>,
  deadline = Number.POSITIVE_INFINITY
) => {
  let next = 0
  const worker = async () => {
    while (next < items.length && performance.now() < deadline) {
      const item = items[next++]!
      await f(item)
    }
  }
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, worker))
}

/** A full node as the bench's peers and managers are built. */
export const nodeLayer = (seed: string, config: Partial<CMConfig.ConnectionManagerOptions> = {}) =>
  NodeLive.layer({
    keyRing: KeyRingTest.layer(seed),
    nodeGraph: NodeGraphMemory.layer(),
    transport: { host: "127.0.0.1", port: 0 },
    config: CMConfig.layer({ connectionIdleTimeoutTime: CMConfig.defaults.bucketRefreshInterval, ...config })
  })

/** A peer that only accepts: KeyRingTest and QuicTransportLive, inbound connections drained. */
const lightPeer = (seed: string, scope: Scope.Scope) =>
  Effect.gen(function* () {
    const ctx = yield* Layer.buildWithScope(
      QuicTransportLive.layer.pipe(
        Layer.provideMerge(KeyRingTest.layer(seed)),
        Layer.provide(QuicTransportConfig.layer({ host: "127.0.0.1" }))
      ),
      scope
    )
    const transport = Context.get(ctx, QuicTransport)
    yield* Stream.runDrain(transport.incoming).pipe(Effect.forkIn(scope))
    const nodeId = yield* Context.get(ctx, KeyRing).nodeId
    return { nodeId: NodeId.encode(nodeId), host: "127.0.0.1", port: transport.port }
  })

const runPeers = async (count: number, prefix: string, kind: string) => {
  const scope = Effect.runSync(Scope.make())
  const peers: PeerInfo[] = []
  for (let i = 0; i < count; i++) {
    const seed = `${prefix}-${i}`
    if (kind === "light") peers.push(await Effect.runPromise(lightPeer(seed, scope)))
    else {
      const ctx = await Effect.runPromise(Layer.buildWithScope(nodeLayer(seed), scope))
      const cm = Context.get(ctx, ConnectionManager)
      peers.push({ nodeId: NodeId.encode(cm.nodeId), host: cm.host, port: cm.port })
    }
  }
  process.stdout.write(`${JSON.stringify({ peers })}\n`)
  process.stdin.resume()
  process.stdin.on("end", () => process.exit(0))
}

export interface NetReport {
  readonly nodes: ReadonlyArray<PeerInfo>
  readonly joinMs: ReadonlyArray<number>
}

export interface LookupReport {
  readonly ms: number
  readonly queries: number
  readonly rounds: number
  readonly found: boolean
  readonly known: boolean
}

export interface NetStats {
  readonly tableSize: number
  readonly connections: number
}

const runNet = async (
  count: number,
  prefix: string,
  seedsJson: string,
  budgetMs: number,
  concurrency: number
) => {
  const t0 = performance.now()
  const seedNodes: ReadonlyArray<Contact> = (JSON.parse(seedsJson) as ReadonlyArray<PeerInfo>).map((p) => ({
    nodeId: decodeId(p.nodeId),
    host: p.host,
    port: p.port
  }))
  const scope = Effect.runSync(Scope.make())
  const joined: Array<{ cm: ConnectionManager["Type"]; graph: NodeGraph["Type"] }> = []
  const joinMs: number[] = []
  let failed = 0
  let cut = 0
  let lastLog = t0
  const joining = pool(
    Array.from({ length: count }, (_, i) => i),
    concurrency,
    async (i) => {
      const ctx = await Effect.runPromise(
        Layer.buildWithScope(
          nodeLayer(`${prefix}-${i}`, {
            connectionIdleTimeoutTime: CMConfig.defaults.connectionIdleTimeoutTime,
            seedNodes
          }),
          scope
        )
      )
      const cm = Context.get(ctx, ConnectionManager)
      const t = performance.now()
      // A join still running 20 s after the budget is stopped (it would load the lookups).
      const left = Math.max(0, t0 + budgetMs + 20_000 - t)
      const ok = await Effect.runPromise(Effect.either(Effect.timeout(cm.syncNodeGraph(), left)))
      if (Either.isLeft(ok)) {
        if (ok.left._tag === "TimeoutException") cut++
        else failed++
        return
      }
      joinMs.push(performance.now() - t)
      joined.push({ cm, graph: Context.get(ctx, NodeGraph) })
      if (performance.now() - lastLog > 15_000) {
        lastLog = performance.now()
        process.stderr.write(
          `  connectionManager: net ${prefix}: ${joined.length}/${count} joined in ${((lastLog - t0) / 1000).toFixed(0)} s\n`
        )
      }
    },
    t0 + budgetMs
  )
  // Joins still running 20 s after the budget are not waited for (nor reported).
  await Promise.race([
    joining,
    new Promise((r) => setTimeout(r, Math.max(0, t0 + budgetMs + 20_000 - performance.now())).unref())
  ])
  const late = count - joined.length - failed - cut
  process.stderr.write(
    `  connectionManager: net ${prefix}: ${joined.length}/${count} joined in ${((performance.now() - t0) / 1000).toFixed(1)} s` +
      (failed > 0 ? `, ${failed} joins failed` : "") +
      (cut > 0 ? `, ${cut} joins stopped 20 s after the budget` : "") +
      (late > 0 ? `, ${late} not started` : "") +
      "\n"
  )
  const nodes = joined.map(({ cm }) => ({ nodeId: NodeId.encode(cm.nodeId), host: cm.host, port: cm.port }))
  const report: NetReport = { nodes, joinMs }
  process.stdout.write(`${JSON.stringify({ net: report })}\n`)
  const lines = createInterface({ input: process.stdin })
  for await (const line of lines) {
    if (!line.startsWith("{")) continue
    const command = JSON.parse(line) as {
      lookup?: { from: number; target: string; port: number }
      stats?: true
    }
    if (command.lookup !== undefined) {
      const { from, target, port } = command.lookup
      const node = joined[from]!
      const targetId = decodeId(target)
      const known = Option.isSome(await Effect.runPromise(node.graph.getNode(targetId)))
      const t = performance.now()
      const r = await Effect.runPromise(node.cm.getClosestGlobalNodes(targetId))
      const ms = performance.now() - t
      const lookup: LookupReport = {
        ms,
        queries: r.stats.queries,
        rounds: r.stats.rounds,
        found: Option.isSome(r.address) && r.address.value.port === port,
        known
      }
      process.stdout.write(`${JSON.stringify({ lookup })}\n`)
    } else if (command.stats !== undefined) {
      let tableSize = 0
      let connections = 0
      for (const n of joined) {
        tableSize += await Effect.runPromise(n.graph.size)
        connections += (await Effect.runPromise(n.cm.listConnections)).length
      }
      const stats: NetStats = { tableSize, connections }
      process.stdout.write(`${JSON.stringify({ stats })}\n`)
    }
  }
  process.exit(0)
}

const readPeers = async (): Promise<ReadonlyArray<PeerInfo>> => {
  const lines = createInterface({ input: process.stdin })
  for await (const line of lines) {
    if (line.startsWith("{")) return (JSON.parse(line) as { peers: ReadonlyArray<PeerInfo> }).peers
  }
  throw new Error("no peers on stdin")
}

export const decodeId = (text: string) => {
  const id = NodeId.decode(text)
  if (Either.isLeft(id)) throw new Error(`bad NodeId ${text}`)
  return id.right
}

const CONCURRENCY = 32

export type MemoryKind = "cm" | "transport" | "raw"

const runMemory = async (kind: MemoryKind, warm: number, budgetMs: number) => {
  const peers = await readPeers()
  const warmPeers = peers.slice(0, warm)
  const measured = peers.slice(warm)
  let failures = 0
  let connect: (p: PeerInfo) => Promise<unknown>
  let held: () => Promise<number>
  let diagnostics: () => Promise<unknown> = async () => undefined
  // The manager's warm-up also makes a call on each warm connection: a full bucket's ping
  // of its oldest node calls peers during the measured part, and the code compiled for that
  // first RPC client would otherwise count as memory of the connections measured.
  let warmCalls: () => Promise<unknown> = async () => undefined
  if (kind === "cm") {
    const scope = Effect.runSync(Scope.make())
    const ctx = await Effect.runPromise(
      Layer.buildWithScope(nodeLayer("bench-cm-memory-manager", { maxConnections: peers.length + 16 }), scope)
    )
    const cm = Context.get(ctx, ConnectionManager)
    connect = (p) =>
      Effect.runPromise(
        cm.getConnectionWithAddress(decodeId(p.nodeId), { host: p.host, port: p.port }).pipe(
          Effect.catchAll(() =>
            Effect.sync(() => {
              failures++
            })
          )
        )
      )
    held = () => Effect.runPromise(Effect.map(cm.listConnections, (xs) => xs.length))
    const snapshot = Context.get(ctx, ConnectionManagerDiagnostics).snapshot
    diagnostics = () => Effect.runPromise(snapshot)
    warmCalls = () =>
      Effect.runPromise(
        Effect.forEach(warmPeers, (p) => cm.pingNode(decodeId(p.nodeId)), { concurrency: 8, discard: true })
      )
  } else if (kind === "transport") {
    const scope = Effect.runSync(Scope.make())
    const ctx = await Effect.runPromise(
      Layer.buildWithScope(
        QuicTransportLive.layer.pipe(
          Layer.provideMerge(KeyRingTest.layer("bench-cm-memory-transport")),
          Layer.provide(QuicTransportConfig.layer({ host: "127.0.0.1" }))
        ),
        scope
      )
    )
    const transport = Context.get(ctx, QuicTransport)
    let count = 0
    connect = (p) =>
      Effect.runPromise(
        transport.dial({ host: p.host, port: p.port, expectedNodeIds: [decodeId(p.nodeId)] }).pipe(
          Scope.extend(scope),
          Effect.match({
            onFailure: () => {
              failures++
            },
            onSuccess: () => {
              count++
            }
          })
        )
      )
    held = async () => count
  } else {
    const keyRing = await Effect.runPromise(
      Effect.map(Layer.build(KeyRingTest.layer("bench-cm-memory-raw")).pipe(Effect.scoped), (c) =>
        Context.get(c, KeyRing)
      )
    )
    const tls = await Effect.runPromise(keyRing.tlsConfig)
    const socket = await startSocket("127.0.0.1")
    const clients: QUICClient[] = []
    connect = async (p) => {
      try {
        clients.push(
          await rawDial({
            socket,
            host: p.host,
            port: p.port,
            tls,
            verify: nodeIdVerifier(keyRing, decodeId(p.nodeId))
          })
        )
      } catch {
        failures++
      }
    }
    held = async () => clients.length
  }
  await pool(warmPeers, CONCURRENCY, connect)
  await warmCalls()
  // Every side waits as long as the measured part does (the warm calls' idle RPC streams close).
  await new Promise((r) => setTimeout(r, 2500))
  await gcHard()
  const before = process.memoryUsage()
  if (process.env.BENCH_HEAP_SNAPSHOT)
    writeHeapSnapshot(`${process.env.BENCH_HEAP_SNAPSHOT}-${kind}-before.heapsnapshot`)
  const t0 = performance.now()
  let attempted = 0
  const failedBefore = failures
  await pool(
    measured,
    CONCURRENCY,
    (p) => {
      attempted++
      return connect(p)
    },
    t0 + budgetMs
  )
  const connectMs = performance.now() - t0
  // Let the handshakes' tails (acks, the peers' first keep-alives) pass, and the calls made
  // while connecting (a full bucket's ping of its oldest node) end and their RPC streams close
  // as idle (PeerRpcLive.CLIENT_IDLE_CLOSE, 1 s): what is left is the cost of a held connection.
  await new Promise((r) => setTimeout(r, 2500))
  await gcHard()
  const after = process.memoryUsage()
  if (process.env.BENCH_HEAP_SNAPSHOT) {
    const store = (globalThis as Record<string, unknown>)["effect/GlobalValue"] as Map<
      symbol,
      { roots: Set<unknown> }
    >
    const roots = store.get(Symbol.for("effect/FiberScope/Global"))?.roots
    process.stderr.write(`root fibers: ${roots?.size}; ${JSON.stringify(await diagnostics())}\n`)
    writeHeapSnapshot(`${process.env.BENCH_HEAP_SNAPSHOT}-${kind}-after.heapsnapshot`)
  }
  const report: MemoryReport = {
    kind,
    connections: attempted,
    held: (await held()) - warm,
    heapDelta: after.heapUsed - before.heapUsed,
    rssDelta: after.rss - before.rss,
    externalDelta: after.external - before.external,
    heapTotalDelta: after.heapTotal - before.heapTotal,
    connectMs,
    failures: failures - failedBefore
  }
  process.stdout.write(`${JSON.stringify({ memory: report })}\n`)
  process.exit(0)
}

const isMain = process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href
const [mode, a, b, c, d, e] = isMain ? process.argv.slice(2) : []
if (mode === "peers") await runPeers(Number(a), b ?? "bench-cm-peer", c ?? "full")
else if (mode === "net")
  await runNet(
    Number(a),
    b ?? "bench-cm-net",
    c ?? "[]",
    Number(d ?? Number.POSITIVE_INFINITY),
    Number(e ?? 6)
  )
else if (mode === "memory")
  await runMemory(
    a === "raw" || a === "transport" ? a : "cm",
    Number(b ?? 16),
    Number(c ?? Number.POSITIVE_INFINITY)
  )
