/**
 * Reachability in the NAT lab: the seconds from an agent's start to a stable classification, per
 * NAT type (target: under 5 s public and cone, under 10 s symmetric), against the seconds from the
 * same agent's start to its "joined the network" (ratio = classification / join).
 *
 * The lab and the world are the reachability spec's (test/nat/reachability.natspec.ts,
 * test/nat/world.ts): two public seeds on two IPs, a public helper put in touch with seed 1 once
 * the node has joined (so the classification includes that touch), and the node on the public side
 * (public), behind the restricted router (cone) or behind the symmetric router (symmetric), each a
 * real agent (the built program) in its own world, one after another. The times are the agent's
 * own log lines' (their clock is this machine's): the join its "joined the network", the
 * classification the first "reachability: <class>" line of the last run of lines with the
 * expected class, which must still hold 12 s after the helper's touch (the dial-back takes up to
 * 5 s). Each figure is the median of BENCH_REACHABILITY_RUNS runs (default 1).
 *
 * Root only (network namespaces, iptables), and `npm run build` first: otherwise no rows, and one
 * line saying why.
 */
import { Effect, Either } from "effect"
import { control, poll } from "../test/nat/agents.js"
import type { Lab } from "../test/nat/lab.js"
import { JOINED, joinWorld, WORLD_HOSTS, world } from "../test/nat/world.js"
import { inLab, messageOf } from "./lab.js"
import { type BenchResult, type BenchSuite, envInt, median } from "./types.js"

const SUITE = "reachability"
const RUNS = envInt("BENCH_REACHABILITY_RUNS", 1)
/** How long after the helper's touch the class must still be the expected one. */
const HOLD_MS = 12_000

interface Kind {
  readonly nat: "public" | "cone" | "symmetric"
  /** The lab host the agent runs on. */
  readonly host: string
  /** Target, in seconds. */
  readonly target: number
}

const KINDS: ReadonlyArray<Kind> = [
  { nat: "public", host: "p", target: 5 },
  { nat: "cone", host: "r", target: 5 },
  { nat: "symmetric", host: "y", target: 10 }
]

const LAB = {
  nats: [
    { kind: "restricted", hosts: ["r"] },
    { kind: "symmetric", hosts: ["y"] }
  ],
  publicHosts: [...WORLD_HOSTS, "p"]
} as const

const say = (line: string) => process.stderr.write(`reachability: ${line}\n`)

/** A log line's time (the pretty logger's local "[HH:MM:SS.mmm]") in ms since the epoch, within 12 h of `near`. */
const lineTime = (line: string, near: number): number | undefined => {
  const m = /^\[(\d\d):(\d\d):(\d\d)\.(\d{3})\]/.exec(line)
  if (m === null) return undefined
  const day = new Date(near)
  day.setHours(Number(m[1]), Number(m[2]), Number(m[3]), Number(m[4]))
  const t = day.getTime()
  const DAY = 86_400_000
  return t < near - DAY / 2 ? t + DAY : t > near + DAY / 2 ? t - DAY : t
}

/** From an agent's log: when it joined, and since when its class has been `nat` (each undefined if not found). */
const timesOf = (log: string, nat: string, started: number) => {
  let joined: number | undefined
  let since: number | undefined
  for (const line of log.split("\n")) {
    if (joined === undefined && line.includes(`: ${JOINED}`)) joined = lineTime(line, started)
    const m = /: reachability: (\w+) \(/.exec(line)
    if (m !== null) since = m[1] === nat ? (since ?? lineTime(line, started)) : undefined
  }
  return { joined, since }
}

/** One agent in a fresh world on ports `base`..`base + 3`: seconds from its start to its join and its classification. */
const measure = (lab: Lab, kind: Kind, base: number) =>
  Effect.scoped(
    Effect.gen(function* () {
      const w = yield* world(lab, base)
      const started = Date.now()
      const node = yield* joinWorld(lab, kind.host, w, { port: base + 3 })
      const touched = Date.now()
      const nat = control(node, (c) => c.status()).pipe(Effect.map((s) => s.reachability?.nat))
      yield* poll(nat, (n) => n === kind.nat, 240)
      yield* Effect.sleep(Math.max(0, touched + HOLD_MS - Date.now()))
      const held = yield* nat
      if (held !== kind.nat)
        return yield* Effect.fail(
          `${held} instead of ${kind.nat} ${HOLD_MS / 1000} s after the helper's touch`
        )
      const t = timesOf(node.proc.stderr(), kind.nat, started)
      if (t.joined === undefined || t.since === undefined)
        return yield* Effect.fail(`no "${JOINED}" or "reachability: ${kind.nat}" line in the agent's log`)
      return { joined: (t.joined - started) / 1000, classified: (t.since - started) / 1000 }
    })
  )

const row = (
  kind: Kind,
  samples: ReadonlyArray<{ readonly joined: number; readonly classified: number }>,
  failure: string | undefined
): BenchResult => {
  const value = median(samples.map((s) => s.classified))
  const baseline = median(samples.map((s) => s.joined))
  return {
    suite: SUITE,
    name: `${kind.nat}: agent start to stable classification`,
    value,
    unit: "s",
    baselineName: `start to "${JOINED}"`,
    baseline,
    ratio: value / baseline,
    target: `< ${kind.target} s`,
    met: failure === undefined && value < kind.target,
    notes:
      failure === undefined
        ? `median of ${samples.length}; held ${HOLD_MS / 1000} s after the helper's touch`
        : `failed: ${failure}`
  }
}

export const suite: BenchSuite = {
  name: SUITE,
  run: () =>
    inLab(LAB, say, (lab) =>
      Effect.gen(function* () {
        const rows: BenchResult[] = []
        for (const [i, kind] of KINDS.entries()) {
          const samples: Array<{ joined: number; classified: number }> = []
          let failure: string | undefined
          for (let run = 0; run < RUNS && failure === undefined; run++) {
            const out = yield* Effect.either(measure(lab, kind, 7800 + 100 * run + 10 * i))
            if (Either.isLeft(out)) failure = messageOf(out.left)
            else samples.push(out.right)
          }
          rows.push(row(kind, samples, failure))
        }
        return rows
      })
    )
}
