/**
 * Child processes of the connection-manager bench (bench/connectionManager.ts), run as
 * `node --expose-gc --import tsx bench/connectionManagerChild.ts <mode> …`:
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
 *
 * The measuring side runs in a process of its own for each kind so that neither inherits
 * pages the other freed (RSS does not shrink back after a close).
 */
import { createInterface } from "node:readline"
import { pathToFileURL } from "node:url"
import { writeHeapSnapshot } from "node:v8"
import type { QUICClient } from "@matrixai/quic"
import { Context, Effect, Either, Layer, Scope, Stream } from "effect"
import * as KeyRingTest from "../src/layers/KeyRingTest.js"
import * as Node from "../src/layers/Node.js"
import * as NodeGraphMemory from "../src/layers/NodeGraphMemory.js"
import * as QuicTransportLive from "../src/layers/QuicTransportLive.js"
import { ConnectionManager } from "../src/services/ConnectionManager.js"
import * as CMConfig from "../src/services/ConnectionManagerConfig.js"
import { KeyRing } from "../src/services/KeyRing.js"
import * as NodeId from "../src/services/NodeId.js"
import { QuicTransport, QuicTransportConfig } from "../src/services/QuicTransport.js"
import { nodeIdVerifier, rawDial, startSocket } from "./rawQuic.js"

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
  readonly connectMs: number
  readonly failures: number
}

const gcHard = async () => {
  const gc = (globalThis as { gc?: () => void }).gc
  for (let i = 0; i < 4; i++) {
    gc?.()
    await new Promise((r) => setTimeout(r, 50))
  }
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
  Node.layer({
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

const readPeers = async (): Promise<ReadonlyArray<PeerInfo>> => {
  const lines = createInterface({ input: process.stdin })
  for await (const line of lines) {
    if (line.startsWith("{")) return (JSON.parse(line) as { peers: ReadonlyArray<PeerInfo> }).peers
  }
  throw new Error("no peers on stdin")
}

const decodeId = (text: string) => {
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
  await new Promise((r) => setTimeout(r, 200))
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
  // Let the handshakes' tails (acks, the peers' first keep-alives) pass.
  await new Promise((r) => setTimeout(r, 500))
  await gcHard()
  const after = process.memoryUsage()
  if (process.env.BENCH_HEAP_SNAPSHOT) {
    const store = (globalThis as Record<string, unknown>)["effect/GlobalValue"] as Map<
      symbol,
      { roots: Set<unknown> }
    >
    const roots = store.get(Symbol.for("effect/FiberScope/Global"))?.roots
    process.stderr.write(`root fibers: ${roots?.size}\n`)
    writeHeapSnapshot(`${process.env.BENCH_HEAP_SNAPSHOT}-${kind}-after.heapsnapshot`)
  }
  const report: MemoryReport = {
    kind,
    connections: attempted,
    held: (await held()) - warm,
    heapDelta: after.heapUsed - before.heapUsed,
    rssDelta: after.rss - before.rss,
    externalDelta: after.external - before.external,
    connectMs,
    failures: failures - failedBefore
  }
  process.stdout.write(`${JSON.stringify({ memory: report })}\n`)
  process.exit(0)
}

const isMain = process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href
const [mode, a, b, c] = isMain ? process.argv.slice(2) : []
if (mode === "peers") await runPeers(Number(a), b ?? "bench-cm-peer", c ?? "full")
else if (mode === "memory")
  await runMemory(
    a === "raw" || a === "transport" ? a : "cm",
    Number(b ?? 16),
    Number(c ?? Number.POSITIVE_INFINITY)
  )
