/**
 * A circuit's splice: the bytes of each of two streams written to the other, as they come,
 * until one of them ends.
 *
 * - Backpressure: each direction reads one chunk, waits for its write, then reads the next: at
 *   most one chunk per direction is in flight, so an idle circuit holds no buffer of its own.
 * - Rate: both directions together pass at most `bytesPerSecond` (pacing by a theoretical
 *   arrival time, with a burst of `BURST_MS` worth of bytes), the wait taken before the write.
 * - Idle: no byte read either way for `idleMs` ends the splice (one sleeping fiber watches).
 * - End: a stream ending (FIN) ends both with FIN; a failed read or write, the idle timeout or
 *   `stop` end both with a reset. `tap` sees each chunk before it is written; `forwarded`
 *   counts its bytes once written.
 */
import { Socket } from "@effect/platform"
import { Clock, Effect } from "effect"
import type { ChunkReader } from "../quicStreamSocket.js"

/** One side of the splice: its stream read chunk by chunk, and the writer of that stream. */
export interface SpliceEnd {
  readonly reader: ChunkReader
  readonly write: (chunk: Uint8Array | Socket.CloseEvent) => Effect.Effect<void, Socket.SocketError>
}

export interface SpliceOptions {
  readonly idleMs: number
  /** `Infinity`: no cap. */
  readonly bytesPerSecond: number
  readonly tap: ((bytes: Uint8Array) => void) | undefined
  /** Completing ends the splice (the relay stops). */
  readonly stop: Effect.Effect<void>
  /** Bytes forwarded, both directions; the splice adds to `bytesForwarded`. */
  readonly counters: { bytesForwarded: number }
}

/** How a splice ended. */
export type SpliceOutcome = "ended" | "failed" | "idle" | "stopped"

/** The burst allowed above the rate, in milliseconds of it. */
export const BURST_MS = 100

/** A circuit's clock state: when a byte last moved, and the pacing's theoretical arrival time. */
interface Pace {
  lastAt: number
  due: number
}

const finished = new Socket.CloseEvent(1000)

/** Milliseconds to wait before `bytes` more may pass at `now`; advances `pace.due`. */
const delayFor = (pace: Pace, bytes: number, now: number, bytesPerSecond: number): number => {
  if (!Number.isFinite(bytesPerSecond)) return 0
  pace.due = Math.max(now, pace.due) + (bytes * 1000) / bytesPerSecond
  return Math.max(0, pace.due - BURST_MS - now)
}

const pump = (from: ChunkReader, to: SpliceEnd, pace: Pace, options: SpliceOptions) =>
  Effect.gen(function* () {
    for (;;) {
      const chunk = yield* from.readChunk
      if (chunk === undefined) return "ended" as const
      if (chunk.length === 0) continue
      const now = yield* Clock.currentTimeMillis
      const wait = delayFor(pace, chunk.length, now, options.bytesPerSecond)
      pace.lastAt = now + wait
      if (wait > 0) yield* Effect.sleep(wait)
      options.tap?.(chunk)
      yield* to.write(chunk)
      options.counters.bytesForwarded += chunk.length
    }
  })

const idleWatch = (pace: Pace, idleMs: number) =>
  Effect.gen(function* () {
    for (;;) {
      const left = pace.lastAt + idleMs - (yield* Clock.currentTimeMillis)
      if (left <= 0) return "idle" as const
      yield* Effect.sleep(left)
    }
  })

/** Splices `a` and `b` until one ends (see the module comment); both are ended on return. */
export const splice = (a: SpliceEnd, b: SpliceEnd, options: SpliceOptions): Effect.Effect<SpliceOutcome> =>
  Effect.gen(function* () {
    const now = yield* Clock.currentTimeMillis
    const pace: Pace = { lastAt: now, due: now }
    const outcome: SpliceOutcome = yield* pump(a.reader, b, pace, options).pipe(
      Effect.raceFirst(pump(b.reader, a, pace, options)),
      Effect.raceFirst(idleWatch(pace, options.idleMs)),
      Effect.raceFirst(Effect.as(options.stop, "stopped" as const)),
      Effect.orElseSucceed(() => "failed" as const)
    )
    const close = outcome === "ended" ? finished : new Socket.CloseEvent(4000, `relay circuit ${outcome}`)
    yield* Effect.ignore(a.write(close))
    yield* Effect.ignore(b.write(close))
    return outcome
  })
