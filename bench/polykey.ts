/**
 * quicmesh and Polykey 1.15.1 (issue #21), all figures from one run. Polykey runs as child
 * processes from the harness folder (`npm run polykey:install`; GPL-3.0, never loaded here);
 * without it the suite prints one line and returns no rows. The agent rows need `npm run build`
 * (the quicmesh agent is `bin/quicmesh.js`); without a build they are left out, saying so.
 *
 * Nodes: two quicmesh connection managers in this process (test/fixtures/cmNode.ts, loopback
 * QUIC) — Q1 calls, Q2 answers — and three Polykey agents — P1 and P3 call, P2 answers — on
 * test/polykey/benchMain.mjs, where Polykey's own NodeConnectionManager and agent RPC client
 * make and time a Polykey caller's calls inside its own process (no client service or CLI in
 * the figures), as this process times Q1's. Every call is `nodesClosestLocalNodesGet` for one
 * fixed target, its answer read whole, on the caller's held connection through its manager:
 * Q1 with `cm.withConnection` and the handle's client, which speaks the peer's wire as the
 * manager's lookups do, or ("Polykey's wire") `closestLocalNodes` on the handle's connection,
 * which forces Polykey's wire on a quicmesh peer (Q2 serves both); P1 and P3 with `withConnF`
 * and the connection's `rpcClient`, as Polykey's NodeManager does. The answerers' graphs hold
 * only these nodes (answers of one or two contacts): made-up contacts would not do, as
 * Polykey's periodic lookup (every 45 s) dials every contact it is told of, and while it dials
 * contacts that never connect its own calls stall for minutes (Polykey → Polykey too).
 *
 * Pairs: Q1→P2 (a quicmesh caller in place of P1), P1→Q2 (a quicmesh answerer in place of P2),
 * P1→P2, and Q1→Q2 in quicmesh's wire and in Polykey's wire.
 * 1. Cold connect: from the start of the dial (the manager's dial to a known address: Q1's
 *    `getConnectionWithAddress`, P1's `createConnection`) to the end of the first answer on the
 *    new connection: QUIC and TLS handshakes with both chains verified, the stream, the call.
 *    Before each sample the caller destroys its connection and waits until neither end holds
 *    one. BENCH_POLYKEY_ROUNDS (5) rounds, every pair each round, the order rotating; median.
 * 2. Warm call: BENCH_POLYKEY_WARM_CALLS (20) calls in turn per pair and round (after 5
 *    unmeasured ones); the median of all.
 * 3. Answered calls/s with 32 callers at once, each making BENCH_POLYKEY_CALLS_PER_CALLER (4)
 *    calls in turn, until all have ended or BENCH_POLYKEY_RATE_WINDOW_MS (20000) has passed
 *    (failed calls not counted); the median of the rounds. A round that leaves calls running at
 *    the window's end is a stall: the pair has no further rounds. Polykey → Polykey here is P3→P2
 *    (P3 connects first, untimed), as a Polykey caller that stalls may not recover.
 * 4. Unanswered of 256 calls started at once, each with a timeout of
 *    BENCH_POLYKEY_FLOOD_TIMEOUT_MS (5000): a call without a whole answer by then (failed,
 *    timed out or still running) is unanswered. Once per pair, after everything else.
 * Targets (the issue's): a quicmesh end is never slower than the Polykey end it replaces, so
 * each mixed pair is compared with Polykey → Polykey, and so is Q1→Q2 in Polykey's wire (both
 * ends replaced); at 256 at once, Q1→Q2 leaves none unanswered, and a mixed pair leaves no more
 * unanswered than Polykey → Polykey: for P1→Q2 (the answerer replaced) both counts leave out the
 * calls the Polykey caller's own js-quic refused to start (`ErrorQUICStreamInternal`, past the
 * peer's 100 streams), which no answerer can change. quicmesh's wire is compared with
 * Polykey's wire between the same nodes, without a target.
 * 5. Agent start-to-ready and idle RSS (first, before any other node runs): from the spawn of
 *    `quicmesh agent start` (fresh node path, no seeds) to its ready line, against the spawn of
 *    a PolykeyAgent (test/polykey/agentMain.mjs, fresh node path, no seeds, the cheapest
 *    password hash and a given key: Polykey's own test settings) to its ready line, which it
 *    prints once `createPolykeyAgent` has started it; the RSS of each (/proc VmRSS) 3 s after.
 *    BENCH_POLYKEY_AGENT_ROUNDS (3) rounds, alternating which starts first; medians.
 * Each measurement of a pair is given 60 s; one that takes longer fails that pair, saying so.
 */
import { createHash } from "node:crypto"
import { existsSync, readFileSync } from "node:fs"
import { loadavg } from "node:os"
import { dirname, join } from "node:path"
import { Duration, Effect, Either, Schedule, type Scope } from "effect"
import { closestLocalNodes } from "../src/internal/polykey/nodeMethods.js"
import type { NodeConnectionHandle } from "../src/services/ConnectionManager.js"
import * as NodeId from "../src/services/NodeId.js"
import { BIN, makeNodePath, spawnAgent } from "../test/fixtures/agentProcess.js"
import { makeNode, type TestNode } from "../test/fixtures/cmNode.js"
import { harnessProblem, type PolykeyAgent, startPolykeyAgent } from "../test/polykey/agents.js"
import { commandsOf, type Send } from "./polykeyCommands.js"
import { type BenchResult, type BenchSuite, envInt, median } from "./types.js"

const SUITE = "polykey"
const ROUNDS = envInt("BENCH_POLYKEY_ROUNDS", 5)
const WARM_CALLS = envInt("BENCH_POLYKEY_WARM_CALLS", 20)
const WARM_UP_CALLS = 5
const CALLERS = 32
const CALLS_PER_CALLER = envInt("BENCH_POLYKEY_CALLS_PER_CALLER", 4)
/** How long 32 callers' calls may run before those still running count as unfinished. */
const RATE_WINDOW_MS = envInt("BENCH_POLYKEY_RATE_WINDOW_MS", 20_000)
const FLOOD_CALLS = 256
const FLOOD_TIMEOUT_MS = envInt("BENCH_POLYKEY_FLOOD_TIMEOUT_MS", 5000)
/** The error Polykey's js-quic fails a call with when the peer's stream limit is reached. */
const CALLER_REFUSAL = "ErrorQUICStreamInternal"
const AGENT_ROUNDS = envInt("BENCH_POLYKEY_AGENT_ROUNDS", 3)
const IDLE_SETTLE = "3 seconds"
const CALL_TIMEOUT_MS = 10_000
const K = 20

const say = (line: string) => process.stderr.write(`polykey: ${line}\n`)
const messageOf = (e: unknown) => (e instanceof Error ? e.message : String(e)).slice(0, 300)

const idFrom = (text: string) => NodeId.unsafeFromBytes(createHash("sha256").update(text).digest())
/** The target of every call. */
const TARGET = idFrom("quicmesh bench polykey target")
/** A node as its peers dial it. */
interface End {
  readonly nodeId: NodeId.NodeId
  readonly host: string
  readonly port: number
}

interface Flood {
  readonly unanswered: number
  /** The errors of the unanswered calls that failed, by kind. */
  readonly failures: Readonly<Record<string, number>>
}

/** 32 callers' calls: answered per second, failed, and still running when the window closed. */
interface Rate {
  readonly perSecond: number
  readonly failed: number
  readonly unfinished: number
}

/** A node's side of the measurements, whatever its kind. */
interface Caller {
  readonly end: End
  readonly holds: (peer: End) => Effect.Effect<boolean, unknown>
  readonly drop: (peer: End) => Effect.Effect<void, unknown>
  /** Milliseconds from the dial's start to the end of the first answer. */
  readonly cold: (peer: End) => Effect.Effect<number, unknown>
  readonly warm: (peer: End, count: number) => Effect.Effect<ReadonlyArray<number>, unknown>
  readonly rate: (peer: End) => Effect.Effect<Rate, unknown>
  readonly flood: (peer: End) => Effect.Effect<Flood, unknown>
}

/** Q1 (or Q2): calls through its manager, in the peer's own wire or forced to Polykey's. */
const quicmeshSide = (node: TestNode, wire: "peer's" | "polykey"): Caller => {
  const call = (h: NodeConnectionHandle, timeoutMs: number) =>
    wire === "polykey"
      ? closestLocalNodes(h.connection, TARGET, { timeout: timeoutMs })
      : h.client.closestNodesUpTo(TARGET, K, Duration.millis(timeoutMs))
  const held = (peer: End, timeoutMs: number) =>
    node.cm.withConnection(peer.nodeId, (h) => call(h, timeoutMs))
  return {
    end: { nodeId: node.nodeId, ...node.address },
    holds: (peer) => node.cm.hasConnection(peer.nodeId),
    drop: (peer) => node.cm.destroyConnection(peer.nodeId, "bench: a cold connect next"),
    cold: (peer) =>
      Effect.gen(function* () {
        const t0 = performance.now()
        const h = yield* node.cm.getConnectionWithAddress(peer.nodeId, peer, { timeout: CALL_TIMEOUT_MS })
        yield* call(h, CALL_TIMEOUT_MS)
        return performance.now() - t0
      }),
    warm: (peer, count) =>
      Effect.gen(function* () {
        const out: Array<number> = []
        for (let i = 0; i < count; i++) {
          const t0 = performance.now()
          yield* held(peer, CALL_TIMEOUT_MS)
          out.push(performance.now() - t0)
        }
        return out
      }),
    rate: (peer) =>
      Effect.gen(function* () {
        let answered = 0
        let failed = 0
        const one = held(peer, CALL_TIMEOUT_MS).pipe(
          Effect.match({
            onSuccess: () => {
              answered++
            },
            onFailure: () => {
              failed++
            }
          })
        )
        const t0 = performance.now()
        yield* Effect.forEach(
          Array.from({ length: CALLERS }),
          () => Effect.repeatN(one, CALLS_PER_CALLER - 1),
          {
            concurrency: "unbounded",
            discard: true
          }
        ).pipe(Effect.timeout(RATE_WINDOW_MS), Effect.ignore)
        const seconds = (performance.now() - t0) / 1000
        return {
          perSecond: answered / seconds,
          failed,
          unfinished: CALLERS * CALLS_PER_CALLER - answered - failed
        }
      }),
    flood: (peer) =>
      Effect.gen(function* () {
        const t0 = performance.now()
        let answered = 0
        const failures: Record<string, number> = {}
        const one = held(peer, FLOOD_TIMEOUT_MS).pipe(
          Effect.timeout(FLOOD_TIMEOUT_MS + 2000),
          Effect.match({
            onSuccess: () => {
              if (performance.now() - t0 <= FLOOD_TIMEOUT_MS) answered++
            },
            onFailure: (e) => {
              const kind = "reason" in e ? `${e._tag}: ${e.reason}` : e._tag
              failures[kind] = (failures[kind] ?? 0) + 1
            }
          })
        )
        yield* Effect.forEach(Array.from({ length: FLOOD_CALLS }), () => one, {
          concurrency: "unbounded",
          discard: true
        })
        return { unanswered: FLOOD_CALLS - answered, failures }
      })
  }
}

/** P1 (or P2): test/polykey/benchMain.mjs's commands. */
const polykeySide = (agent: PolykeyAgent, send: Send): Caller => {
  const target = NodeId.encode(TARGET)
  const to = (peer: End) => ({ peer: NodeId.encode(peer.nodeId), target })
  return {
    end: { nodeId: agent.nodeIdBytes, host: agent.host, port: agent.port },
    holds: (peer) => send<boolean>("connected", to(peer)),
    drop: (peer) => send<null>("drop", to(peer)),
    cold: (peer) =>
      send<{ ms: number }>("cold", {
        ...to(peer),
        host: peer.host,
        port: peer.port,
        timeoutMs: CALL_TIMEOUT_MS
      }).pipe(Effect.map((r) => r.ms)),
    warm: (peer, count) =>
      send<{ ms: ReadonlyArray<number> }>("warm", { ...to(peer), count, timeoutMs: CALL_TIMEOUT_MS }).pipe(
        Effect.map((r) => r.ms)
      ),
    rate: (peer) =>
      send<Rate>("rate", {
        ...to(peer),
        callers: CALLERS,
        perCaller: CALLS_PER_CALLER,
        timeoutMs: CALL_TIMEOUT_MS,
        windowMs: RATE_WINDOW_MS
      }),
    flood: (peer) => send("flood", { ...to(peer), calls: FLOOD_CALLS, timeoutMs: FLOOD_TIMEOUT_MS })
  }
}

interface Pair {
  readonly name: string
  readonly caller: Caller
  readonly answerer: Caller
}

/** The caller drops its connection; then until neither end holds one (within 5 s). */
const freshStart = (pair: Pair) =>
  Effect.gen(function* () {
    yield* pair.caller.drop(pair.answerer.end)
    const held = Effect.zipWith(
      pair.caller.holds(pair.answerer.end),
      pair.answerer.holds(pair.caller.end),
      (a, b) => a || b
    )
    yield* held.pipe(
      Effect.filterOrFail(
        (h) => !h,
        () => `${pair.name}: a connection was still held 5 s after it was dropped`
      ),
      Effect.retry(Schedule.spaced("20 millis").pipe(Schedule.upTo("5 seconds")))
    )
  })

/** How long one measurement of one pair may take before the pair counts as failed. */
const MEASURE_LIMIT = "60 seconds"

/**
 * `rounds` rounds of `measure` over every pair, the order rotating; samples by pair. A pair
 * whose measurement fails (its reason put in `failed`) is measured no further; nor is one whose
 * sample `stops` gives a reason for (put in `stopped`).
 */
const inRounds = <A>(
  phase: string,
  pairs: ReadonlyArray<Pair>,
  rounds: number,
  measure: (pair: Pair) => Effect.Effect<ReadonlyArray<A>, unknown>,
  failed: Map<Pair, string>,
  stops: (a: A) => string | undefined = () => undefined,
  stopped: Map<Pair, string> = new Map()
) =>
  Effect.gen(function* () {
    const of = new Map<Pair, Array<A>>(pairs.map((p) => [p, []]))
    for (let r = 0; r < rounds; r++)
      for (let i = 0; i < pairs.length; i++) {
        const pair = pairs[(i + r) % pairs.length]!
        if (failed.has(pair) || stopped.has(pair)) continue
        const out = yield* Effect.either(
          measure(pair).pipe(
            Effect.timeoutFail({ duration: MEASURE_LIMIT, onTimeout: () => `no result in ${MEASURE_LIMIT}` })
          )
        )
        if (Either.isLeft(out)) {
          failed.set(pair, `${phase}: ${messageOf(out.left)}`)
          say(`${pair.name}: ${phase} failed: ${messageOf(out.left)}`)
          continue
        }
        of.get(pair)!.push(...out.right)
        const why = out.right.map(stops).find((w) => w !== undefined)
        if (why !== undefined) {
          stopped.set(pair, why)
          say(`${pair.name}: ${why}`)
        }
      }
    return of
  })

const row = (
  name: string,
  unit: string,
  value: number,
  baselineName: string,
  baseline: number,
  extra: Partial<BenchResult> = {}
): BenchResult => ({
  suite: SUITE,
  name,
  value,
  unit,
  baselineName,
  baseline,
  ratio: value / baseline,
  ...extra
})

/** ≤ 1.00× for times and memory, ≥ 1.00× for rates. */
const atMost = (r: BenchResult): BenchResult => ({ ...r, target: "≤ 1.00×", met: r.value <= r.baseline! })
const atLeast = (r: BenchResult): BenchResult => ({ ...r, target: "≥ 1.00×", met: r.value >= r.baseline! })

/** Parts 1–4: the nodes, the pairs, the rows. */
const calls = Effect.gen(function* () {
  const q1 = yield* makeNode("bench-polykey-q1")
  const q2 = yield* makeNode("bench-polykey-q2")
  const [p1agent, p2agent, p3agent] = yield* Effect.all(
    [
      startPolykeyAgent({ bench: true }),
      startPolykeyAgent({ bench: true }),
      startPolykeyAgent({ bench: true })
    ],
    { concurrency: "unbounded" }
  )
  const p1 = polykeySide(p1agent, commandsOf(p1agent))
  const p2 = polykeySide(p2agent, commandsOf(p2agent))
  const Q2 = quicmeshSide(q2, "peer's")
  const qp: Pair = { name: "quicmesh → Polykey", caller: quicmeshSide(q1, "peer's"), answerer: p2 }
  const pq: Pair = { name: "Polykey → quicmesh", caller: p1, answerer: Q2 }
  const pp: Pair = { name: "Polykey → Polykey", caller: p1, answerer: p2 }
  const qqOwn: Pair = {
    name: "quicmesh → quicmesh, quicmesh's wire",
    caller: quicmeshSide(q1, "peer's"),
    answerer: Q2
  }
  const qqPk: Pair = {
    name: "quicmesh → quicmesh, Polykey's wire",
    caller: quicmeshSide(q1, "polykey"),
    answerer: Q2
  }
  // Under load a Polykey caller can stall for good: P→P's load parts get a caller of their own (P3).
  const ppLoad: Pair = { name: pp.name, caller: polykeySide(p3agent, commandsOf(p3agent)), answerer: p2 }
  const pairs = [qp, pq, pp, qqOwn, qqPk]
  const loadPairs = [qp, pq, ppLoad, qqOwn, qqPk]

  const failed = new Map<Pair, string>()
  say(`cold connects, ${ROUNDS} rounds`)
  const cold = yield* inRounds(
    "cold connect",
    pairs,
    ROUNDS,
    (pair) =>
      Effect.zipRight(
        freshStart(pair),
        Effect.map(pair.caller.cold(pair.answerer.end), (ms) => [ms])
      ),
    failed
  )
  yield* inRounds("warm-up", pairs, 1, (pair) => pair.caller.warm(pair.answerer.end, WARM_UP_CALLS), failed)
  say(`warm calls, ${ROUNDS} rounds of ${WARM_CALLS}`)
  const warm = yield* inRounds(
    "warm calls",
    pairs,
    ROUNDS,
    (pair) => pair.caller.warm(pair.answerer.end, WARM_CALLS),
    failed
  )
  yield* inRounds(
    "P3's connect",
    [ppLoad],
    1,
    (pair) => Effect.as(pair.caller.cold(pair.answerer.end), []),
    failed
  )
  say(`${CALLERS} callers, ${ROUNDS} rounds`)
  const stalled = new Map<Pair, string>()
  const rates = yield* inRounds(
    `${CALLERS} callers`,
    loadPairs,
    ROUNDS,
    (pair) => Effect.map(pair.caller.rate(pair.answerer.end), (r) => [r]),
    failed,
    (r) =>
      r.unfinished > 0
        ? `stalled: ${r.unfinished} of ${CALLERS * CALLS_PER_CALLER} calls unfinished after ${RATE_WINDOW_MS} ms`
        : undefined,
    stalled
  )
  say(`${FLOOD_CALLS} calls at once`)
  const floods = yield* inRounds(
    `${FLOOD_CALLS} at once`,
    [qqOwn, qqPk, qp, pq, ppLoad],
    1,
    (pair) => Effect.map(pair.caller.flood(pair.answerer.end), (f) => [f]),
    failed
  )

  /** What went wrong with these pairs, if anything. */
  const trouble = (ps: ReadonlyArray<Pair>, load: boolean) =>
    ps
      .flatMap((p) => [
        ...(failed.has(p) ? [`${p.name} failed in ${failed.get(p)}`] : []),
        ...(load && stalled.has(p) ? [`${p.name} ${stalled.get(p)}`] : [])
      ])
      .join("; ")
  const compare = (
    name: string,
    unit: string,
    figure: (p: Pair) => number,
    p: Pair,
    base: Pair,
    notes: string
  ) => {
    const why = trouble([p, base], base === ppLoad)
    return row(`${name}, ${p.name}`, unit, figure(p), base.name, figure(base), {
      notes: why === "" ? notes : `${notes}; ${why}`
    })
  }
  const coldOf = (p: Pair) => median(cold.get(p)!)
  const warmOf = (p: Pair) => median(warm.get(p)!)
  const rateOf = (p: Pair) => median(rates.get(p)!.map((r) => r.perSecond))
  const failedCalls = (p: Pair) => rates.get(p)!.reduce((n, r) => n + r.failed, 0)
  const floodOf = (p: Pair) => floods.get(p)![0]?.unanswered ?? Number.NaN
  /**
   * Unanswered less the calls a Polykey caller's own js-quic refused to start (it fails each
   * stream past the peer's 100 with `ErrorQUICStreamInternal`): what the answerer left unanswered.
   */
  const answererFloodOf = (p: Pair) => floodOf(p) - (floods.get(p)![0]?.failures[CALLER_REFUSAL] ?? 0)
  const floodNote = (p: Pair) => {
    const f = floods.get(p)![0]
    return `${p.name}: ${f === undefined ? "no figure" : `failures ${JSON.stringify(f.failures)}`}`
  }
  const coldName = "cold connect + first nodesClosestLocalNodesGet (median)"
  const warmName = "warm nodesClosestLocalNodesGet (median)"
  const rateName = `nodesClosestLocalNodesGet answered/s, ${CALLERS} callers (median)`
  const rateNotes = (p: Pair, base: Pair) =>
    `higher is better; failed calls: ${failedCalls(p)}, ${base.name} ${failedCalls(base)}`
  const rows: Array<BenchResult> = []
  for (const p of [qp, pq, qqPk])
    rows.push(atMost(compare(coldName, "ms", coldOf, p, pp, `${ROUNDS} rounds`)))
  rows.push(compare(coldName, "ms", coldOf, qqOwn, qqPk, `${ROUNDS} rounds`))
  const warmNotes = `${ROUNDS} rounds of ${WARM_CALLS} calls`
  for (const p of [qp, pq, qqPk]) rows.push(atMost(compare(warmName, "ms", warmOf, p, pp, warmNotes)))
  rows.push(compare(warmName, "ms", warmOf, qqOwn, qqPk, warmNotes))
  for (const p of [qp, pq, qqPk])
    rows.push(atLeast(compare(rateName, "calls/s", rateOf, p, ppLoad, rateNotes(p, ppLoad))))
  rows.push(compare(rateName, "calls/s", rateOf, qqOwn, qqPk, rateNotes(qqOwn, qqPk)))
  const floodName = `unanswered of ${FLOOD_CALLS} calls at once (${FLOOD_TIMEOUT_MS} ms each)`
  const floodNotes = (p: Pair) => `${floodNote(p)}; ${floodNote(ppLoad)}`
  for (const p of [qqOwn, qqPk]) {
    const { ratio: _ratio, ...counts } = compare(floodName, "calls", floodOf, p, ppLoad, floodNotes(p))
    rows.push({ ...counts, target: "0", met: counts.value === 0 })
  }
  // A quicmesh caller replaces Polykey's, refusals and all; a quicmesh answerer is held to what
  // the same Polykey caller leaves unanswered by a Polykey answerer, its own refusals left out.
  for (const [p, figure, name] of [
    [qp, floodOf, floodName],
    [pq, answererFloodOf, `${floodName}, the Polykey caller's own refusals (${CALLER_REFUSAL}) left out`]
  ] as const) {
    const { ratio: _ratio, ...counts } = compare(name, "calls", figure, p, ppLoad, floodNotes(p))
    rows.push({ ...counts, target: "≤ Polykey → Polykey", met: counts.value <= counts.baseline! })
  }
  return rows
})

const rssOf = (pid: number) => {
  const line = readFileSync(`/proc/${pid}/status`, "utf8")
    .split("\n")
    .find((l) => l.startsWith("VmRSS:"))
  return Number(line?.replace(/\D+/g, "")) / 1024
}

/** Spawn to ready, and the RSS once idle, of one agent started by `start` (with its pid). */
const agentRound = (start: Effect.Effect<number, unknown, Scope.Scope>) =>
  Effect.scoped(
    Effect.gen(function* () {
      const t0 = performance.now()
      const pid = yield* start
      const ms = performance.now() - t0
      yield* Effect.sleep(IDLE_SETTLE)
      return { ms, rss: rssOf(pid) }
    })
  )

/** A quicmesh agent on a fresh node path (as startPolykeyAgent makes one), its pid. */
const startQuicmesh = Effect.flatMap(makeNodePath("qm-bench-polykey-"), (dir) =>
  Effect.map(spawnAgent({ dir, host: "127.0.0.1" }), (agent) => agent.proc.pid!)
)

/** Part 5, when quicmesh is built. */
const agents = Effect.gen(function* () {
  if (!existsSync(join(dirname(BIN), "..", "dist", "programs", "main.js"))) {
    say("agent rows not run: quicmesh is not built (run `npm run build`)")
    return []
  }
  const quicmesh: Array<{ ms: number; rss: number }> = []
  const polykey: Array<{ ms: number; rss: number }> = []
  for (let r = 0; r < AGENT_ROUNDS; r++) {
    const q = agentRound(startQuicmesh)
    const p = agentRound(Effect.map(startPolykeyAgent(), (a) => a.pid))
    if (r % 2 === 0) {
      quicmesh.push(yield* q)
      polykey.push(yield* p)
    } else {
      polykey.push(yield* p)
      quicmesh.push(yield* q)
    }
  }
  const notes = `median of ${AGENT_ROUNDS} fresh agents each, no seeds`
  return [
    atMost(
      row(
        "agent start-to-ready: spawn to ready line (median)",
        "ms",
        median(quicmesh.map((s) => s.ms)),
        "PolykeyAgent",
        median(polykey.map((s) => s.ms)),
        { notes }
      )
    ),
    atMost(
      row(
        `agent idle RSS, ${IDLE_SETTLE} after ready (median)`,
        "MiB",
        median(quicmesh.map((s) => s.rss)),
        "PolykeyAgent",
        median(polykey.map((s) => s.rss)),
        { notes }
      )
    )
  ]
})

export const suite: BenchSuite = {
  name: SUITE,
  run: () => {
    const problem = harnessProblem()
    if (problem !== undefined) {
      say(`not run: ${problem}`)
      return Promise.resolve([])
    }
    say(
      `load average at start: ${loadavg()
        .map((l) => l.toFixed(2))
        .join(" ")}`
    )
    return Effect.runPromise(
      Effect.gen(function* () {
        const started = yield* Effect.either(agents)
        const agentRows = Either.isRight(started) ? started.right : []
        if (Either.isLeft(started)) say(`agent rows failed: ${messageOf(started.left)}`)
        const measured = yield* Effect.either(Effect.scoped(calls))
        if (Either.isLeft(measured)) say(`call rows failed: ${messageOf(measured.left)}`)
        return [...agentRows, ...(Either.isRight(measured) ? measured.right : [])]
      })
    )
  }
}
