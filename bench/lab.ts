/**
 * The NAT lab for benchmark suites: builds it (root only, `npm run build` first for agents),
 * runs the suite's body in it, and tears it down. Without root, or when the lab cannot be
 * built, the suite gives no rows and one line saying why.
 */
import { Effect, Either, type Scope } from "effect"
import { type Lab, type LabOptions, labAvailability, makeLab } from "../test/nat/lab.js"
import type { BenchResult } from "./types.js"

export const messageOf = (e: unknown) => (e instanceof Error ? e.message : String(e)).slice(0, 300)

/** Runs `body` in a lab built from `spec`; `say` prints the suite's lines. */
export const inLab = (
  spec: LabOptions,
  say: (line: string) => void,
  body: (lab: Lab) => Effect.Effect<ReadonlyArray<BenchResult>, never, Scope.Scope>
): Promise<ReadonlyArray<BenchResult>> => {
  const availability = labAvailability()
  if (!availability.ok) {
    say(`not run: ${availability.reason}`)
    return Promise.resolve([])
  }
  return Effect.runPromise(
    Effect.scoped(
      Effect.gen(function* () {
        const built = yield* Effect.either(makeLab(spec))
        if (Either.isLeft(built)) {
          say(`not run: the NAT lab could not be built: ${messageOf(built.left)}`)
          return []
        }
        return yield* body(built.right)
      })
    )
  )
}
