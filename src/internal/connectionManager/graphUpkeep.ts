/**
 * Keeping the NodeGraph up to date: every node proved live (a dial, an inbound connection, an
 * answer to a query) goes into the table. A full bucket keeps its least recently seen node if
 * that node still answers a ping, and replaces it if not (Kademlia's eviction rule).
 */
import { Effect, FiberSet, Predicate } from "effect"
import * as Address from "../../services/Address.js"
import type { NodeAddress, NodeGraphService } from "../../services/NodeGraph.js"
import * as NodeId from "../../services/NodeId.js"
import type { ManagerState } from "./state.js"

/** How the table stores an address we reached: normalised, scoped local or global. */
export const addressOf = (host: string, port: number): NodeAddress => ({
  host: Address.normalizeHost(host),
  port,
  scope: Address.isLocalHost(host) ? "local" : "global"
})

const NO_COMMIT_WAIT = { awaitCommit: false } as const

export interface GraphUpkeep {
  /** Adds a live node; on a full bucket pings the least recently seen node and evicts it only if dead. */
  readonly addToGraph: (nodeId: NodeId.NodeId, host: string, port: number) => Effect.Effect<void>
}

export const make = (
  state: ManagerState,
  deps: {
    readonly graph: NodeGraphService
    readonly pingNode: (nodeId: NodeId.NodeId, address?: Address.Address) => Effect.Effect<boolean>
  }
): GraphUpkeep => {
  const { background } = state
  const { graph, pingNode } = deps
  // Buckets whose least recently seen node is being pinged: one eviction at a time per bucket.
  const evicting = new Set<number>()

  const addToGraph = (nodeId: NodeId.NodeId, host: string, port: number): Effect.Effect<void> =>
    Effect.suspend(() => {
      if (NodeId.equals(nodeId, state.self)) return Effect.void
      const address = addressOf(host, port)
      // The disk commit is not waited for: it is not on the path of a new connection.
      return graph.setNode(nodeId, address, NO_COMMIT_WAIT).pipe(
        Effect.flatMap((result) => {
          if (!Predicate.isTagged(result, "BucketFull") || evicting.has(result.bucketIndex))
            return Effect.void
          evicting.add(result.bucketIndex)
          const lrs = result.leastRecentlySeen
          const lrsAddress = lrs.addresses[0]
          return pingNode(lrs.nodeId, lrsAddress).pipe(
            Effect.flatMap((alive) =>
              alive && lrsAddress
                ? graph.setNode(lrs.nodeId, lrsAddress)
                : graph.unsetNode(lrs.nodeId).pipe(Effect.zipRight(graph.setNode(nodeId, address)))
            ),
            Effect.ensuring(Effect.sync(() => evicting.delete(result.bucketIndex))),
            Effect.interruptible,
            FiberSet.run(background),
            Effect.asVoid
          )
        }),
        // Upkeep is never the caller's concern: a node the table refused (or a storage error)
        // costs only a table entry, and the node is offered again the next time it is seen.
        Effect.catchAllCause((cause) => Effect.logDebug("node graph update failed", cause))
      )
    })

  return { addToGraph }
}
