/**
 * The dial-back check (AutoNAT-style), in three roles:
 *
 * - requester: asks a connected peer (the relay) to have our address dialled by a node we
 *   never contacted, naming the nodes we are in touch with (`exclude`) and a fresh nonce;
 *   the address counts as reachable only when a connection from a node, and an IP, we never
 *   sent a packet to (`contacts.ts`: checked when the proof comes) reaches us and proves the
 *   nonce (`dialBackProof`) — the relay's word alone proves nothing. A proof from a node we
 *   contacted proves nothing either way: the next relay is asked;
 * - relay: takes the requester's IP from its own connection (never from the request: it
 *   cannot make anyone dial another IP), picks helpers at random among its connections (not
 *   the requester, none of `exclude`) and asks them in turn to dial; rate-limited per
 *   requester and overall;
 * - helper: dials the requester at that address (its TLS identity checked), proves the
 *   nonce, closes; rate-limited per relay and overall.
 */
import {
  Chunk,
  Clock,
  Deferred,
  Duration,
  Effect,
  Either,
  Exit,
  Option,
  Predicate,
  Random,
  Scope
} from "effect"
import * as Address from "../../../services/Address.js"
import type { Contact } from "../../../services/Contact.js"
import * as NodeId from "../../../services/NodeId.js"
import {
  DIAL_BACK_EXCLUDE_LIMIT,
  type DialBackOrder,
  DialBackRefused,
  type DialBackRequest
} from "../../../services/Reachability.js"
import { RateWindows } from "../../rateWindows.js"
import type { Records } from "../records.js"
import type { Entry, ManagerState } from "../state.js"
import type { Contacts } from "./contacts.js"

/** How long the helper's dial may take (at most the manager's connect timeout). */
export const DIAL_BACK_TIMEOUT = Duration.seconds(5)

/**
 * Per minute: requests a relay passes on per requester and in all, dials a helper makes per
 * relay and in all; helpers a relay tries (one may not serve the method, or be rate-limited),
 * relays a requester tries for one address.
 */
const LIMITS = { perRequester: 4, relayTotal: 30, perRelay: 8, helperTotal: 30, helpers: 3, relays: 3 }
const MINUTE = 60_000
const TOTAL = "*"

export type CheckResult = "reachable" | "unreachable" | "inconclusive"

interface PendingCheck {
  readonly proved: Deferred.Deferred<void>
  /** A node we sent packets to proved the nonce (to the relay asked last): ignored. */
  ignored: boolean
}

export interface DialBack {
  /**
   * Whether a node we never contacted reaches us at our observed IP and `port`: asks up to
   * `LIMITS.relays` connected peers in turn. "inconclusive" when no relay found a helper to try,
   * none answered, or only nodes we contacted reached us. Never fails.
   */
  readonly check: (port: number) => Effect.Effect<CheckResult>
  readonly handleRequest: (caller: Contact, request: DialBackRequest) => Effect.Effect<void, DialBackRefused>
  readonly handleOrder: (caller: Contact, order: DialBackOrder) => Effect.Effect<void, DialBackRefused>
  readonly handleProof: (caller: Contact, nonce: string) => Effect.Effect<void>
}

/** A helper's refusal because it could not reach the requester (as its detail reads through the wire). */
const unreachable = (detail: string) => /(^|: )unreachable at /.test(detail)

const refused = (reason: DialBackRefused["reason"], detail: string) => new DialBackRefused({ reason, detail })

export const make = (
  state: ManagerState,
  deps: {
    readonly dialRecord: () => Records["dialRecord"]
    /** Whom we sent packets to: their dial-back proves nothing. */
    readonly contacts: Contacts
  }
): DialBack => {
  const { map } = state
  const pending = new Map<string, PendingCheck>()
  const relayWindows = new RateWindows(LIMITS.perRequester, MINUTE, 1024)
  const helperWindows = new RateWindows(LIMITS.perRelay, MINUTE, 1024)
  const relayTotal = new RateWindows(LIMITS.relayTotal, MINUTE, 1)
  const helperTotal = new RateWindows(LIMITS.helperTotal, MINUTE, 1)
  const dialTimeout = Duration.min(DIAL_BACK_TIMEOUT, state.connectTimeout)
  // The relay waits for its helper's dial; the requester for the relay (and the proof).
  const requestTimeout = Duration.sum(Duration.times(dialTimeout, 2), Duration.seconds(2))

  const connected = (): Array<Entry> => [...map.entries.values()]

  /** Up to `n` of `xs` in a random order. */
  const someOf = <A>(xs: ReadonlyArray<A>, n: number) =>
    Effect.map(Random.shuffle(xs), (c) => Chunk.toReadonlyArray(c).slice(0, n))

  const check = (port: number): Effect.Effect<CheckResult> =>
    Effect.gen(function* () {
      const nonce = `${yield* Random.nextIntBetween(0, 2 ** 31)}-${yield* Random.nextIntBetween(0, 2 ** 31)}`
      const entries = connected()
      const proved = yield* Deferred.make<void>()
      const pendingCheck: PendingCheck = { proved, ignored: false }
      pending.set(nonce, pendingCheck)
      // The nodes we sent packets to latest.
      const exclude = deps.contacts
        .latest()
        .slice(0, DIAL_BACK_EXCLUDE_LIMIT)
        .map((key) => key as NodeId.NodeIdEncoded)
      // The oldest connections first (the seeds, usually: connected to many, so with helpers to pick).
      const relays = entries
        .filter((e) => e.record.client.dialBackRequest !== undefined)
        .slice(0, LIMITS.relays)
      let unreached = false
      for (const relay of relays) {
        pendingCheck.ignored = false
        const answer = yield* relay.record.client.dialBackRequest!({ port, nonce, exclude }).pipe(
          Effect.timeout(requestTimeout),
          Effect.either
        )
        if (Either.isRight(answer) && !pendingCheck.ignored)
          // The relay's helper dialled: its proof travels on another connection; give it a moment.
          yield* Deferred.await(proved).pipe(Effect.timeout(Duration.seconds(1)), Effect.ignore)
        if (yield* Deferred.isDone(proved)) break
        // A helper tried and could not reach us: that is the answer. Other refusals, and a
        // helper we contacted reaching us (which proves nothing), try another relay.
        if (
          Either.isLeft(answer) &&
          Predicate.isTagged(answer.left, "PeerCallError") &&
          unreachable(answer.left.detail)
        ) {
          unreached = true
          break
        }
      }
      pending.delete(nonce)
      if (yield* Deferred.isDone(proved)) return "reachable"
      return unreached ? "unreachable" : "inconclusive"
    })

  const handleRequest = (caller: Contact, request: DialBackRequest): Effect.Effect<void, DialBackRefused> =>
    Effect.gen(function* () {
      const now = yield* Clock.currentTimeMillis
      if (relayTotal.exceeded(TOTAL, now) || relayWindows.exceeded(NodeId.encode(caller.nodeId), now))
        return yield* refused("rate-limited", "too many dial-back requests: try again later")
      const excluded = new Set<string>(request.exclude)
      // At random: a requester cannot name every node it contacted, and the next request gets other helpers.
      const helpers = yield* someOf(
        connected().filter(
          (e) =>
            !NodeId.equals(e.nodeId, caller.nodeId) &&
            !excluded.has(e.key) &&
            e.record.client.dialBack !== undefined
        ),
        LIMITS.helpers
      )
      // The requester's IP as our connection observed it: the helper dials nothing else.
      const order: DialBackOrder = {
        targetNodeIdEncoded: NodeId.encode(caller.nodeId),
        host: Address.normalizeHost(caller.host),
        port: request.port,
        nonce: request.nonce
      }
      for (const helper of helpers) {
        const answer = yield* helper.record.client.dialBack!(order).pipe(Effect.either)
        if (Either.isRight(answer)) return
        if (answer.left.reason === "remote" && unreachable(answer.left.detail))
          return yield* refused(
            "unreachable",
            `unreachable at ${Address.format(order)}: the helper could not reach you`
          )
      }
      return yield* refused("no-helper", "no node to dial you back (none connected that you are not)")
    })

  const handleOrder = (caller: Contact, order: DialBackOrder): Effect.Effect<void, DialBackRefused> =>
    Effect.gen(function* () {
      const now = yield* Clock.currentTimeMillis
      if (helperTotal.exceeded(TOTAL, now) || helperWindows.exceeded(NodeId.encode(caller.nodeId), now))
        return yield* refused("rate-limited", "too many dial-back orders: try again later")
      const target = NodeId.decode(order.targetNodeIdEncoded)
      if (
        Either.isLeft(target) ||
        Address.ipVersion(order.host) === 0 ||
        NodeId.equals(target.right, state.self)
      )
        return yield* refused("bad-order", "a dial-back order names an IP address and another node")
      // A connection of its own, closed once the proof is sent: never one the map holds.
      const dialled = yield* deps
        .dialRecord()([target.right], { host: order.host, port: order.port }, dialTimeout)
        .pipe(
          Effect.flatMap((record) =>
            (record.client.dialBackProof === undefined
              ? Effect.void
              : record.client.dialBackProof(order.nonce)
            ).pipe(Effect.ensuring(Scope.close(record.scope, Exit.void)))
          ),
          Effect.timeout(Duration.sum(dialTimeout, Duration.seconds(1))),
          Effect.either
        )
      if (Either.isLeft(dialled))
        return yield* refused(
          "unreachable",
          `unreachable at ${Address.format(order)}: ${dialled.left.message}`
        )
    })

  const handleProof = (caller: Contact, nonce: string): Effect.Effect<void> =>
    Effect.suspend(() => {
      const check = pending.get(nonce)
      if (check === undefined) return Effect.void
      const key = NodeId.encode(caller.nodeId)
      if (deps.contacts.contacted(key, caller.host)) {
        check.ignored = true
        return Effect.logDebug(
          `dial-back proof from ${key} at ${caller.host}, a node or IP we sent packets to: ignored`
        )
      }
      return Deferred.succeed(check.proved, undefined)
    })

  return { check, handleRequest, handleOrder, handleProof }
}

/** The dial-back's Option of a port to check, first the port mapping's, then the confirmed addresses'. */
export const portsToCheck = (
  mapped: Option.Option<Address.Address>,
  confirmed: ReadonlyArray<Address.Address>
): Array<number> => {
  const ports = [...Option.toArray(mapped), ...confirmed].map((a) => a.port)
  return [...new Set(ports)]
}
