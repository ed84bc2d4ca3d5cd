/** The simulation's options: NAT mixes, RPC modes, world and scenario options, and their checks. */
import { Either, type Layer } from "effect"
import type { ConnectionManager } from "../../services/ConnectionManager.js"
import type { Protocols } from "../../services/Protocols.js"
import type { RpcConfig } from "../../services/RpcServer.js"
import type { NatType } from "../../services/SimNetwork.js"

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
  /**
   * Application protocols. Absent (the default): the nodes serve none, and their streams are
   * not served at all. Present: every node gets a `Protocols` registry (`SimNode.protocols`,
   * kept across restarts), served on its connections in either RPC mode; with a function, the
   * layer it returns for a node is also built in that node's scope (again at each restart), with
   * the node's registry, `RpcConfig` and manager, e.g. an `AppRpc` group's layer.
   */
  readonly protocols?: true | NodeProtocols
  /**
   * Relays: the seeds serve as relays (`relay`), and every node serves the relay protocols on
   * its connections (a `Protocols` registry of its own), so that nodes nobody can reach
   * directly reserve with the seeds and are connected through them. Default false.
   */
  readonly relays?: boolean
  /** With `relays`: the seeds' relay limits (default: no limit a world reaches). */
  readonly relayLimits?: {
    readonly maxReservations?: number
    readonly maxCircuits?: number
  }
}

/** The application layer one node serves (see `WorldOptions.protocols`). */
export type NodeProtocols = (node: {
  readonly index: number
  readonly isSeed: boolean
  readonly nat: NatType
}) => Layer.Layer<never, unknown, Protocols | RpcConfig | ConnectionManager>

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
