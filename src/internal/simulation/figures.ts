/** The figures a scenario reports: summaries, lookup outcomes, NAT pairs by path, and the report. */

import type { ConnectionPath } from "../../services/ConnectionManager.js"
import type { NodeIdEncoded } from "../../services/NodeId.js"
import type { NatType, SimNetworkStats } from "../../services/SimNetwork.js"
import { NAT_TYPES, type RpcMode } from "./options.js"
import type { ReachabilityFigure } from "./reachability.js"

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
  /**
   * How the origin's connection to the target travels right after the lookup (the `path` of
   * its `listConnections` entry); undefined when the origin holds no connection to it.
   */
  readonly path: ConnectionPath | undefined
  /** The relay carrying a `relayed` connection. */
  readonly relay: NodeIdEncoded | undefined
}

/** The lookups from nodes behind one NAT model to targets behind another. */
export interface NatPairFigure {
  readonly from: NatType
  readonly to: NatType
  readonly attempts: number
  /** Lookups that found the target. */
  readonly succeeded: number
  /** Lookups after which the origin held a connection to the target, by its path. */
  readonly direct: number
  readonly punched: number
  readonly relayed: number
  /** Lookups after which the origin held no connection to the target. */
  readonly failed: number
}

/** The outcomes by (origin NAT, target NAT), in `NAT_TYPES` order, pairs without lookups left out. */
export const natPairFigures = (outcomes: ReadonlyArray<LookupOutcome>): ReadonlyArray<NatPairFigure> => {
  const figures: Array<NatPairFigure> = []
  for (const from of NAT_TYPES)
    for (const to of NAT_TYPES) {
      const these = outcomes.filter((x) => x.fromNat === from && x.targetNat === to)
      if (these.length === 0) continue
      const by = (path: ConnectionPath) => these.filter((x) => x.path === path).length
      figures.push({
        from,
        to,
        attempts: these.length,
        succeeded: these.filter((x) => x.found).length,
        direct: by("direct"),
        punched: by("punched"),
        relayed: by("relayed"),
        failed: these.filter((x) => x.path === undefined).length
      })
    }
  return figures
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
    /** Whether the seeds served as relays. */
    readonly relays: boolean
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
  /** Whether the origin got a connection to the target, and by which path, by (origin NAT, target NAT). */
  readonly natPairs: ReadonlyArray<NatPairFigure>
  /** Connections each live node holds after the lookups. */
  readonly connectionsPerNode: Summary
  readonly virtualMs: { readonly build: number; readonly lookups: number; readonly total: number }
  readonly wallMs: { readonly build: number; readonly lookups: number; readonly total: number }
  readonly peakRssMiB: number
  readonly network: SimNetworkStats
  readonly traceHash: string
  readonly failedSamples: ReadonlyArray<LookupOutcome>
  /** How the live nodes classified themselves, by NAT model (`reachability.ts`). */
  readonly reachability?: ReadonlyArray<ReachabilityFigure>
}
