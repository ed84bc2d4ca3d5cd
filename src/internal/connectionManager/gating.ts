/**
 * The connection gate in the manager (any transport): a dial it refuses fails before any
 * packet is sent, with reason "denied"; a connection it refuses (an inbound one the transport
 * let through, a dial to a hostname that resolved into a denied range) is closed before it
 * enters the map; and after each change of its rules the connections they now refuse go.
 */
import { Effect, type Scope } from "effect"
import type { ConnectionDenied, ConnectionGaterService } from "../../services/ConnectionGater.js"
import type { NodeConnectionError } from "../../services/ConnectionManager.js"
import type * as NodeId from "../../services/NodeId.js"
import type { QuicConnection } from "../../services/QuicTransport.js"
import type { ManagerState } from "./state.js"

/** The close reason a refused connection gets (the peer reads it). */
export const gatedReason = "refused by the connection gate"

export interface Gating {
  /** The error for a node the gate refuses by its NodeId alone (before looking it up), or undefined. */
  readonly refuseNode: (nodeId: NodeId.NodeId) => NodeConnectionError | undefined
  /**
   * The NodeIds of `expected` that a dial to `host` may reach (`expected` itself when all may),
   * or the error when none may.
   */
  readonly dialTargets: (
    expected: ReadonlyArray<NodeId.NodeId>,
    host: string
  ) => ReadonlyArray<NodeId.NodeId> | NodeConnectionError
  /** Why a connection with `nodeId` at `host` is refused, or undefined. */
  readonly refusal: (nodeId: NodeId.NodeId, host: string) => ConnectionDenied | undefined
  /** Why `connection` (its NodeId and the address it comes from) is refused, or undefined. */
  readonly connectionRefusal: (connection: QuicConnection) => ConnectionDenied | undefined
  /** The error for a connection the gate refuses (a dial made), or undefined. */
  readonly refuseConnection: (connection: QuicConnection) => NodeConnectionError | undefined
  /** From now on, while the scope is open: after each change, close the connections it refuses. */
  readonly closeRefusedOnChange: Effect.Effect<void, never, Scope.Scope>
}

export const make = (state: ManagerState, gater: ConnectionGaterService): Gating => {
  const { map, fail } = state
  const denied = (nodeId: NodeId.NodeId, refusal: ConnectionDenied) =>
    fail(nodeId, "denied", refusal.message, refusal)

  const refuseNode = (nodeId: NodeId.NodeId) => {
    const refusal = gater.refusal(nodeId)
    return refusal === undefined ? undefined : denied(nodeId, refusal)
  }

  const dialTargets = (expected: ReadonlyArray<NodeId.NodeId>, host: string) => {
    // Nearly always every target may be dialled: nothing is made then (it runs on every dial).
    let refused = 0
    for (const id of expected) if (gater.refusal(id, host) !== undefined) refused++
    if (refused === 0) return expected
    const allowed = expected.filter((id) => gater.refusal(id, host) === undefined)
    return allowed.length > 0 ? allowed : denied(expected[0]!, gater.refusal(expected[0]!, host)!)
  }

  const connectionRefusal = (connection: QuicConnection) =>
    gater.refusal(connection.remoteNodeId, connection.remoteHost)

  const refuseConnection = (connection: QuicConnection) => {
    const refused = connectionRefusal(connection)
    return refused === undefined ? undefined : denied(connection.remoteNodeId, refused)
  }

  const closeRefused = Effect.suspend(() =>
    Effect.forEach(
      [...map.entries.values()].filter((entry) => connectionRefusal(entry.record.connection) !== undefined),
      (entry) => map.remove(entry, gatedReason),
      { concurrency: "unbounded", discard: true }
    )
  )

  return {
    refuseNode,
    dialTargets,
    refusal: gater.refusal,
    connectionRefusal,
    refuseConnection,
    closeRefusedOnChange: gater.watch(() => closeRefused)
  }
}
