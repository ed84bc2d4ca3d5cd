/**
 * The nonces of the signed requests a node has acted on, for as long as a request is fresh
 * enough to be accepted: a request seen before is a replay. Bounded: when full, the oldest
 * record goes and the cache refuses every request stamped no later than the evicted one's
 * timestamp (it can no longer tell those from replays), so eviction never lets a replay in.
 */
export class ReplayCache {
  /** Key → the request's timestamp, in insertion order. */
  private readonly seen = new Map<string, number>()
  /** Requests stamped at or before this are refused (their records may have been evicted). */
  private floor = Number.NEGATIVE_INFINITY

  constructor(
    /** Most records held. */
    readonly capacity: number,
    /** A record older than this (ms) is dropped: freshness refuses its request anyway. */
    readonly maxAgeMs: number
  ) {}

  get size(): number {
    return this.seen.size
  }

  /** Records `key` (stamped `timestamp`) at `now`: true the first time, false for a replay. */
  admit(key: string, timestamp: number, now: number): boolean {
    const expired = now - this.maxAgeMs
    for (const [k, ts] of this.seen) {
      if (ts >= expired) break
      this.seen.delete(k)
    }
    if (timestamp <= this.floor || this.seen.has(key)) return false
    if (this.seen.size >= this.capacity) {
      const [oldest, ts] = this.seen.entries().next().value as [string, number]
      this.seen.delete(oldest)
      if (ts > this.floor) this.floor = ts
      if (timestamp <= this.floor) return false
    }
    this.seen.set(key, timestamp)
    return true
  }
}
