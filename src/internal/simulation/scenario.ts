/** A whole scenario: build N nodes through seeds, crash a share, run lookups, report. */
import { Data, Effect } from "effect"
import * as SimNet from "../../layers/SimWorld.js"
import { type SimContext, type SimDeadlock, simulate } from "../../programs/SimRuntime.js"
import type { NatType } from "../../services/SimNetwork.js"
import { natPairFigures, type SimReport, summarize } from "./figures.js"
import {
  formatNatMix,
  NAT_TYPES,
  type NatMix,
  type Phase,
  RPC_MODES,
  type ScenarioOptions
} from "./options.js"
import { reachabilityFigures } from "./reachability.js"
import { makeWorld, type SimNode } from "./world.js"

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
        joinConcurrency,
        relays: o.relays === true
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
      natPairs: natPairFigures(outcomes),
      connectionsPerNode: summarize(connections),
      virtualMs: { build: buildVirtual, lookups: lookupVirtual, total: ctx.clock.elapsed },
      wallMs: { build: buildWall, lookups: lookupWall, total: performance.now() - wallStart },
      peakRssMiB: Math.round(peakRss / 2 ** 20),
      network: yield* world.sim.stats,
      traceHash: yield* world.sim.traceHash,
      failedSamples: outcomes.filter((x) => !x.found).slice(0, 20),
      reachability: yield* reachabilityFigures(world.nodes)
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
 * Whether a report shows a healthy network: every lookup of a live target connects the origin
 * to it (at least 99% with crashes or loss). With relays every pair of NAT models counts;
 * without them, failures between pairs no hole punch can join are expected and not held
 * against the run.
 */
export const verdict = (r: SimReport): { readonly ok: boolean; readonly reasons: ReadonlyArray<string> } => {
  const reasons: string[] = []
  const wanted = r.options.crash > 0 || r.options.loss > 0 ? 0.99 : 1
  const judged = r.options.relays ? r.natPairs : r.natPairs.filter((p) => punchable(p.from, p.to))
  const attempts = judged.reduce((s, p) => s + p.attempts, 0)
  const connected = judged.reduce((s, p) => s + p.attempts - p.failed, 0)
  if (attempts > 0 && connected / attempts < wanted) {
    const failing = judged
      .filter((p) => p.failed > 0)
      .map((p) => `${p.from} → ${p.to} ${p.failed}/${p.attempts}`)
      .join(", ")
    reasons.push(
      `${connected}/${attempts} lookups of ${r.options.relays ? "live" : "punchable"} targets connected (${((connected / attempts) * 100).toFixed(2)}%), below ${wanted * 100}%; failed: ${failing}`
    )
  }
  if (r.joinFailures > 0) reasons.push(`${r.joinFailures} node(s) could not join`)
  return { ok: reasons.length === 0, reasons }
}
