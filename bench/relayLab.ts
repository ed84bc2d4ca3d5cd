/**
 * Relays in the NAT lab (issue #20): the time of a cold `nodes ping` of a never-met node
 * behind a symmetric NAT, answered through a relay, against a cold ping of a never-met public
 * node, answered directly (ratio = relayed / direct; no target: the issue asks for the ratio).
 *
 * Two public seeds serve as relays (`--relay`) for the whole run. Each round starts three
 * fresh agents (new identities, so every ping is to a node never met): d and e, each behind
 * its own symmetric router, and c, public, which contacts nobody (the seeds are told of it).
 * Once d and e each hold a reservation, d pings e (through a relay: no direct path joins two
 * symmetric NATs) and c (directly), the order alternating by round; each ping includes finding
 * the node, connecting and the answer, through the agent's control API as `nodes ping` does.
 * The figures are the medians of BENCH_RELAY_LAB_RUNS rounds (default 5).
 *
 * Root only (network namespaces, iptables), and `npm run build` first.
 */
import { Effect, Either } from "effect"
import { type AgentInfo, control, ping, poll, startAgent } from "../test/nat/agents.js"
import type { Lab } from "../test/nat/lab.js"
import { inLab, messageOf } from "./lab.js"
import { type BenchResult, type BenchSuite, envInt, median } from "./types.js"

const SUITE = "relayLab"
const RUNS = envInt("BENCH_RELAY_LAB_RUNS", 5)
const PING_TIMEOUT_MS = 10_000

const LAB = {
  nats: [
    { kind: "symmetric", hosts: ["d"] },
    { kind: "symmetric", hosts: ["e"] }
  ],
  publicHosts: ["s1", "s2", "c"]
} as const

const say = (line: string) => process.stderr.write(`relayLab: ${line}\n`)

/** Until `agent` holds a reservation with a relay. */
const reserved = (agent: AgentInfo) =>
  poll(
    control(agent, (c) => c.status()).pipe(Effect.map((s) => s.relay?.reservations.length ?? 0)),
    (n) => n >= 1,
    160
  )

/** Milliseconds of one successful ping. */
const timedPing = (from: AgentInfo, to: AgentInfo) =>
  Effect.gen(function* () {
    const started = performance.now()
    const ok = yield* ping(from, to, PING_TIMEOUT_MS)
    if (!ok) return yield* Effect.fail(`${from.name} could not ping ${to.name}`)
    return performance.now() - started
  })

/** One round on ports `base`..`base + 2`: the relayed and the direct cold ping, in ms. */
const round = (lab: Lab, seeds: ReadonlyArray<AgentInfo>, base: number, relayedFirst: boolean) =>
  Effect.scoped(
    Effect.gen(function* () {
      const d = yield* startAgent(lab, "d", { port: base, seeds })
      const e = yield* startAgent(lab, "e", { port: base + 1, seeds })
      const c = yield* startAgent(lab, "c", { port: base + 2 })
      for (const seed of seeds)
        yield* control(seed, (x) => x.nodesAdd({ nodeId: c.nodeId, host: lab.node("c").ip, port: c.port }))
      yield* reserved(d)
      yield* reserved(e)
      if (relayedFirst) {
        const relayed = yield* timedPing(d, e)
        return { relayed, direct: yield* timedPing(d, c) }
      }
      const direct = yield* timedPing(d, c)
      return { relayed: yield* timedPing(d, e), direct }
    })
  )

export const suite: BenchSuite = {
  name: SUITE,
  run: () =>
    inLab(LAB, say, (lab) =>
      Effect.gen(function* () {
        const started = yield* Effect.either(
          Effect.all([
            startAgent(lab, "s1", { port: 7700, relay: true }),
            startAgent(lab, "s2", { port: 7701, relay: true })
          ])
        )
        if (Either.isLeft(started)) {
          say(`not run: the seeds did not start: ${messageOf(started.left)}`)
          return []
        }
        const samples: Array<{ relayed: number; direct: number }> = []
        let failure: string | undefined
        for (let run = 0; run < RUNS && failure === undefined; run++) {
          const out = yield* Effect.either(round(lab, started.right, 7710 + 10 * run, run % 2 === 0))
          if (Either.isLeft(out)) failure = messageOf(out.left)
          else samples.push(out.right)
        }
        const value = median(samples.map((s) => s.relayed))
        const baseline = median(samples.map((s) => s.direct))
        const row: BenchResult = {
          suite: SUITE,
          name: "cold ping of a never-met symmetric node, through a relay (median)",
          value,
          unit: "ms",
          baselineName: "cold ping of a never-met public node, direct",
          baseline,
          ratio: value / baseline,
          notes:
            failure === undefined
              ? `median of ${samples.length} rounds, fresh agents each`
              : `failed after ${samples.length} rounds: ${failure}`
        }
        return [row]
      })
    )
}
