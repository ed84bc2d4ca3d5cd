import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Fiber, Option } from "effect"
import { replayCommand, run as runSimCommand } from "../src/programs/SimCommand.js"
import { renderHtml, renderText } from "../src/programs/SimReport.js"
import { simulate } from "../src/programs/SimRuntime.js"
import {
  makeWorld,
  parseNatMix,
  runScenario,
  type ScenarioOptions,
  type SimNode,
  type SimReport,
  type SimWorld,
  verdict
} from "../src/programs/Simulation.js"
import type { NatType } from "../src/services/SimNetwork.js"

// Small worlds: every node is the real manager + RPC stack, and this machine is shared.
const small: ScenarioOptions = { nodes: 40, lookups: 20, seed: 1, seeds: 1, k: 6 }

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

/** A hand-made world: one public seed, then nodes with the given NATs, each joining in turn. */
const world =
  (nats: ReadonlyArray<NatType>, seed = 7, join = true) =>
  (fn: (w: SimWorld, nodes: ReadonlyArray<SimNode>) => Effect.Effect<void, unknown>) =>
    simulate(
      (ctx) =>
        Effect.gen(function* () {
          const w = yield* makeWorld(ctx, { seed, k: 6, traceLimit: 100_000 })
          yield* w.join(yield* w.addNode({ seed: true }))
          const nodes: SimNode[] = []
          for (const nat of nats) {
            const node = yield* w.addNode({ nat })
            if (join) expect(yield* w.join(node)).toBe(true)
            // Not joining: only a connection to the seed (so the seed can relay to it).
            else yield* node.cm.getConnection(w.seeds[0]!.nodeId)
            nodes.push(node)
          }
          yield* fn(w, nodes)
        }),
      { seed }
    )

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
        expect(again.virtualMs).toEqual(first.virtualMs)
        expect(other.traceHash).not.toBe(first.traceHash)
      }),
    120_000
  )

  it.effect(
    "without churn every lookup finds its target, in few rounds",
    () =>
      Effect.gen(function* () {
        const report = yield* reportFor(1)
        expect(report.joined).toBe(small.nodes)
        expect(report.lookups.total).toBe(small.lookups)
        expect(report.lookups.successRate).toBe(1)
        expect(report.rounds.max).toBeLessThanOrEqual(4)
        expect(report.queries.median).toBeGreaterThanOrEqual(1)
        expect(report.roundsHistogram.reduce((s, b) => s + b.count, 0)).toBe(small.lookups)
        // Nothing left in flight once the lookups are done.
        expect(report.network.pendingDials).toBe(0)
      }),
    120_000
  )

  it.effect(
    "a partition makes lookups across it fail; after healing they succeed",
    () =>
      world(["none", "none", "none", "none", "none", "none", "none", "none"])((w, nodes) =>
        Effect.gen(function* () {
          const left = nodes.slice(0, 4)
          const right = nodes.slice(4)
          const from = left[0]!
          const target = right[0]!
          const id = yield* w.sim.partition(
            [w.seeds[0]!.host, ...left.map((n) => n.host)],
            right.map((n) => n.host)
          )
          // Connections across the cut die of their idle timeout (30 s).
          yield* Effect.sleep("31 seconds")
          const cut = yield* w.lookup(from, target)
          expect(cut.found).toBe(false)
          expect(yield* from.cm.hasConnection(target.nodeId)).toBe(false)
          // Inside one side lookups still work.
          expect((yield* w.lookup(from, left[3]!)).found).toBe(true)
          yield* w.sim.heal(id)
          const healed = yield* w.lookup(from, target)
          expect(healed.found).toBe(true)
          expect(yield* from.cm.hasConnection(target.nodeId)).toBe(true)
        })
      ),
    60_000
  )

  it.effect(
    "a crashed node cannot be found; restarted with the same key it is found again",
    () =>
      world(["none", "none", "none", "none", "none", "none"])((w, nodes) =>
        Effect.gen(function* () {
          const from = nodes[0]!
          const target = nodes[4]!
          expect((yield* w.lookup(from, target)).found).toBe(true)
          yield* w.crash(target)
          // Peers learn of the crash by their idle timeout.
          yield* Effect.sleep("31 seconds")
          const start = yield* w.now
          const gone = yield* w.lookup(from, target)
          expect(gone.found).toBe(false)
          expect((yield* w.now) - start).toBeLessThanOrEqual(15_000)
          yield* w.restart(target)
          expect(target.alive).toBe(true)
          expect(yield* w.join(target)).toBe(true)
          const back = yield* w.lookup(nodes[1]!, target)
          expect(back.found).toBe(true)
          expect(Option.isSome(yield* nodes[1]!.graph.getNode(target.nodeId))).toBe(true)
        })
      ),
    60_000
  )

  it.effect(
    "hole punching: restricted↔restricted connects through the seed; symmetric↔symmetric fails with a typed timeout",
    () =>
      world(
        ["restricted", "restricted", "symmetric", "symmetric"],
        7,
        false
      )((w, nodes) =>
        Effect.gen(function* () {
          const [r1, r2, s1, s2] = nodes as [SimNode, SimNode, SimNode, SimNode]
          const seed = w.seeds[0]!
          const external = (n: SimNode) =>
            Effect.map(seed.graph.getNode(n.nodeId), (c) => Option.getOrThrow(c).addresses[0]!)
          // restricted ↔ restricted, never in touch before: the first Initial is filtered, the
          // seed relays the request, r2 punches toward r1, the retransmitted Initial gets in.
          const r2Address = yield* external(r2)
          const punched = yield* r1.cm
            .getConnectionWithAddress(r2.nodeId, { host: r2Address.host, port: r2Address.port })
            .pipe(Effect.exit)
          expect(Exit.isSuccess(punched)).toBe(true)
          const punchTrace = yield* w.sim.trace
          expect(punchTrace.some((e) => e.detail === "handshake: filtered by NAT")).toBe(true)
          expect(punchTrace.some((e) => e.kind === "datagram" && e.to === `${r1.host}:${r1.port}`)).toBe(true)
          expect(punchTrace.some((e) => e.kind === "dial" && e.detail === "retransmit")).toBe(true)
          // symmetric ↔ symmetric: the port the seed saw is not the one a new peer would get.
          const s2Address = yield* external(s2)
          const start = yield* w.now
          const failed = yield* s1.cm
            .getConnectionWithAddress(
              s2.nodeId,
              { host: s2Address.host, port: s2Address.port },
              { timeout: "5 seconds" }
            )
            .pipe(Effect.flip)
          expect(failed._tag).toBe("NodeConnectionError")
          expect(failed.reason).toBe("timeout")
          expect((yield* w.now) - start).toBeLessThanOrEqual(5_000)
          const trace = yield* w.sim.trace
          expect(
            trace.some(
              (e) => e.detail === "handshake: filtered by NAT" || e.detail === "handshake: no NAT mapping"
            )
          ).toBe(true)
        })
      ),
    60_000
  )

  it.effect(
    "interrupting a lookup leaves no dial, timer or fiber of it behind",
    () =>
      world(["none", "none", "none", "none", "none"])((w, nodes) =>
        Effect.gen(function* () {
          const from = nodes[0]!
          const target = nodes[3]!
          // Make the lookup slow: everyone but `from` and the seed is cut off.
          yield* w.sim.partition(
            [from.host, w.seeds[0]!.host],
            nodes.slice(1).map((n) => n.host)
          )
          yield* Effect.sleep("31 seconds")
          const before = yield* w.sim.stats
          const sleepsBefore = w.ctx.clock.pendingSleeps
          const fiber = yield* Effect.fork(w.lookup(from, target))
          yield* Effect.sleep("2 seconds")
          const during = yield* w.sim.stats
          expect(during.pendingDials).toBeGreaterThan(0)
          yield* Fiber.interrupt(fiber)
          yield* Effect.sleep("1 millis")
          const after = yield* w.sim.stats
          expect(after.pendingDials).toBe(before.pendingDials)
          expect(after.openConnectionEnds).toBe(before.openConnectionEnds)
          // Once the world's own events for the abandoned dials are past, no timer is left.
          yield* Effect.sleep("16 seconds")
          expect(w.ctx.clock.pendingSleeps).toBeLessThanOrEqual(sleepsBefore)
          expect((yield* w.sim.stats).scheduledEvents).toBeLessThanOrEqual(before.scheduledEvents)
        })
      ),
    60_000
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
      format: "json",
      report: Option.none<string>()
    }

    it("the replay command names every parameter of the run", () => {
      expect(replayCommand(parsed)).toBe(
        "quicmesh sim --nodes 6 --lookups 4 --seed 5 --alpha 3 -k 20 --crash 0 --loss 0.9 --latency 50 --nat none:1,symmetric:1"
      )
    })

    it("NAT mixes parse, and bad ones are refused with a reason", () => {
      expect(parseNatMix("none:70, restricted:30")).toEqual({
        _tag: "Right",
        right: { none: 70, restricted: 30 }
      })
      const bad = parseNatMix("none:1,carrier-grade:2")
      expect(bad._tag === "Left" && bad.left).toMatch(/unknown NAT type "carrier-grade"/)
      expect(parseNatMix("none:-1")._tag).toBe("Left")
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
        }),
      60_000
    )

    it.effect("the HTML report is one self-contained page with the charts", () =>
      Effect.gen(function* () {
        const report = yield* reportFor(1)
        const html = renderHtml(report, "quicmesh sim --nodes 40", verdict(report).reasons)
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
