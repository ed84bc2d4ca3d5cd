/**
 * KademliaTable: the in-memory routing table behind both NodeGraph layers (memory and lmdb).
 *
 * 256 buckets, bucket `i` holding the nodes whose XOR distance to our own NodeId has its
 * highest set bit at position `i`. Each bucket is a `Map` in least-recently-seen-first order
 * (a refresh deletes and re-inserts, moving the node to the end).
 *
 * With an `IpDiversity` limit, a bucket takes at most `maxPerGroup` nodes of one IP group
 * (`ipDiversity.ts`), counted by each node's most recent address.
 *
 * The table is plain synchronous code; `toService` wraps it as a `NodeGraphService`, optionally
 * with a `TablePersistence` whose writes are started in the same synchronous step as the
 * in-memory change (so the store sees writes in table order) and awaited before the operation
 * succeeds (unless a `setNode` is told not to wait: `awaitCommit: false`).
 */
import { Effect, Either, Option, Predicate } from "effect"
import { constVoid } from "effect/Function"
import * as Address from "../services/Address.js"
import {
  type AddressScope,
  DEFAULT_BUCKET_LIMIT,
  type IpDiversity,
  MAX_ADDRESSES,
  type NodeAddress,
  type NodeContact,
  NodeGraphInputError,
  type NodeGraphService,
  NodeGraphStorageError,
  type SetNodeResult
} from "../services/NodeGraph.js"
import { bucketIndex, canonical, encode, NODE_ID_BYTES, type NodeId } from "../services/NodeId.js"
import { BucketGroups, groupOf } from "./ipDiversity.js"

export const BUCKET_COUNT = NODE_ID_BYTES * 8

/** A stored node: its contact plus `seq`, a table-wide counter that orders equal `lastSeen`s. */
export interface TableEntry extends NodeContact {
  readonly seq: number
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

export const validateNodeId = (nodeId: unknown): Either.Either<NodeId, NodeGraphInputError> =>
  nodeId instanceof Uint8Array && nodeId.length === NODE_ID_BYTES
    ? Either.right(nodeId as NodeId)
    : Either.left(
        new NodeGraphInputError({
          field: "nodeId",
          detail:
            nodeId instanceof Uint8Array
              ? `expected ${NODE_ID_BYTES} bytes, got ${nodeId.length}`
              : "expected a Uint8Array"
        })
      )

const SCOPES: ReadonlyArray<AddressScope> = ["local", "global"]

export const validateAddress = (address: NodeAddress): Either.Either<NodeAddress, NodeGraphInputError> => {
  const { host, port, scope } = address
  if (typeof host !== "string" || !Address.isHost(host))
    return Either.left(
      new NodeGraphInputError({
        field: "host",
        detail: `${JSON.stringify(String(host)).slice(0, 80)} is neither an IP address nor a host name`
      })
    )
  if (typeof port !== "number" || !Number.isInteger(port) || port < 0 || port > 65535)
    return Either.left(
      new NodeGraphInputError({ field: "port", detail: `${String(port)} is not an integer in 0–65535` })
    )
  // The scope is typed; an unknown one (from untyped callers) falls back to "global".
  return Either.right({ host, port, scope: SCOPES.includes(scope) ? scope : "global" })
}

export const validateBucketIndex = (index: number): Either.Either<number, NodeGraphInputError> =>
  Number.isInteger(index) && index >= 0 && index < BUCKET_COUNT
    ? Either.right(index)
    : Either.left(
        new NodeGraphInputError({
          field: "bucketIndex",
          detail: `${index} is not an integer in 0–${BUCKET_COUNT - 1}`
        })
      )

export const validateLimit = (limit: number): Either.Either<number, NodeGraphInputError> =>
  Number.isInteger(limit) && limit >= 0
    ? Either.right(limit)
    : Either.left(
        new NodeGraphInputError({ field: "limit", detail: `${limit} is not a non-negative integer` })
      )

export const validateK = (k: number): number => {
  if (!Number.isInteger(k) || k < 1)
    throw new RangeError(`bucket limit k must be a positive integer, got ${k}`)
  return k
}

// ---------------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------------

// The text form: an entry's canonical NodeId keeps it, so keys are shared, not made per entry.
const keyOf = (nodeId: Uint8Array): string => encode(nodeId as NodeId)

/** The address list after seeing `address`: it goes first, duplicates (host+port) removed, at most 5. */
export const pushAddress = (
  addresses: ReadonlyArray<NodeAddress>,
  address: NodeAddress
): ReadonlyArray<NodeAddress> => {
  const rest = addresses.filter((a) => !(a.host === address.host && a.port === address.port))
  return [address, ...rest].slice(0, MAX_ADDRESSES)
}

/** A planned `setNode`: apply it with `KademliaTable.apply`. */
export type SetNodePlan =
  | {
      readonly _tag: "Write"
      readonly result: SetNodeResult
      readonly entry: TableEntry
      readonly previous?: TableEntry
    }
  | { readonly _tag: "Full"; readonly result: SetNodeResult }

const EMPTY_BUCKET: ReadonlyMap<string, TableEntry> = new Map()

export class KademliaTable {
  // Made on first write: most of a node's 256 buckets stay empty (a simulated world holds
  // thousands of tables). Reads of an absent bucket see the shared empty one.
  readonly #buckets: Array<Map<string, TableEntry> | undefined> = new Array(BUCKET_COUNT)
  #read(index: number): ReadonlyMap<string, TableEntry> {
    return this.#buckets[index] ?? EMPTY_BUCKET
  }
  #write(index: number): Map<string, TableEntry> {
    let bucket = this.#buckets[index]
    if (bucket === undefined) {
      bucket = new Map()
      this.#buckets[index] = bucket
    }
    return bucket
  }
  readonly #refreshedAt: Array<number | undefined> = new Array(BUCKET_COUNT).fill(undefined)
  readonly #groups = new BucketGroups()
  #size = 0
  #nextSeq = 0

  #ownNodeId: NodeId

  constructor(
    ownNodeId: NodeId,
    readonly k: number = DEFAULT_BUCKET_LIMIT,
    /** The diversity limit (none if undefined). */
    readonly ipDiversity?: IpDiversity
  ) {
    if (ownNodeId.length !== NODE_ID_BYTES) throw new RangeError(`own NodeId must be ${NODE_ID_BYTES} bytes`)
    this.#ownNodeId = canonical(ownNodeId)
    validateK(k)
  }

  /** The NodeId the buckets are laid out around (`reown` moves them to another). */
  get ownNodeId(): NodeId {
    return this.#ownNodeId
  }

  /**
   * Lays the buckets out anew around `ownNodeId` (a key renewal): every entry is loaded again
   * as `load` does it, and the refresh times (relative to the old NodeId) are cleared. Returns
   * the entries dropped (the new own NodeId, those beyond k in a bucket).
   */
  reown(ownNodeId: NodeId): Array<TableEntry> {
    const entries = [...this.entries()]
    this.#buckets.fill(undefined)
    this.#groups.clear()
    this.#refreshedAt.fill(undefined)
    this.#size = 0
    this.#ownNodeId = canonical(ownNodeId)
    return this.load(entries)
  }

  get size(): number {
    return this.#size
  }

  /** The IP group an entry counts in (by its most recent address), if the limit is on. */
  #groupOf(host: string | undefined): string | undefined {
    return this.ipDiversity === undefined || host === undefined ? undefined : groupOf(host, this.ipDiversity)
  }

  /** Moves the group counts of bucket `index` from `before` to `after` (either may be absent). */
  #count(index: number, before: TableEntry | undefined, after: TableEntry | undefined): void {
    if (this.ipDiversity === undefined) return
    this.#groups.add(index, this.#groupOf(before?.addresses[0]?.host), -1)
    this.#groups.add(index, this.#groupOf(after?.addresses[0]?.host), 1)
  }

  /** Bucket index of a (valid, non-own) NodeId; -1 for our own. */
  bucketOf(nodeId: Uint8Array): number {
    return bucketIndex(this.#ownNodeId, nodeId)
  }

  get(nodeId: Uint8Array): TableEntry | undefined {
    if (nodeId.length !== NODE_ID_BYTES) return undefined
    const i = this.bucketOf(nodeId)
    return i < 0 ? undefined : this.#read(i).get(keyOf(nodeId))
  }

  /** What `setNode(nodeId, address)` at time `now` would do; changes nothing. Inputs must be valid. */
  plan(nodeId: NodeId, address: NodeAddress, now: number): SetNodePlan {
    const index = this.bucketOf(nodeId)
    const bucket = this.#read(index)
    const previous = bucket.get(keyOf(nodeId))
    const group = this.#groupOf(address.host)
    if (
      group !== undefined &&
      group !== this.#groupOf(previous?.addresses[0]?.host) &&
      this.#groups.count(index, group) >= this.ipDiversity!.maxPerGroup
    )
      return { _tag: "Full", result: { _tag: "IpGroupFull", bucketIndex: index, group } }
    if (previous === undefined && bucket.size >= this.k) {
      const leastRecentlySeen = bucket.values().next().value!
      return {
        _tag: "Full",
        result: { _tag: "BucketFull", bucketIndex: index, leastRecentlySeen: toContact(leastRecentlySeen) }
      }
    }
    const entry: TableEntry = {
      nodeId: previous?.nodeId ?? canonical(nodeId),
      addresses: pushAddress(previous?.addresses ?? [], address),
      lastSeen: now,
      seq: this.#nextSeq
    }
    return previous === undefined
      ? { _tag: "Write", result: { _tag: "Added", bucketIndex: index }, entry }
      : { _tag: "Write", result: { _tag: "Updated", bucketIndex: index }, entry, previous }
  }

  /**
   * Takes any entry for `entry`'s node out of its bucket, counting `entry` in (size, groups,
   * seq) in its place; returns the bucket, for the caller to put `entry` in.
   */
  #takeOut(entry: TableEntry): Map<string, TableEntry> {
    const index = this.bucketOf(entry.nodeId)
    const bucket = this.#write(index)
    const key = keyOf(entry.nodeId)
    this.#count(index, bucket.get(key), entry)
    if (!bucket.delete(key)) this.#size++
    this.#nextSeq = Math.max(this.#nextSeq, entry.seq + 1)
    return bucket
  }

  /** Puts the entry in its bucket as most recently seen (replacing any entry for the same node). */
  apply(entry: TableEntry): void {
    this.#takeOut(entry).set(keyOf(entry.nodeId), entry)
  }

  /** Inserts or refreshes; validation is the caller's job (see `toService`). */
  set(nodeId: NodeId, address: NodeAddress, now: number): SetNodeResult {
    const plan = this.plan(nodeId, address, now)
    if (Predicate.isTagged(plan, "Write")) this.apply(plan.entry)
    return plan.result
  }

  remove(nodeId: Uint8Array): TableEntry | undefined {
    const entry = this.get(nodeId)
    if (entry === undefined) return undefined
    const index = this.bucketOf(nodeId)
    this.#buckets[index]?.delete(keyOf(nodeId))
    this.#count(index, entry, undefined)
    this.#size--
    return entry
  }

  /**
   * Puts back an entry at its place in the recency order (by `seq`): used to
   * undo a change whose write failed. An entry for the same node is replaced.
   */
  restore(entry: TableEntry): void {
    const bucket = this.#takeOut(entry)
    const ordered = [...bucket.values(), entry].sort(byRecency)
    bucket.clear()
    for (const e of ordered) bucket.set(keyOf(e.nodeId), e)
  }

  /**
   * Bulk load (e.g. from a store, possibly written under another own NodeId). Our own NodeId is
   * skipped; where a bucket would exceed k (or an IP group its limit), the most recently seen
   * are kept. Returns the entries that were not loaded.
   */
  load(entries: Iterable<TableEntry>): Array<TableEntry> {
    const dropped: Array<TableEntry> = []
    const loading = new BucketGroups()
    const newestFirst = [...entries].sort((a, b) => byRecency(b, a))
    const perBucket: Array<Array<TableEntry>> = Array.from({ length: BUCKET_COUNT }, () => [])
    for (const entry of newestFirst) {
      const index = this.bucketOf(entry.nodeId)
      if (index < 0 || this.#read(index).has(keyOf(entry.nodeId))) {
        dropped.push(entry)
        continue
      }
      const slot = perBucket[index]!
      const group = this.#groupOf(entry.addresses[0]?.host)
      const groupFull =
        group !== undefined &&
        this.#groups.count(index, group) + loading.count(index, group) >= this.ipDiversity!.maxPerGroup
      if (groupFull || this.#read(index).size + slot.length >= this.k) dropped.push(entry)
      else {
        slot.push(entry)
        loading.add(index, group, 1)
      }
    }
    for (const slot of perBucket) for (let i = slot.length - 1; i >= 0; i--) this.restore(slot[i]!)
    return dropped
  }

  /** One bucket, least recently seen first. */
  bucket(index: number): ReadonlyArray<NodeContact> {
    return Array.from(this.#read(index).values(), toContact)
  }

  buckets(): ReadonlyArray<readonly [number, ReadonlyArray<NodeContact>]> {
    const out: Array<readonly [number, ReadonlyArray<NodeContact>]> = []
    for (let i = 0; i < BUCKET_COUNT; i++) if (this.#read(i).size > 0) out.push([i, this.bucket(i)])
    return out
  }

  /** Every entry, in no particular order. */
  *entries(): IterableIterator<TableEntry> {
    for (const bucket of this.#buckets) if (bucket !== undefined) yield* bucket.values()
  }

  /**
   * The `limit` known nodes closest to `target` by XOR distance, nearest first.
   *
   * Every bucket covers one contiguous range of distances from the target, and the ranges of
   * different buckets do not overlap. With D = target XOR own and b = bucketIndex(own, target):
   * bucket b is nearest (distances < 2^b); then the buckets i < b with bit i of D set, in
   * descending i; then the buckets with bit i of D clear (all of those above b among them), in
   * ascending i. So the buckets are visited in that order, each sorted on its own (≤ k nodes),
   * until `limit` nodes are collected.
   */
  closest(target: Uint8Array, limit: number = this.k): Array<NodeContact> {
    const out: Array<NodeContact> = []
    if (limit <= 0 || this.#size === 0) return out
    const own = this.ownNodeId
    const b = bucketIndex(own, target)
    const bitOfD = (i: number): number =>
      (own[NODE_ID_BYTES - 1 - (i >> 3)]! ^ target[NODE_ID_BYTES - 1 - (i >> 3)]!) & (1 << (i & 7))
    const byDistance = (x: TableEntry, y: TableEntry): number => {
      const a = x.nodeId
      const c = y.nodeId
      for (let j = 0; j < NODE_ID_BYTES; j++) {
        const dx = a[j]! ^ target[j]!
        const dy = c[j]! ^ target[j]!
        if (dx !== dy) return dx - dy
      }
      return 0
    }
    const take = (i: number): boolean => {
      const bucket = this.#read(i)
      if (bucket.size === 0) return out.length >= limit
      const sorted = [...bucket.values()].sort(byDistance)
      for (const entry of sorted) {
        out.push(toContact(entry))
        if (out.length >= limit) return true
      }
      return false
    }
    if (b >= 0 && take(b)) return out
    for (let i = b - 1; i >= 0; i--) if (bitOfD(i) !== 0 && take(i)) return out
    for (let i = 0; i < BUCKET_COUNT; i++) if (i !== b && bitOfD(i) === 0 && take(i)) return out
    return out
  }

  refreshedAt(index: number): number | undefined {
    return this.#refreshedAt[index]
  }

  markRefreshed(index: number, at: number | undefined): void {
    this.#refreshedAt[index] = at
  }
}

/** Recency order: `seq` grows with every change, so it is the order of the bucket maps. */
const byRecency = (a: TableEntry, b: TableEntry): number => a.seq - b.seq || a.lastSeen - b.lastSeen

/** The public view of an entry (without `seq`). */
export const toContact = (entry: TableEntry): NodeContact => ({
  nodeId: entry.nodeId,
  addresses: entry.addresses,
  lastSeen: entry.lastSeen
})

// ---------------------------------------------------------------------------------------------
// The service over a table
// ---------------------------------------------------------------------------------------------

/**
 * A store behind the table. Each method must START its write synchronously (so writes reach the
 * store in call order) and return a promise that resolves once the write is committed.
 */
export interface TablePersistence {
  readonly putNode: (entry: TableEntry) => PromiseLike<unknown>
  readonly removeNode: (nodeId: NodeId) => PromiseLike<unknown>
  readonly putRefreshedAt: (index: number, at: number) => PromiseLike<unknown>
  /** Records a new owner (`changeOwner`): removes `dropped` and the refresh times. */
  readonly changeOwner?: (ownNodeId: NodeId, dropped: ReadonlyArray<TableEntry>) => PromiseLike<unknown>
}

const currentTimeMillis = Effect.clockWith((clock) => clock.currentTimeMillis)

const storageError = (detail: string) => (cause: unknown) => new NodeGraphStorageError({ detail, cause })

/**
 * `NodeGraphService` over `table`. Without `persistence` every operation is synchronous; with
 * it, a change is made in memory and its write started in one synchronous step, then the write
 * is awaited; if it fails the in-memory change is undone and the error returned. A `setNode`
 * with `awaitCommit: false` returns without waiting; a write of it that fails is undone and
 * handed to `onWriteBehindFailure`.
 */
export const toService = (
  table: KademliaTable,
  persistence?: TablePersistence,
  /** Told of a write that failed after `setNode(..., { awaitCommit: false })` returned. */
  onWriteBehindFailure?: (error: NodeGraphStorageError) => void
): NodeGraphService => {
  const write = <A>(
    start: () => PromiseLike<unknown>,
    undo: () => void,
    value: A,
    detail: string,
    awaitCommit = true
  ): Effect.Effect<A, NodeGraphStorageError> => {
    if (persistence === undefined) return Effect.succeed(value)
    let promise: PromiseLike<unknown>
    try {
      promise = start()
    } catch (cause) {
      undo()
      return Effect.fail(storageError(detail)(cause))
    }
    if (!awaitCommit) {
      promise.then(undefined, (cause: unknown) => {
        undo()
        onWriteBehindFailure?.(storageError(detail)(cause))
      })
      return Effect.succeed(value)
    }
    return Effect.tryPromise({ try: () => Promise.resolve(promise), catch: storageError(detail) }).pipe(
      Effect.tapError(() => Effect.sync(undo)),
      Effect.as(value)
    )
  }

  const setNode: NodeGraphService["setNode"] = (nodeId, address, options) =>
    Effect.suspend((): Effect.Effect<SetNodeResult, NodeGraphInputError | NodeGraphStorageError> => {
      const id = validateNodeId(nodeId)
      if (Either.isLeft(id)) return Effect.fail(id.left)
      if (table.bucketOf(id.right) < 0)
        return Effect.fail(
          new NodeGraphInputError({ field: "nodeId", detail: "our own NodeId is never stored" })
        )
      const valid = validateAddress(address)
      if (Either.isLeft(valid)) return Effect.fail(valid.left)
      return Effect.flatMap(currentTimeMillis, (now) => {
        const plan = table.plan(id.right, valid.right, now)
        if (Predicate.isTagged(plan, "Full")) return Effect.succeed(plan.result)
        const { entry, previous } = plan
        table.apply(entry)
        return write(
          () => persistence!.putNode(entry),
          () => {
            if (table.get(entry.nodeId) !== entry) return
            if (previous === undefined) table.remove(entry.nodeId)
            else table.restore(previous)
          },
          plan.result,
          "could not write a node",
          options?.awaitCommit ?? true
        )
      })
    })

  const unsetNode: NodeGraphService["unsetNode"] = (nodeId) =>
    Effect.suspend(() => {
      if (Either.isLeft(validateNodeId(nodeId))) return Effect.succeed(false)
      const removed = table.remove(nodeId)
      if (removed === undefined) return Effect.succeed(false)
      return write(
        () => persistence!.removeNode(removed.nodeId),
        () => {
          if (table.get(nodeId) === undefined) table.restore(removed)
        },
        true,
        "could not remove a node"
      )
    })

  const withIndex = <A>(index: number, f: (i: number) => A) => Effect.map(validateBucketIndex(index), f)

  return {
    get ownNodeId() {
      return table.ownNodeId
    },
    k: table.k,
    ipDiversity: table.ipDiversity,
    setNode,
    unsetNode,
    getNode: (nodeId) => Effect.sync(() => Option.map(Option.fromNullable(table.get(nodeId)), toContact)),
    getBucket: (index) => withIndex(index, (i) => table.bucket(i)),
    getBuckets: Effect.sync(() => table.buckets()),
    getClosestNodes: (target, limit) =>
      Effect.gen(function* () {
        const t = yield* validateNodeId(target)
        const n = yield* validateLimit(limit ?? table.k)
        return table.closest(t, n)
      }),
    getBucketRefreshedAt: (index) => withIndex(index, (i) => Option.fromNullable(table.refreshedAt(i))),
    markBucketRefreshed: (index) =>
      Effect.gen(function* () {
        const i = yield* validateBucketIndex(index)
        const now = yield* currentTimeMillis
        return yield* Effect.suspend(() => {
          const before = table.refreshedAt(i)
          table.markRefreshed(i, now)
          return write(
            () => persistence!.putRefreshedAt(i, now),
            () => {
              if (table.refreshedAt(i) === now) table.markRefreshed(i, before)
            },
            undefined,
            "could not write a bucket refresh time"
          )
        })
      }),
    size: Effect.sync(() => table.size),
    // No undo: the table goes on around the new NodeId, and a store whose owner was not
    // recorded is laid out anew when it is next opened.
    changeOwner: (ownNodeId) =>
      Effect.suspend((): Effect.Effect<void, NodeGraphInputError | NodeGraphStorageError> => {
        const id = validateNodeId(ownNodeId)
        if (Either.isLeft(id)) return Effect.fail(id.left)
        if (table.bucketOf(id.right) < 0) return Effect.void
        const dropped = table.reown(id.right)
        const store = persistence?.changeOwner
        return store === undefined
          ? Effect.void
          : write(() => store(id.right, dropped), constVoid, undefined, "could not record the new owner")
      })
  }
}
