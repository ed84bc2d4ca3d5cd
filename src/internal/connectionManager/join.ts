/**
 * Joining the network and keeping the table fresh: connect to the seeds, look up our own id,
 * fill the far buckets the lookup left empty; later, look up a random id in every bucket not
 * refreshed within `bucketRefreshInterval`. Each is one operation with one deadline: its
 * steps (the seeds, the lookups, the fills) share its timeout, and what the deadline leaves
 * undone waits for the next refresh.
 */
import { Duration, Effect, Option, Random } from "effect"
import type { MultiConnectionError, OperationOptions } from "../../services/ConnectionManager.js"
import type { NodeGraphService } from "../../services/NodeGraph.js"
import * as NodeId from "../../services/NodeId.js"
import * as Deadline from "./deadline.js"
import type { Dialing } from "./dialing.js"
import type { Candidate, Lookup } from "./lookup.js"
import type { MultiConnection } from "./multiConnection.js"
import type { ManagerState } from "./state.js"

export interface Join {
  /** Connect to the seeds and look up our own NodeId to fill the table, within one timeout. */
  readonly syncNodeGraph: (options?: OperationOptions) => Effect.Effect<void, MultiConnectionError>
  /** Look up a random id in every stale bucket within one timeout; how many it looked up. */
  readonly refreshBuckets: (options?: OperationOptions) => Effect.Effect<number>
}

export const make = (
  state: ManagerState,
  deps: {
    readonly graph: NodeGraphService
    readonly getMultiConnection: MultiConnection["getMultiConnection"]
    readonly getConnectionWithAddress: Dialing["getConnectionWithAddress"]
    readonly lookup: Lookup
  }
): Join => {
  const { config, k, alpha, seeds } = state
  const { graph, getMultiConnection, getConnectionWithAddress } = deps
  const { lookup, queryTimeoutOf } = deps.lookup

  const syncNodeGraph = (options?: OperationOptions) =>
    Effect.gen(function* () {
      const timeout = state.timeoutOf(options)
      const deadline = yield* Deadline.after(timeout)
      if (seeds.length > 0) {
        yield* getMultiConnection(
          seeds.map((s) => s.nodeId),
          seeds.map((s) => ({ host: s.host, port: s.port })),
          { timeout }
        )
      }
      const left = yield* Deadline.remaining(deadline)
      if (Duration.isZero(left)) return
      const queryTimeout = queryTimeoutOf(options)
      const own = yield* lookup(state.self, { timeout: left, queryTimeout })
      // Kademlia's join: the lookup of our own id fills the buckets near us; the buckets
      // farther than our nearest neighbour that it left empty are filled, so that every part
      // of the id space has an entry in our table (see `fillBucket`).
      // A bucket nearer than the farthest of the k closest nodes the lookup found is empty
      // because no such node exists (it would be among the k closest): it is not looked up.
      const filled = new Set((yield* graph.getBuckets).map(([index]) => index))
      if (filled.size > 0) {
        // k is a valid limit, so this cannot fail; if it did, every far bucket would be filled.
        const closest = yield* graph.getClosestNodes(state.self, k).pipe(Effect.orElseSucceed(() => []))
        const last = NodeId.NODE_ID_BYTES * 8 - 1
        const covered =
          closest.length < k
            ? last
            : Math.max(...closest.map((c) => NodeId.bucketIndex(state.self, c.nodeId)))
        const empty: Array<number> = []
        for (let i = Math.max(Math.min(...filled), covered) + 1; i <= last; i++)
          if (!filled.has(i)) empty.push(i)
        // Nodes of those buckets that the lookup heard of but did not ask.
        const heard = new Map<number, Candidate[]>()
        for (const c of own.shortlist) {
          if (c.state !== "new") continue
          const index = NodeId.bucketIndex(state.self, c.nodeId)
          if (!empty.includes(index)) continue
          const list = heard.get(index)
          if (list) list.push(c)
          else heard.set(index, [c])
        }
        yield* Effect.forEach(
          empty,
          (index) => fillBucket(index, heard.get(index) ?? [], queryTimeout, deadline),
          {
            concurrency: 1,
            discard: true
          }
        )
      }
    })

  /**
   * Puts one live node of the empty bucket `index` in our table. A connection to a node of it
   * that a lookup heard of does (the dial proves it and adds it): one handshake, where a
   * lookup of a random id in the bucket asks several nodes first. Only if none of up to alpha
   * such nodes answers, or none was heard of, is the bucket refreshed by that lookup.
   */
  const fillBucket = (
    index: number,
    heard: ReadonlyArray<Candidate>,
    queryTimeout: Duration.Duration,
    deadline: number
  ) =>
    Effect.gen(function* () {
      for (const c of heard.slice(0, alpha)) {
        const left = yield* Deadline.remaining(deadline)
        if (Duration.isZero(left)) return
        // Whether it answers is all that matters here: the next one is tried if not.
        const timeout = Duration.min(queryTimeout, left)
        const live = yield* getConnectionWithAddress(c.nodeId, c.address, { timeout }).pipe(
          Effect.as(true),
          Effect.orElseSucceed(() => false)
        )
        // Bookkeeping only: an unstored mark makes the bucket look stale to the next refresh.
        if (live) return yield* graph.markBucketRefreshed(index).pipe(Effect.ignore)
      }
      yield* refreshBucket(index, deadline, queryTimeout, true)
    })

  const randomIdInBucket = (index: number) =>
    Effect.gen(function* () {
      const noise = new Uint8Array(NodeId.NODE_ID_BYTES)
      for (let i = NodeId.NODE_ID_BYTES - 1 - (index >> 3); i < NodeId.NODE_ID_BYTES; i++)
        noise[i] = yield* Random.nextIntBetween(0, 256)
      return NodeId.inBucket(state.self, index, noise)
    })

  /**
   * A lookup of a random id in bucket `index` with what is left until `deadline` (each query
   * with `queryTimeout`, the operation's), then the bucket counts as refreshed; false (nothing
   * done) once the deadline has passed. `fill`: stop once one node of the bucket has answered
   * (the join's refresh of its empty buckets).
   */
  const refreshBucket = (index: number, deadline: number, queryTimeout: Duration.Duration, fill = false) =>
    Effect.flatMap(Deadline.remaining(deadline), (left) =>
      Duration.isZero(left)
        ? Effect.succeed(false)
        : randomIdInBucket(index).pipe(
            Effect.flatMap((id) => lookup(id, { timeout: left, queryTimeout }, fill ? index : undefined)),
            // Bookkeeping only: an unstored mark makes the bucket look stale to the next refresh.
            Effect.zipRight(graph.markBucketRefreshed(index).pipe(Effect.ignore)),
            Effect.as(true)
          )
    )

  const refreshBuckets = (options?: OperationOptions) =>
    Effect.gen(function* () {
      const now = yield* Effect.clockWith((c) => c.currentTimeMillis)
      const deadline = now + Duration.toMillis(state.timeoutOf(options))
      const queryTimeout = queryTimeoutOf(options)
      const buckets = yield* graph.getBuckets
      const stale: number[] = []
      for (const [index] of buckets) {
        // The indexes come from the table itself, so this cannot fail; if it did, the bucket
        // would count as stale and be looked up.
        const at = yield* graph
          .getBucketRefreshedAt(index)
          .pipe(Effect.orElseSucceed(() => Option.none<number>()))
        if (Option.isNone(at) || now - at.value >= Duration.toMillis(config.bucketRefreshInterval))
          stale.push(index)
      }
      let refreshed = 0
      for (const index of stale) if (yield* refreshBucket(index, deadline, queryTimeout)) refreshed++
      return refreshed
    })

  return { syncNodeGraph, refreshBuckets }
}
