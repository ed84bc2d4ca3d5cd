import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber, Runtime } from "effect"
import { Dispatch } from "../src/internal/connectionDispatch.js"

describe("ConnectionDispatch", () => {
  it.effect(
    "whenClosed: an effect with nothing to do (Effect.void) starts no fiber; any other starts one",
    () =>
      Effect.gen(function* () {
        const fork = Runtime.runFork(yield* Effect.runtime<never>())
        const started: Array<Fiber.RuntimeFiber<void>> = []
        const dispatch = new Dispatch((effect) => {
          const fiber = fork(effect)
          started.push(fiber)
          return fiber
        })
        let ran = 0
        const reasons: Array<string> = []
        yield* dispatch.whenClosed(() => Effect.void)
        yield* dispatch.whenClosed((reason) =>
          Effect.sync(() => {
            ran++
            reasons.push(reason._tag)
          })
        )
        dispatch.close({ _tag: "Local", detail: "bye" })
        expect(started).toHaveLength(1)
        yield* Fiber.join(started[0]!)
        expect(ran).toBe(1)
        expect(reasons).toEqual(["Local"])
        // Registered after the close: run at once, under the same rule.
        yield* dispatch.whenClosed(() => Effect.void)
        expect(started).toHaveLength(1)
        yield* dispatch.whenClosed(() => Effect.sync(() => ran++))
        expect(started).toHaveLength(2)
        yield* Fiber.join(started[1]!)
        expect(ran).toBe(2)
      })
  )
})
