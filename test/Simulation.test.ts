import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Option } from "effect"
import { replayCommand, run as runSimCommand } from "../src/programs/SimCommand.js"
import { renderHtml, renderText } from "../src/programs/SimReport.js"
import {
  parseNatMix,
  runScenario,
  type ScenarioOptions,
  type SimReport,
  verdict
} from "../src/programs/Simulation.js"

// Scenario worlds of 100 nodes (k 6 keeps each join's lookup short; this machine is shared).
// The hand-scripted worlds (partition, crash, NATs, interruption) are in SimulationWorlds.test.ts.
const small: ScenarioOptions = { nodes: 100, lookups: 30, seed: 1, seeds: 2, k: 6 }

/** One scenario run per seed, shared by the tests that read it. */
const runs = new Map<number, Promise<SimReport>>()
const reportFor = (seed: number) =>
  Effect.promise(() => {
    let run = runs.get(seed)
    if (run === undefined) {
      run = Effect.runPromise(runScenario({ ...small, seed }))
      runs.set(seed, run)
    }
    return run
  })

describe("Simulation", () => {
  it.effect(
    "the same seed gives the same trace hash and figures; another seed another hash",
    () =>
      Effect.gen(function* () {
        const first = yield* reportFor(1)
        const again = yield* Effect.promise(() => Effect.runPromise(runScenario(small)))
        const other = yield* reportFor(2)
        expect(first.network.traceEvents).toBeGreaterThan(1000)
        expect(again.traceHash).toBe(first.traceHash)
        expect(again.network).toEqual(first.network)
        expect(again.rounds).toEqual(first.rounds)
        expect(again.queries).toEqual(first.queries)
        expect(again.lookupVirtualMs).toEqual(first.lookupVirtualMs)
        expect(again.virtualMs).toEqual(first.virtualMs)
        expect(other.traceHash).not.toBe(first.traceHash)
      }),
    120_000
  )

  it.effect(
    "without churn every lookup finds its target, in few rounds, with the link latency in its time",
    () =>
      Effect.gen(function* () {
        const report = yield* reportFor(1)
        expect(report.joined).toBe(small.nodes)
        expect(report.lookups.total).toBe(small.lookups)
        expect(report.lookups.successRate).toBe(1)
        expect(report.rounds.max).toBeLessThanOrEqual(4)
        expect(report.queries.median).toBeGreaterThanOrEqual(1)
        expect(report.roundsHistogram.reduce((s, b) => s + b.count, 0)).toBe(small.lookups)
        // A lookup that needs the network takes at least a dial and a query: two round trips
        // of the 50 ms links (jitter only adds).
        expect(report.lookupVirtualMs.count + report.alreadyConnected).toBe(small.lookups)
        expect(report.lookupVirtualMs.count).toBeGreaterThan(0)
        expect(report.lookupVirtualMs.median).toBeGreaterThanOrEqual(200)
        // Nothing left in flight once the lookups are done.
        expect(report.network.pendingDials).toBe(0)
      }),
    120_000
  )

  it.effect(
    "the wire RPC (real framing as bytes on simulated streams) is deterministic too",
    () =>
      Effect.gen(function* () {
        const wire: ScenarioOptions = { nodes: 20, lookups: 6, seed: 3, seeds: 1, k: 6, rpc: "wire" }
        const first = yield* runScenario(wire)
        const again = yield* runScenario(wire)
        const direct = yield* runScenario({ ...wire, rpc: "direct" })
        expect(first.options.rpc).toBe("wire")
        expect(first.lookups.successRate).toBe(1)
        expect(again.traceHash).toBe(first.traceHash)
        expect(again.queries).toEqual(first.queries)
        // On the wire every call opens a stream: the trace shows them, the direct one has none.
        expect(first.network.traceEvents).toBeGreaterThan(direct.network.traceEvents)
        expect(direct.lookups.successRate).toBe(1)
      }),
    120_000
  )

  describe("the sim command", () => {
    const parsed = {
      nodes: 6,
      lookups: 4,
      seed: 5,
      alpha: 3,
      k: 20,
      crash: 0,
      loss: 0.9,
      latency: 50,
      nat: Option.some("none:1,symmetric:1"),
      rpc: "direct",
      noRelays: false,
      format: "json",
      report: Option.none<string>()
    }

    it("the replay command names every parameter of the run", () => {
      expect(replayCommand(parsed)).toBe(
        "quicmesh sim --nodes 6 --lookups 4 --seed 5 --alpha 3 -k 20 --crash 0 --loss 0.9 --latency 50 --nat none:1,symmetric:1 --rpc direct"
      )
      expect(replayCommand({ ...parsed, noRelays: true })).toMatch(/ --no-relays$/)
    })

    it("NAT mixes parse, and bad ones are refused with a reason", () => {
      expect(parseNatMix("none:70, restricted:30")).toEqual(Either.right({ none: 70, restricted: 30 }))
      const bad = parseNatMix("none:1,carrier-grade:2")
      expect(Either.isLeft(bad) && bad.left).toMatch(/unknown NAT type "carrier-grade"/)
      expect(Either.isLeft(parseNatMix("none:-1"))).toBe(true)
    })

    it.effect(
      "a failing run exits with an error naming its seed and the command that replays it",
      () =>
        Effect.gen(function* () {
          const error = yield* runSimCommand(parsed).pipe(Effect.flip)
          expect(error._tag).toBe("OperationError")
          expect(error.message).toContain("Seed 5")
          expect(error.message).toContain(replayCommand(parsed))
          const usage = yield* runSimCommand({ ...parsed, crash: 1.5 }).pipe(Effect.flip)
          expect(usage._tag).toBe("UsageError")
          expect(usage.message).toMatch(/--crash/)
          const rpc = yield* runSimCommand({ ...parsed, rpc: "carrier-pigeon" }).pipe(Effect.flip)
          expect(rpc._tag).toBe("UsageError")
          expect(rpc.message).toMatch(/--rpc/)
        }),
      60_000
    )

    it.effect("the HTML report is one self-contained page with the charts", () =>
      Effect.gen(function* () {
        const report = yield* reportFor(1)
        const html = renderHtml(report, "quicmesh sim --nodes 100", verdict(report).reasons)
        expect(html.startsWith("<!doctype html>")).toBe(true)
        expect(html.match(/<svg /g)?.length).toBe(3)
        expect(html).toContain("Successful lookups by rounds")
        expect(html).toContain("by NAT pair")
        expect(html).not.toMatch(/<script|src=|href=/)
        expect(html).toContain("PASS")
        expect(renderText(report, "replay")).toContain(`sha256 ${report.traceHash}`)
      })
    )
  })
})
