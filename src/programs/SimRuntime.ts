/**
 * SimRuntime: runs an Effect on virtual time, deterministically and as fast as the CPU allows.
 *
 * - A `VirtualScheduler` queues every fiber step (instead of microtasks and timers), so the
 *   order in which fibers run depends only on the program.
 * - A `VirtualClock` (the Effect `Clock` service) keeps sleeps in a heap; time never passes by
 *   itself. When no fiber can run, the driver moves the clock straight to the earliest sleep
 *   and wakes every sleeper due then.
 *
 * Same program, same seed ⇒ same interleaving and same virtual times. Code under `simulate`
 * must not wait on real I/O (promises, sockets, real timers): time would jump past it.
 * Nothing is left running: when `simulate` ends, interrupted or not, the inner fiber is done.
 */
import {
  Clock,
  Data,
  Duration,
  Effect,
  Exit,
  type Fiber,
  type FiberId,
  Logger,
  LogLevel,
  Random,
  type Scheduler,
  type Scope
} from "effect"
import { TimedHeap } from "../internal/timedHeap.js"
import type { TimerClock } from "../layers/SimWorld.js"

// ---- Virtual clock ---------------------------------------------------------------------

interface Sleeper {
  readonly at: number
  readonly seq: number
  wake: (() => void) | undefined
}

/** Default start of virtual time: 2025-01-01T00:00:00Z (certificates want a plausible date). */
export const DEFAULT_EPOCH = Date.UTC(2025, 0, 1)

export class VirtualClock implements TimerClock {
  readonly [Clock.ClockTypeId]: Clock.ClockTypeId = Clock.ClockTypeId
  private now: number
  private seq = 0
  private live = 0
  private readonly heap = new TimedHeap<Sleeper>()

  constructor(readonly epoch: number = DEFAULT_EPOCH) {
    this.now = epoch
  }

  unsafeCurrentTimeMillis(): number {
    return this.now
  }
  readonly currentTimeMillis: Effect.Effect<number> = Effect.sync(() => this.now)
  unsafeCurrentTimeNanos(): bigint {
    return BigInt(Math.round(this.now * 1_000_000))
  }
  readonly currentTimeNanos: Effect.Effect<bigint> = Effect.sync(() => this.unsafeCurrentTimeNanos())

  sleep(duration: Duration.Duration): Effect.Effect<void> {
    if (!Duration.isFinite(duration)) return Effect.never
    const ms = Math.max(0, Duration.toMillis(duration))
    return Effect.async<void>((resume) => {
      const sleeper: Sleeper = { at: this.now + ms, seq: this.seq++, wake: () => resume(Effect.void) }
      this.heap.push(sleeper)
      this.live++
      return Effect.sync(() => {
        if (sleeper.wake !== undefined) {
          sleeper.wake = undefined
          this.live--
        }
      })
    })
  }

  /**
   * Calls `run` once the clock reaches `at` (at once on the next advance if it is past),
   * from the driver, outside any fiber: the SimNetwork's scheduler wakes through this.
   */
  scheduleAt(at: number, run: () => void): void {
    this.heap.push({ at: Math.max(at, this.now), seq: this.seq++, wake: run })
    this.live++
  }

  /** Milliseconds of virtual time since the epoch. */
  get elapsed(): number {
    return this.now - this.epoch
  }

  /** Sleeps not yet woken nor cancelled. */
  get pendingSleeps(): number {
    return this.live
  }

  /** Moves to the earliest sleep and wakes every sleeper due then; false when none is left. */
  advance(): boolean {
    const heap = this.heap
    let next = heap.peek()
    while (next !== undefined && next.wake === undefined) {
      heap.pop()
      next = heap.peek()
    }
    if (next === undefined) return false
    const at = next.at
    if (at > this.now) this.now = at
    while (true) {
      const top = heap.peek()
      if (top === undefined || top.at > at) break
      heap.pop()
      const wake = top.wake
      if (wake !== undefined) {
        top.wake = undefined
        this.live--
        wake()
      }
    }
    return true
  }
}

// ---- Virtual scheduler -----------------------------------------------------------------

/** A FIFO of fiber steps, run only by the driver. A fiber yields after `maxOps` operations. */
export class VirtualScheduler implements Scheduler.Scheduler {
  private queue: Array<Scheduler.Task> = []
  private head = 0
  /** Fiber steps run so far. */
  steps = 0
  /** Times a fiber was made to yield after `maxOps` operations. */
  yields = 0

  constructor(readonly maxOps: number = 2048) {}

  shouldYield(fiber: Fiber.RuntimeFiber<unknown, unknown>): number | false {
    if ((fiber as unknown as { currentOpCount: number }).currentOpCount > this.maxOps) {
      this.yields++
      return 0
    }
    return false
  }

  scheduleTask(task: Scheduler.Task): void {
    this.queue.push(task)
  }

  get idle(): boolean {
    return this.head >= this.queue.length
  }

  /** Runs queued steps (and the ones they queue) until none is left or `budget` ran. */
  runUntilIdle(budget: number): number {
    let ran = 0
    while (this.head < this.queue.length && ran < budget) {
      const task = this.queue[this.head]!
      this.queue[this.head++] = undefined as never
      ran++
      task()
      if (this.head > 65_536 && this.head * 2 > this.queue.length) {
        this.queue = this.queue.slice(this.head)
        this.head = 0
      }
    }
    this.steps += ran
    return ran
  }
}

// ---- Running ---------------------------------------------------------------------------

/** Every fiber is waiting and no sleep is pending: nothing can ever happen again. */
export class SimDeadlock extends Data.TaggedError("SimDeadlock")<{ readonly virtualMs: number }> {
  override get message() {
    return `simulation deadlocked after ${this.virtualMs} ms of virtual time: every fiber waits and no timer is pending`
  }
}

export interface SimulateOptions {
  /** Seed of the Effect `Random` service inside the simulation. Default 0. */
  readonly seed?: number | string
  /** Start of virtual time (ms since 1970). Default 2025-01-01. */
  readonly epoch?: number
  /** Log level inside (the manager logs every crash at Error). Default None. */
  readonly logLevel?: LogLevel.LogLevel
  /** Wall milliseconds between yields to the real event loop (signals, output). Default 50. */
  readonly yieldEveryMs?: number
}

/** Runtime handles for code running under `simulate`. */
export interface SimContext {
  readonly clock: VirtualClock
  readonly scheduler: VirtualScheduler
}

const realTick = () => new Promise<void>((resolve) => setImmediate(resolve))

/**
 * Runs `f` on virtual time (see the module comment) and returns its exit as an Effect of
 * the caller's runtime. Interrupting the caller interrupts the simulated program and waits
 * for it (its finalizers run on virtual time too).
 */
export const simulate = <A, E>(
  f: (ctx: SimContext) => Effect.Effect<A, E, Scope.Scope>,
  options: SimulateOptions = {}
): Effect.Effect<A, E | SimDeadlock> =>
  Effect.suspend(() => {
    const clock = new VirtualClock(options.epoch)
    const scheduler = new VirtualScheduler()
    const yieldEvery = options.yieldEveryMs ?? 50
    const program = f({ clock, scheduler }).pipe(
      Effect.scoped,
      Effect.withClock(clock),
      Effect.withRandom(Random.make(options.seed ?? 0)),
      Logger.withMinimumLogLevel(options.logLevel ?? LogLevel.None)
    )
    const fiber = Effect.runFork(program, { scheduler })
    let interrupted: FiberId.FiberId | undefined
    let done: Exit.Exit<A, E> | undefined
    fiber.addObserver((exit) => {
      done = exit
    })

    const drive = async (): Promise<Exit.Exit<A, E | SimDeadlock>> => {
      let lastYield = performance.now()
      while (done === undefined) {
        scheduler.runUntilIdle(10_000)
        if (done !== undefined) break
        const wall = performance.now()
        if (wall - lastYield >= yieldEvery) {
          await realTick()
          lastYield = performance.now()
          continue
        }
        if (!scheduler.idle) continue
        if (clock.advance()) continue
        // Nothing runnable and no sleep: let real callbacks land once, then give up.
        await realTick()
        lastYield = performance.now()
        if (!scheduler.idle || done !== undefined) continue
        if (interrupted !== undefined) continue
        fiber.unsafeInterruptAsFork(fiber.id())
        interrupted = fiber.id()
        scheduler.runUntilIdle(Number.MAX_SAFE_INTEGER)
        while (done === undefined && (clock.advance() || !scheduler.idle))
          scheduler.runUntilIdle(Number.MAX_SAFE_INTEGER)
        return Exit.fail(new SimDeadlock({ virtualMs: clock.elapsed }))
      }
      return done
    }

    return Effect.async<A, E | SimDeadlock>((resume) => {
      let cancelled = false
      drive().then(
        (exit) => {
          if (!cancelled) resume(exit)
        },
        (defect) => {
          if (!cancelled) resume(Effect.die(defect))
        }
      )
      return Effect.promise(async () => {
        cancelled = true
        if (done === undefined) fiber.unsafeInterruptAsFork(fiber.id())
        // drive() is still looping and finishes once the inner fiber is done.
        while (done === undefined) await realTick()
      })
    })
  })
