/**
 * The relay's splices: for each circuit, the bytes of each of two streams written to the other,
 * as they come, until one of them ends. A circuit whose packets the transport forwards as
 * datagrams is only watched for its idle time, by the forwarding's clock (`adopt`).
 *
 * - Backpressure: each direction reads one chunk, waits for its write, then reads the next: at
 *   most one chunk per direction is in flight, so an idle circuit holds no buffer of its own.
 * - Rate: both directions together pass at most `bytesPerSecond` (pacing by a theoretical
 *   arrival time, with a burst of `BURST_MS` worth of bytes), the wait taken before the write.
 * - Idle: no byte read either way for `idleMs` ends the splice. One sweeping fiber per relay
 *   (running while any splice is open) wakes at the earliest deadline and ends the circuits
 *   past theirs: an idle circuit costs its two reading fibers and no timer of its own.
 * - End: a stream ending (FIN) ends both with FIN; a failed read or write, the idle timeout or
 *   the relay's stop (the splicer's scope closing) end both with a reset. `tap` sees each chunk
 *   before it is written; `counters.bytesForwarded` counts its bytes once written.
 */
import { Socket } from "@effect/platform"
import { Clock, Deferred, Effect, Exit, Fiber, Scope } from "effect"
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

/** An open circuit: when a byte last moved, and how to end it (once its outcome is decided: by a direction, the sweeper or the stop). */
interface Running {
  readonly lastAt: () => number
  readonly finish: (outcome: SpliceOutcome) => Effect.Effect<unknown>
}

/** A part of a circuit (a direction, a drain) whose end decides its outcome (a failure is "failed"). */
const decides = (part: Effect.Effect<"ended", Socket.SocketError>, running: Running) =>
  part.pipe(
    Effect.orElseSucceed(() => "failed" as const),
    Effect.flatMap(running.finish)
  )

export interface Splicer {
  /** Splices `a` and `b` until one ends (see the module comment); both are ended on return. */
  readonly splice: (a: SpliceEnd, b: SpliceEnd) => Effect.Effect<SpliceOutcome>
  /**
   * Watches a circuit carried elsewhere (as datagrams the transport forwards: no stream of its
   * own) for its idle time by `lastAt`: past it, or at the relay's stop, `circuit` is closed.
   */
  readonly adopt: (lastAt: () => number, circuit: Scope.CloseableScope) => Effect.Effect<void>
}

/** The relay's splicer, until the scope closes (which ends every splice open, "stopped"). */
export const makeSplicer = (options: SpliceOptions): Effect.Effect<Splicer, never, Scope.Scope> =>
  Effect.gen(function* () {
    const scope = yield* Effect.scope
    const live = new Set<Running>()
    let sweeping = false
    let stopped = false
    yield* Effect.addFinalizer(() =>
      Effect.suspend(() => {
        stopped = true
        return Effect.forEach(live, (running) => running.finish("stopped"), { discard: true })
      })
    )

    /** Ends the splices past their idle deadline, then sleeps until the next one; stops when none is open. */
    const sweep: Effect.Effect<void> = Effect.gen(function* () {
      while (live.size > 0) {
        const now = yield* Clock.currentTimeMillis
        let next = now + options.idleMs
        for (const running of live) {
          const due = running.lastAt() + options.idleMs
          if (due > now) next = Math.min(next, due)
          else {
            live.delete(running)
            yield* running.finish("idle")
          }
        }
        if (live.size > 0) yield* Effect.sleep(next - now)
      }
      sweeping = false
    })

    /** Adds `running` to the circuits the sweeper watches (starting it if it sleeps). */
    const watchIdle = (running: Running): Effect.Effect<void> =>
      Effect.suspend(() => {
        live.add(running)
        if (sweeping) return Effect.void
        sweeping = true
        return Effect.asVoid(Effect.forkIn(sweep, scope))
      })

    /** Runs a circuit: `directions` decide its outcome, as do the sweeper and the stop; both ends are ended after. */
    const run = (
      lastAt: () => number,
      a: SpliceEnd,
      b: SpliceEnd,
      directions: (running: Running) => ReadonlyArray<Effect.Effect<unknown>>
    ): Effect.Effect<SpliceOutcome> =>
      Effect.gen(function* () {
        const done = yield* Deferred.make<SpliceOutcome>()
        const running: Running = { lastAt, finish: (outcome) => Deferred.succeed(done, outcome) }
        if (stopped) yield* Deferred.succeed(done, "stopped")
        else yield* watchIdle(running)
        const fibers = yield* Effect.forEach(directions(running), (direction) => Effect.fork(direction))
        const outcome = yield* Deferred.await(done).pipe(
          Effect.ensuring(
            Effect.zipRight(
              Effect.sync(() => live.delete(running)),
              Fiber.interruptAll(fibers)
            )
          )
        )
        const close = outcome === "ended" ? finished : new Socket.CloseEvent(4000, `relay circuit ${outcome}`)
        yield* Effect.ignore(a.write(close))
        yield* Effect.ignore(b.write(close))
        return outcome
      })

    const splice = (a: SpliceEnd, b: SpliceEnd): Effect.Effect<SpliceOutcome> =>
      Effect.flatMap(Clock.currentTimeMillis, (now) => {
        const pace: Pace = { lastAt: now, due: now }
        return run(
          () => pace.lastAt,
          a,
          b,
          (running) => [
            decides(pump(a.reader, b, pace, options), running),
            decides(pump(b.reader, a, pace, options), running)
          ]
        )
      })

    const adopt = (lastAt: () => number, circuit: Scope.CloseableScope): Effect.Effect<void> =>
      Effect.gen(function* () {
        const running: Running = { lastAt, finish: () => Scope.close(circuit, Exit.void) }
        yield* Scope.addFinalizer(
          circuit,
          Effect.sync(() => live.delete(running))
        )
        if (stopped) return yield* running.finish("stopped")
        yield* watchIdle(running)
      })

    return { splice, adopt }
  })
