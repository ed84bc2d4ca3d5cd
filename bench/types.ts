import { Effect } from "effect"

/** One measured figure. When `baseline` is given, `ratio` = value / baseline (lower is better unless said). */
export interface BenchResult {
  readonly suite: string
  readonly name: string
  readonly value: number
  readonly unit: string
  readonly baselineName?: string
  readonly baseline?: number
  readonly ratio?: number
  /** Human statement of the target, e.g. "≤ 1.10×" or "< 0.5 ms". */
  readonly target?: string
  readonly met?: boolean
  readonly notes?: string
}

export interface BenchSuite {
  readonly name: string
  readonly run: () => Promise<ReadonlyArray<BenchResult>>
}

/** Runs `fn` `iterations` times after `warmup` runs; returns per-iteration times in ms. */
export const sampleMs = async (
  fn: () => Promise<unknown> | unknown,
  iterations: number,
  warmup = Math.min(10, iterations)
): Promise<number[]> => {
  for (let i = 0; i < warmup; i++) await fn()
  const out: number[] = []
  for (let i = 0; i < iterations; i++) {
    const t0 = performance.now()
    await fn()
    out.push(performance.now() - t0)
  }
  return out
}

export const quantile = (xs: ReadonlyArray<number>, q: number): number => {
  const s = [...xs].sort((a, b) => a - b)
  if (s.length === 0) return Number.NaN
  return s[Math.min(s.length - 1, Math.floor(q * s.length))]!
}

export const median = (xs: ReadonlyArray<number>) => quantile(xs, 0.5)

/** `count` calls one after another (`call(i)`); each call's time in ms. */
export const timeSequential = <R>(count: number, call: (i: number) => Effect.Effect<unknown, never, R>) =>
  Effect.gen(function* () {
    const out: number[] = []
    for (let i = 0; i < count; i++) {
      const t0 = performance.now()
      yield* call(i)
      out.push(performance.now() - t0)
    }
    return out
  })

/** `callers` callers at once, each making `perCaller` calls in turn (`call(caller * 1000 + i)`); calls/s. */
export const callsPerSecond = <R>(
  callers: number,
  perCaller: number,
  call: (i: number) => Effect.Effect<unknown, never, R>
) =>
  Effect.gen(function* () {
    const t0 = performance.now()
    yield* Effect.forEach(
      Array.from({ length: callers }, (_, c) => c),
      (c) =>
        Effect.forEach(
          Array.from({ length: perCaller }, (_, i) => c * 1000 + i),
          call,
          { discard: true }
        ),
      { concurrency: "unbounded", discard: true }
    )
    return (callers * perCaller) / ((performance.now() - t0) / 1000)
  })

/** A whole number > 0 from the environment variable `name`, else `fallback`. */
export const envInt = (name: string, fallback: number): number => {
  const n = Number(process.env[name])
  return Number.isFinite(n) && n > 0 ? Math.floor(n) : fallback
}

/**
 * Full collections before a reading (run with --expose-gc). The last one is V8's "last resort"
 * collection, which also compacts the heap and gives freed pages back: the reading is what is
 * held, not heap pages left half-empty by a burst of allocations.
 */
export const gcHard = async () => {
  const gc = (globalThis as { gc?: (options?: object) => void }).gc
  for (let i = 0; i < 4; i++) {
    gc?.(i === 3 ? { type: "major", execution: "sync", flavor: "last-resort" } : undefined)
    await new Promise((r) => setTimeout(r, 50))
  }
}
