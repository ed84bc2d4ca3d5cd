/**
 * `quicmesh sim`: runs a deterministic network simulation (see Simulation.ts) and reports.
 *
 *   quicmesh sim --nodes N --lookups L --seed S [--alpha A] [-k K] [--crash FRACTION]
 *                [--loss P] [--latency MS] [--nat MIX] [--rpc direct|wire] [--no-relays]
 *                [--format human|json] [--report FILE.html]
 *
 * The report counts, per NAT pair, the lookups that left the origin connected to the target
 * directly, through a hole punch or through a relay, and those that did not. Progress goes to
 * stderr (a bar on a terminal, a line per 10% otherwise). A run whose lookups of live targets
 * fail (with `--no-relays`: of targets a hole punch can reach) exits 1 and prints its seed and
 * the command that replays it exactly.
 */
import { accessSync, constants, existsSync, statSync, writeFileSync } from "node:fs"
import { dirname, resolve } from "node:path"
import { Command, Options } from "@effect/cli"
import { Effect, Either, Option } from "effect"
import { OperationError, UsageError } from "./Input.js"
import { renderHtml, renderText } from "./SimReport.js"
import {
  type NatMix,
  type Progress,
  parseNatMix,
  RPC_MODES,
  type RpcMode,
  runScenario,
  type ScenarioOptions,
  type SimReport,
  verdict
} from "./Simulation.js"

const described = <A>(o: Options.Options<A>, text: string) => Options.withDescription(o, text)

const options = {
  nodes: described(Options.integer("nodes"), "Nodes in the network, seeds included"),
  lookups: described(Options.integer("lookups"), "Lookups of random live targets from random live nodes"),
  seed: described(Options.integer("seed"), "Seed of every random choice (same seed, same run)"),
  alpha: described(Options.integer("alpha"), "Lookup queries in flight at once").pipe(Options.withDefault(3)),
  // @effect/cli gives one-letter names a single dash: `-k 20` (or `--bucket-size 20`).
  k: described(Options.integer("bucket-size"), "Bucket size k and lookup width (also -k)").pipe(
    Options.withAlias("k"),
    Options.withDefault(20)
  ),
  crash: described(Options.float("crash"), "Fraction of the non-seed nodes crashed before the lookups").pipe(
    Options.withDefault(0)
  ),
  loss: described(Options.float("loss"), "Probability that a handshake packet or datagram is lost").pipe(
    Options.withDefault(0)
  ),
  latency: described(Options.integer("latency"), "One-way link latency in ms (jitter: a fifth of it)").pipe(
    Options.withDefault(50)
  ),
  nat: described(
    Options.text("nat"),
    "NAT mix of the non-seed nodes, e.g. none:70,full-cone:10,restricted:10,symmetric:10"
  ).pipe(Options.optional),
  rpc: described(
    Options.text("rpc"),
    "Agent RPC: direct (calls as messages on the simulated connections) or wire (the real RPC framing as bytes; far slower)"
  ).pipe(Options.withDefault("direct")),
  noRelays: described(
    Options.boolean("no-relays"),
    "Seeds do not serve as relays (by default they do, and nodes nobody reaches directly are connected through them)"
  ),
  format: described(Options.text("format"), "Output format: human or json").pipe(
    Options.withDefault("human")
  ),
  report: described(Options.text("report"), "Also write an HTML report (charts) to this file").pipe(
    Options.optional
  )
}

type Parsed = {
  readonly nodes: number
  readonly lookups: number
  readonly seed: number
  readonly alpha: number
  readonly k: number
  readonly crash: number
  readonly loss: number
  readonly latency: number
  readonly nat: Option.Option<string>
  readonly rpc: string
  readonly noRelays: boolean
  readonly format: string
  readonly report: Option.Option<string>
}

/** The one command line that reproduces a run (`--report` and `--format` left out). */
export const replayCommand = (p: Parsed) => {
  const parts = [
    "quicmesh sim",
    `--nodes ${p.nodes}`,
    `--lookups ${p.lookups}`,
    `--seed ${p.seed}`,
    `--alpha ${p.alpha}`,
    `-k ${p.k}`,
    `--crash ${p.crash}`,
    `--loss ${p.loss}`,
    `--latency ${p.latency}`
  ]
  if (Option.isSome(p.nat)) parts.push(`--nat ${p.nat.value}`)
  parts.push(`--rpc ${p.rpc}`)
  if (p.noRelays) parts.push("--no-relays")
  return parts.join(" ")
}

/** Progress on stderr: a redrawn bar on a terminal, a line per 10% elsewhere. */
const progressReporter = () => {
  const tty = process.stderr.isTTY === true
  const started = performance.now()
  let lastDraw = 0
  let lastPhase = ""
  let lastDecile = -1
  return (p: Progress) => {
    const now = performance.now()
    const fraction = p.total === 0 ? 1 : p.done / p.total
    const label = p.phase === "build" ? "build + join" : "lookups"
    const seconds = ((now - started) / 1000).toFixed(1)
    if (tty) {
      const finished = p.done === p.total
      if (!finished && now - lastDraw < 100 && p.phase === lastPhase) return
      lastDraw = now
      lastPhase = p.phase
      const width = 30
      const filled = Math.round(fraction * width)
      process.stderr.write(
        `\r${label.padEnd(12)} [${"#".repeat(filled)}${".".repeat(width - filled)}] ${p.done}/${p.total}  ${seconds}s\u001b[K${finished ? "\n" : ""}`
      )
      return
    }
    const decile = Math.floor(fraction * 10)
    if (p.phase !== lastPhase) {
      lastPhase = p.phase
      lastDecile = -1
    }
    if (decile === lastDecile) return
    lastDecile = decile
    process.stderr.write(`${label}: ${p.done}/${p.total} (${decile * 10}%) ${seconds}s\n`)
  }
}

const usage = (message: string) => Effect.fail(new UsageError({ message }))

/**
 * Why the report could not be written to `file`, or undefined if it can: checked before the
 * run, so that a long run is not lost to a typo in the path.
 */
const reportPathProblem = (file: string): string | undefined => {
  const writable = (path: string) => {
    try {
      accessSync(path, constants.W_OK)
      return true
    } catch {
      return false
    }
  }
  const dir = dirname(file)
  if (!existsSync(dir)) return `the folder ${dir} does not exist`
  if (!statSync(dir).isDirectory()) return `${dir} is not a folder`
  if (!existsSync(file)) return writable(dir) ? undefined : `the folder ${dir} is not writable`
  if (statSync(file).isDirectory()) return `${file} is a folder`
  return writable(file) ? undefined : `${file} is not writable`
}

export const run = (p: Parsed) =>
  Effect.gen(function* () {
    if (p.format !== "human" && p.format !== "json")
      return yield* usage(`invalid format "${p.format}": must be human or json`)
    if (!(RPC_MODES as ReadonlyArray<string>).includes(p.rpc))
      return yield* usage(`invalid --rpc "${p.rpc}": must be ${RPC_MODES.join(" or ")}`)
    let nat: NatMix | undefined
    if (Option.isSome(p.nat)) {
      const parsed = parseNatMix(p.nat.value)
      if (Either.isLeft(parsed)) return yield* usage(`invalid --nat: ${parsed.left}`)
      nat = parsed.right
    }
    const reportFile = Option.map(p.report, (f) => resolve(f))
    if (Option.isSome(reportFile)) {
      const problem = reportPathProblem(reportFile.value)
      if (problem !== undefined) return yield* usage(`cannot write the --report file: ${problem}`)
    }
    const scenario: ScenarioOptions = {
      nodes: p.nodes,
      lookups: p.lookups,
      seed: p.seed,
      alpha: p.alpha,
      k: p.k,
      crash: p.crash,
      loss: p.loss,
      latency: p.latency,
      rpc: p.rpc as RpcMode,
      relays: !p.noRelays,
      ...(nat === undefined ? {} : { nat }),
      onProgress: progressReporter()
    }
    const report: SimReport = yield* runScenario(scenario).pipe(
      Effect.catchTags({
        ScenarioError: (e) => Effect.fail(new UsageError({ message: e.detail })),
        SimDeadlock: (e) =>
          Effect.fail(
            new OperationError({
              message: `${e.message}; seed ${p.seed}; replay: ${replayCommand(p)}`
            })
          )
      })
    )
    const replay = replayCommand(p)
    const judged = verdict(report)
    // The results first: a report that cannot be written after all loses nothing else.
    yield* Effect.sync(() =>
      process.stdout.write(
        p.format === "json"
          ? `${JSON.stringify({ ...report, ok: judged.ok, reasons: judged.reasons, replay })}\n`
          : `${renderText(report, replay)}\n`
      )
    )
    if (Option.isSome(reportFile)) {
      const file = reportFile.value
      yield* Effect.try({
        try: () => writeFileSync(file, renderHtml(report, replay, judged.reasons)),
        catch: (e) =>
          new OperationError({
            message: `could not write the report to ${file}: ${(e as Error).message ?? String(e)}`
          })
      })
      process.stderr.write(`report written to ${file}\n`)
    }
    if (!judged.ok)
      return yield* Effect.fail(
        new OperationError({
          message: `simulation failed: ${judged.reasons.join("; ")}. Seed ${p.seed}; replay: ${replay}`
        })
      )
  })

export const simCommand = Command.make("sim", options, run).pipe(
  Command.withDescription(
    "Simulate a whole network of connection managers on virtual time (deterministic: same seed, same run)"
  )
)
