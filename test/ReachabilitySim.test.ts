/**
 * NAT classification on the simulated network, with every NAT model of SimNetwork: peers on
 * different IPs tell each node what they observe (the identify exchange on each connection),
 * and a dial-back through a helper the node never contacted tells `public`. The same manager
 * as on QUIC; only the transport and the agent RPC layer differ.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, LogLevel, Stream } from "effect"
import { simulate } from "../src/programs/SimRuntime.js"
import { makeWorld, type SimNode, type SimWorld } from "../src/programs/Simulation.js"
import type { NatClass } from "../src/services/Reachability.js"
import type { NatType } from "../src/services/SimNetwork.js"

/** Three seeds (public, each its own IP) and two public helpers joined to them. */
const seeded = (w: SimWorld) =>
  Effect.gen(function* () {
    const seeds = [
      yield* w.addNode({ seed: true }),
      yield* w.addNode({ seed: true }),
      yield* w.addNode({ seed: true })
    ]
    const helpers = [yield* w.addNode(), yield* w.addNode()]
    for (const h of helpers) expect(yield* w.join(h)).toBe(true)
    // They classify themselves first (else the node under test would dial them as their helper).
    yield* Effect.sleep("10 seconds")
    return seeds
  })

/** `node` connects to the seeds alone (no lookup: it contacts no helper). */
const connectToSeeds = (node: SimNode, seeds: ReadonlyArray<SimNode>) =>
  Effect.forEach(seeds, (s) => node.cm.getConnectionWithAddress(s.nodeId, { host: s.host, port: s.port }), {
    discard: true
  })

const classOf = (node: SimNode) => Effect.map(node.cm.reachability, (r) => r.nat)

const expected: Record<NatType, NatClass> = {
  none: "public",
  "full-cone": "public",
  restricted: "cone",
  symmetric: "symmetric"
}

describe("Reachability on the simulated network", () => {
  for (const nat of ["none", "full-cone", "restricted", "symmetric"] as const)
    it.effect(`a node behind ${nat} classifies itself ${expected[nat]}`, () =>
      simulate(
        (ctx) =>
          Effect.gen(function* () {
            const w = yield* makeWorld(ctx, { seed: 19, latency: 10, jitter: 0 })
            const seeds = yield* seeded(w)
            const node = yield* w.addNode({ nat })
            expect(yield* classOf(node)).toBe("unknown")
            const changes: Array<NatClass> = []
            yield* node.cm.events.pipe(
              Effect.flatMap((events) =>
                Stream.runForEach(events, (e) =>
                  e._tag === "ReachabilityChanged"
                    ? Effect.sync(() => changes.push(e.reachability.nat))
                    : Effect.void
                )
              ),
              Effect.forkScoped
            )
            yield* connectToSeeds(node, seeds)
            yield* Effect.sleep("30 seconds")
            const r = yield* node.cm.reachability
            expect(r.nat).toBe(expected[nat])
            // The seeds, and for a public node the helper that dialled it back.
            expect(r.observers).toBe(nat === "none" || nat === "full-cone" ? 4 : 3)
            expect(changes.at(-1)).toBe(expected[nat])
            if (nat === "symmetric") expect(r.addresses).toEqual([])
            else {
              // The address all three seeds observed: the node's NAT mapping, or its own address.
              const info = (yield* w.sim.hostInfo(node.host))!
              expect(r.addresses).toHaveLength(1)
              expect(r.addresses[0]!.host).toBe(info.publicHost)
              if (nat === "none") expect(r.addresses[0]!.port).toBe(node.port)
            }
          }),
        { logLevel: process.env.H8DEBUG ? LogLevel.Debug : LogLevel.None }
      )
    )

  it.effect("one peer's word classifies nothing: with peers on one IP the node stays unknown", () =>
    simulate((ctx) =>
      Effect.gen(function* () {
        const w = yield* makeWorld(ctx, { seed: 19, latency: 10, jitter: 0 })
        const seed = yield* w.addNode({ seed: true })
        const node = yield* w.addNode({ nat: "restricted" })
        yield* connectToSeeds(node, [seed])
        yield* Effect.sleep("30 seconds")
        const r = yield* node.cm.reachability
        expect(r).toMatchObject({ nat: "unknown", addresses: [], observers: 1 })
        expect(node.cm.nodeId).toBeDefined()
      })
    )
  )
})
