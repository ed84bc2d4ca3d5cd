/**
 * polykeyPeer: the agent RPC with Polykey nodes, in `PeerRpc`'s terms, over Polykey's own wire
 * (JSON-RPC, one stream per call: `polykey/rpcClient.ts`, `polykey/rpcServer.ts`).
 *
 * - `client(connection)`, for a peer that speaks Polykey (`QuicConnection.speaks`): lookups as
 *   `nodesClosestLocalNodesGet`, and a ping as one such call (an answer proves that the peer
 *   accepted our certificate: a Polykey node that refuses it closes the connection right after
 *   the handshake, and the call fails). quicmesh's own hole-punch signal is no Polykey method:
 *   it fails, typed, and the manager goes on without it.
 * - `methods(handlers)`: what the node answers Polykey peers with, made from the manager's
 *   handlers (`polykey/nodeMethods.ts`), for the streams the router sends to Polykey's server.
 */
import { Duration, Effect, Stream } from "effect"
import type { NodeId } from "../services/NodeId.js"
import { type AgentHandlers, PeerCallError, type PeerClient } from "../services/PeerRpc.js"
import type { QuicConnection } from "../services/QuicTransport.js"
import { DEFAULT_CALL_TIMEOUT } from "./polykey/jsonRpc.js"
import { closestLocalNodes, fromAgentHandlers, polykeyMethods } from "./polykey/nodeMethods.js"
import type { PolykeyMethods } from "./polykey/rpcServer.js"

const callTimeout = Duration.decode(DEFAULT_CALL_TIMEOUT)

const noSignal = Effect.fail(
  new PeerCallError({
    method: "holePunchSignal",
    reason: "remote",
    detail: "a Polykey node takes Polykey's own signalling, not quicmesh's"
  })
)

/** The client for a Polykey peer on `connection`. */
export const client = (connection: QuicConnection): PeerClient => {
  const closest = (target: NodeId, timeout: Duration.Duration, limit?: number) =>
    closestLocalNodes(connection, target, limit === undefined ? { timeout } : { timeout, limit })
  return {
    ping: Effect.asVoid(closest(connection.remoteNodeId, callTimeout, 1)),
    closestNodes: (target) => Stream.fromIterableEffect(closest(target, callTimeout)),
    closestNodesUpTo: (target, limit, timeout) => closest(target, timeout, limit),
    holePunchSignal: () => noSignal
  }
}

/** Polykey's methods as the node answers them with `handlers`. */
export const methods = (handlers: AgentHandlers): PolykeyMethods =>
  polykeyMethods(fromAgentHandlers(handlers))
