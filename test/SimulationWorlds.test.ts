import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Fiber, Option } from "effect"
import { simulate } from "../src/programs/SimRuntime.js"
import { makeWorld, type SimNode, type SimWorld } from "../src/programs/Simulation.js"
import * as NodeId from "../src/services/NodeId.js"
import type { NatType } from "../src/services/SimNetwork.js"

/** Public nodes every world starts with (the seed among them), before the scripted ones. */
const BASE = 100

/**
 * A hand-made world: one public seed and BASE - 1 public nodes joined through it (four at a
 * time), then nodes with the given NATs, each joining in turn. `fn` gets the scripted nodes.
 */
const world =
  (nats: ReadonlyArray<NatType>, seed = 7, join = true) =>
  (fn: (w: SimWorld, nodes: ReadonlyArray<SimNode>) => Effect.Effect<void, unknown>) =>
    simulate(
      (ctx) =>
        Effect.gen(function* () {
          const w = yield* makeWorld(ctx, { seed, k: 6, traceLimit: 200_000 })
          yield* w.join(yield* w.addNode({ seed: true }))
          const joined = yield* Effect.forEach(
            Array.from({ length: BASE - 1 }),
            () => Effect.flatMap(w.addNode(), w.join),
            { concurrency: 4 }
          )
          expect(joined.every((ok) => ok)).toBe(true)
          const nodes: SimNode[] = []
          for (const nat of nats) {
            const node = yield* w.addNode({ nat })
            if (join) expect(yield* w.join(node)).toBe(true)
            // Not joining: only a connection to the seed (so the seed can relay to it).
            else yield* node.cm.getConnection(w.seeds[0]!.nodeId)
            nodes.push(node)
          }
          expect(w.nodes).toHaveLength(BASE + nats.length)
          yield* fn(w, nodes)
        }),
      { seed }
    )

describe("Kademlia bucket policy on the real manager (simulated network)", () => {
  it.effect(
    "a full bucket keeps its least-recently-seen node while it answers, and evicts it once it is dead",
    () =>
      simulate(
        (ctx) =>
          Effect.gen(function* () {
            // k = 1: one node per bucket, so the second node of a bucket finds it full.
            const w = yield* makeWorld(ctx, { seed: 11, k: 1 })
            const a = yield* w.addNode()
            const others: SimNode[] = []
            for (let i = 0; i < 12; i++) others.push(yield* w.addNode())
            // Three nodes that fall in the same bucket of a's table.
            const byBucket = new Map<number, SimNode[]>()
            for (const n of others) {
              const i = NodeId.bucketIndex(a.nodeId, n.nodeId)
              byBucket.set(i, [...(byBucket.get(i) ?? []), n])
            }
            const [old, newer, newest] = [...byBucket.values()].find((ns) => ns.length >= 3)!
            const meet = (n: SimNode) =>
              n.cm.getConnection(a.nodeId, { address: { host: a.host, port: a.port } })
            const inTable = (n: SimNode) => Effect.map(a.graph.getNode(n.nodeId), Option.isSome)

            yield* meet(old!)
            yield* Effect.sleep("1 second")
            expect(yield* inTable(old!)).toBe(true)
            // The bucket is full and its node answers a ping: the newcomer is not taken.
            yield* meet(newer!)
            yield* Effect.sleep("5 seconds")
            expect(yield* inTable(old!)).toBe(true)
            expect(yield* inTable(newer!)).toBe(false)
            // The old node dies; the next newcomer's ping of it goes unanswered: it is evicted.
            yield* w.crash(old!)
            yield* meet(newest!)
            yield* Effect.sleep("20 seconds")
            expect(yield* inTable(old!)).toBe(false)
            expect(yield* inTable(newest!)).toBe(true)
          }),
        { seed: 11 }
      ),
    30_000
  )
})

describe("Simulation worlds (100+ nodes)", () => {
  it.effect(
    "a partition makes lookups across it fail; after healing they succeed",
    () =>
      world(["none", "none", "none", "none", "none", "none", "none", "none"])((w, nodes) =>
        Effect.gen(function* () {
          const left = nodes.slice(0, 4)
          const right = nodes.slice(4)
          const from = left[0]!
          const target = right[0]!
          // The whole world in two halves: the seed and half the base with `left`, the rest with `right`.
          const base = w.nodes.slice(1, BASE)
          const id = yield* w.sim.partition(
            [w.seeds[0]!, ...base.slice(0, base.length / 2), ...left].map((n) => n.host),
            [...base.slice(base.length / 2), ...right].map((n) => n.host)
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
    "a join leaves an entry in every bucket that some live node falls in, and its k closest",
    () =>
      world(["none", "none", "none"])((w, nodes) =>
        Effect.gen(function* () {
          for (const node of nodes) {
            const others = w.nodes.filter((n) => n !== node)
            const inBucket = new Set(others.map((n) => NodeId.bucketIndex(node.nodeId, n.nodeId)))
            const filled = new Set((yield* node.graph.getBuckets).map(([i]) => i))
            // Every part of the id space that holds a node is represented in the table...
            expect([...inBucket].filter((i) => !filled.has(i))).toEqual([])
            // ...and the table holds the true k closest nodes (k = 6 in these worlds).
            const trueClosest = [...others]
              .sort((a, b) =>
                NodeId.compare(
                  NodeId.distanceBytes(a.nodeId, node.nodeId),
                  NodeId.distanceBytes(b.nodeId, node.nodeId)
                )
              )
              .slice(0, 6)
              .map((n) => NodeId.encode(n.nodeId))
            const known = (yield* node.graph.getClosestNodes(node.nodeId, 6)).map((c) =>
              NodeId.encode(c.nodeId)
            )
            expect(known).toEqual(trueClosest)
          }
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
          // The asker learnt it: in its table, unless that bucket is full of live nodes (the
          // table keeps old live nodes over new ones).
          const known = Option.isSome(yield* nodes[1]!.graph.getNode(target.nodeId))
          const index = NodeId.bucketIndex(nodes[1]!.nodeId, target.nodeId)
          const bucket = (yield* nodes[1]!.graph.getBuckets).find(([i]) => i === index)?.[1] ?? []
          expect(known || bucket.length >= 6).toBe(true)
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
          // Where the seed sees each of them: its connection's remote address (its full buckets
          // may have left them out of its table).
          const external = (n: SimNode) =>
            Effect.map(seed.cm.listConnections, (cs) => {
              const c = cs.find((x) => x.nodeId === NodeId.encode(n.nodeId))
              expect(c).toBeDefined()
              return { host: c!.host, port: c!.port }
            })
          // restricted ↔ restricted, never in touch before: the first Initial is filtered, the
          // seed relays the request, r2 punches toward r1 and (its class not yet known to be
          // reachable) dials r1 back: r1's retransmitted Initial or r2's dial gets through.
          const r2Address = yield* external(r2)
          const punched = yield* r1.cm
            .getConnectionWithAddress(r2.nodeId, { host: r2Address.host, port: r2Address.port })
            .pipe(Effect.exit)
          expect(Exit.isSuccess(punched)).toBe(true)
          const punchTrace = yield* w.sim.trace
          expect(punchTrace.some((e) => e.detail === "handshake: filtered by NAT")).toBe(true)
          expect(punchTrace.some((e) => e.kind === "datagram" && e.to === `${r1.host}:${r1.port}`)).toBe(true)
          const r1Seen = yield* external(r1)
          const dialBack = (e: { from: string; to: string }) =>
            e.from === `${r2.host}:${r2.port}` && e.to === `${r1Seen.host}:${r1Seen.port}`
          expect(
            punchTrace.some((e) => e.kind === "dial" && (e.detail === "retransmit" || dialBack(e)))
          ).toBe(true)
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
          // Make the lookup slow: everyone but `from` and the seed is cut off from it.
          yield* w.sim.partition(
            [from.host, w.seeds[0]!.host],
            w.nodes.filter((n) => n !== from && !n.isSeed).map((n) => n.host)
          )
          // Long enough for every connection but the seeds' to go idle (60 s) or die of the cut:
          // the rest of the world is quiet (but for the pings to the seeds).
          yield* Effect.sleep("65 seconds")
          const before = yield* w.sim.stats
          const diagnosticsBefore = yield* from.diagnostics.snapshot
          expect(diagnosticsBefore.pendingDials).toBe(0)
          const fiber = yield* Effect.fork(w.lookup(from, target))
          yield* Effect.sleep("2 seconds")
          const during = yield* w.sim.stats
          expect(during.pendingDials).toBeGreaterThan(0)
          expect((yield* from.diagnostics.snapshot).pendingDials).toBeGreaterThan(0)
          yield* Fiber.interrupt(fiber)
          yield* Effect.sleep("1 millis")
          const after = yield* w.sim.stats
          expect(after.pendingDials).toBe(before.pendingDials)
          expect(after.openConnectionEnds).toBe(before.openConnectionEnds)
          // The origin's manager is as it was: no dial, no extra background fiber, no timer.
          const diagnosticsAfter = yield* from.diagnostics.snapshot
          expect(diagnosticsAfter).toEqual(diagnosticsBefore)
          // Once the world's own events for the abandoned dials are past, none is left.
          yield* Effect.sleep("16 seconds")
          expect((yield* w.sim.stats).pendingDials).toBe(0)
        })
      ),
    60_000
  )
})
