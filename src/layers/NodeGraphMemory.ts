/**
 * NodeGraph held in memory only: the routing table of a node that keeps no state on disk, and
 * of every node in the simulated network.
 */
import { Effect, Layer } from "effect"
import * as IpDiversity from "../internal/ipDiversity.js"
import { KademliaTable, toService } from "../internal/kademliaTable.js"
import { KeyRing } from "../services/KeyRing.js"
import { DEFAULT_BUCKET_LIMIT, NodeGraph, type NodeGraphService } from "../services/NodeGraph.js"
import type { NodeId } from "../services/NodeId.js"

export interface Options {
  /** Bucket limit k (default 20). */
  readonly k?: number
  /**
   * The buckets' IP-diversity limit (`NodeGraph.IpDiversity`): the defaults (2 per /24 or /48
   * per bucket) unless given, `false` for none. An invalid value throws a RangeError.
   */
  readonly ipDiversity?: IpDiversity.IpDiversityOption
}

/** A fresh, empty in-memory NodeGraph for `ownNodeId` (needs no KeyRing). */
export const make = (ownNodeId: NodeId, options: Options = {}): Effect.Effect<NodeGraphService> =>
  Effect.sync(() =>
    toService(
      new KademliaTable(
        ownNodeId,
        options.k ?? DEFAULT_BUCKET_LIMIT,
        IpDiversity.resolve(options.ipDiversity)
      )
    )
  )

/** In-memory NodeGraph for the KeyRing's current NodeId (read once, when the layer is built). */
export const layer = (options: Options = {}): Layer.Layer<NodeGraph, never, KeyRing> =>
  Layer.effect(
    NodeGraph,
    Effect.flatMap(KeyRing, (keyRing) => keyRing.nodeId).pipe(Effect.flatMap((id) => make(id, options)))
  )

/** In-memory NodeGraph for a given NodeId (no KeyRing). */
export const layerFor = (ownNodeId: NodeId, options: Options = {}): Layer.Layer<NodeGraph> =>
  Layer.effect(NodeGraph, make(ownNodeId, options))
