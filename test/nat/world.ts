/**
 * The NAT lab's reachability world, for classification with real agents: two public seeds on two
 * IPs that observe a node, and a public helper that is in touch with seed 1 alone (added and
 * pinged through its control API) once the node has joined, so the node never learns of it or
 * contacts it and the seed can pick it for the node's dial-back. Used by the reachability and
 * port-mapping specs and by bench/reachability.ts. Needs the lab's public hosts "s1", "s2", "h".
 */
import { Effect, type Scope } from "effect"
import { type AgentInfo, cli, control, poll, type StartAgentOptions, startAgent } from "./agents.js"
import type { Lab } from "./lab.js"

/** The lab's public hosts the world runs on. */
export const WORLD_HOSTS = ["s1", "s2", "h"] as const

/** What the agent logs once its join through the seeds has succeeded. */
export const JOINED = "joined the network"

export interface ReachabilityJson {
  readonly nat: string
  readonly addresses: ReadonlyArray<{ readonly host: string; readonly port: number }>
  readonly observers: number
}

/** The parts of `agent status --format json` the NAT specs read. */
export interface StatusJson {
  readonly reachability?: ReachabilityJson
  readonly portMapping?: { host: string; port: number; protocol: string; expiresAt: number }
}

/** `quicmesh agent status --format json` through the CLI. */
export const status = (agent: AgentInfo) => cli<StatusJson>(agent, ["agent", "status"])

export interface World {
  readonly seeds: ReadonlyArray<AgentInfo>
  readonly helper: AgentInfo
  /** The helper adds and pings seed 1; fails if the ping does not succeed. */
  readonly inTouch: Effect.Effect<void, unknown>
}

/** Starts the seeds and the helper on ports `base`, `base + 1`, `base + 2` (none in touch yet). */
export const world = (lab: Lab, base: number): Effect.Effect<World, unknown, Scope.Scope> =>
  Effect.gen(function* () {
    const s1 = yield* startAgent(lab, "s1", { port: base })
    const s2 = yield* startAgent(lab, "s2", { port: base + 1 })
    const helper = yield* startAgent(lab, "h", { port: base + 2 })
    const inTouch = control(helper, (c) =>
      c
        .nodesAdd({ nodeId: s1.nodeId, host: lab.node("s1").ip, port: s1.port })
        .pipe(Effect.zipRight(c.nodesPing({ nodeId: s1.nodeId, timeout: 5000 })))
    ).pipe(
      Effect.filterOrFail(
        (r) => r.success,
        () => "the helper could not reach seed 1"
      )
    )
    return { seeds: [s1, s2], helper, inTouch }
  })

/**
 * Starts `name` with the world's seeds and, once "joined the network" is in its log (its lookup
 * must not meet the helper), puts the helper in touch with seed 1.
 */
export const joinWorld = (
  lab: Lab,
  name: string,
  w: World,
  options: Omit<StartAgentOptions, "seeds"> = {}
): Effect.Effect<AgentInfo, unknown, Scope.Scope> =>
  Effect.gen(function* () {
    const node = yield* startAgent(lab, name, { ...options, seeds: w.seeds })
    yield* poll(
      Effect.sync(() => node.proc.stderr()),
      (log) => log.includes(JOINED),
      120
    )
    yield* w.inTouch
    return node
  })

/**
 * A world on ports `base`..`base + 2`, `name` joined to it (on `base + 3` unless `options` say);
 * polls its status through the CLI until its class is `nat`, and prints the seconds it took
 * from the agent's start.
 */
export const classify = (
  lab: Lab,
  name: string,
  base: number,
  nat: string,
  options: Omit<StartAgentOptions, "seeds"> = {}
) =>
  Effect.gen(function* () {
    const w = yield* world(lab, base)
    const started = Date.now()
    const node = yield* joinWorld(lab, name, w, { port: base + 3, ...options })
    const json = yield* poll(status(node), (s) => s.reachability?.nat === nat, 240)
    console.log(`reachability ${name}: ${nat} ${((Date.now() - started) / 1000).toFixed(1)} s after start`)
    return { node, json }
  })
