/**
 * The connection map: one entry per remote NodeId, usage counts, idle timers, and the
 * simultaneous-open rule. Pure bookkeeping over QuicConnections; the manager dials them and
 * sets them up.
 *
 * Simultaneous open: when two connections join the same pair of nodes, both sides keep
 * the one initiated by the smaller NodeId. The larger node closes the connection it
 * initiated once nothing uses it; the smaller node keeps serving it until then.
 * Before that rule, a direct connection is kept over a relayed one (both sides see the same
 * paths, so they agree): a relayed connection upgraded to a direct one serves its calls in
 * flight, then its initiator closes it.
 */
import { type Clock, Duration, Effect, Exit, Fiber, Queue, Scope } from "effect"
import type { ConnectionEvent, ConnectionInfo, ConnectionPath } from "../services/ConnectionManager.js"
import * as NodeId from "../services/NodeId.js"
import type { QuicConnection } from "../services/QuicTransport.js"
import { type Timed, TimedHeap } from "./timedHeap.js"

/** One QUIC connection with what runs on it. */
export interface ConnectionRecord<Client> {
  readonly connection: QuicConnection
  readonly client: Client
  /** Closing it closes the connection and stops everything started for it. */
  readonly scope: Scope.CloseableScope
  readonly hostname: string | undefined
  /** How its packets travel (`relayed` when the connection names a relay). */
  readonly path: ConnectionPath
  /** Handles given out on this record and not yet released. */
  users: number
  retired: boolean
  /** The map closed it (its scope, then the connection). */
  closing: boolean
}

export interface Entry<Client> {
  readonly nodeId: NodeId.NodeId
  readonly key: string
  record: ConnectionRecord<Client>
  /**
   * Other open connections to the same node, kept until their initiator closes them. Made
   * on first use: nearly every entry never has one.
   */
  standby: Set<ConnectionRecord<Client>> | undefined
  usageCount: number
  /** When the idle entry goes; undefined while in use (or a seed). */
  idleDeadline: number | undefined
  lastUsed: number
}

interface IdleItem<Client> extends Timed {
  readonly entry: Entry<Client>
}

export const keyOf = (nodeId: NodeId.NodeId) => NodeId.encode(nodeId) as string

/**
 * True when `connection` is the one the simultaneous-open rule keeps: the connection
 * initiated by the smaller of the two NodeIds.
 */
/** 1 for a relayed connection, 0 for a direct one: lower is kept. */
const rank = (connection: QuicConnection) => (connection.relay === undefined ? 0 : 1)

export const isPreferred = (self: NodeId.NodeId, connection: QuicConnection): boolean => {
  const selfIsSmaller = NodeId.compare(self, connection.remoteNodeId) < 0
  return connection.direction === "forward" ? selfIsSmaller : !selfIsSmaller
}

export interface ConnectionMapOptions {
  readonly self: NodeId.NodeId
  readonly idleTimeout: Duration.Duration
  readonly isSeed: (nodeId: NodeId.NodeId) => boolean
  /** Tells the manager's event subscribers (if there are any). */
  readonly publish: (event: ConnectionEvent) => Effect.Effect<void>
  /** Where the idle reaper's removals run (the manager's scope). */
  readonly scope: Scope.Scope
  /** Probe whether a connection is still alive (a round trip); used on duplicate inbound connections. */
  readonly probe: (record: ConnectionRecord<unknown>) => Effect.Effect<boolean>
}

export const make = <Client>(options: ConnectionMapOptions) => {
  const entries = new Map<string, Entry<Client>>()
  // The manager's clock (the TestClock in tests), read synchronously where bookkeeping needs it.
  let clock: Clock.Clock | undefined
  const now = () => (clock ? clock.unsafeCurrentTimeMillis() : Date.now())
  const useClock = Effect.flatMap(Effect.clock, (c) =>
    Effect.sync(() => {
      clock = c
    })
  )

  /**
   * Runs `effects` at once and waits for them all. The fibers are awaited, not joined: a join
   * merges each fiber's FiberRefs back into this one, a cost per fiber that a simulated world
   * of thousands of nodes pays at its teardown. One effect (nearly always) runs in this fiber.
   */
  const allAtOnce = (effects: ReadonlyArray<Effect.Effect<void>>): Effect.Effect<void> =>
    effects.length === 1
      ? effects[0]!
      : Effect.forEach(effects, (effect) => Effect.fork(effect)).pipe(
          Effect.flatMap(Fiber.awaitAll),
          Effect.asVoid
        )

  const standbyOf = (entry: Entry<Client>) => {
    entry.standby ??= new Set()
    return entry.standby
  }

  const closeRecord = (record: ConnectionRecord<Client>, reason: string) =>
    Effect.suspend(() => {
      record.retired = true
      record.closing = true
      return Scope.close(record.scope, Exit.void).pipe(
        Effect.zipRight(record.connection.close(reason)),
        Effect.ignore
      )
    })

  /** A retired record closes once nobody uses it, if we initiated it; the peer closes its own. */
  const retire = (record: ConnectionRecord<Client>, reason: string): Effect.Effect<void> =>
    Effect.suspend(() => {
      record.retired = true
      if (record.users === 0 && record.connection.direction === "forward") return closeRecord(record, reason)
      return Effect.void
    })

  // Idle timers: one reaper fiber over a heap of deadlines, not a fiber per connection. Every
  // deadline is pushed as `now + idleTimeout`, so a push is never earlier than what the heap
  // holds and the reaper only needs waking when the heap was empty. Use (acquire, touch) just
  // moves the entry's own deadline; the reaper checks it when the pushed one comes due.
  const idleHeap = new TimedHeap<IdleItem<Client>>()
  let idleSeq = 0
  const idleKick = Effect.runSync(Queue.sliding<void>(1))

  const cancelIdle = (entry: Entry<Client>) =>
    Effect.sync(() => {
      entry.idleDeadline = undefined
    })

  const startIdle = (entry: Entry<Client>): Effect.Effect<void> =>
    Effect.suspend(() => {
      if (entry.usageCount > 0 || options.isSeed(entry.nodeId) || entry.idleDeadline !== undefined)
        return Effect.void
      const at = now() + Duration.toMillis(options.idleTimeout)
      entry.idleDeadline = at
      const wasEmpty = idleHeap.size === 0
      idleHeap.push({ at, seq: idleSeq++, entry })
      return wasEmpty ? Queue.offer(idleKick, undefined) : Effect.void
    })

  const remove = (entry: Entry<Client>, reason: string): Effect.Effect<void> =>
    Effect.suspend(() => {
      if (entries.get(entry.key) !== entry) return Effect.void
      entries.delete(entry.key)
      entry.idleDeadline = undefined
      const standby = entry.standby
      entry.standby = undefined
      return allAtOnce([entry.record, ...(standby ?? [])].map((r) => closeRecord(r, reason))).pipe(
        Effect.zipRight(options.publish({ _tag: "ConnectionRemoved", nodeId: entry.nodeId, reason }))
      )
    })

  /** The reaper: sleeps until the earliest deadline, then removes the entries still idle past theirs. */
  const reaper: Effect.Effect<never> = Effect.suspend((): Effect.Effect<void> => {
    const top = idleHeap.peek()
    if (top === undefined) return Queue.take(idleKick)
    const wait = top.at - now()
    if (wait > 0) return Effect.sleep(wait)
    idleHeap.pop()
    const entry = top.entry
    const deadline = entry.idleDeadline
    if (deadline === undefined || entries.get(entry.key) !== entry || entry.usageCount > 0) return Effect.void
    if (deadline > top.at) {
      idleHeap.push({ at: deadline, seq: idleSeq++, entry })
      return Effect.void
    }
    entry.idleDeadline = undefined
    return remove(entry, "idle timeout").pipe(Effect.forkIn(options.scope), Effect.asVoid)
  }).pipe(Effect.forever)

  /** When a record's connection closes: promote a standby connection, or remove the entry. */
  const onClosed = (record: ConnectionRecord<Client>): Effect.Effect<void> =>
    Effect.suspend(() => {
      record.retired = true
      const entry = entries.get(keyOf(record.connection.remoteNodeId))
      if (!entry) return Scope.close(record.scope, Exit.void)
      if (entry.standby?.delete(record)) return Scope.close(record.scope, Exit.void)
      if (entry.record !== record) return Scope.close(record.scope, Exit.void)
      const next: ConnectionRecord<Client> | undefined = entry.standby?.values().next().value
      if (next) {
        entry.standby?.delete(next)
        entry.record = next
        next.retired = false
        return Scope.close(record.scope, Exit.void)
      }
      return Scope.close(record.scope, Exit.void).pipe(Effect.zipRight(remove(entry, "connection closed")))
    })

  /**
   * What to run when a record's connection closes, decided at the close: nothing (and so no
   * fiber) when the map closed the record itself and no longer holds it, the usual end of an
   * idle connection on the side that closes it.
   */
  const closedEffect = (record: ConnectionRecord<Client>): Effect.Effect<void> => {
    if (record.closing) {
      const entry = entries.get(keyOf(record.connection.remoteNodeId))
      if (entry === undefined || (entry.record !== record && !entry.standby?.has(record))) return Effect.void
    }
    return onClosed(record)
  }

  /**
   * Puts a freshly made connection into the map and returns the entry that now serves the
   * node (which may hold another connection, by the simultaneous-open rule).
   */
  const adopt = (record: ConnectionRecord<Client>): Effect.Effect<Entry<Client>> =>
    Effect.suspend(() => {
      const conn = record.connection
      const key = keyOf(conn.remoteNodeId)
      const existing = entries.get(key)
      if (!existing) {
        const entry: Entry<Client> = {
          nodeId: conn.remoteNodeId,
          key,
          record,
          standby: undefined,
          usageCount: 0,
          idleDeadline: undefined,
          lastUsed: now()
        }
        entries.set(key, entry)
        return options
          .publish({
            _tag: "ConnectionAdded",
            nodeId: conn.remoteNodeId,
            host: conn.remoteHost,
            port: conn.remotePort,
            direction: conn.direction
          })
          .pipe(Effect.zipRight(startIdle(entry)), Effect.as(entry))
      }
      if (existing.record === record) return Effect.succeed(existing)
      const byPath = rank(conn) - rank(existing.record.connection)
      const newPreferred = byPath === 0 ? isPreferred(options.self, conn) : byPath < 0
      const oldPreferred = byPath === 0 ? isPreferred(options.self, existing.record.connection) : byPath > 0
      if (newPreferred && !oldPreferred) {
        const old = existing.record
        existing.record = record
        standbyOf(existing).add(old)
        return retire(
          old,
          byPath === 0 ? "superseded by simultaneous open" : "upgraded to a direct path"
        ).pipe(Effect.as(existing))
      }
      if (!newPreferred && oldPreferred) {
        standbyOf(existing).add(record)
        return retire(record, "simultaneous open: the other connection is kept").pipe(Effect.as(existing))
      }
      // Same initiator twice. Our own duplicate dial: keep the first. A second inbound one:
      // the peer may have restarted, so keep the new one only if the old one is dead.
      if (conn.direction === "forward") {
        standbyOf(existing).add(record)
        return retire(record, "duplicate connection").pipe(Effect.as(existing))
      }
      standbyOf(existing).add(record)
      const old = existing.record
      return options.probe(old as ConnectionRecord<unknown>).pipe(
        Effect.flatMap((alive) =>
          Effect.suspend(() => {
            if (alive || entries.get(key) !== existing || !existing.standby?.has(record)) return Effect.void
            existing.standby.delete(record)
            existing.record = record
            record.retired = false
            return closeRecord(old, "replaced by a newer connection from the peer")
          })
        ),
        Effect.as(existing)
      )
    })

  const acquire = (entry: Entry<Client>) =>
    Effect.suspend(() => {
      entry.usageCount++
      entry.lastUsed = now()
      const record = entry.record
      record.users++
      return cancelIdle(entry).pipe(Effect.as(record))
    })

  const release = (entry: Entry<Client>, record: ConnectionRecord<Client>, destroy: boolean) =>
    Effect.suspend(() => {
      record.users--
      entry.usageCount = Math.max(0, entry.usageCount - 1)
      entry.lastUsed = now()
      // A failing connection takes its entry with it only while it serves it: one already
      // superseded (a relayed one upgraded to a direct path) is closed alone.
      if (destroy)
        return entry.record === record
          ? remove(entry, "connection error")
          : closeRecord(record, "connection error")
      if (record.retired && record.users === 0 && record.connection.direction === "forward")
        return closeRecord(record, "retired")
      return entry.usageCount === 0 && entries.get(entry.key) === entry ? startIdle(entry) : Effect.void
    })

  /** Activity from the peer: an idle entry's timer starts again. */
  const touch = (nodeId: NodeId.NodeId): Effect.Effect<void> =>
    Effect.suspend(() => {
      const entry = entries.get(keyOf(nodeId))
      if (!entry) return Effect.void
      entry.lastUsed = now()
      if (entry.usageCount > 0 || entry.idleDeadline === undefined) return Effect.void
      // The reaper finds the later deadline when the earlier one comes due.
      entry.idleDeadline = now() + Duration.toMillis(options.idleTimeout)
      return Effect.void
    })

  /** Removes the least recently used idle non-seed entry; false if there is none. */
  const pruneOne: Effect.Effect<boolean> = Effect.suspend(() => {
    let victim: Entry<Client> | undefined
    for (const entry of entries.values()) {
      if (entry.usageCount > 0 || options.isSeed(entry.nodeId)) continue
      if (!victim || entry.lastUsed < victim.lastUsed) victim = entry
    }
    return victim ? remove(victim, "pruned: connection limit").pipe(Effect.as(true)) : Effect.succeed(false)
  })

  const info = (entry: Entry<Client>): ConnectionInfo => {
    const c = entry.record.connection
    return {
      nodeId: NodeId.encode(entry.nodeId),
      host: c.remoteHost,
      port: c.remotePort,
      hostname: entry.record.hostname,
      usageCount: entry.usageCount,
      timeout: entry.idleDeadline === undefined ? undefined : Math.max(0, entry.idleDeadline - now()),
      direction: c.direction,
      path: entry.record.path,
      relay: c.relay === undefined ? undefined : NodeId.encode(c.relay)
    }
  }

  // All at once: each close waits for its QUIC connection to drain.
  const removeAll = (reason: string) =>
    Effect.suspend(() => allAtOnce([...entries.values()].map((e) => remove(e, reason))))

  return {
    /** Run once inside the manager so timestamps come from its Clock. */
    useClock,
    /** The idle reaper; the manager runs it for its lifetime. */
    reaper,
    /** Entries waiting out their idle timeout. */
    idleCount: () => {
      let n = 0
      for (const e of entries.values()) if (e.idleDeadline !== undefined) n++
      return n
    },
    entries,
    get: (nodeId: NodeId.NodeId) => entries.get(keyOf(nodeId)),
    adopt,
    acquire,
    release,
    remove,
    removeAll,
    onClosed,
    closedEffect,
    closeRecord,
    pruneOne,
    touch,
    info
  }
}

export type ConnectionMap<Client> = ReturnType<typeof make<Client>>
