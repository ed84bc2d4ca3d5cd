/**
 * The links between simulated hosts: each pair of hosts has a latency, a jitter and a loss
 * rate (its own, or the world's defaults), and partitions cut sets of hosts off from each
 * other until healed. Jitter and loss are drawn from the world's PRNG, one draw per packet.
 */
import type { LinkOptions, SimNetworkOptions } from "../../services/SimNetwork.js"
import type { HostState } from "./hosts.js"
import type { Prng } from "./prng.js"
import { millis } from "./scheduler.js"
import type { TraceLog } from "./trace.js"

interface LinkState {
  latency: number | undefined
  jitter: number | undefined
  loss: number | undefined
}

interface Partition {
  readonly a: Set<HostState>
  readonly b: Set<HostState>
}

export class Links {
  readonly defaults: { latency: number; jitter: number; loss: number }
  private readonly links = new Map<string, LinkState>()
  private readonly partitions = new Map<number, Partition>()
  private partitionCounter = 0

  constructor(
    private readonly prng: Prng,
    private readonly log: TraceLog,
    options: SimNetworkOptions
  ) {
    this.defaults = {
      latency: options.latency === undefined ? 10 : millis(options.latency),
      jitter: options.jitter === undefined ? 0 : millis(options.jitter),
      loss: options.loss ?? 0
    }
  }

  private linkKey(a: HostState, b: HostState) {
    return a.index < b.index ? `${a.index}:${b.index}` : `${b.index}:${a.index}`
  }

  setDefaults(options: LinkOptions) {
    const defaults = this.defaults
    if (options.latency !== undefined) defaults.latency = millis(options.latency)
    if (options.jitter !== undefined) defaults.jitter = millis(options.jitter)
    if (options.loss !== undefined) defaults.loss = options.loss
    this.log.add("link", "*", "*", `${defaults.latency}/${defaults.jitter}/${defaults.loss}`)
  }

  setLink(a: HostState, b: HostState, options: LinkOptions) {
    const key = this.linkKey(a, b)
    const link = this.links.get(key) ?? { latency: undefined, jitter: undefined, loss: undefined }
    if (options.latency !== undefined) link.latency = millis(options.latency)
    if (options.jitter !== undefined) link.jitter = millis(options.jitter)
    if (options.loss !== undefined) link.loss = options.loss
    this.links.set(key, link)
    this.log.add("link", a.host, b.host, `${link.latency ?? "-"}/${link.jitter ?? "-"}/${link.loss ?? "-"}`)
  }

  /** The one-way delay of a packet from `a` to `b` (jitter drawn now). */
  delay(a: HostState, b: HostState): number {
    const link = this.links.size > 0 ? this.links.get(this.linkKey(a, b)) : undefined
    const base = link?.latency ?? this.defaults.latency
    const jitter = link?.jitter ?? this.defaults.jitter
    return jitter > 0 ? base + Math.floor(this.prng.next() * (jitter + 1)) : base
  }

  /** Whether a packet from `a` to `b` is lost (drawn now). */
  lost(a: HostState, b: HostState): boolean {
    const link = this.links.size > 0 ? this.links.get(this.linkKey(a, b)) : undefined
    const loss = link?.loss ?? this.defaults.loss
    return loss > 0 && this.prng.next() < loss
  }

  /** Whether a partition cuts `a` off from `b`. */
  blocked(a: HostState, b: HostState): boolean {
    if (a === b) return false
    for (const p of this.partitions.values())
      if ((p.a.has(a) && p.b.has(b)) || (p.a.has(b) && p.b.has(a))) return true
    return false
  }

  /** Cuts `a` off from `b`; returns the partition's id. */
  partition(a: Set<HostState>, b: Set<HostState>): number {
    const id = ++this.partitionCounter
    this.partitions.set(id, { a, b })
    this.log.add(
      "partition",
      [...a].map((h) => h.host).join(","),
      [...b].map((h) => h.host).join(","),
      `#${id}`
    )
    return id
  }

  /** Removes one partition, or all of them. */
  heal(id: number | undefined) {
    if (id === undefined) this.partitions.clear()
    else this.partitions.delete(id)
    this.log.add("heal", "", "", id === undefined ? "all" : `#${id}`)
  }
}
