/**
 * The network simulation at scale: N real connection managers on SimNetwork, on virtual time,
 * with the direct agent RPC (PeerRpcSim; `SIM_RPC=wire` for the real framing).
 * Two scenarios (alpha 3, k 20, 3 seeds, 50 ms latency, joins `defaultJoinConcurrency(N)` at a
 * time): no churn, and 20% of the nodes crashed before the lookups. Reports lookup success,
 * rounds, queries, virtual time of the lookups that needed the network, wall time and RSS.
 *
 * The targets (10 000 nodes × 1 000 lookups in < 60 s and < 4 GiB) are stated against the run
 * at SIM_NODES (default 500 with SIM_LOOKUPS 100: both scenarios fit in a few minutes on this
 * shared 2-core machine); the per-node cost printed alongside says how far that is.
 * Standalone: `npx tsx bench/simulation.ts [nodes] [lookups]`.
 */
import { Effect } from "effect"
import { type RpcMode, runScenario, type SimReport } from "../src/programs/Simulation.js"
import type { BenchResult, BenchSuite } from "./types.js"

const rpc: RpcMode = process.env.SIM_RPC === "wire" ? "wire" : "direct"

const run = async (nodes: number, lookups: number, crash: number): Promise<SimReport> =>
  Effect.runPromise(runScenario({ nodes, lookups, seed: 42, crash, rpc }))

const figures = (r: SimReport, label: string): BenchResult[] => {
  const suite = "simulation"
  const n = r.options.nodes
  const out: BenchResult[] = [
    {
      suite,
      name: `${label}: lookup success (${n} nodes, ${r.lookups.total} lookups)`,
      value: r.lookups.successRate * 100,
      unit: "%",
      target: r.options.crash > 0 ? "≥ 99%" : "100%",
      met: r.options.crash > 0 ? r.lookups.successRate >= 0.99 : r.lookups.successRate === 1
    },
    {
      suite,
      name: `${label}: rounds per lookup, median`,
      value: r.rounds.median,
      unit: "rounds",
      target: "≤ 4",
      met: r.rounds.median <= 4
    },
    {
      suite,
      name: `${label}: rounds per lookup, p99`,
      value: r.rounds.p99,
      unit: "rounds",
      target: "≤ 8",
      met: r.rounds.p99 <= 8
    },
    { suite, name: `${label}: RPC queries per lookup, median`, value: r.queries.median, unit: "queries" },
    { suite, name: `${label}: RPC queries per lookup, p99`, value: r.queries.p99, unit: "queries" },
    {
      suite,
      name: `${label}: virtual time per networked lookup, median`,
      value: r.lookupVirtualMs.median,
      unit: "ms (virtual)",
      notes: `p99 ${r.lookupVirtualMs.p99} ms; ${r.alreadyConnected} lookup(s) of an already connected target (0 ms) left out; 50 ms links`
    },
    {
      suite,
      name: `${label}: wall time, build + join (${n} nodes)`,
      value: r.wallMs.build / 1000,
      unit: "s",
      notes: `${(r.wallMs.build / n).toFixed(1)} ms per joining node (${r.options.joinConcurrency} at a time, ${rpc} RPC); at that rate 10 000 nodes would take ${((r.wallMs.build / n) * 10).toFixed(0)} s`
    },
    {
      suite,
      name: `${label}: wall time, ${r.lookups.total} lookups`,
      value: r.wallMs.lookups / 1000,
      unit: "s",
      notes: `${(r.wallMs.lookups / Math.max(1, r.lookups.total)).toFixed(1)} ms per lookup`
    },
    {
      suite,
      name: `${label}: wall time, whole run`,
      value: r.wallMs.total / 1000,
      unit: "s",
      target: n >= 10_000 ? "< 60 s" : "< 60 s at 10 000 nodes (not run at that size)",
      ...(n >= 10_000 ? { met: r.wallMs.total < 60_000 } : {})
    },
    {
      suite,
      name: `${label}: peak RSS`,
      value: r.peakRssMiB,
      unit: "MiB",
      target: "< 4096 MiB",
      met: r.peakRssMiB < 4096,
      notes: `${((r.peakRssMiB * 1024) / n).toFixed(0)} KiB per node, everything included`
    },
    {
      suite,
      name: `${label}: connections per live node, median`,
      value: r.connectionsPerNode.median,
      unit: "connections"
    }
  ]
  return out
}

const nodesOf = (arg: string | undefined) => Number(arg ?? process.env.SIM_NODES ?? 500)
const lookupsOf = (arg: string | undefined) => Number(arg ?? process.env.SIM_LOOKUPS ?? 100)

export const suite: BenchSuite = {
  name: "simulation",
  run: async () => {
    const nodes = nodesOf(undefined)
    const lookups = lookupsOf(undefined)
    const calm = await run(nodes, lookups, 0)
    const churn = await run(nodes, lookups, 0.2)
    return [...figures(calm, "no churn"), ...figures(churn, "20% crashed")]
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const nodes = nodesOf(process.argv[2])
  const lookups = lookupsOf(process.argv[3])
  for (const crash of [0, 0.2]) {
    const r = await run(nodes, lookups, crash)
    for (const f of figures(r, crash === 0 ? "no churn" : "20% crashed"))
      process.stdout.write(`${f.name}: ${f.value.toFixed(2)} ${f.unit}${f.notes ? ` (${f.notes})` : ""}\n`)
  }
}
