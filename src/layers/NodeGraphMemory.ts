/**
 * NodeGraph held in memory only: the routing table of a node that keeps no state on disk, and
 * of every node in the simulated network.
 */
import { Effect, Layer } from "effect"
import { KademliaTable, toService } from "../internal/kademliaTable.js"
import { KeyRing } from "../services/KeyRing.js"
import { DEFAULT_BUCKET_LIMIT, NodeGraph, type NodeGraphService } from "../services/NodeGraph.js"
import type { NodeId } from "../services/NodeId.js"

export interface Options {
  /** Bucket limit k (default 20). */
  readonly k?: number
}

/** A fresh, empty in-memory NodeGraph for `ownNodeId` (needs no KeyRing). */
export const make = (ownNodeId: NodeId, options: Options = {}): Effect.Effect<NodeGraphService> =>
  Effect.sync(() => toService(new KademliaTable(ownNodeId, options.k ?? DEFAULT_BUCKET_LIMIT)))

/** In-memory NodeGraph for the KeyRing's current NodeId (read once, when the layer is built). */
export const layer = (options: Options = {}): Layer.Layer<NodeGraph, never, KeyRing> =>
  Layer.effect(
    NodeGraph,
    Effect.flatMap(KeyRing, (keyRing) => keyRing.nodeId).pipe(Effect.flatMap((id) => make(id, options)))
  )

/** In-memory NodeGraph for a given NodeId (no KeyRing). */
export const layerFor = (ownNodeId: NodeId, options: Options = {}): Layer.Layer<NodeGraph> =>
  Layer.effect(NodeGraph, make(ownNodeId, options))
