/**
 * NodeGraph persisted in lmdb. The whole table lives in memory (`KademliaTable`); lmdb holds
 * one key per node, written incrementally:
 *
 * - sub-database `nodes`: key = the 32 NodeId bytes, value (msgpack) = `{ addresses, lastSeen, seq }`
 *   (`seq` orders nodes seen within the same millisecond);
 * - sub-database `buckets`: key = bucket index (uint32), value = last refresh time (ms);
 * - sub-database `meta`: key `owner` = the NodeId the table was written for.
 *
 * Every change is acknowledged only after lmdb has committed it (except a `setNode` told not
 * to wait, `awaitCommit: false`), so a process killed at any moment keeps every acknowledged
 * write. On open, all nodes are loaded; if the owner NodeId
 * changed (key renewal), the buckets are laid out anew around the new NodeId, our own NodeId is
 * dropped if stored, bucket refresh times (relative to the old NodeId) are cleared, and nodes
 * beyond k in a bucket (least recently seen first) are deleted. `changeOwner` (a renewal while
 * running) makes the same changes.
 */
import { Effect, Either, Layer, Runtime, type Scope } from "effect"
import { type Database, open, type RootDatabase } from "lmdb"
import * as IpDiversity from "../internal/ipDiversity.js"
import {
  BUCKET_COUNT,
  KademliaTable,
  type TableEntry,
  type TablePersistence,
  toService,
  validateAddress
} from "../internal/kademliaTable.js"
import { KeyRing } from "../services/KeyRing.js"
import {
  DEFAULT_BUCKET_LIMIT,
  MAX_ADDRESSES,
  type NodeAddress,
  NodeGraph,
  type NodeGraphService,
  NodeGraphStorageError
} from "../services/NodeGraph.js"
import { equals, NODE_ID_BYTES, type NodeId } from "../services/NodeId.js"

export interface Options {
  /** Directory of the lmdb environment (created if missing), e.g. `<nodePath>/nodegraph`. */
  readonly path: string
  /** Bucket limit k (default 20). */
  readonly k?: number
  /**
   * The buckets' IP-diversity limit (`NodeGraph.IpDiversity`): the defaults (2 per /24 or /48
   * per bucket) unless given, `false` for none. Stored nodes past it are dropped on open.
   */
  readonly ipDiversity?: IpDiversity.IpDiversityOption
}

interface StoredNode {
  readonly addresses: ReadonlyArray<NodeAddress>
  readonly lastSeen: number
  readonly seq: number
}

interface Store {
  readonly root: RootDatabase
  readonly nodes: Database<StoredNode, Uint8Array>
  readonly buckets: Database<number, number>
  readonly meta: Database<Uint8Array, string>
  /** Set when the scope closes; lmdb never settles writes issued after close, so we refuse them. */
  closed: boolean
}

const OWNER_KEY = "owner"

const openStore = (path: string): Effect.Effect<Store, NodeGraphStorageError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.try({
      try: (): Store => {
        const root = open({ path, maxDbs: 4 })
        try {
          return {
            root,
            nodes: root.openDB<StoredNode, Uint8Array>({
              name: "nodes",
              keyEncoding: "binary",
              encoding: "msgpack"
            }),
            buckets: root.openDB<number, number>({
              name: "buckets",
              keyEncoding: "uint32",
              encoding: "msgpack"
            }),
            meta: root.openDB<Uint8Array, string>({ name: "meta", encoding: "binary" }),
            closed: false
          }
        } catch (e) {
          void root.close()
          throw e
        }
      },
      catch: (cause) => new NodeGraphStorageError({ detail: `cannot open lmdb at ${path}`, cause })
    }),
    (store) =>
      Effect.tryPromise(() => {
        store.closed = true
        return store.root.close()
      }).pipe(Effect.catchAll((e) => Effect.logWarning("node graph: closing lmdb failed", e)))
  )

/**
 * The writes of a re-laid table, for one transaction: `removed` go, and with a new `owner` the
 * bucket refresh times go and the owner is recorded.
 */
const relayWrites = (store: Store, removed: ReadonlyArray<Uint8Array>, owner: NodeId | undefined) => () => {
  for (const key of removed) store.nodes.removeSync(key)
  if (owner !== undefined) {
    store.buckets.clearSync()
    store.meta.putSync(OWNER_KEY, Uint8Array.from(owner))
  }
}

/** A stored value, checked; undefined when it is not a node record. */
const decodeNode = (key: Uint8Array, value: unknown): TableEntry | undefined => {
  if (key.length !== NODE_ID_BYTES || typeof value !== "object" || value === null) return undefined
  const { addresses, lastSeen, seq } = value as Partial<StoredNode>
  if (typeof lastSeen !== "number" || !Number.isFinite(lastSeen) || !Array.isArray(addresses))
    return undefined
  const valid: Array<NodeAddress> = []
  for (const a of addresses.slice(0, MAX_ADDRESSES)) {
    if (typeof a !== "object" || a === null) return undefined
    const checked = validateAddress(a as NodeAddress)
    if (Either.isLeft(checked)) return undefined
    valid.push(checked.right)
  }
  return {
    nodeId: Uint8Array.from(key) as NodeId,
    addresses: valid,
    lastSeen,
    seq: typeof seq === "number" && Number.isFinite(seq) ? seq : 0
  }
}

/**
 * Opens (or creates) the store at `options.path` for `ownNodeId`, loads it, and returns the
 * service. The store is closed when the scope closes.
 */
export const make = (
  ownNodeId: NodeId,
  options: Options
): Effect.Effect<NodeGraphService, NodeGraphStorageError, Scope.Scope> =>
  Effect.gen(function* () {
    const store = yield* openStore(options.path)
    const table = new KademliaTable(
      ownNodeId,
      options.k ?? DEFAULT_BUCKET_LIMIT,
      IpDiversity.resolve(options.ipDiversity)
    )
    const { invalid, dropped, ownerChanged } = yield* Effect.try({
      try: () => {
        const stored = store.meta.get(OWNER_KEY)
        const ownerChanged = stored === undefined || !equals(stored, ownNodeId)
        const entries: Array<TableEntry> = []
        const invalid: Array<Uint8Array> = []
        for (const { key, value } of store.nodes.getRange()) {
          const entry = decodeNode(key, value)
          if (entry === undefined) invalid.push(Uint8Array.from(key))
          else entries.push(entry)
        }
        const dropped = table.load(entries)
        if (!ownerChanged)
          for (const { key, value } of store.buckets.getRange())
            if (Number.isInteger(key) && key >= 0 && key < BUCKET_COUNT && typeof value === "number")
              table.markRefreshed(key, value)
        if (ownerChanged || invalid.length > 0 || dropped.length > 0)
          store.root.transactionSync(
            relayWrites(
              store,
              [...invalid, ...dropped.map((e) => e.nodeId)],
              ownerChanged ? ownNodeId : undefined
            )
          )
        return { invalid: invalid.length, dropped: dropped.length, ownerChanged }
      },
      catch: (cause) =>
        new NodeGraphStorageError({ detail: `cannot load the node graph at ${options.path}`, cause })
    })
    if (invalid > 0) yield* Effect.logWarning(`node graph: dropped ${invalid} unreadable entries`)
    if (dropped > 0 && !ownerChanged)
      yield* Effect.logInfo(`node graph: dropped ${dropped} entries beyond k or the IP-group limit`)
    const ensureOpen = () => {
      if (store.closed) throw new Error("the node graph store is closed")
    }
    const persistence: TablePersistence = {
      putNode: (entry) => {
        ensureOpen()
        return store.nodes.put(entry.nodeId, {
          addresses: entry.addresses,
          lastSeen: entry.lastSeen,
          seq: entry.seq
        })
      },
      removeNode: (nodeId) => {
        ensureOpen()
        return store.nodes.remove(nodeId)
      },
      putRefreshedAt: (index, at) => {
        ensureOpen()
        return store.buckets.put(index, at)
      },
      // A key renewal while running: the same writes as a re-lay on open.
      changeOwner: (owner, dropped) => {
        ensureOpen()
        return store.root.transaction(
          relayWrites(
            store,
            dropped.map((e) => e.nodeId),
            owner
          )
        )
      }
    }
    // A write the caller did not wait for (`awaitCommit: false`) that failed is logged here.
    const runFork = Runtime.runFork(yield* Effect.runtime<never>())
    return toService(table, persistence, (error) => {
      runFork(Effect.logWarning(`node graph: ${error.message}; the change was undone`, error.cause))
    })
  })

/** lmdb-backed NodeGraph for the KeyRing's current NodeId (read once, when the layer is built). */
export const layer = (options: Options): Layer.Layer<NodeGraph, NodeGraphStorageError, KeyRing> =>
  Layer.scoped(
    NodeGraph,
    Effect.flatMap(KeyRing, (keyRing) => keyRing.nodeId).pipe(Effect.flatMap((id) => make(id, options)))
  )

/** lmdb-backed NodeGraph for a given NodeId (no KeyRing). */
export const layerFor = (
  ownNodeId: NodeId,
  options: Options
): Layer.Layer<NodeGraph, NodeGraphStorageError> => Layer.scoped(NodeGraph, make(ownNodeId, options))
