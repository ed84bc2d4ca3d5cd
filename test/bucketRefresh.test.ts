/**
 * The periodic bucket refresh the agent runs (`refreshPeriodically`), on the TestClock: the
 * first refresh after one jittered wait, then again and again, each wait within 0.8 to 1.2
 * times the period, and not all alike.
 */
import { describe, expect, it } from "@effect/vitest"
import { Clock, Effect, Fiber, Random, TestClock } from "effect"
import { refreshPeriodically } from "../src/internal/bucketRefresh.js"

const MINUTE = 60_000

describe("periodic bucket refresh", () => {
  it.effect("refreshes every 10 minutes, each wait jittered between 8 and 12 minutes", () =>
    Effect.gen(function* () {
      const at: Array<number> = []
      const refresh = Effect.flatMap(Clock.currentTimeMillis, (now) => Effect.sync(() => at.push(now)))
      const fiber = yield* refreshPeriodically(refresh, "10 minutes").pipe(
        Effect.withRandom(Random.make("bucket refresh")),
        Effect.fork
      )
      yield* TestClock.adjust("7 minutes")
      // Not at once: the first refresh waits too.
      expect(at).toEqual([])
      yield* TestClock.adjust("113 minutes")
      yield* Fiber.interrupt(fiber)
      const waits = at.map((t, i) => t - (i === 0 ? 0 : at[i - 1]!))
      // Two hours of waits of 8 to 12 minutes: 10 to 15 refreshes.
      expect(at.length).toBeGreaterThanOrEqual(10)
      expect(at.length).toBeLessThanOrEqual(15)
      for (const wait of waits) {
        expect(wait).toBeGreaterThanOrEqual(8 * MINUTE)
        expect(wait).toBeLessThanOrEqual(12 * MINUTE)
      }
      // Jittered: the waits differ.
      expect(new Set(waits).size).toBe(waits.length)
    })
  )
})
