/**
 * Kademlia lookups: the iterative search for the nodes closest to an id (alpha queries in
 * flight, the k nearest kept), one node's answer to such a query, and ours to a peer's.
 *
 * Peers' answers are filtered before use (`answerFilter.ts`). A node heard of at several
 * addresses (a peer may lie about where another node is) is one candidate with each address
 * it was told of, at most `ADDRESSES_PER_CANDIDATE`, tried in turn until one proves to be it.
 */
import { Deferred, Duration, Effect, FiberSet, Option } from "effect"
import * as Address from "../../services/Address.js"
import {
  type LookupResult,
  type NodeConnectionError,
  type OperationOptions,
  RemoteQueryError
} from "../../services/ConnectionManager.js"
import type { Contact, WireContact } from "../../services/Contact.js"
import type { NodeAddress, NodeGraphService } from "../../services/NodeGraph.js"
import * as NodeId from "../../services/NodeId.js"
import { filterAnswer, type HeardContact } from "./answerFilter.js"
import * as Deadline from "./deadline.js"
import type { Dialing } from "./dialing.js"
import { addressOf, type GraphUpkeep } from "./graphUpkeep.js"
import * as RelayHints from "./relayHints.js"
import type { ManagerState } from "./state.js"

/** A node a lookup has heard of, and how far it got with it. */
export interface Candidate {
  readonly nodeId: NodeId.NodeId
  readonly key: string
  readonly distance: Uint8Array
  /** The address being tried (or that answered). */
  address: Address.Address
  /** Every address heard for it, distinct, in the order heard: tried in turn. */
  readonly addresses: Array<Address.Address>
  readonly depth: number
  state: "new" | "inflight" | "answered" | "failed"
}

/** Most addresses a lookup tries for one node. */
export const ADDRESSES_PER_CANDIDATE = 4

/**
 * A lookup's options. A lookup that is one step of a longer operation gets what is left of the
 * operation's timeout as `timeout`, and keeps the operation's `queryTimeout` (a third of its
 * whole timeout) for each query.
 */
export interface LookupOptions extends OperationOptions {
  readonly queryTimeout?: Duration.Duration
}

export interface Lookup {
  /**
   * The iterative lookup. With `fillBucket`, it also ends as soon as a node in that bucket of
   * ours has answered (a join fills its empty buckets this way: one live entry in each part of
   * the id space, not the k closest to a random id).
   */
  readonly lookup: (
    target: NodeId.NodeId,
    options?: LookupOptions,
    fillBucket?: number
  ) => Effect.Effect<LookupResult & { readonly shortlist: ReadonlyArray<Candidate> }>
  readonly getClosestGlobalNodes: (
    target: NodeId.NodeId,
    options?: OperationOptions
  ) => Effect.Effect<LookupResult>
  readonly findNode: (
    nodeId: NodeId.NodeId,
    options?: OperationOptions
  ) => Effect.Effect<Option.Option<NodeAddress>>
  readonly getRemoteNodeClosestNodes: (
    nodeId: NodeId.NodeId,
    target: NodeId.NodeId,
    options?: OperationOptions
  ) => Effect.Effect<ReadonlyArray<Contact>, NodeConnectionError | RemoteQueryError>
  /** What we answer a peer's query: up to k contacts closest to `target`, the caller left out. */
  readonly answerClosest: (
    caller: Contact,
    target: NodeId.NodeId
  ) => Effect.Effect<ReadonlyArray<WireContact>>
  /** One query of a lookup (or a join's bucket fill) gets a third of the operation's timeout. */
  readonly queryTimeoutOf: (options?: OperationOptions) => Duration.Duration
}

export const make = (
  state: ManagerState,
  deps: {
    readonly graph: NodeGraphService
    readonly dialing: Dialing
    readonly addToGraph: GraphUpkeep["addToGraph"]
    /** The confirmed addresses a node announced for itself (`reachability/`), carried in our answers. */
    readonly announced?: (nodeId: NodeId.NodeId) => ReadonlyArray<Address.Address> | undefined
  }
): Lookup => {
  const { k, alpha, seeds, timeoutOf } = state
  const { graph, addToGraph } = deps
  const { withConnectionWithin, getConnectionWithAddress } = deps.dialing

  const answerClosest = (caller: Contact, target: NodeId.NodeId) =>
    graph.getClosestNodes(target, k + 1).pipe(
      Effect.map((contacts) =>
        contacts
          .filter((c) => !NodeId.equals(c.nodeId, caller.nodeId) && c.addresses.length > 0)
          .slice(0, k)
          .map((c): WireContact => {
            const announced = deps.announced?.(c.nodeId)
            const hint = state.relayHints.of(c.nodeId)
            const contact: WireContact = {
              nodeIdEncoded: NodeId.encode(c.nodeId),
              host: c.addresses[0]!.host,
              port: c.addresses[0]!.port,
              ...(announced === undefined ? {} : { addresses: announced.slice(0, 5) }),
              ...(hint === undefined ? {} : { relays: RelayHints.toWire(hint.relays) })
            }
            return contact
          })
      ),
      // k + 1 is a valid limit, so this cannot fail; if it did, the peer would learn nothing.
      Effect.orElseSucceed(() => [])
    )

  /** The contacts of a node's answer that a lookup may use (`answerFilter`): at most k. */
  const askClosest = (
    nodeId: NodeId.NodeId,
    target: NodeId.NodeId,
    options?: OperationOptions
  ): Effect.Effect<ReadonlyArray<HeardContact>, NodeConnectionError | RemoteQueryError> =>
    // One deadline: getting the connection and the answer share the timeout.
    withConnectionWithin(
      nodeId,
      (h, timeout) =>
        h.client.closestNodesUpTo(target, k, timeout).pipe(
          Effect.mapError(
            (e) =>
              new RemoteQueryError({
                nodeId: NodeId.encode(nodeId),
                detail: e.reason === "timeout" ? "no answer within the timeout" : e.message,
                cause: e
              })
          )
        ),
      timeoutOf(options)
    ).pipe(
      Effect.map((answer) => {
        const heard = filterAnswer(answer, {
          selfKey: state.selfKey,
          answererKey: NodeId.encode(nodeId),
          targetKey: NodeId.encode(target),
          limit: k,
          ipDiversity: graph.ipDiversity
        })
        // Relays heard of are kept for the dials that may need them (what a node told us itself wins).
        for (const c of heard) state.relayHints.heard(c.nodeId, c.relays, c.relayOnly)
        return heard
      })
    )

  const getRemoteNodeClosestNodes = (
    nodeId: NodeId.NodeId,
    target: NodeId.NodeId,
    options?: OperationOptions
  ): Effect.Effect<ReadonlyArray<Contact>, NodeConnectionError | RemoteQueryError> =>
    Effect.map(askClosest(nodeId, target, options), (contacts) =>
      contacts.map((c): Contact => ({ nodeId: c.nodeId, host: c.address.host, port: c.address.port }))
    )

  const queryTimeoutOf = (options?: OperationOptions) => {
    const timeout = timeoutOf(options)
    return Duration.max(Duration.millis(1), Duration.divide(timeout, 3).pipe(Option.getOrElse(() => timeout)))
  }

  const getClosestGlobalNodes = (target: NodeId.NodeId, options?: OperationOptions) =>
    Effect.map(lookup(target, options), ({ address, stats }): LookupResult => ({ address, stats }))

  const lookup = (
    target: NodeId.NodeId,
    options?: LookupOptions,
    fillBucket?: number
  ): Effect.Effect<LookupResult & { readonly shortlist: ReadonlyArray<Candidate> }> =>
    Effect.gen(function* () {
      const timeout = timeoutOf(options)
      const queryTimeout = options?.queryTimeout ?? queryTimeoutOf(options)
      const targetKey = NodeId.encode(target) as string
      const candidates = new Map<string, Candidate>()
      const shortlist: Candidate[] = []
      /** A node heard of at `address`: a new candidate, or one more address of a known one. */
      const hear = (key: string, nodeId: NodeId.NodeId, address: Address.Address, depth: number) => {
        if (key === state.selfKey) return
        const known = candidates.get(key)
        if (known === undefined) return add(key, nodeId, address, depth)
        if (
          known.state === "answered" ||
          known.addresses.length >= ADDRESSES_PER_CANDIDATE ||
          known.addresses.some((a) => Address.equals(a, address))
        )
          return
        known.addresses.push(address)
        if (known.state !== "failed") return
        known.address = address
        known.state = "new"
      }
      const insert = (nodeId: NodeId.NodeId, address: Address.Address, depth: number) =>
        hear(NodeId.encode(nodeId), nodeId, address, depth)
      /** A query of `c` failed: its next address is tried, if it has one left. */
      const failed = (c: Candidate) =>
        Effect.sync(() => {
          const next = c.addresses[c.addresses.indexOf(c.address) + 1]
          if (next === undefined) c.state = "failed"
          else {
            c.address = next
            c.state = "new"
          }
        })
      const add = (key: string, nodeId: NodeId.NodeId, address: Address.Address, depth: number) => {
        const c: Candidate = {
          nodeId,
          key,
          distance: NodeId.distanceBytes(nodeId, target),
          address,
          addresses: [address],
          depth,
          state: "new"
        }
        candidates.set(key, c)
        let i = shortlist.length
        while (i > 0 && NodeId.compare(shortlist[i - 1]!.distance, c.distance) > 0) i--
        shortlist.splice(i, 0, c)
      }
      // k is a valid limit, so this cannot fail; if it did, the lookup would start from the seeds.
      const known = yield* graph.getClosestNodes(target, k).pipe(Effect.orElseSucceed(() => []))
      for (const c of known) if (c.addresses[0]) insert(c.nodeId, c.addresses[0], 0)
      if (shortlist.length === 0) for (const s of seeds) insert(s.nodeId, { host: s.host, port: s.port }, 0)

      let found: Option.Option<NodeAddress> = Option.none()
      let inflight = 0
      let queries = 0
      let rounds = 0
      let finished = false
      const done = yield* Deferred.make<void>()
      const fibers = yield* FiberSet.make<void, never>()

      // The next candidate: the nearest not yet asked among the k nearest that have not failed.
      const pickNext = (): Candidate | undefined => {
        let live = 0
        for (const c of shortlist) {
          if (c.state === "failed") continue
          if (live++ >= k) return undefined
          if (c.state === "new") return c
        }
        return undefined
      }

      // A candidate that cannot be reached or answers badly at its last address is marked
      // failed: the lookup goes on with the others (its result is what it found, not why some
      // nodes did not answer).
      const query = (c: Candidate): Effect.Effect<void> => {
        rounds = Math.max(rounds, c.depth + 1)
        if (c.key === targetKey)
          return getConnectionWithAddress(c.nodeId, c.address, { timeout: queryTimeout }).pipe(
            Effect.matchEffect({
              onFailure: () => failed(c),
              onSuccess: () =>
                Effect.suspend(() => {
                  c.state = "answered"
                  found = Option.some(addressOf(c.address.host, c.address.port))
                  finished = true
                  return Deferred.succeed(done, undefined)
                })
            })
          )
        return getConnectionWithAddress(c.nodeId, c.address, { timeout: queryTimeout }).pipe(
          Effect.zipRight(askClosest(c.nodeId, target, { timeout: queryTimeout })),
          Effect.matchEffect({
            onFailure: () => failed(c),
            onSuccess: (contacts) =>
              Effect.suspend(() => {
                c.state = "answered"
                // Each node at the address the answer gives, then at those it confirmed for itself.
                for (const r of contacts) {
                  hear(r.key, r.nodeId, r.address, c.depth + 1)
                  for (const a of r.confirmed) hear(r.key, r.nodeId, a, c.depth + 1)
                }
                const added = addToGraph(c.nodeId, c.address.host, c.address.port)
                if (fillBucket === undefined || NodeId.bucketIndex(state.self, c.nodeId) !== fillBucket)
                  return added
                finished = true
                return Effect.zipRight(added, Deferred.succeed(done, undefined))
              })
          })
        )
      }

      const launch: Effect.Effect<void> = Effect.suspend(() => {
        if (finished) return Effect.void
        const batch: Candidate[] = []
        while (inflight < alpha) {
          const c = pickNext()
          if (!c) break
          c.state = "inflight"
          inflight++
          queries++
          batch.push(c)
        }
        if (batch.length === 0 && inflight === 0) {
          finished = true
          return Deferred.succeed(done, undefined)
        }
        return Effect.forEach(
          batch,
          (c) =>
            FiberSet.run(
              fibers,
              // `launch` starts a query only while fewer than alpha are in flight.
              Effect.interruptible(query(c)).pipe(
                Effect.ensuring(
                  Effect.suspend(() => {
                    inflight--
                    return launch
                  })
                )
              )
            ),
          { discard: true }
        )
      })

      yield* launch
      // The timeout ends the search, not the call: the result is what was found by then.
      yield* Deferred.await(done).pipe(Effect.timeout(timeout), Effect.ignore)
      finished = true
      if (Option.isNone(found)) {
        const bucket = NodeId.bucketIndex(state.self, target)
        // Bookkeeping only: a mark that could not be stored makes the bucket look stale, and
        // the next refresh looks it up again.
        if (bucket >= 0) yield* graph.markBucketRefreshed(bucket).pipe(Effect.ignore)
      }
      return {
        address: found,
        stats: { rounds, queries, contacted: shortlist.filter((c) => c.state === "answered").length },
        shortlist
      }
    }).pipe(Effect.scoped)

  // One deadline: the lookup gets what reading the table left of the timeout (its queries a
  // third of the whole, as any lookup of this timeout).
  const findNode = (
    nodeId: NodeId.NodeId,
    options?: OperationOptions
  ): Effect.Effect<Option.Option<NodeAddress>> =>
    Deadline.andThen(
      timeoutOf(options),
      graph.getNode(nodeId),
      (contact, left) =>
        Option.isSome(contact) && contact.value.addresses[0]
          ? Effect.succeed(Option.some(contact.value.addresses[0]))
          : Effect.map(
              lookup(nodeId, { timeout: left, queryTimeout: queryTimeoutOf(options) }),
              (r) => r.address
            ),
      () => Option.none<NodeAddress>()
    ).pipe(Effect.merge)

  return { lookup, getClosestGlobalNodes, findNode, getRemoteNodeClosestNodes, answerClosest, queryTimeoutOf }
}
