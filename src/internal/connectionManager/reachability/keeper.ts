/**
 * The node's reachability, kept: the identify exchange on every connection we dial (and its
 * answer to the peers that dial us), the observed addresses it yields (`observed.ts`), the
 * confirmed addresses peers announce for themselves, and the NAT class — worked out when
 * the observations change (once they settle), and again periodically with jitter; a dial-back
 * (`dialBack.ts`) tells `public`. A change of class or confirmed addresses is published as a
 * `ReachabilityChanged` event, and a change of the confirmed addresses is told to every peer
 * we hold a connection to (the identify exchange again, once per change), so that the
 * closest-nodes answers they give about us carry the new addresses. A dial-back that found
 * no helper to try (or only helpers we had contacted) is tried again sooner, backing off.
 * A new port-mapped address starts a classification too (its dial-back decides `public`).
 */
import { Clock, Duration, Effect, Fiber, FiberSet, Option, Queue, Random, type Scope, Stream } from "effect"
import * as Address from "../../../services/Address.js"
import type { Contact } from "../../../services/Contact.js"
import * as NodeId from "../../../services/NodeId.js"
import type { PeerClient } from "../../../services/PeerRpc.js"
import type { PortMapping } from "../../../services/PortMapper.js"
import type { QuicConnection } from "../../../services/QuicTransport.js"
import {
  IdentifyAnswerInvalid,
  type IdentifyMessage,
  initial,
  type Reachability,
  type ReachabilityHandlers
} from "../../../services/Reachability.js"
import * as RelayHints from "../relayHints.js"
import type { SelfAddresses } from "../selfAddresses.js"
import type { ManagerState } from "../state.js"
import type { Contacts } from "./contacts.js"
import * as DialBack from "./dialBack.js"
import { ObservedAddresses } from "./observed.js"

/** Peers whose observations (and announced addresses) we keep. */
const PEERS_KEPT = 256
/** An observation older than this no longer counts. */
const STALE_AFTER = Duration.minutes(30)
/** After the observations change, how long to let them settle before classifying. */
const SETTLE = Duration.seconds(1)
/** The periodic check, ±20% jitter. */
const RECHECK = Duration.minutes(5)
/**
 * After a dial-back that proved nothing (no helper could try, too few nodes yet, or only
 * helpers we had contacted reached us), the next check, doubling after each such check up to
 * `RECHECK`; ±20% jitter.
 */
const RETRY = Duration.seconds(15)
/** Peers told our new confirmed addresses at a time. */
const ANNOUNCE_CONCURRENCY = 8

export interface Keeper {
  readonly selfAddresses: SelfAddresses
  readonly handlers: ReachabilityHandlers
  /** Runs the identify exchange on a connection we dialled, in a fiber of the connection's scope. */
  readonly identifyDialled: (
    connection: QuicConnection,
    client: PeerClient
  ) => Effect.Effect<void, never, Scope.Scope>
  readonly current: Effect.Effect<Reachability>
  /** The confirmed addresses `nodeId` announced for itself (on the IP we see it at), if any. */
  readonly announced: (nodeId: NodeId.NodeId) => ReadonlyArray<Address.Address> | undefined
  /** Keeps the class current from now on, in a fiber of the scope. */
  readonly start: Effect.Effect<void, never, Scope.Scope>
  /** Tells the connected peers (not through relays) what we announce again: our addresses and relays changed. */
  readonly announce: Effect.Effect<void>
}

const wire = (a: Address.Address) => ({ host: a.host, port: a.port })

/**
 * The addresses of `message` as we may use them: fails when it cannot be true (an observed
 * address that is no IP address and port, a confirmed one that is no IP address); keeps only
 * the confirmed addresses on `peerIp` (a peer vouches for its own IP, no other).
 */
export const checkIdentify = (
  peer: string,
  peerIp: string,
  message: IdentifyMessage
): Effect.Effect<{ observed: Address.Address; confirmed: Array<Address.Address> }, IdentifyAnswerInvalid> => {
  const bad = [message.observed, ...message.confirmed].find(
    (a) => Address.ipVersion(a.host) === 0 || !Address.isPort(a.port)
  )
  if (bad !== undefined)
    return Effect.fail(
      new IdentifyAnswerInvalid({ peer, detail: `not an IP address and port: ${Address.format(bad)}` })
    )
  const ip = Address.normalizeHost(peerIp)
  return Effect.succeed({
    observed: wire(message.observed),
    confirmed: message.confirmed.filter((a) => Address.normalizeHost(a.host) === ip).map(wire)
  })
}

export const make = (
  state: ManagerState,
  deps: {
    readonly contacts: Contacts
    readonly dialBack: DialBack.DialBack
    /** The gateway's port mapping, when a PortMapper runs: a candidate external address. */
    readonly portMapping: Effect.Effect<Option.Option<PortMapping>>
    /** The mapping now, then each change of it (when a PortMapper runs): a new mapped address starts a classification. */
    readonly portMappingChanges?: Stream.Stream<Option.Option<PortMapping>>
  }
): Keeper => {
  const staleAfter = Duration.toMillis(STALE_AFTER)
  const observed = new ObservedAddresses(PEERS_KEPT, staleAfter)
  const announcedBy = new Map<string, ReadonlyArray<Address.Address>>()
  const changed = Effect.runSync(Queue.sliding<void>(1))
  let current: Reachability = initial
  /** Our address a dial-back proved reachable (the port mapping's, say), while the class is public. */
  let proved: Address.Address | undefined
  /** What the observations showed at the last classification (`pictureOf`): a change starts another. */
  let seen = ""
  /** The last dial-backs proved nothing: check again after this, not `RECHECK`. */
  let retryAfter: Duration.Duration | undefined
  /** Our confirmed addresses told to the connected peers, while it runs. */
  let announcing: Fiber.RuntimeFiber<void> | undefined
  /** The Clock's time when we last looked (what `observedBy`, which cannot read it, goes by). */
  let clockNow = 0

  const confirmedNow = (now: number): Array<Address.Address> => {
    const confirmed = observed.confirmed(now)
    return proved === undefined || confirmed.some((a) => Address.equals(a, proved!))
      ? confirmed
      : [...confirmed, proved]
  }

  /** The class and the confirmed addresses the observations show at `now`, as one string. */
  const pictureOf = (now: number) =>
    `${observed.classify(now)} ${observed.confirmed(now).map(Address.format).join(" ")}`

  const selfAddresses: SelfAddresses = {
    observedBy: (peer) => observed.observedBy(NodeId.encode(peer), clockNow),
    confirmed: () => current.addresses,
    nat: () => current.nat
  }

  /** What `peer` on `peerIp` told us: an observation of us and its own confirmed addresses. */
  const learn = (peer: NodeId.NodeId, peerIp: string, message: IdentifyMessage) =>
    Effect.gen(function* () {
      const key = NodeId.encode(peer)
      const checked = yield* checkIdentify(key, peerIp, message)
      const now = yield* Clock.currentTimeMillis
      clockNow = now
      // A new observation starts a classification only when the picture it shows is new.
      if (
        observed.record(key, Address.normalizeHost(peerIp), checked.observed, now) &&
        pictureOf(now) !== seen
      )
        yield* Queue.offer(changed, undefined)
      // The relays it is reachable through: only through them when it confirmed no address.
      const relays = RelayHints.fromWire(message.relays, key)
      state.relayHints.learn(peer, relays, checked.confirmed.length === 0)
      announcedBy.delete(key)
      if (checked.confirmed.length > 0) {
        announcedBy.set(key, checked.confirmed)
        if (announcedBy.size > PEERS_KEPT) announcedBy.delete(announcedBy.keys().next().value as string)
      }
    })

  const ours = (): IdentifyMessage["confirmed"] => current.addresses.slice(0, 5).map(wire)
  /** Our relays, announced beside our confirmed addresses (none: the field is left out). */
  const ourRelays = (): Pick<IdentifyMessage, "relays"> => {
    const relays = state.ownRelays()
    return relays.length === 0 ? {} : { relays: RelayHints.toWire(relays) }
  }

  const handlers: ReachabilityHandlers = {
    identify: (caller: Contact, message) =>
      learn(caller.nodeId, caller.host, message).pipe(
        Effect.catchTag("IdentifyAnswerInvalid", (e) => Effect.logDebug(e.message)),
        Effect.as({ observed: { host: caller.host, port: caller.port }, confirmed: ours(), ...ourRelays() })
      ),
    dialBackRequest: deps.dialBack.handleRequest,
    dialBack: deps.dialBack.handleOrder,
    dialBackProof: deps.dialBack.handleProof
  }

  /** The identify exchange on `connection`: what we observe of the peer and our confirmed addresses, for its answer. */
  const exchange = (connection: QuicConnection, client: PeerClient): Effect.Effect<void> => {
    const peer = connection.remoteNodeId
    if (client.identify === undefined) return Effect.void
    return client
      .identify({
        observed: { host: connection.remoteHost, port: connection.remotePort },
        confirmed: ours(),
        ...ourRelays()
      })
      .pipe(
        Effect.flatMap((answer) => learn(peer, connection.remoteHost, answer)),
        Effect.catchAll((e) => Effect.logDebug(`identify with ${NodeId.encode(peer)}: ${e.message}`))
      )
  }

  const identifyDialled = (connection: QuicConnection, client: PeerClient) =>
    Effect.suspend(() => {
      // Through a relay the peer would only repeat the relay's observation of us (and its IP is
      // not the peer's): no exchange, nothing counted.
      if (connection.relay !== undefined) return Effect.void
      deps.contacts.sent([connection.remoteNodeId], connection.remoteHost)
      return Effect.asVoid(Effect.forkScoped(exchange(connection, client)))
    })

  /**
   * Tells every peer we hold a connection to our confirmed addresses (`ANNOUNCE_CONCURRENCY`
   * at a time, each call within the RPC's timeout), in the background; a round still running
   * when the addresses change again is replaced.
   */
  const announce = Effect.suspend(() => {
    const previous = announcing
    // Not through relays: there the peer would only repeat the relay's observation (see identifyDialled).
    const peers = [...state.map.entries.values()].filter((e) => e.record.connection.relay === undefined)
    return Effect.zipRight(
      // Not waited for: a round stuck on a silent peer must not hold up the next (or a stop).
      previous === undefined ? Effect.void : Fiber.interruptFork(previous),
      Effect.flatMap(
        FiberSet.run(
          state.background,
          Effect.forEach(peers, (e) => exchange(e.record.connection, e.record.client), {
            concurrency: ANNOUNCE_CONCURRENCY,
            discard: true
          })
        ),
        (fiber) =>
          Effect.sync(() => {
            announcing = fiber
          })
      )
    )
  })

  /**
   * Makes `next` current; publishes it when the class or the addresses changed, and tells the
   * connected peers when the addresses did.
   */
  const update = (next: Reachability) =>
    Effect.suspend(() => {
      const sameAddresses =
        next.addresses.length === current.addresses.length &&
        next.addresses.every((a, i) => Address.equals(a, current.addresses[i]!))
      const same = sameAddresses && next.nat === current.nat
      current = next
      if (same) return Effect.void
      const where = next.addresses.map(Address.format).join(", ") || "no confirmed address"
      return Effect.logDebug(`reachability: ${next.nat} (${where})`).pipe(
        Effect.zipRight(state.publish({ _tag: "ReachabilityChanged", reachability: next })),
        Effect.zipRight(sameAddresses ? Effect.void : announce)
      )
    })

  /**
   * Works the class out now: from the observations at once (a public node stays public while
   * its address is checked again), then by a dial-back of the port mapping's and the
   * confirmed addresses' ports.
   */
  const classify = Effect.gen(function* () {
    const now = yield* Clock.currentTimeMillis
    clockNow = now
    observed.prune(now)
    seen = pictureOf(now)
    const mapping = Option.map(
      yield* deps.portMapping,
      (m): Address.Address => ({ host: m.host, port: m.port })
    )
    const confirmed = observed.confirmed(now)
    const ports = DialBack.portsToCheck(mapping, confirmed)
    const base = observed.classify(now)
    const stillPublic = current.nat === "public" && ports.length > 0
    const picture = (nat: Reachability["nat"], at: number): Reachability => ({
      nat,
      addresses: confirmedNow(now),
      observers: observed.observers(now),
      checkedAt: at
    })
    if (!stillPublic) proved = undefined
    yield* update(picture(stillPublic ? "public" : base, now))
    let inconclusive = false
    for (const port of ports) {
      const result = yield* deps.dialBack.check(port)
      if (result === "reachable") {
        retryAfter = undefined
        const mapped = Option.getOrUndefined(mapping)
        proved = mapped !== undefined && mapped.port === port ? mapped : undefined
        return yield* update(picture("public", yield* Clock.currentTimeMillis))
      }
      if (result === "inconclusive") inconclusive = true
    }
    retryAfter = !inconclusive
      ? undefined
      : retryAfter === undefined
        ? RETRY
        : Duration.min(Duration.times(retryAfter, 2), RECHECK)
    // Nothing proved either way: a public node stays public until a helper finds it unreachable.
    if (stillPublic && inconclusive) return
    proved = undefined
    yield* update(picture(base, yield* Clock.currentTimeMillis))
  })

  const jittered = Effect.flatMap(Random.nextRange(0.8, 1.2), (f) =>
    Effect.sleep(Duration.times(retryAfter ?? RECHECK, f))
  )

  /** Offers to `changed` when the mapped address (not its lifetime) changes after the first. */
  const mappedAddressChanges = (changes: Stream.Stream<Option.Option<PortMapping>>) =>
    changes.pipe(
      Stream.map(Option.match({ onNone: () => "", onSome: (m) => `${m.host}:${m.port}` })),
      Stream.changes,
      Stream.drop(1),
      Stream.runForEach(() => Queue.offer(changed, undefined))
    )

  const start = Effect.asVoid(
    Effect.zipRight(
      deps.portMappingChanges === undefined
        ? Effect.void
        : Effect.forkScoped(mappedAddressChanges(deps.portMappingChanges)),
      Effect.forkScoped(
        Effect.forever(
          classify.pipe(
            Effect.zipRight(
              Effect.raceFirst(
                jittered,
                changed.take.pipe(Effect.zipRight(Effect.sleep(SETTLE)), Effect.zipRight(Queue.poll(changed)))
              )
            )
          )
        ).pipe(Effect.interruptible)
      )
    )
  )

  return {
    selfAddresses,
    handlers,
    identifyDialled,
    // The observers counted now (a new observer alone need not start a classification).
    current: Effect.map(Clock.currentTimeMillis, (now) => ({
      ...current,
      observers: observed.observers(now)
    })),
    announce,
    announced: (nodeId) => announcedBy.get(NodeId.encode(nodeId)),
    start
  }
}
