/**
 * Fixed-window rate limits per key (a relay's limit on each caller): at most `limit` events
 * per `windowMs`. The table holds at most `capacity` windows; windows that have ended are
 * dropped as new ones open, and when the table is full the oldest window goes (its key
 * starts afresh), never the whole table at once.
 */
export class RateWindows {
  /** Key → its window, in the order the windows opened (re-opening moves a key to the end). */
  private readonly windows = new Map<string, { readonly start: number; count: number }>()

  constructor(
    readonly limit: number,
    readonly windowMs: number,
    readonly capacity: number
  ) {}

  get size(): number {
    return this.windows.size
  }

  /** Counts one event of `key` at `now`: true when it is over the limit. */
  exceeded(key: string, now: number): boolean {
    const window = this.windows.get(key)
    if (window !== undefined && now - window.start < this.windowMs) return ++window.count > this.limit
    if (window !== undefined) this.windows.delete(key)
    const ended = now - this.windowMs
    for (const [k, w] of this.windows) {
      if (w.start > ended) break
      this.windows.delete(k)
    }
    if (this.windows.size >= this.capacity) this.windows.delete(this.windows.keys().next().value as string)
    this.windows.set(key, { start: now, count: 1 })
    return false
  }
}
