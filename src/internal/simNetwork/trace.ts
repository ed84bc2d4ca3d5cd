/**
 * The simulated world's trace: every event, stamped with the virtual time since the world
 * began, goes into a running SHA-256 (the same for the same seed and scenario); the first
 * `limit` events are also kept in memory.
 */
import { createHash } from "node:crypto"
import type { Clock } from "effect"
import type { TraceEvent, TraceKind } from "../../services/SimNetwork.js"

export class TraceLog {
  private readonly hash = createHash("sha256")
  readonly events: Array<TraceEvent> = []
  count = 0
  private readonly start: number

  constructor(
    private readonly clock: Clock.Clock,
    private readonly limit: number
  ) {
    this.start = clock.unsafeCurrentTimeMillis()
  }

  add(kind: TraceKind, from: string, to: string, detail = "") {
    const at = this.clock.unsafeCurrentTimeMillis() - this.start
    this.hash.update(`${at}|${kind}|${from}|${to}|${detail}\n`)
    this.count++
    if (this.events.length < this.limit) this.events.push({ at, kind, from, to, detail })
  }

  /** Hex SHA-256 of every event so far. */
  digest() {
    return this.hash.copy().digest("hex")
  }
}
