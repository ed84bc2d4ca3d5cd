/**
 * Relays in the simulated network (#20): the seeds serve as relays (`WorldOptions.relays`), nodes
 * nobody reaches directly reserve with them, and the same manager code connects every pair of
 * NAT models, reconnects through another relay when one dies, turns a relay's refusal into
 * `relay-refused`, and moves a relayed connection to a direct one when a direct path opens.
 * On SimRuntime's virtual clock, 50 ms links.
 */
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Fiber, LogLevel, Option, type Scope } from "effect"
import { renderText } from "../src/programs/SimReport.js"
import { type SimContext, simulate } from "../src/programs/SimRuntime.js"
import {
  type LookupOutcome,
  makeWorld,
  NAT_TYPES,
  natPairFigures,
  runScenario,
  type SimNode,
  type SimReport,
  type SimWorld,
  verdict,
  type WorldOptions
} from "../src/programs/Simulation.js"
import type { ConnectionInfo } from "../src/services/ConnectionManager.js"
import * as CMConfig from "../src/services/ConnectionManagerConfig.js"
import * as NodeId from "../src/services/NodeId.js"
import * as Protocols from "../src/services/Protocols.js"
import type { NatType } from "../src/services/SimNetwork.js"
import { readAll, writeAll } from "./fixtures/socketText.js"

const logLevel = process.env.SIMRELAY_DEBUG ? LogLevel.Debug : LogLevel.None

/** `from`'s `listConnections` entry for `target`, if it holds a connection to it. */
const infoOf = (from: SimNode, target: SimNode): Effect.Effect<ConnectionInfo | undefined> =>
  Effect.map(from.cm.listConnections, (cs) => cs.find((c) => c.nodeId === NodeId.encode(target.nodeId)))

/** The seed whose NodeId `info` names as its relay. */
const relayOf = (w: SimWorld, info: ConnectionInfo | undefined) =>
  w.seeds.find((s) => info?.relay !== undefined && NodeId.encode(s.nodeId) === info.relay)

/** `body` on virtual time, in a world (relays on by default) of `seeds` seeds joined to each other. */
const inWorld = <A>(
  options: WorldOptions,
  seeds: number,
  body: (w: SimWorld, ctx: SimContext) => Effect.Effect<A, unknown, Scope.Scope>
) =>
  simulate(
    (ctx) =>
      Effect.gen(function* () {
        const w = yield* makeWorld(ctx, { relays: true, ...options })
        for (let i = 0; i < seeds; i++) yield* w.addNode({ seed: true })
        yield* Effect.forEach(w.seeds, w.join, { discard: true })
        return yield* body(w, ctx)
      }),
    { seed: options.seed, logLevel }
  )

/** `node` connects to every seed and to nobody else (no lookup, no join). */
const connectToSeeds = (w: SimWorld, node: SimNode) =>
  Effect.forEach(w.seeds, (s) => node.cm.getConnectionWithAddress(s.nodeId, { host: s.host, port: s.port }), {
    discard: true
  })

/** Nodes behind `nat` that know only the seeds. */
const strangers = (w: SimWorld, nat: NatType, count: number) =>
  Effect.gen(function* () {
    const nodes: Array<SimNode> = []
    for (let i = 0; i < count; i++) {
      const node = yield* w.addNode({ nat })
      yield* connectToSeeds(w, node)
      nodes.push(node)
    }
    return nodes
  })

/** Answers "echo:" and what it read, after `delay`. */
const echo =
  (delay: Duration.DurationInput): Protocols.StreamHandler =>
  (socket) =>
    Effect.gen(function* () {
      const text = yield* readAll(socket)
      yield* Effect.sleep(delay)
      yield* writeAll(socket, [`echo:${text}`])
    }).pipe(Effect.orDie)

const ECHO = Protocols.ProtocolId.unsafeMake("echo/1")

/** Writes `text` on a new echo stream of `connection` and reads the answer. */
const talk = (from: SimNode, target: SimNode, text: string) =>
  Effect.scoped(
    Effect.gen(function* () {
      const socket = yield* from.cm.openStream(target.nodeId, ECHO)
      yield* writeAll(socket, [text])
      return yield* readAll(socket)
    })
  )

/** The text report's row for `pair`: connected, rate, direct, punched, relayed, failed (and a note). */
const rowOf = (r: SimReport, pair: string) => {
  const row = renderText(r, "replay")
    .split("\n")
    .find((l) => l.trim().startsWith(`${pair} `))
  return row
    ?.trim()
    .split(/\s{2,}/)
    .slice(1)
}

/**
 * `each` nodes of every NAT model joined through three seeds; once they have classified
 * themselves (and reserved), every node looks up every other, each pair's connection made
 * anew (any earlier one destroyed on both sides first). The figures by NAT pair, and the hash.
 */
const everyPair = (options: WorldOptions, each: number) =>
  inWorld(options, 3, (w) =>
    Effect.gen(function* () {
      const nodes: Array<SimNode> = []
      for (const nat of NAT_TYPES)
        for (let i = 0; i < each; i++) {
          const node = yield* w.addNode({ nat })
          expect(yield* w.join(node)).toBe(true)
          nodes.push(node)
        }
      yield* Effect.sleep("60 seconds")
      const outcomes: Array<LookupOutcome> = []
      for (const from of nodes)
        for (const target of nodes) {
          if (from === target) continue
          yield* from.cm.destroyConnection(target.nodeId)
          yield* target.cm.destroyConnection(from.nodeId)
          yield* Effect.sleep("1 second")
          outcomes.push(yield* w.lookup(from, target))
        }
      expect(outcomes.every((o) => !o.connected)).toBe(true)
      return { figures: natPairFigures(outcomes), traceHash: yield* w.sim.traceHash }
    })
  )

describe("relays in the simulated network", () => {
  it.effect(
    "every node of every NAT model connects to every other; the same seed gives the same trace hash",
    () =>
      Effect.gen(function* () {
        const each = 2
        const first = yield* everyPair({ seed: 5 }, each)
        expect(first.figures).toHaveLength(NAT_TYPES.length ** 2)
        for (const p of first.figures) {
          expect(p.attempts).toBe(p.from === p.to ? each * (each - 1) : each * each)
          expect({ pair: `${p.from} → ${p.to}`, failed: p.failed }).toEqual({
            pair: `${p.from} → ${p.to}`,
            failed: 0
          })
          expect(p.direct + p.punched + p.relayed).toBe(p.attempts)
        }
        // No direct path joins two symmetric NATs: those pairs went through a relay.
        const symmetric = first.figures.find((p) => p.from === "symmetric" && p.to === "symmetric")!
        expect(symmetric.relayed).toBe(symmetric.attempts)
        const again = yield* everyPair({ seed: 5 }, each)
        expect(again.traceHash).toBe(first.traceHash)
        expect(again.figures).toEqual(first.figures)
      }),
    120_000
  )

  it.effect(
    "quicmesh sim --nodes 60 --lookups 40 --seed 3 --nat none:1,symmetric:2 finds 40 of 40 with relays; without, symmetric pairs fail",
    () =>
      Effect.gen(function* () {
        const run = { nodes: 60, lookups: 40, seed: 3, nat: { none: 1, symmetric: 2 } } as const
        const relayed = yield* runScenario({ ...run, relays: true })
        expect(relayed.options.relays).toBe(true)
        expect(relayed.lookups.succeeded).toBe(40)
        for (const p of relayed.natPairs) expect(p.failed).toBe(0)
        const symmetric = relayed.natPairs.find((p) => p.from === "symmetric" && p.to === "symmetric")!
        expect(symmetric).toMatchObject({ attempts: 21, relayed: 21 })
        expect(verdict(relayed)).toEqual({ ok: true, reasons: [] })
        expect(rowOf(relayed, "symmetric → symmetric")).toEqual(["21/21", "100%", "0", "0", "21", "0"])

        const bare = yield* runScenario({ ...run, relays: false })
        expect(bare.options.relays).toBe(false)
        expect(bare.lookups.succeeded).toBeLessThan(40)
        expect(bare.natPairs.find((p) => p.from === "symmetric" && p.to === "symmetric")).toMatchObject({
          attempts: 21,
          succeeded: 0,
          relayed: 0,
          failed: 21
        })
        // Without relays a pair no hole punch can join is excused (today's rule) ...
        expect(verdict(bare).ok).toBe(true)
        // ... with relays on, the same figures fail the run, naming the pair.
        const judged = verdict({ ...bare, options: { ...bare.options, relays: true } })
        expect(judged.ok).toBe(false)
        expect(judged.reasons.join()).toContain("symmetric → symmetric 21/21")
        expect(rowOf(bare, "symmetric → symmetric")).toEqual([
          "0/21",
          "0.00%",
          "0",
          "0",
          "0",
          "21",
          "(no hole punch joins these)"
        ])
      }),
    120_000
  )

  it.effect(
    "a relay that dies closes its relayed connections within the keep-alive time; the next dial goes through another seed",
    () =>
      inWorld({ seed: 9 }, 3, (w, ctx) =>
        Effect.gen(function* () {
          const [a, b] = yield* strangers(w, "symmetric", 2)
          yield* Effect.sleep("20 seconds")
          // Both symmetric: they reserved with two of the seeds and reach each other through one.
          expect((yield* a!.cm.relays).reservations).toHaveLength(2)
          const handle = yield* a!.cm.getConnection(b!.nodeId)
          const dead = relayOf(w, yield* infoOf(a!, b!))!
          expect(dead).toBeDefined()
          const crashedAt = ctx.clock.elapsed
          yield* w.crash(dead)
          const reason = yield* handle.connection.closed
          expect(reason).toEqual({ _tag: "Error", detail: "relay circuit closed" })
          expect(ctx.clock.elapsed - crashedAt).toBeLessThanOrEqual(
            Duration.toMillis(CMConfig.defaults.connectionKeepAliveTimeoutTime)
          )
          expect(yield* infoOf(a!, b!)).toBeUndefined()
          // The next call: a connection through a seed that lives.
          yield* a!.cm.getConnection(b!.nodeId)
          const info = yield* infoOf(a!, b!)
          expect(info?.path).toBe("relayed")
          const relay = relayOf(w, info)
          expect(relay?.alive).toBe(true)
          expect(yield* a!.cm.pingNode(b!.nodeId)).toBe(true)
        })
      ),
    60_000
  )

  it.effect(
    "a relay at its circuit limit refuses: the dial fails with relay-refused, the circuits open keep working",
    () =>
      inWorld({ seed: 9, relayLimits: { maxCircuits: 1 } }, 2, (w) =>
        Effect.gen(function* () {
          const nodes = yield* strangers(w, "symmetric", 6)
          for (const n of nodes) yield* n.protocols!.handle(ECHO, echo(0))
          yield* Effect.sleep("20 seconds")
          // Each origin learns its target's address and relays from a seed, then dials it there.
          const dial = (from: SimNode, target: SimNode) =>
            Effect.gen(function* () {
              const contacts = yield* from.cm.getRemoteNodeClosestNodes(w.seeds[0]!.nodeId, target.nodeId)
              const contact = contacts.find((c) => NodeId.equals(c.nodeId, target.nodeId))!
              return yield* Effect.either(
                from.cm.getConnection(target.nodeId, {
                  address: { host: contact.host, port: contact.port }
                })
              )
            })
          const [a, b, c, d, e, f] = nodes as [SimNode, SimNode, SimNode, SimNode, SimNode, SimNode]
          // One circuit on each of the two seeds ...
          expect((yield* dial(a, b))._tag).toBe("Right")
          expect((yield* dial(c, d))._tag).toBe("Right")
          const first = relayOf(w, yield* infoOf(a, b))
          const second = relayOf(w, yield* infoOf(c, d))
          expect(first).toBeDefined()
          expect(second).toBeDefined()
          expect(second).not.toBe(first)
          // ... so a third pair finds both full.
          const refused = yield* dial(e, f)
          expect(refused._tag === "Left" && refused.left.reason).toBe("relay-refused")
          expect(yield* infoOf(e, f)).toBeUndefined()
          // By NodeId alone (a lookup first, which cannot connect either): the same reason.
          const byId = yield* Effect.either(e.cm.getConnection(f.nodeId))
          expect(byId._tag === "Left" && byId.left.reason).toBe("relay-refused")
          // The open circuits carry their streams still.
          expect(yield* talk(a, b, "from a")).toBe("echo:from a")
          expect(yield* talk(c, d, "from c")).toBe("echo:from c")
          expect((yield* infoOf(a, b))?.relay).toBe(NodeId.encode(first!.nodeId))
        })
      ),
    60_000
  )

  it.effect(
    "a pair relayed because the origin's class was not yet known moves to a direct connection; the call in flight completes",
    () =>
      inWorld({ seed: 9 }, 3, (w) =>
        Effect.gen(function* () {
          // Two public helpers for the dial-backs that classify nodes.
          for (let i = 0; i < 2; i++) yield* w.join(yield* w.addNode())
          const target = yield* w.addNode({ nat: "symmetric" })
          expect(yield* w.join(target)).toBe(true)
          yield* target.protocols!.handle(ECHO, echo("3 seconds"))
          yield* Effect.sleep("20 seconds")
          const [origin] = yield* strangers(w, "full-cone", 1)
          expect((yield* origin!.cm.reachability).nat).toBe("unknown")
          const reply = yield* origin!.cm.withConnection(target.nodeId, (handle) =>
            Effect.scoped(
              Effect.gen(function* () {
                // The call goes out on the relayed connection (the origin may be unreachable) ...
                expect(handle.connection.relay).toBeDefined()
                expect((yield* infoOf(origin!, target))?.path).toBe("relayed")
                const socket = yield* Protocols.open(handle.connection, ECHO)
                yield* writeAll(socket, ["in flight"])
                const answer = yield* Effect.fork(readAll(socket))
                // ... the map moves to a direct connection while it waits for its answer.
                yield* Effect.sleep("2 seconds")
                const moved = yield* infoOf(origin!, target)
                expect(moved?.relay).toBeUndefined()
                expect(["direct", "punched"]).toContain(moved?.path)
                expect(Option.isNone(yield* Fiber.poll(answer))).toBe(true)
                return { text: yield* Fiber.join(answer), relayed: handle.connection }
              })
            )
          )
          expect(reply.text).toBe("echo:in flight")
          // Its last use released, the relayed connection closes; the direct one stays.
          const closed = yield* Effect.timeout(reply.relayed.closed, "1 second")
          expect(closed._tag).toBe("Local")
          expect(["direct", "punched"]).toContain((yield* infoOf(origin!, target))?.path)
          expect(yield* talk(origin!, target, "after")).toBe("echo:after")
        })
      ),
    60_000
  )
})
