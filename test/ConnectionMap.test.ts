/**
 * The connection map alone, over stand-in connections: what it does with a second connection
 * to a node it already holds. A second inbound one is probed: the first stays if it answers
 * (the peer just dialled twice), the new one takes over and the first is closed if it does not
 * (the peer restarted). A second one we dialled ourselves is never probed.
 */
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Scope, Stream } from "effect"
import * as ConnectionMap from "../src/internal/connectionMap.js"
import type { ConnectionEvent } from "../src/services/ConnectionManager.js"
import * as NodeId from "../src/services/NodeId.js"
import type { ConnectionDirection, QuicConnection } from "../src/services/QuicTransport.js"

const idOf = (byte: number) => NodeId.unsafeFromBytes(new Uint8Array(NodeId.NODE_ID_BYTES).fill(byte))
const self = idOf(1)
const peer = idOf(2)

/** What happened to the stand-ins: probes, closes (connections and record scopes), events. */
interface Log {
  readonly probed: Array<string>
  readonly closed: Array<string>
  readonly events: Array<ConnectionEvent["_tag"]>
}

/** A stand-in connection from `peer`: what the map reads, and its closes logged. */
const connection = (id: string, direction: ConnectionDirection, log: Log): QuicConnection => ({
  id,
  remoteNodeId: peer,
  remoteHost: "127.0.0.1",
  remotePort: 4000,
  localHost: "127.0.0.1",
  localPort: 5000,
  direction,
  openStream: Effect.die("not used"),
  acceptedStreams: Stream.empty,
  handleStreams: () => Effect.void,
  whenClosed: () => Effect.void,
  close: (reason) => Effect.sync(() => void log.closed.push(`${id}: ${reason}`)),
  closed: Effect.never
})

/** A record of the map for a stand-in connection; its scope's close is logged too. */
const record = (id: string, direction: ConnectionDirection, log: Log) =>
  Effect.gen(function* () {
    const scope = yield* Scope.make()
    yield* Scope.addFinalizer(
      scope,
      Effect.sync(() => void log.closed.push(`${id} scope`))
    )
    const r: ConnectionMap.ConnectionRecord<string> = {
      connection: connection(id, direction, log),
      client: id,
      scope,
      hostname: undefined,
      path: "direct",
      users: 0,
      retired: false,
      closing: false
    }
    return r
  })

/** A map whose probe answers `alive` (and logs which connection it probed). */
const mapWith = (alive: boolean) =>
  Effect.gen(function* () {
    const log: Log = { probed: [], closed: [], events: [] }
    const map = ConnectionMap.make<string>({
      self,
      idleTimeout: Duration.minutes(1),
      isSeed: () => false,
      publish: (event) => Effect.sync(() => void log.events.push(event._tag)),
      scope: yield* Effect.scope,
      probe: (r) => Effect.sync(() => log.probed.push(r.connection.id)).pipe(Effect.as(alive))
    })
    return { map, log }
  })

describe("ConnectionMap: a second connection to a node it holds", () => {
  it.scoped("inbound, and the first still answers: the first serves, the new one waits on standby", () =>
    Effect.gen(function* () {
      const { map, log } = yield* mapWith(true)
      const first = yield* record("first", "reverse", log)
      const second = yield* record("second", "reverse", log)
      const entry = yield* map.adopt(first)
      expect(yield* map.adopt(second)).toBe(entry)
      expect(log.probed).toEqual(["first"])
      expect(entry.record).toBe(first)
      expect(entry.standby?.has(second)).toBe(true)
      // Neither is closed: the peer, which initiated both, closes the one it does not use.
      expect(log.closed).toEqual([])
      expect(log.events).toEqual(["ConnectionAdded"])
    })
  )

  it.scoped("inbound, and the first is dead (the peer restarted): the new one serves, the first closes", () =>
    Effect.gen(function* () {
      const { map, log } = yield* mapWith(false)
      const first = yield* record("first", "reverse", log)
      const second = yield* record("second", "reverse", log)
      const entry = yield* map.adopt(first)
      expect(yield* map.adopt(second)).toBe(entry)
      expect(log.probed).toEqual(["first"])
      expect(entry.record).toBe(second)
      expect(entry.standby?.has(second)).toBe(false)
      expect(second.retired).toBe(false)
      expect(first.closing).toBe(true)
      expect(log.closed).toEqual(["first scope", "first: replaced by a newer connection from the peer"])
      // The node stays in the map throughout: one entry, never removed, serving the new one.
      expect(map.get(peer)).toBe(entry)
      expect(log.events).toEqual(["ConnectionAdded"])
    })
  )

  it.scoped("our own second dial: never probed, the first is kept and the duplicate closed", () =>
    Effect.gen(function* () {
      const { map, log } = yield* mapWith(false)
      const first = yield* record("first", "forward", log)
      const second = yield* record("second", "forward", log)
      const entry = yield* map.adopt(first)
      yield* map.adopt(second)
      expect(log.probed).toEqual([])
      expect(entry.record).toBe(first)
      expect(log.closed).toEqual(["second scope", "second: duplicate connection"])
    })
  )

  it.scoped(
    "a call that fails on a superseded connection closes that one only: the entry keeps the new one",
    () =>
      Effect.gen(function* () {
        const { map, log } = yield* mapWith(true)
        const relayed = { ...(yield* record("relayed", "forward", log)), path: "relayed" as const }
        const relayedConnection = { ...relayed.connection, relay: idOf(9) }
        const first = { ...relayed, connection: relayedConnection }
        const entry = yield* map.adopt(first)
        const inUse = yield* map.acquire(entry)
        // The upgrade: a direct connection takes over while a call is in flight on the relayed one.
        const direct = yield* record("direct", "reverse", log)
        yield* map.adopt(direct)
        expect(entry.record).toBe(direct)
        // The call on the relayed connection fails, destroying what it used.
        yield* map.release(entry, inUse, true)
        expect(log.closed).toContain("relayed: connection error")
        expect(log.closed.some((line) => line.startsWith("direct"))).toBe(false)
        expect(entry.record).toBe(direct)
        expect(log.events).not.toContain("ConnectionRemoved")
      })
  )
})
