/**
 * `quicmesh sim`'s reachability figures: every live node counted under its NAT model, how many
 * classified themselves as the model calls for, and the report's line.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { expectedClass } from "../src/internal/simulation/reachability.js"
import { renderText } from "../src/programs/SimReport.js"
import { runScenario } from "../src/programs/Simulation.js"

describe("simulation report: reachability", () => {
  it.effect(
    "every live node is counted under its NAT model, and every one classifies itself right",
    () =>
      Effect.gen(function* () {
        const r = yield* runScenario({
          nodes: 80,
          lookups: 0,
          seed: 7,
          nat: { none: 1, "full-cone": 1, restricted: 1, symmetric: 1 }
        })
        const figures = r.reachability!
        expect(figures.map((f) => f.nat)).toEqual(["none", "full-cone", "restricted", "symmetric"])
        expect(figures.reduce((n, f) => n + f.nodes, 0)).toBe(80)
        for (const f of figures) {
          expect(Object.values(f.classes).reduce((a, b) => a + b, 0)).toBe(f.nodes)
          expect(f.right).toBe(f.classes[expectedClass[f.nat]])
          // By the end of the build every node knows what it is: a dial-back counts only from a
          // node and an IP it never sent a packet to (reachability/contacts.ts).
          expect(f.right).toBe(f.nodes)
        }
        const symmetric = figures.find((f) => f.nat === "symmetric")!
        expect(symmetric.right).toBe(symmetric.nodes)
        const line = renderText(r, "replay")
          .split("\n")
          .find((l) => l.startsWith("reachability:"))!
        expect(line).toContain(`symmetric ${symmetric.nodes}/${symmetric.nodes} symmetric`)
      }),
    120_000
  )
})
