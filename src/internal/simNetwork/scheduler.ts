/**
 * The simulated world's discrete-event scheduler: packets, stream bytes and closes are
 * callbacks in a heap ordered by (virtual time, sequence number). One timer wakes the world
 * when the earliest event is due, so a whole world costs one pending timer, whatever the
 * number of nodes: the clock's own timer when it has them (SimRuntime's virtual clock), or
 * else one fiber sleeping on the Effect Clock (so it runs under TestClock too).
 */
import { type Clock, Duration, Effect } from "effect"
import { TimedHeap } from "../timedHeap.js"

/**
 * A Clock that can call back at a time of its own without a fiber (SimRuntime's virtual
 * clock). The world's scheduler then wakes through it; on any other Clock (TestClock, the
 * live one) it wakes by a sleeping fiber.
 */
export interface TimerClock extends Clock.Clock {
  /** Calls `run` (outside any fiber) once the clock reaches `at` (ms since 1970). */
  readonly scheduleAt: (at: number, run: () => void) => void
}

export const hasTimers = (clock: Clock.Clock): clock is TimerClock =>
  typeof (clock as Partial<TimerClock>).scheduleAt === "function"

/** A duration in whole milliseconds of virtual time (never negative). */
export const millis = (input: Duration.DurationInput) =>
  Math.max(0, Math.round(Duration.toMillis(Duration.decode(input))))

interface Scheduled {
  readonly at: number
  readonly seq: number
  readonly run: () => void
}

export class Scheduler {
  private readonly heap = new TimedHeap<Scheduled>()
  private seq = 0
  /**
   * The times of the clock timers set for `tick` and not yet fired. A timer is only set for a
   * time earlier than all of these, and they fire in time order: a stack, the earliest on top.
   */
  private readonly armed: Array<number> = []
  /** Halted, or the world's scope closed: nothing is scheduled any more, and timers still due do nothing. */
  closed = false
  private ticking = false
  private tickNow = 0

  constructor(
    readonly clock: Clock.Clock,
    /** Forks the sleeping fiber of a wake-up (into the world's scope). */
    private readonly runFork: (effect: Effect.Effect<void>) => unknown,
    /** The clock's own timers when it has them (SimRuntime's virtual clock): no fiber per wake-up. */
    private readonly timers: TimerClock | undefined
  ) {}

  now() {
    return this.clock.unsafeCurrentTimeMillis()
  }

  /** Events waiting to run. */
  get size() {
    return this.heap.size
  }

  scheduleAt(at: number, run: () => void) {
    if (this.closed) return
    this.heap.push({ at, seq: this.seq++, run })
    if (this.ticking && at <= this.tickNow) return
    this.arm(at)
  }

  schedule(delay: number, run: () => void) {
    this.scheduleAt(this.now() + delay, run)
  }

  private arm(at: number) {
    const armed = this.armed
    if (armed.length > 0 && armed[armed.length - 1]! <= at) return
    armed.push(at)
    const timers = this.timers
    if (timers !== undefined) {
      timers.scheduleAt(at, () => this.tick(at))
      return
    }
    const delay = Math.max(0, at - this.now())
    this.runFork(
      Effect.zipRight(
        Effect.sleep(Duration.millis(delay)),
        Effect.sync(() => this.tick(at))
      )
    )
  }

  private tick(armedAt: number) {
    // Halted, or the world's scope closed: timers still due do nothing.
    if (this.closed) return
    const armed = this.armed
    while (armed.length > 0 && armed[armed.length - 1]! <= armedAt) armed.pop()
    const now = this.now()
    this.ticking = true
    this.tickNow = now
    try {
      while (true) {
        const next = this.heap.peek()
        if (next === undefined || next.at > now) break
        this.heap.pop()
        next.run()
      }
    } finally {
      this.ticking = false
    }
    const next = this.heap.peek()
    if (next !== undefined) this.arm(next.at)
  }
}
