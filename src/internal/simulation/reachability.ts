/**
 * How the simulated nodes classified themselves (`ConnectionManager.reachability`) against the
 * class their NAT model calls for: no NAT and full-cone are reachable by anyone (`public`),
 * restricted keeps one port for every peer but filters (`cone`), symmetric maps a port per
 * peer (`symmetric`).
 */
import { Effect } from "effect"
import type { NatClass } from "../../services/Reachability.js"
import type { NatType } from "../../services/SimNetwork.js"
import { NAT_TYPES } from "./options.js"
import type { SimNode } from "./world.js"

export const expectedClass: Record<NatType, NatClass> = {
  none: "public",
  "full-cone": "public",
  restricted: "cone",
  symmetric: "symmetric"
}

/** Live nodes of one NAT model: how many, how many classified themselves right, and each class's count. */
export interface ReachabilityFigure {
  readonly nat: NatType
  readonly nodes: number
  readonly right: number
  readonly classes: Readonly<Record<NatClass, number>>
}

export const reachabilityFigures = (
  nodes: ReadonlyArray<SimNode>
): Effect.Effect<ReadonlyArray<ReachabilityFigure>> =>
  Effect.gen(function* () {
    const figures: Array<ReachabilityFigure> = []
    for (const nat of NAT_TYPES) {
      const these = nodes.filter((n) => n.alive && n.nat === nat)
      if (these.length === 0) continue
      const classes: Record<NatClass, number> = { public: 0, cone: 0, symmetric: 0, unknown: 0 }
      for (const n of these) classes[(yield* n.cm.reachability).nat]++
      figures.push({ nat, nodes: these.length, right: classes[expectedClass[nat]], classes })
    }
    return figures
  })

/** "reachability:  none 10/10 public, restricted 7/8 cone (1 unknown)" for the text report. */
export const reachabilityLine = (figures: ReadonlyArray<ReachabilityFigure>): string =>
  `reachability:  ${figures
    .map((f) => {
      const wrong = (Object.entries(f.classes) as Array<[NatClass, number]>)
        .filter(([c, n]) => n > 0 && c !== expectedClass[f.nat])
        .map(([c, n]) => `${n} ${c}`)
      return `${f.nat} ${f.right}/${f.nodes} ${expectedClass[f.nat]}${wrong.length > 0 ? ` (${wrong.join(", ")})` : ""}`
    })
    .join(", ")} (classified right / live nodes)`
