/**
 * Simulation: whole networks of real connection managers in one process, on virtual time.
 *
 * Every node is the production connection manager, composed by `Node.make` (the library's
 * composition of a node from services already made: a layer graph per node would cost more
 * memory than the node) with an in-memory NodeGraph and KeyRingTest keys, over a transport
 * bound in the SimNetwork world, its configuration one `NodeConfig` tree.
 * The agent RPC is PeerRpcSim by default (calls as messages on the simulated connections, one
 * PeerRpc for the whole world), or with `rpc: "wire"` a PeerRpcLive per node (the real
 * @effect/rpc framing as bytes on simulated streams). The whole run goes through
 * `SimRuntime.simulate`: a virtual clock that jumps to the next timer whenever every fiber
 * waits, and a scheduler that runs fibers in a fixed order. So a scenario is a pure function
 * of its options: the same options give the same trace hash and the same figures.
 *
 * - `makeWorld`: a world to script by hand (tests): add nodes, join them, crash, restart and
 *   look up; its `sim` partitions and heals the network.
 * - `runScenario`: build N nodes that join through a few seeds, optionally crash a fraction,
 *   run L lookups of random live targets from random live nodes, and report.
 */

import {
  Context,
  Data,
  Duration,
  Effect,
  Either,
  ExecutionStrategy,
  Exit,
  Layer,
  Option,
  Scope
} from "effect"
import * as KeyRingTest from "../layers/KeyRingTest.js"
import * as Node from "../layers/Node.js"
import * as NodeGraphMemory from "../layers/NodeGraphMemory.js"
import * as PeerRpcLive from "../layers/PeerRpcLive.js"
import * as PeerRpcSim from "../layers/PeerRpcSim.js"
import * as SimNet from "../layers/SimWorld.js"
import type { ConnectionManagerDiagnostics, ConnectionManagerService } from "../services/ConnectionManager.js"
import * as CMConfig from "../services/ConnectionManagerConfig.js"
import type { Contact } from "../services/Contact.js"
import * as Dns from "../services/Dns.js"
import * as NodeConfig from "../services/NodeConfig.js"
import type { NodeGraphService } from "../services/NodeGraph.js"
import type * as NodeId from "../services/NodeId.js"
import { PeerRpc } from "../services/PeerRpc.js"
import type { TransportError } from "../services/QuicTransport.js"
import { RpcConfig } from "../services/RpcServer.js"
import type { NatType, SimNetworkService, SimNetworkStats } from "../services/SimNetwork.js"
import { type SimContext, type SimDeadlock, simulate } from "./SimRuntime.js"

// ---- Options ---------------------------------------------------------------------------

export const NAT_TYPES: ReadonlyArray<NatType> = ["none", "full-cone", "restricted", "symmetric"]

/** Share of nodes behind each NAT type (weights; they need not sum to 1). */
export type NatMix = Readonly<Partial<Record<NatType, number>>>

/**
 * How the agent RPC travels: "direct" (PeerRpcSim: calls as messages on the simulated
 * connections, same latency, partitions and failures, no encoding) or "wire" (PeerRpcLive:
 * the real @effect/rpc framing as bytes on simulated streams; far slower).
 */
export type RpcMode = "direct" | "wire"

export const RPC_MODES: ReadonlyArray<RpcMode> = ["direct", "wire"]

export interface WorldOptions {
  readonly seed: number
  /** The agent RPC layer (default "direct"). */
  readonly rpc?: RpcMode
  /** One-way latency in ms (default 50). */
  readonly latency?: number
  /** Extra one-way delay, uniform in [0, jitter] ms (default latency / 5). */
  readonly jitter?: number
  /** Loss of handshake packets and datagrams (default 0). */
  readonly loss?: number
  /** Kademlia alpha: lookup queries in flight (default 3). */
  readonly alpha?: number
  /** Bucket size k (default 20). */
  readonly k?: number
  /** The manager's connect timeout, in ms; a lookup's whole budget by default (default 15 000). */
  readonly connectTimeoutMs?: number
  /** Budget of one lookup in ms (default: the connect timeout). */
  readonly lookupTimeoutMs?: number
  /** Trace events kept in memory for `sim.trace` (the hash covers all of them). Default 0. */
  readonly traceLimit?: number
}

export interface ScenarioOptions extends WorldOptions {
  /** Nodes in all, seeds included. */
  readonly nodes: number
  readonly lookups: number
  /** Seed nodes (public), default 3 (fewer when nodes < 6). */
  readonly seeds?: number
  /** Fraction of the non-seed nodes crashed after joining, before the lookups (default 0). */
  readonly crash?: number
  /** NAT mix of the non-seed nodes (default all public). */
  readonly nat?: NatMix
  /**
   * Joins in progress at once (default `defaultJoinConcurrency(nodes)`). One at a time is the
   * gentlest arrival, but the virtual build time then grows with N and with it everything
   * periodic (every node pings its seeds twice a minute).
   */
  readonly joinConcurrency?: number
  /** Lookups in progress at once (default 32). */
  readonly lookupConcurrency?: number
  /** Called as the phases progress (synchronously, inside the run). */
  readonly onProgress?: (progress: Progress) => void
}

export type Phase = "build" | "lookups"

export interface Progress {
  readonly phase: Phase
  readonly done: number
  readonly total: number
}

/** Parses "none:60,restricted:20,full-cone:10,symmetric:10" (weights, or fractions). */
export const parseNatMix = (text: string): Either.Either<NatMix, string> => {
  const mix: Partial<Record<NatType, number>> = {}
  const trimmed = text.trim()
  if (trimmed === "") return Either.left("empty NAT mix")
  for (const part of trimmed.split(",")) {
    const [name, weight, ...rest] = part.split(":").map((s) => s.trim())
    if (rest.length > 0 || name === undefined || name === "")
      return Either.left(`bad NAT mix entry "${part}": expected TYPE:WEIGHT`)
    if (!(NAT_TYPES as ReadonlyArray<string>).includes(name))
      return Either.left(`unknown NAT type "${name}": expected one of ${NAT_TYPES.join(", ")}`)
    const w = weight === undefined ? 1 : Number(weight)
    if (!Number.isFinite(w) || w < 0)
      return Either.left(`bad weight "${weight}" for ${name}: expected a number ≥ 0`)
    mix[name as NatType] = (mix[name as NatType] ?? 0) + w
  }
  if (Object.values(mix).every((w) => w === 0)) return Either.left("every NAT weight is 0")
  return Either.right(mix)
}

export const formatNatMix = (mix: NatMix) =>
  NAT_TYPES.filter((t) => (mix[t] ?? 0) > 0)
    .map((t) => `${t}:${mix[t]}`)
    .join(",")

// ---- Figures ---------------------------------------------------------------------------

export interface Summary {
  readonly count: number
  readonly mean: number
  readonly median: number
  readonly p95: number
  readonly p99: number
  readonly max: number
}

/** Nearest-rank quantiles. */
export const summarize = (values: ReadonlyArray<number>): Summary => {
  if (values.length === 0) return { count: 0, mean: 0, median: 0, p95: 0, p99: 0, max: 0 }
  const sorted = [...values].sort((a, b) => a - b)
  const rank = (q: number) =>
    sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!
  return {
    count: sorted.length,
    mean: sorted.reduce((s, x) => s + x, 0) / sorted.length,
    median: rank(0.5),
    p95: rank(0.95),
    p99: rank(0.99),
    max: sorted[sorted.length - 1]!
  }
}

export interface LookupOutcome {
  readonly from: number
  readonly target: number
  readonly fromNat: NatType
  readonly targetNat: NatType
  readonly found: boolean
  /** The origin already held a connection to the target: answered without the network (0 ms). */
  readonly connected: boolean
  readonly rounds: number
  readonly queries: number
  readonly contacted: number
  /** Virtual milliseconds the lookup took. */
  readonly virtualMs: number
}

export interface NatPairFigure {
  readonly from: NatType
  readonly to: NatType
  readonly attempts: number
  readonly succeeded: number
}

export interface SimReport {
  readonly options: {
    readonly nodes: number
    readonly lookups: number
    readonly seed: number
    readonly seeds: number
    readonly alpha: number
    readonly k: number
    readonly crash: number
    readonly loss: number
    readonly latency: number
    readonly jitter: number
    readonly nat: string
    readonly rpc: RpcMode
    readonly joinConcurrency: number
  }
  readonly joined: number
  readonly joinFailures: number
  readonly crashed: number
  readonly lookups: {
    readonly total: number
    readonly succeeded: number
    readonly successRate: number
  }
  readonly rounds: Summary
  readonly queries: Summary
  /**
   * Virtual time of the lookups that needed the network: those whose origin did not already
   * hold a connection to the target (`alreadyConnected` of them did, and took 0 ms).
   */
  readonly lookupVirtualMs: Summary
  readonly alreadyConnected: number
  /** Lookups by rounds taken (successful ones). */
  readonly roundsHistogram: ReadonlyArray<{ readonly rounds: number; readonly count: number }>
  /** Whether the origin got a connection to the target, by (origin NAT, target NAT). */
  readonly natPairs: ReadonlyArray<NatPairFigure>
  /** Connections each live node holds after the lookups. */
  readonly connectionsPerNode: Summary
  readonly virtualMs: { readonly build: number; readonly lookups: number; readonly total: number }
  readonly wallMs: { readonly build: number; readonly lookups: number; readonly total: number }
  readonly peakRssMiB: number
  readonly network: SimNetworkStats
  readonly traceHash: string
  readonly failedSamples: ReadonlyArray<LookupOutcome>
}

// ---- World -----------------------------------------------------------------------------

export interface SimNode {
  readonly index: number
  /** The KeyRingTest seed: the same key across restarts. */
  readonly keySeed: string
  readonly nodeId: NodeId.NodeId
  readonly nat: NatType
  readonly isSeed: boolean
  /** Bind address (private for NATed nodes). */
  readonly host: string
  readonly port: number
  alive: boolean
  cm: ConnectionManagerService
  diagnostics: ConnectionManagerDiagnostics["Type"]
  graph: NodeGraphService
  scope: Scope.CloseableScope
}

export interface SimWorld {
  readonly sim: SimNetworkService
  readonly ctx: SimContext
  readonly nodes: ReadonlyArray<SimNode>
  readonly seeds: ReadonlyArray<SimNode>
  /** Virtual milliseconds since the world started. */
  readonly now: Effect.Effect<number>
  /** Adds a running node (not joined). Seeds are public and given to later nodes. */
  readonly addNode: (options?: {
    readonly nat?: NatType
    readonly seed?: boolean
  }) => Effect.Effect<SimNode, TransportError>
  /** Connects to the seeds and looks up its own id; false when no seed answered. */
  readonly join: (node: SimNode) => Effect.Effect<boolean>
  /** The node's process dies: its transport crashes, its manager stops. */
  readonly crash: (node: SimNode) => Effect.Effect<void>
  /** Starts a crashed node again with the same key and address (its routing table is empty). */
  readonly restart: (node: SimNode) => Effect.Effect<void, TransportError>
  /** `from` looks `target` up with the network (never its own table first). */
  readonly lookup: (from: SimNode, target: SimNode) => Effect.Effect<LookupOutcome>
}

const keySeedOf = (seed: number, index: number) => `sim/${seed}/${index}`

/**
 * A world of managers on the current SimRuntime (call inside `simulate`). Everything it
 * builds lives in the current scope.
 */
export const makeWorld = (
  ctx: SimContext,
  options: WorldOptions
): Effect.Effect<SimWorld, never, Scope.Scope> =>
  Effect.gen(function* () {
    const latency = options.latency ?? 50
    const sim = yield* SimNet.make({
      seed: options.seed,
      latency: Duration.millis(latency),
      jitter: Duration.millis(options.jitter ?? Math.floor(latency / 5)),
      loss: options.loss ?? 0,
      traceLimit: options.traceLimit ?? 0
    })
    const worldScope = yield* Effect.scope
    const connectTimeoutMs = options.connectTimeoutMs ?? 15_000
    const lookupTimeout = Duration.millis(options.lookupTimeoutMs ?? connectTimeoutMs)
    const wire = options.rpc === "wire"
    // Direct calls need nothing per node: one PeerRpc serves the whole world.
    const directRpc = PeerRpcSim.make(sim, CMConfig.defaults.rpcCallTimeoutTime)
    // Simulated hosts are IP addresses: no name to resolve.
    const dns = Dns.makeStatic({})
    const nodes: SimNode[] = []
    const seeds: SimNode[] = []
    let nextIndex = 0

    const build = (node: { keySeed: string; nat: NatType; isSeed: boolean; host: string; port: number }) =>
      Effect.gen(function* () {
        const scope = yield* Scope.fork(worldScope, ExecutionStrategy.sequential)
        const seedNodes: ReadonlyArray<Contact> = seeds.map((s) => ({
          nodeId: s.nodeId,
          host: s.host,
          port: s.port
        }))
        const config = NodeConfig.make({
          connectionFindConcurrencyLimit: options.alpha ?? 3,
          connectionConnectTimeoutTime: Duration.millis(connectTimeoutMs),
          seedNodes,
          // A seed is provisioned to hold a connection to everyone who joined through it.
          ...(node.isSeed ? { maxConnections: 1_000_000, maxInboundPending: 1_000_000 } : {})
        })
        // The services of one node as values, composed by Node.make rather than with layers:
        // a layer graph per node costs more memory than the node (thousands of them).
        return yield* Effect.gen(function* () {
          const keyRing = yield* KeyRingTest.make(node.keySeed)
          const nodeId = yield* keyRing.nodeId
          const graph = yield* NodeGraphMemory.make(nodeId, options.k === undefined ? {} : { k: options.k })
          const transport = yield* sim.bind(
            {
              host: node.host,
              port: node.port,
              nat: node.nat,
              connectTimeout: config.transport.connectTimeout,
              maxIdleTimeout: config.transport.maxIdleTimeout
            },
            nodeId
          )
          const peerRpc = wire
            ? Context.get(
                yield* Layer.buildWithScope(
                  PeerRpcLive.layer.pipe(Layer.provide(Layer.succeed(RpcConfig, config.rpc))),
                  scope
                ),
                PeerRpc
              )
            : directRpc
          // The unchanged manager over the simulated transport and the chosen RPC layer.
          const { manager: cm, diagnostics } = yield* Node.make({
            config: config.manager,
            keyRing,
            nodeGraph: graph,
            transport,
            peerRpc,
            dns
          })
          return { scope, cm, diagnostics, graph }
        }).pipe(
          Scope.extend(scope),
          Effect.onError(() => Scope.close(scope, Exit.void))
        )
      })

    const addNode = (addOptions: { readonly nat?: NatType; readonly seed?: boolean } = {}) =>
      Effect.gen(function* () {
        const isSeed = addOptions.seed === true
        const nat = isSeed ? "none" : (addOptions.nat ?? "none")
        const index = nextIndex++
        const keySeed = keySeedOf(options.seed, index)
        const host = yield* sim.addHost({ nat })
        const built = yield* build({ keySeed, nat, isSeed, host: host.host, port: 0 })
        const node: SimNode = {
          index,
          keySeed,
          nodeId: built.cm.nodeId,
          nat,
          isSeed,
          host: built.cm.host,
          port: built.cm.port,
          alive: true,
          cm: built.cm,
          diagnostics: built.diagnostics,
          graph: built.graph,
          scope: built.scope
        }
        nodes[index] = node
        if (isSeed) seeds.push(node)
        return node
      })

    const join = (node: SimNode) =>
      node.cm.syncNodeGraph().pipe(
        Effect.as(true),
        Effect.orElseSucceed(() => false)
      )

    const crash = (node: SimNode) =>
      Effect.gen(function* () {
        if (!node.alive) return
        node.alive = false
        yield* sim.crash(node.host, node.port)
        yield* Scope.close(node.scope, Exit.void)
      })

    const restart = (node: SimNode) =>
      Effect.gen(function* () {
        if (node.alive) return
        const built = yield* build(node)
        node.cm = built.cm
        node.diagnostics = built.diagnostics
        node.graph = built.graph
        node.scope = built.scope
        node.alive = true
      })

    const now = Effect.sync(() => ctx.clock.elapsed)

    const lookup = (from: SimNode, target: SimNode) =>
      Effect.gen(function* () {
        const start = ctx.clock.elapsed
        const connected = yield* from.cm.hasConnection(target.nodeId)
        const result = yield* from.cm.getClosestGlobalNodes(target.nodeId, { timeout: lookupTimeout })
        return {
          from: from.index,
          target: target.index,
          fromNat: from.nat,
          targetNat: target.nat,
          found: Option.isSome(result.address),
          connected,
          rounds: result.stats.rounds,
          queries: result.stats.queries,
          contacted: result.stats.contacted,
          virtualMs: ctx.clock.elapsed - start
        } satisfies LookupOutcome
      })

    return { sim, ctx, nodes, seeds, now, addNode, join, crash, restart, lookup } satisfies SimWorld
  })

// ---- Scenario --------------------------------------------------------------------------

/** A scenario that could not run at all (bad options). */
export class ScenarioError extends Data.TaggedError("ScenarioError")<{ readonly detail: string }> {
  override get message() {
    return this.detail
  }
}

export const validate = (o: ScenarioOptions): Effect.Effect<void, ScenarioError> => {
  const bad = (detail: string) => Effect.fail(new ScenarioError({ detail }))
  const int = (x: number) => Number.isSafeInteger(x)
  if (!int(o.nodes) || o.nodes < 2) return bad(`--nodes must be an integer ≥ 2 (got ${o.nodes})`)
  if (!int(o.lookups) || o.lookups < 0) return bad(`--lookups must be an integer ≥ 0 (got ${o.lookups})`)
  if (!int(o.seed)) return bad(`--seed must be an integer (got ${o.seed})`)
  if (o.alpha !== undefined && (!int(o.alpha) || o.alpha < 1))
    return bad(`--alpha must be an integer ≥ 1 (got ${o.alpha})`)
  if (o.k !== undefined && (!int(o.k) || o.k < 1)) return bad(`--k must be an integer ≥ 1 (got ${o.k})`)
  if (o.crash !== undefined && !(o.crash >= 0 && o.crash < 1))
    return bad(`--crash must be a fraction in [0, 1) (got ${o.crash})`)
  if (o.loss !== undefined && !(o.loss >= 0 && o.loss < 1))
    return bad(`--loss must be a probability in [0, 1) (got ${o.loss})`)
  if (o.latency !== undefined && !(o.latency >= 0 && o.latency <= 60_000))
    return bad(`--latency must be between 0 and 60000 ms (got ${o.latency})`)
  if (o.rpc !== undefined && !RPC_MODES.includes(o.rpc))
    return bad(`--rpc must be one of ${RPC_MODES.join(", ")} (got ${o.rpc})`)
  if (o.joinConcurrency !== undefined && (!int(o.joinConcurrency) || o.joinConcurrency < 1))
    return bad(`join concurrency must be an integer ≥ 1 (got ${o.joinConcurrency})`)
  if (o.seeds !== undefined && (!int(o.seeds) || o.seeds < 1 || o.seeds >= o.nodes))
    return bad(`seeds must be an integer in [1, nodes) (got ${o.seeds})`)
  return Effect.void
}

/** Virtual time the background work left by the lookups may take to finish before the report. */
const SETTLE_LIMIT_MS = 60_000

/** About 100 nodes arriving one after another per join slot, at most 64 slots. */
export const defaultJoinConcurrency = (nodes: number) => Math.max(1, Math.min(64, Math.floor(nodes / 100)))

const pickNat = (mix: NatMix, r: number): NatType => {
  const total = NAT_TYPES.reduce((s, t) => s + (mix[t] ?? 0), 0)
  let x = r * total
  for (const t of NAT_TYPES) {
    const w = mix[t] ?? 0
    if (x < w) return t
    x -= w
  }
  return "none"
}

/** The scenario inside an already running simulation. */
export const scenario = (ctx: SimContext, o: ScenarioOptions) =>
  Effect.gen(function* () {
    const wallStart = performance.now()
    let peakRss = process.memoryUsage().rss
    const sampleRss = () => {
      peakRss = Math.max(peakRss, process.memoryUsage().rss)
    }
    const world = yield* makeWorld(ctx, o)
    const prng = SimNet.makePrng(`scenario/${o.seed}`)
    const seedCount = o.seeds ?? Math.min(3, Math.max(1, Math.floor(o.nodes / 2)))
    const mix = o.nat ?? { none: 1 }
    const progress = o.onProgress ?? (() => {})
    const joinConcurrency = o.joinConcurrency ?? defaultJoinConcurrency(o.nodes)

    // Build: seeds first (they join each other), then everyone else, `joinConcurrency` at a time.
    let built = 0
    let joinFailures = 0
    const report = (phase: Phase, done: number, total: number) => {
      progress({ phase, done, total })
      if (done % 256 === 0 || done === total) sampleRss()
    }
    const addNode = (options: { readonly nat?: NatType; readonly seed?: boolean }) =>
      world
        .addNode(options)
        .pipe(Effect.mapError((e) => new ScenarioError({ detail: `could not start a node: ${e.message}` })))
    for (let i = 0; i < seedCount; i++) yield* addNode({ seed: true })
    yield* Effect.forEach(world.seeds, (s) => world.join(s), { concurrency: "unbounded", discard: true })
    built = seedCount
    report("build", built, o.nodes)
    const nats: NatType[] = []
    for (let i = seedCount; i < o.nodes; i++) nats.push(pickNat(mix, prng.next()))
    yield* Effect.forEach(
      nats,
      (nat) =>
        addNode({ nat }).pipe(
          Effect.flatMap((node) => world.join(node)),
          Effect.flatMap((ok) =>
            Effect.sync(() => {
              if (!ok) joinFailures++
              report("build", ++built, o.nodes)
            })
          )
        ),
      { concurrency: joinConcurrency, discard: true }
    )
    const buildVirtual = ctx.clock.elapsed
    const buildWall = performance.now() - wallStart

    // Crash a fraction of the non-seed nodes.
    const others = world.nodes.filter((n) => !n.isSeed)
    const crashCount = Math.floor((o.crash ?? 0) * others.length)
    for (let i = others.length - 1; i > 0; i--) {
      const j = Math.floor(prng.next() * (i + 1))
      ;[others[i], others[j]] = [others[j]!, others[i]!]
    }
    for (const node of others.slice(0, crashCount)) yield* world.crash(node)

    // Lookups: random live origin, random other live target.
    const live = world.nodes.filter((n) => n.alive)
    const pairs: Array<[SimNode, SimNode]> = []
    for (let i = 0; i < o.lookups; i++) {
      const from = live[Math.floor(prng.next() * live.length)]!
      let target = live[Math.floor(prng.next() * (live.length - 1))]!
      if (target === from) target = live[live.length - 1]!
      pairs.push([from, target])
    }
    const lookupStart = ctx.clock.elapsed
    const lookupWallStart = performance.now()
    let finished = 0
    report("lookups", 0, o.lookups)
    const outcomes = yield* Effect.forEach(
      pairs,
      ([from, target]) =>
        world
          .lookup(from, target)
          .pipe(Effect.tap(() => Effect.sync(() => report("lookups", ++finished, o.lookups)))),
      { concurrency: o.lookupConcurrency ?? 32 }
    )
    const lookupVirtual = ctx.clock.elapsed - lookupStart
    const lookupWall = performance.now() - lookupWallStart

    // Let work the lookups started in the background (a full bucket's liveness ping) finish,
    // so that the network figures show what is left over, not what is merely still running.
    const settleStart = ctx.clock.elapsed
    const busy = Effect.map(
      Effect.forEach(live, (n) =>
        Effect.map(n.diagnostics.snapshot, (d) => d.pendingDials + d.backgroundFibers)
      ),
      (counts) => counts.some((c) => c > 0)
    )
    while ((yield* busy) && ctx.clock.elapsed - settleStart < SETTLE_LIMIT_MS) yield* Effect.sleep("1 second")

    const connections = yield* Effect.forEach(live, (n) =>
      Effect.map(n.cm.listConnections, (cs) => cs.length)
    )
    const succeeded = outcomes.filter((x) => x.found)
    const histogram = new Map<number, number>()
    for (const x of succeeded) histogram.set(x.rounds, (histogram.get(x.rounds) ?? 0) + 1)
    const natPairs: NatPairFigure[] = []
    for (const from of NAT_TYPES)
      for (const to of NAT_TYPES) {
        const these = outcomes.filter((x) => x.fromNat === from && x.targetNat === to)
        if (these.length > 0)
          natPairs.push({ from, to, attempts: these.length, succeeded: these.filter((x) => x.found).length })
      }
    sampleRss()
    const result: SimReport = {
      options: {
        nodes: o.nodes,
        lookups: o.lookups,
        seed: o.seed,
        seeds: seedCount,
        alpha: o.alpha ?? 3,
        k: o.k ?? 20,
        crash: o.crash ?? 0,
        loss: o.loss ?? 0,
        latency: o.latency ?? 50,
        jitter: o.jitter ?? Math.floor((o.latency ?? 50) / 5),
        nat: formatNatMix(mix),
        rpc: o.rpc ?? "direct",
        joinConcurrency
      },
      joined: built - joinFailures,
      joinFailures,
      crashed: crashCount,
      lookups: {
        total: outcomes.length,
        succeeded: succeeded.length,
        successRate: outcomes.length === 0 ? 1 : succeeded.length / outcomes.length
      },
      rounds: summarize(succeeded.map((x) => x.rounds)),
      queries: summarize(succeeded.map((x) => x.queries)),
      lookupVirtualMs: summarize(outcomes.filter((x) => !x.connected).map((x) => x.virtualMs)),
      alreadyConnected: outcomes.filter((x) => x.connected).length,
      roundsHistogram: [...histogram.entries()]
        .sort(([a], [b]) => a - b)
        .map(([rounds, count]) => ({ rounds, count })),
      natPairs,
      connectionsPerNode: summarize(connections),
      virtualMs: { build: buildVirtual, lookups: lookupVirtual, total: ctx.clock.elapsed },
      wallMs: { build: buildWall, lookups: lookupWall, total: performance.now() - wallStart },
      peakRssMiB: Math.round(peakRss / 2 ** 20),
      network: yield* world.sim.stats,
      traceHash: yield* world.sim.traceHash,
      failedSamples: outcomes.filter((x) => !x.found).slice(0, 20)
    }
    // Every node goes now: the network stops first, so that no node's close is delivered to
    // peers that are closing anyway.
    yield* world.sim.halt
    return result
  })

/** Runs a whole scenario on virtual time. Same options ⇒ same report (but wall-clock figures). */
export const runScenario = (o: ScenarioOptions): Effect.Effect<SimReport, ScenarioError | SimDeadlock> =>
  validate(o).pipe(Effect.zipRight(simulate((ctx) => scenario(ctx, o), { seed: o.seed })))

/**
 * Whether a NAT pair can connect with no earlier connection between them, in the SimNetwork
 * model: a symmetric NAT's port for a new peer is not the one the seed saw, so a symmetric
 * target, or a restricted one reached from a symmetric origin, cannot be punched.
 */
export const punchable = (from: NatType, to: NatType) =>
  to === "none" || to === "full-cone" || (to === "restricted" && from !== "symmetric")

/**
 * Whether a report shows a healthy network: every lookup of a target its origin can reach
 * succeeds (at least 99% with crashes or loss). Failures between pairs no hole punch can
 * join are expected and not held against the run.
 */
export const verdict = (r: SimReport): { readonly ok: boolean; readonly reasons: ReadonlyArray<string> } => {
  const reasons: string[] = []
  const wanted = r.options.crash > 0 || r.options.loss > 0 ? 0.99 : 1
  const reachable = r.natPairs.filter((p) => punchable(p.from, p.to))
  const attempts = reachable.reduce((s, p) => s + p.attempts, 0)
  const succeeded = reachable.reduce((s, p) => s + p.succeeded, 0)
  if (attempts > 0 && succeeded / attempts < wanted)
    reasons.push(
      `${succeeded}/${attempts} lookups of reachable targets succeeded (${((succeeded / attempts) * 100).toFixed(2)}%), below ${wanted * 100}%`
    )
  if (r.joinFailures > 0) reasons.push(`${r.joinFailures} node(s) could not join`)
  return { ok: reasons.length === 0, reasons }
}
