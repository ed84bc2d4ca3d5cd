/**
 * The dial-back check (AutoNAT-style), in three roles:
 *
 * - requester: asks a connected peer (the relay) to have our address dialled by a node we
 *   never contacted, naming the nodes we are connected to (`exclude`) and a fresh nonce;
 *   the address counts as reachable only when a connection from such a node reaches us and
 *   proves the nonce (`dialBackProof`) — the relay's word alone proves nothing;
 * - relay: takes the requester's IP from its own connection (never from the request: it
 *   cannot make anyone dial another IP), picks a helper among its connections (not the
 *   requester, none of `exclude`) and asks it to dial; rate-limited per requester and overall;
 * - helper: dials the requester at that address (its TLS identity checked), proves the
 *   nonce, closes; rate-limited per relay and overall.
 */
import { Clock, Deferred, Duration, Effect, Either, Exit, Option, Predicate, Random, Scope } from "effect"
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
  /** NodeIds (encoded) we were connected to when we asked: their dial-back proves nothing. */
  readonly contacted: ReadonlySet<string>
}

export interface DialBack {
  /**
   * Whether a node we never contacted reaches us at our observed IP and `port`: asks up to
   * `LIMITS.relays` connected peers in turn. "inconclusive" when no relay found a helper to try
   * (or none answered). Never fails.
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
    /** NodeIds (encoded) we dialled lately, the latest last: their NAT mappings may still let them in. */
    readonly dialled: () => ReadonlyArray<string>
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

  const check = (port: number): Effect.Effect<CheckResult> =>
    Effect.gen(function* () {
      const nonce = `${yield* Random.nextIntBetween(0, 2 ** 31)}-${yield* Random.nextIntBetween(0, 2 ** 31)}`
      const entries = connected()
      const contacted = new Set([...entries.map((e) => e.key), ...deps.dialled()])
      const proved = yield* Deferred.make<void>()
      pending.set(nonce, { proved, contacted })
      // The connected nodes, then the ones dialled latest.
      const exclude = [...new Set([...entries.map((e) => e.key), ...[...deps.dialled()].reverse()])]
        .slice(0, DIAL_BACK_EXCLUDE_LIMIT)
        .map((key) => key as NodeId.NodeIdEncoded)
      const relays = entries
        .filter((e) => e.record.client.dialBackRequest !== undefined)
        .slice(0, LIMITS.relays)
      let tried = false
      for (const relay of relays) {
        const answer = yield* relay.record.client.dialBackRequest!({ port, nonce, exclude }).pipe(
          Effect.timeout(requestTimeout),
          Effect.either
        )
        if (yield* Deferred.isDone(proved)) break
        if (Either.isRight(answer)) {
          // The relay's helper dialled: its proof travels on another connection; give it a moment.
          yield* Deferred.await(proved).pipe(Effect.timeout(Duration.seconds(1)), Effect.ignore)
          tried = true
          break
        }
        // A helper tried and could not reach us: that is the answer (other refusals try another relay).
        if (Predicate.isTagged(answer.left, "PeerCallError") && unreachable(answer.left.detail)) {
          tried = true
          break
        }
      }
      pending.delete(nonce)
      if (yield* Deferred.isDone(proved)) return "reachable"
      return tried ? "unreachable" : "inconclusive"
    })

  const handleRequest = (caller: Contact, request: DialBackRequest): Effect.Effect<void, DialBackRefused> =>
    Effect.gen(function* () {
      const now = yield* Clock.currentTimeMillis
      if (relayTotal.exceeded(TOTAL, now) || relayWindows.exceeded(NodeId.encode(caller.nodeId), now))
        return yield* refused("rate-limited", "too many dial-back requests: try again later")
      const excluded = new Set<string>(request.exclude)
      const helpers = connected()
        .filter(
          (e) =>
            !NodeId.equals(e.nodeId, caller.nodeId) &&
            !excluded.has(e.key) &&
            e.record.client.dialBack !== undefined
        )
        .slice(0, LIMITS.helpers)
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
      if (check.contacted.has(NodeId.encode(caller.nodeId)))
        return Effect.logDebug(
          `dial-back proof from ${NodeId.encode(caller.nodeId)}, a node we contacted: ignored`
        )
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
