/**
 * Relays, the manager's part (`Relay` has the protocol):
 *
 * - Every node serves STOP: a relay brings it a circuit from a source, which the connection
 *   gate may refuse; the source's QUIC connection then runs over the circuit
 *   (`QuicTransport.acceptCircuit`) and arrives as any inbound connection does.
 * - A node started as a relay (`relay`) serves HOP (`makeRelayServer`): reservations and
 *   circuits, on connections it already holds (it never dials for them).
 * - A node that is not public (cone, symmetric, or unknown for a while) keeps reservations
 *   with `relayReservationsKept` relays, its seeds first, then relays other nodes use; it
 *   reserves again when one ends, and announces them (`state.ownRelays`) as "reachable via relay R".
 * - `dialVia` is the fallback a dial takes (`dialing.ts`): a circuit through each of the
 *   target's relays in turn, and the target's own connection over it (`dialCircuit`), which
 *   enters the map like a dialled one. The relay's connection is held while the circuit lasts.
 */

import { Clock, Duration, Effect, Exit, FiberMap, FiberSet, Option, Predicate, Schedule, Scope } from "effect"
import * as Address from "../../services/Address.js"
import { NodeConnectionError, type RelayStatus } from "../../services/ConnectionManager.js"
import type { Contact } from "../../services/Contact.js"
import * as NodeId from "../../services/NodeId.js"
import type { ProtocolsService } from "../../services/Protocols.js"
import * as Protocols from "../../services/Protocols.js"
import {
  type Circuit,
  DialError,
  type QuicConnection,
  type QuicTransportService
} from "../../services/QuicTransport.js"
import { type RelayHost, RelayRefused, type RelayStats } from "../../services/Relay.js"
import * as RelayClient from "../relay/client.js"
import { makeRelayServer } from "../relay/server.js"
import * as Wire from "../relay/wire.js"
import * as Deadline from "./deadline.js"
import type { Dialing, RelayFallback } from "./dialing.js"
import type { Gating } from "./gating.js"
import type { Records } from "./records.js"
import { mayBeUnreachable } from "./selfAddresses.js"
import type { ConnRecord, Entry, ManagerState } from "./state.js"

/** How often the keeper looks whether reservations are wanted, ±20% jitter. */
const KEEPER_INTERVAL = Duration.seconds(5)
/** A node whose class is still unknown this long after start reserves as if unreachable. */
const UNKNOWN_GRACE = Duration.seconds(30)
/** A relay that refused or failed is not asked again for this long. */
const COOLDOWN = Duration.minutes(1)

export interface Relaying extends RelayFallback {
  /** Serves STOP (and HOP as a relay) and keeps the reservations, in the scope. */
  readonly start: Effect.Effect<void, never, Scope.Scope>
  /** Runs `f` whenever the reservations change (the announcement of them). */
  readonly onReservationsChanged: (f: () => Effect.Effect<void>) => void
  readonly status: Effect.Effect<RelayStatus>
}

export const make = (
  state: ManagerState,
  deps: {
    readonly transport: QuicTransportService
    readonly protocols: Option.Option<ProtocolsService>
    readonly gating: Gating
    readonly records: Records
    readonly dialing: () => Pick<Dialing, "getConnectionWithAddress">
    /** The upgrade's signal: our signed hole-punch request to the target over the relayed connection. */
    readonly signalOver: (nodeId: NodeId.NodeId, timeout: Duration.Duration) => Effect.Effect<void>
    /** The confirmed addresses `nodeId` announced for itself, if it did. */
    readonly announced: (nodeId: NodeId.NodeId) => ReadonlyArray<Address.Address> | undefined
    /** Sees every chunk our relay forwards (a test hook). */
    readonly tap?: ((bytes: Uint8Array) => void) | undefined
  }
): Relaying => {
  const { config, map, fail, seeds } = state
  const { transport, gating, records } = deps
  const reservations = new Map<string, Contact>()
  const cooldown = new Map<string, number>()
  let server: { readonly stats: Effect.Effect<RelayStats> } | undefined
  let changed: () => Effect.Effect<void> = () => Effect.void

  /** A use of the connection we hold to `nodeId` while the scope is open; fails without one (never dials). */
  const holdExisting = (nodeId: NodeId.NodeId): Effect.Effect<ConnRecord, string, Scope.Scope> =>
    Effect.suspend(() => {
      const entry = map.get(nodeId)
      if (entry === undefined) return Effect.fail(`no connection to ${NodeId.encode(nodeId)}`)
      return Effect.acquireRelease(map.acquire(entry), (record) => map.release(entry, record, false))
    })

  const host: RelayHost = {
    openStream: (nodeId, protocol) =>
      Effect.flatMap(holdExisting(nodeId), (record) => Protocols.open(record.connection, protocol)),
    hold: (nodeId) => Effect.asVoid(holdExisting(nodeId)),
    forward: (a, b, options) =>
      Effect.gen(function* () {
        const forwardDatagrams = transport.forwardDatagrams
        const held = yield* Effect.option(Effect.all([holdExisting(a), holdExisting(b)]))
        if (forwardDatagrams === undefined || Option.isNone(held)) return Option.none()
        const [toA, toB] = held.value.map((record) => record.connection)
        if (toA!.relay !== undefined || toB!.relay !== undefined) return Option.none()
        const at = (connection: QuicConnection) => ({
          host: connection.remoteHost,
          port: connection.remotePort
        })
        return Option.some(yield* forwardDatagrams({ a: at(toA!), b: at(toB!) }, options))
      })
  }

  // --- the target's side: circuits a relay brings us ---

  const decide = (source: NodeId.NodeId) =>
    Effect.sync(() => {
      if (transport.acceptCircuit === undefined)
        return new RelayRefused({
          reason: "target-refused",
          detail: "this node takes no relayed connections"
        })
      const denied = gating.refuseNode(source)
      return denied === undefined ? undefined : new RelayRefused({ reason: "denied", detail: denied.detail })
    })

  /** Serves a circuit the relay brought, holding our connection to the relay (whose close ends the circuit). */
  const runCircuit = (_source: NodeId.NodeId, circuit: Circuit) =>
    Effect.scoped(
      Effect.gen(function* () {
        const acceptCircuit = transport.acceptCircuit
        const held = yield* Effect.option(holdExisting(circuit.relay))
        if (acceptCircuit === undefined) return
        const until = Option.match(held, { onNone: () => circuit.until, onSome: (r) => r.connection.closed })
        yield* acceptCircuit({ ...circuit, until })
      })
    )

  // --- the source's side: a connection through a relay ---

  const relayFailure = (nodeId: NodeId.NodeId, relay: Contact, e: unknown): NodeConnectionError => {
    const via = `through relay ${NodeId.encode(relay.nodeId)}`
    if (e instanceof RelayRefused) return fail(nodeId, "relay-refused", `${via}: ${e.message}`, e)
    if (e instanceof DialError)
      return fail(
        nodeId,
        e.reason === "mismatch" || e.reason === "timeout" ? e.reason : "unreachable",
        `${via}: ${e.message}`,
        e
      )
    if (e instanceof NodeConnectionError)
      return fail(nodeId, e.reason === "timeout" ? "timeout" : "unreachable", `${via}: ${e.message}`, e)
    const detail = Predicate.hasProperty(e, "message") ? String(e.message) : String(e)
    return fail(nodeId, "unreachable", `${via}: ${detail}`, e)
  }

  /** One circuit through `relay`, and the target's connection over it, set up and in the map. */
  const viaOne = (nodeId: NodeId.NodeId, relay: Contact, timeout: Duration.Duration) =>
    Effect.gen(function* () {
      const dialCircuit = transport.dialCircuit
      if (dialCircuit === undefined)
        return yield* Effect.fail("the transport cannot carry relayed connections")
      const scope = yield* Scope.make()
      const record = yield* Effect.gen(function* () {
        yield* deps.dialing().getConnectionWithAddress(relay.nodeId, relay, { timeout })
        const held = yield* holdExisting(relay.nodeId)
        const circuit = yield* RelayClient.connect(held.connection, nodeId, timeout)
        const connection = yield* dialCircuit(circuit, { expectedNodeIds: [nodeId], timeout })
        return yield* records.setupRecord(connection, scope)
      }).pipe(
        Scope.extend(scope),
        Effect.onError(() => Scope.close(scope, Exit.void))
      )
      yield* Effect.logDebug(
        `relayed connection to ${NodeId.encode(nodeId)} via ${NodeId.encode(relay.nodeId)}`
      )
      const entry = yield* map.adopt(record)
      if (entry.record === record) yield* FiberSet.run(state.background, upgrade(nodeId, record))
      return entry
    }).pipe(
      Effect.mapError((e) => relayFailure(nodeId, relay, e)),
      Effect.tapError((e) => Effect.logDebug(`relayed dial failed: ${e.message}`))
    )

  /**
   * The upgrade (DCUtR-like): over the relayed connection we ask the target to punch toward
   * us (and dial us back, if it may be unreachable itself), and dial it at once at the address
   * its relay observed and the addresses it announced. A direct connection, whichever side
   * made it, replaces the relayed one in the map (`connectionMap.ts`); calls in flight on the
   * relayed one finish there. Skipped when both sides look unreachable (symmetric NATs: no
   * direct path opens between them).
   */
  const upgrade = (nodeId: NodeId.NodeId, relayed: ConnRecord): Effect.Effect<void> =>
    Effect.suspend(() => {
      const hint = state.relayHints.of(nodeId)
      if (state.selfAddresses.nat() === "symmetric" && hint?.relayOnly === true) return Effect.void
      const targets: Array<Address.Address> = []
      const add = (a: Address.Address) => {
        if (Address.isPort(a.port) && !targets.some((b) => Address.equals(a, b)))
          targets.push({ host: a.host, port: a.port })
      }
      add({ host: relayed.connection.remoteHost, port: relayed.connection.remotePort })
      for (const a of deps.announced(nodeId) ?? []) add(a)
      if (targets.length === 0) return Effect.void
      const timeout = state.connectTimeout
      const dial = (address: Address.Address) =>
        records
          .dialRecord([nodeId], address, timeout, undefined, undefined, () => "punched")
          .pipe(Effect.flatMap(map.adopt))
      return Effect.zip(deps.signalOver(nodeId, timeout), Effect.raceAll(targets.map(dial)), {
        concurrent: true
      }).pipe(
        Effect.tap(() =>
          Effect.logDebug(`relayed connection to ${NodeId.encode(nodeId)} upgraded to a direct one`)
        ),
        Effect.catchAll((e) =>
          Effect.suspend(() => {
            // The target's own connection (its punch, or its dial-back) may have won instead.
            const now = map.get(nodeId)?.record
            return now !== undefined && now.connection.relay === undefined
              ? Effect.logDebug(
                  `relayed connection to ${NodeId.encode(nodeId)} upgraded by its own direct connection`
                )
              : Effect.logDebug(`no direct path to ${NodeId.encode(nodeId)} (staying relayed): ${e.message}`)
          })
        )
      )
    })

  const dialVia = (
    nodeId: NodeId.NodeId,
    named: ReadonlyArray<Contact>,
    timeout: Duration.Duration
  ): Effect.Effect<Entry, NodeConnectionError> =>
    Effect.flatMap(Deadline.after(timeout), (deadline) => {
      // We may be one of its relays ourselves: it holds a connection to us then, not through us.
      const relays = named.filter((r) => !NodeId.equals(r.nodeId, state.self))
      const errors: Array<NodeConnectionError> = []
      const tryFrom = (i: number): Effect.Effect<Entry, NodeConnectionError> => {
        if (i >= relays.length) {
          const refused = errors.find((e) => e.reason === "relay-refused")
          const last = refused ?? errors[errors.length - 1]
          return Effect.fail(
            last === undefined
              ? fail(nodeId, "unreachable", "no relay known")
              : fail(nodeId, last.reason, errors.map((e) => e.detail).join("; "), last)
          )
        }
        return Deadline.withLeft(
          deadline,
          (left) =>
            // Each relay gets its share of what is left (a dead one must not starve the next).
            viaOne(
              nodeId,
              relays[i]!,
              Option.getOrElse(Duration.divide(left, relays.length - i), () => left)
            ).pipe(
              Effect.catchAll((e) => {
                errors.push(e)
                return tryFrom(i + 1)
              })
            ),
          () =>
            fail(
              nodeId,
              "timeout",
              `no relayed connection within ${Duration.format(timeout)}${errors.length > 0 ? `: ${errors.map((e) => e.detail).join("; ")}` : ""}`
            )
        )
      }
      return tryFrom(0)
    })

  // --- reservations ---

  const candidates = (now: number): ReadonlyArray<Contact> => {
    const out: Array<Contact> = []
    const seen = new Set<string>([state.selfKey, ...reservations.keys()])
    const consider = (c: Contact) => {
      const key = NodeId.encode(c.nodeId) as string
      if (seen.has(key) || (cooldown.get(key) ?? 0) > now) return
      seen.add(key)
      out.push(c)
    }
    for (const s of seeds) consider(s)
    for (const hint of state.relayHints.values()) for (const r of hint.relays) consider(r)
    return out
  }

  /** Holds a reservation with `relay` until it ends (then forgets it), announcing each change. */
  const reserveWith = (relay: Contact): Effect.Effect<void> => {
    const key = NodeId.encode(relay.nodeId) as string
    return Effect.gen(function* () {
      yield* deps.dialing().getConnectionWithAddress(relay.nodeId, relay)
      const held = yield* holdExisting(relay.nodeId)
      const reservation = yield* RelayClient.reserve(held.connection)
      reservations.set(key, relay)
      yield* Effect.logDebug(`reserved with relay ${key}`)
      yield* changed()
      yield* reservation.held
    }).pipe(
      Effect.scoped,
      Effect.catchAll((e) =>
        Effect.logDebug(
          `no reservation with relay ${key}: ${Predicate.hasProperty(e, "message") ? String(e.message) : String(e)}`
        )
      ),
      Effect.ensuring(
        Effect.flatMap(Clock.currentTimeMillis, (now) =>
          Effect.suspend(() => {
            cooldown.set(key, now + Duration.toMillis(COOLDOWN))
            if (cooldown.size > 1024) cooldown.delete(cooldown.keys().next().value as string)
            return reservations.delete(key) ? changed() : Effect.void
          })
        )
      )
    )
  }

  const keeper = Effect.gen(function* () {
    const running = yield* FiberMap.make<string>()
    const started = yield* Clock.currentTimeMillis
    const check = Effect.gen(function* () {
      const now = yield* Clock.currentTimeMillis
      const nat = state.selfAddresses.nat()
      // Cone nodes too: no hole punch joins a symmetric NAT to a port-restricted cone.
      const wanted =
        nat !== "public" && (nat !== "unknown" || now - started >= Duration.toMillis(UNKNOWN_GRACE))
      if (!wanted) {
        if ((yield* FiberMap.size(running)) > 0) yield* FiberMap.clear(running)
        return
      }
      let attempts = config.relayReservationsKept - (yield* FiberMap.size(running))
      for (const relay of candidates(now)) {
        if (attempts <= 0) break
        const key = NodeId.encode(relay.nodeId) as string
        if (yield* FiberMap.has(running, key)) continue
        attempts--
        yield* FiberMap.run(running, key, reserveWith(relay))
      }
    })
    const jittered = Schedule.spaced(KEEPER_INTERVAL).pipe(Schedule.jittered)
    yield* Effect.repeat(check, jittered)
  })

  const start = Effect.gen(function* () {
    if (Option.isNone(deps.protocols)) return
    const protocols = deps.protocols.value
    yield* protocols.handle(Wire.STOP_PROTOCOL, (socket, caller) =>
      RelayClient.serveStop(socket, caller, decide, runCircuit)
    )
    if (config.relay) {
      const relay = yield* makeRelayServer(
        {
          maxReservations: config.relayMaxReservations,
          maxCircuits: config.relayMaxCircuits,
          circuitIdleTimeout: config.relayCircuitIdleTimeout,
          circuitBytesPerSecond: config.relayCircuitBytesPerSecond,
          reservationDuration: config.relayReservationDuration,
          hopRequestsPerSecond: config.relayHopRequestsPerSecond,
          tap: deps.tap
        },
        host
      )
      server = relay
      yield* protocols.handle(Wire.HOP_PROTOCOL, relay.handleHop)
    }
    if (transport.acceptCircuit !== undefined && config.relayReservationsKept > 0)
      yield* keeper.pipe(Effect.interruptible, Effect.forkScoped)
  })

  state.ownRelays = () => [...reservations.values()]

  return {
    start,
    dialVia,
    selfReachable: () => !mayBeUnreachable(state.selfAddresses),
    onReservationsChanged: (f) => {
      changed = f
    },
    status: Effect.suspend((): Effect.Effect<RelayStatus> => {
      let relayed = 0
      for (const entry of map.entries.values()) if (entry.record.connection.relay !== undefined) relayed++
      const reservationKeys = [...reservations.keys()] as Array<NodeId.NodeIdEncoded>
      return server === undefined
        ? Effect.succeed({ reservations: reservationKeys, relayedConnections: relayed, server: undefined })
        : Effect.map(server.stats, (stats) => ({
            reservations: reservationKeys,
            relayedConnections: relayed,
            server: stats
          }))
    })
  }
}
