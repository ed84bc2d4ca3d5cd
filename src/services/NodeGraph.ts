/**
 * NodeGraph: the Kademlia routing table. 256 k-buckets by XOR distance to our own NodeId.
 */
import { Context, Data, type Effect, type Option } from "effect"
import type { NodeId } from "./NodeId.js"

export type AddressScope = "local" | "global"

export interface NodeAddress {
  readonly host: string
  readonly port: number
  readonly scope: AddressScope
}

export interface NodeContact {
  readonly nodeId: NodeId
  /** Most recently seen first, at most `MAX_ADDRESSES`. */
  readonly addresses: ReadonlyArray<NodeAddress>
  /** Milliseconds since the epoch, from the Effect Clock. */
  readonly lastSeen: number
}

export const MAX_ADDRESSES = 5
export const DEFAULT_BUCKET_LIMIT = 20

/**
 * The IP-diversity limit of the buckets: at most `maxPerGroup` nodes of one IP group in a
 * bucket, a group being the `/ipv4Prefix` of a public IPv4 address or the `/ipv6Prefix` of
 * a public IPv6 one (a node counts by its most recent address). Loopback, private,
 * link-local and ULA addresses (`Address.isLocalHost`) are not limited. A host name counts
 * by its last two labels (names are not resolved); a one-label name is not limited.
 */
export interface IpDiversity {
  readonly maxPerGroup: number
  readonly ipv4Prefix: number
  readonly ipv6Prefix: number
}

/** The default: at most 2 nodes per /24 (IPv4) or /48 (IPv6) in a bucket. */
export const DEFAULT_IP_DIVERSITY: IpDiversity = { maxPerGroup: 2, ipv4Prefix: 24, ipv6Prefix: 48 }

export type SetNodeResult =
  | { readonly _tag: "Added"; readonly bucketIndex: number }
  | { readonly _tag: "Updated"; readonly bucketIndex: number }
  /** The bucket is full: nothing changed. Ping `leastRecentlySeen`; evict it only if it is dead. */
  | { readonly _tag: "BucketFull"; readonly bucketIndex: number; readonly leastRecentlySeen: NodeContact }
  /** The bucket holds `maxPerGroup` nodes of the address's IP group already: nothing changed. */
  | { readonly _tag: "IpGroupFull"; readonly bucketIndex: number; readonly group: string }

/** Bad input to the NodeGraph. */
export class NodeGraphInputError extends Data.TaggedError("NodeGraphInputError")<{
  readonly field: "nodeId" | "host" | "port" | "bucketIndex" | "limit"
  readonly detail: string
}> {
  override get message() {
    return `invalid ${this.field}: ${this.detail}`
  }
}

/** The store failed (disk, corruption). */
export class NodeGraphStorageError extends Data.TaggedError("NodeGraphStorageError")<{
  readonly detail: string
  readonly cause?: unknown
}> {
  override get message() {
    return `node graph storage: ${this.detail}`
  }
}

export interface SetNodeOptions {
  /** Wait for the store to commit the write (default true). */
  readonly awaitCommit?: boolean
}

export interface NodeGraphService {
  /** The NodeId the buckets are laid out around; `changeOwner` moves it. */
  readonly ownNodeId: NodeId
  /** Bucket limit k. */
  readonly k: number
  /** The buckets' IP-diversity limit; undefined when it is off. */
  readonly ipDiversity?: IpDiversity | undefined
  /**
   * Insert or refresh (the node becomes most-recently-seen, the address goes first). By default
   * it completes once the change is committed to the store. With `awaitCommit: false` it
   * completes once the change is made in memory and its write has started: a write that then
   * fails undoes the change and is logged (the connection manager records the nodes it meets
   * this way, so that a disk commit is not on the path of every new connection).
   */
  readonly setNode: (
    nodeId: NodeId,
    address: NodeAddress,
    options?: SetNodeOptions
  ) => Effect.Effect<SetNodeResult, NodeGraphInputError | NodeGraphStorageError>
  readonly unsetNode: (nodeId: NodeId) => Effect.Effect<boolean, NodeGraphStorageError>
  readonly getNode: (nodeId: NodeId) => Effect.Effect<Option.Option<NodeContact>>
  /** One bucket, least recently seen first. */
  readonly getBucket: (index: number) => Effect.Effect<ReadonlyArray<NodeContact>, NodeGraphInputError>
  /** Every non-empty bucket as [index, contacts], ascending index. */
  readonly getBuckets: Effect.Effect<ReadonlyArray<readonly [number, ReadonlyArray<NodeContact>]>>
  /** Exactly the `limit` (default k) closest known nodes by XOR distance, nearest first. */
  readonly getClosestNodes: (
    target: NodeId,
    limit?: number
  ) => Effect.Effect<ReadonlyArray<NodeContact>, NodeGraphInputError>
  /** Last time the bucket was refreshed by a lookup (ms since epoch), if ever. */
  readonly getBucketRefreshedAt: (index: number) => Effect.Effect<Option.Option<number>, NodeGraphInputError>
  readonly markBucketRefreshed: (
    index: number
  ) => Effect.Effect<void, NodeGraphInputError | NodeGraphStorageError>
  readonly size: Effect.Effect<number>
  /**
   * Lays the buckets out anew around `ownNodeId` (after a key renewal): the new own NodeId is
   * dropped if stored, nodes beyond k in a bucket (least recently seen first) are dropped and
   * the bucket refresh times (relative to the old NodeId) are cleared; a store records the
   * new owner. The table has moved even if that write fails.
   */
  readonly changeOwner: (
    ownNodeId: NodeId
  ) => Effect.Effect<void, NodeGraphInputError | NodeGraphStorageError>
}

export class NodeGraph extends Context.Tag("quicmesh/NodeGraph")<NodeGraph, NodeGraphService>() {}
