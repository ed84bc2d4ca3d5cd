/**
 * Key renewals, ours and our peers'.
 *
 * Ours: `follow` registers with the KeyRing (`onRenew`), so that by the time `renew` returns
 * the manager's own NodeId, the routing table's owner (its buckets laid out anew) and what the
 * handlers compare against have moved to the new NodeId. Then, in the background, every
 * connection (each made under the old certificate) is closed gracefully and the node joins
 * again under its new NodeId, so that the network hears of it; other connections are made
 * anew on demand. The transport presents the new certificate to every connection made after
 * `renew`, so a dial that expects the old NodeId fails.
 *
 * A peer's: a connection whose certificate chain shows a renewal (its leaf signed by the
 * previous key, which only that key's holder can do; the transport has verified the chain)
 * makes us forget the previous NodeId: it leaves the routing table and its connection closes.
 */
import { Effect, type Scope } from "effect"
import type { Renewal as KeyRenewal, KeyRingService } from "../../services/KeyRing.js"
import type { NodeGraphService } from "../../services/NodeGraph.js"
import * as NodeId from "../../services/NodeId.js"
import type { ManagerState } from "./state.js"

export interface Renewal {
  /** Follows the KeyRing's renewals while the scope is open. */
  readonly follow: Effect.Effect<void, never, Scope.Scope>
  /** Forgets `previous`, a NodeId a peer has proved it renewed away from (in the background). */
  readonly forgetPrevious: (previous: NodeId.NodeId) => void
}

export const make = (
  state: ManagerState,
  deps: {
    readonly keyRing: KeyRingService
    readonly graph: NodeGraphService
    /** Joins the network again (the manager's `syncNodeGraph`). */
    readonly rejoin: Effect.Effect<void, unknown>
  }
): Renewal => {
  const { map } = state
  const { graph } = deps

  const moveTo = ({ previous, nodeId }: KeyRenewal): Effect.Effect<void> =>
    Effect.gen(function* () {
      if (NodeId.equals(nodeId, state.self)) return
      yield* graph
        .changeOwner(nodeId)
        .pipe(Effect.catchAll((e) => Effect.logWarning(`node graph after a key renewal: ${e.message}`)))
      state.self = nodeId
      state.selfKey = NodeId.encode(nodeId)
      yield* Effect.logInfo(`key renewed: node ${NodeId.encode(previous)} is now ${state.selfKey}`)
      state.runInBackground(
        map.removeAll("key renewed").pipe(
          Effect.zipRight(deps.rejoin),
          Effect.catchAllCause((cause) =>
            Effect.logWarning("joining the network under the renewed NodeId failed", cause)
          )
        )
      )
    })

  const forget = (previous: NodeId.NodeId): Effect.Effect<void> =>
    Effect.suspend(() => {
      const entry = map.get(previous)
      return Effect.zipRight(
        entry === undefined ? Effect.void : map.remove(entry, "the peer renewed its key"),
        Effect.ignore(graph.unsetNode(previous))
      )
    })

  return {
    follow: deps.keyRing.onRenew(moveTo),
    forgetPrevious: (previous) => {
      state.runInBackground(forget(previous))
    }
  }
}
