/**
 * A binary min-heap of timed entries ordered by (at, seq): the earliest first, and among
 * equal times the one scheduled first. The simulated network's event queue, the simulation's
 * virtual clock and the connection map's idle deadlines run on it.
 */
export interface Timed {
  readonly at: number
  readonly seq: number
}

const earlier = (x: Timed, y: Timed) => x.at < y.at || (x.at === y.at && x.seq < y.seq)

export class TimedHeap<A extends Timed> {
  readonly items: Array<A> = []
  get size() {
    return this.items.length
  }
  peek(): A | undefined {
    return this.items[0]
  }
  push(item: A) {
    const items = this.items
    items.push(item)
    let i = items.length - 1
    while (i > 0) {
      const parent = (i - 1) >> 1
      if (!earlier(items[i]!, items[parent]!)) break
      ;[items[i], items[parent]] = [items[parent]!, items[i]!]
      i = parent
    }
  }
  pop(): A | undefined {
    const items = this.items
    const top = items[0]
    const last = items.pop()
    if (items.length > 0 && last !== undefined) {
      items[0] = last
      let i = 0
      while (true) {
        const l = 2 * i + 1
        const r = l + 1
        let m = i
        if (l < items.length && earlier(items[l]!, items[m]!)) m = l
        if (r < items.length && earlier(items[r]!, items[m]!)) m = r
        if (m === i) break
        ;[items[i], items[m]] = [items[m]!, items[i]!]
        i = m
      }
    }
    return top
  }
}
