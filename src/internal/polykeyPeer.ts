/**
 * polykeyPeer: the agent RPC with Polykey nodes, in `PeerRpc`'s terms, over Polykey's own wire
 * (JSON-RPC, one stream per call: `polykey/rpcClient.ts`, `polykey/rpcServer.ts`).
 *
 * - `client(connection)`, for a peer that speaks Polykey (`QuicConnection.speaks`): lookups as
 *   `nodesClosestLocalNodesGet`, and a ping as one such call (an answer proves that the peer
 *   accepted our certificate: a Polykey node that refuses it closes the connection right after
 *   the handshake, and the call fails). A hole-punch signal to a Polykey relay, as its source,
 *   is Polykey's `nodesConnectionSignalInitial` (`polykey/signallingRoles.ts`); passing on a
 *   quicmesh source's signal to a Polykey target is not possible (it carries no Polykey
 *   signature) and fails, typed: the manager goes on without it.
 * - `methods(handlers)`: what the node answers Polykey peers with, made from the manager's
 *   handlers (`polykey/nodeMethods.ts`), for the streams the router sends to Polykey's server:
 *   lookups (`nodesClosestActiveConnectionsGet` from the connections held), and signalling
 *   as relay (the Final goes to the target in Polykey's wire, which every node serves) and as
 *   target (a punch toward the address the relay signed).
 */
import { Duration, Effect, Either, Option, Stream } from "effect"
import type { Contact, WireContact } from "../services/Contact.js"
import * as NodeId from "../services/NodeId.js"
import {
  type AgentHandlers,
  type HolePunchMessage,
  PeerCallError,
  type PeerClient,
  type SignallingHandlers
} from "../services/PeerRpc.js"
import type { QuicConnection } from "../services/QuicTransport.js"
import { DEFAULT_CALL_TIMEOUT, ErrorCode, PolykeyRpcError } from "./polykey/jsonRpc.js"
import { closestLocalNodes, fromAgentHandlers, polykeyMethods } from "./polykey/nodeMethods.js"
import { unary } from "./polykey/rpcClient.js"
import { type PolykeyMethods, unaryMethod } from "./polykey/rpcServer.js"
import { makeInitial } from "./polykey/signallingMessages.js"
import { asRelay, asTarget } from "./polykey/signallingRoles.js"

const callTimeout = Duration.decode(DEFAULT_CALL_TIMEOUT)

const noSignal = Effect.fail(
  new PeerCallError({
    method: "holePunchSignal",
    reason: "remote",
    detail: "a Polykey node takes Polykey's own signalling, not quicmesh's"
  })
)

/**
 * The client for a Polykey peer on `connection`. Where the node signals (`signalling`, read at
 * each signal), a hole-punch signal to the peer as our relay goes as Polykey's Initial.
 */
export const client = (
  connection: QuicConnection,
  signalling: () => SignallingHandlers | undefined = () => undefined
): PeerClient => {
  const closest = (target: NodeId.NodeId, timeout: Duration.Duration, limit?: number) =>
    closestLocalNodes(connection, target, limit === undefined ? { timeout } : { timeout, limit })
  return {
    ping: Effect.asVoid(closest(connection.remoteNodeId, callTimeout, 1)),
    closestNodes: (target) => Stream.fromIterableEffect(closest(target, callTimeout)),
    closestNodesUpTo: (target, limit, timeout) => closest(target, timeout, limit),
    holePunchSignal: (message) => {
      const ours = signalling()
      return ours === undefined ? noSignal : signalAsSource(connection, ours, message)
    }
  }
}

/** How long a relay waits for the target's answer to a Final. */
const FINAL_TIMEOUT = Duration.seconds(5)

/** The relay's side of Polykey's signalling: a refusal is the source's JSON-RPC error. */
const signalInitial = (signalling: SignallingHandlers) =>
  unaryMethod((caller, params) =>
    asRelay(caller, params, {
      sign: signalling.sign,
      connectedAddress: (target) =>
        Effect.sync(() =>
          Option.map(signalling.connectionTo(target), (c) => ({ host: c.remoteHost, port: c.remotePort }))
        ),
      admit: signalling.admit,
      // In Polykey's wire whatever the target speaks: every node serves it.
      callFinal: (target, final) =>
        Option.match(signalling.connectionTo(target), {
          onNone: () => Effect.fail(`no connection to ${NodeId.encode(target)}`),
          onSome: (connection) =>
            unary(connection, "nodesConnectionSignalFinal", final, { timeout: FINAL_TIMEOUT })
        })
    }).pipe(
      Effect.mapError(
        (refusal) =>
          new PolykeyRpcError({ code: ErrorCode.RPCRemote, detail: refusal.message, cause: refusal })
      )
    )
  )

/** The target's side: punches toward the address the relay signed; always answers `{}`. */
const signalFinal = (signalling: SignallingHandlers) =>
  unaryMethod((caller, params) =>
    asTarget(caller.nodeId, params, { self: signalling.self(), punch: signalling.punch })
  )

/** How many nodes an answer to `nodesClosestActiveConnectionsGet` lists at most (Polykey's bucket size). */
const ACTIVE_CONNECTIONS_ANSWERED = 20

/**
 * `nodesClosestActiveConnectionsGet` as Polykey answers it: the nodes the node holds a connection
 * to (and so can signal), nearest `target` first, each at the address its connection sees, the
 * caller left out.
 */
const activeConnections =
  (signalling: SignallingHandlers) =>
  (caller: Contact, target: NodeId.NodeId): Effect.Effect<ReadonlyArray<WireContact>> =>
    Effect.sync(() =>
      signalling
        .connections()
        .filter((c) => !NodeId.equals(c.remoteNodeId, caller.nodeId))
        .map((c) => ({ connection: c, distance: NodeId.distanceBytes(c.remoteNodeId, target) }))
        .sort((a, b) => NodeId.compare(a.distance, b.distance))
        .slice(0, ACTIVE_CONNECTIONS_ANSWERED)
        .map(({ connection: c }) => ({
          nodeIdEncoded: NodeId.encode(c.remoteNodeId),
          host: c.remoteHost,
          port: c.remotePort
        }))
    )

/** Polykey's methods as the node answers them with `handlers` (signalling where it takes part). */
export const methods = (handlers: AgentHandlers): PolykeyMethods => {
  const signalling = handlers.signalling
  return polykeyMethods(
    fromAgentHandlers(
      handlers,
      signalling === undefined
        ? {}
        : {
            activeConnections: activeConnections(signalling),
            signalInitial: signalInitial(signalling),
            signalFinal: signalFinal(signalling)
          }
    )
  )
}

/**
 * Our signal to a Polykey relay, as the source: its Initial for the request's target (the
 * relay answers the target's address, which the dial in progress already tries).
 */
const signalAsSource = (
  connection: QuicConnection,
  signalling: SignallingHandlers,
  message: HolePunchMessage
) =>
  Effect.gen(function* () {
    const target = NodeId.decode(message.request.target)
    if (message.observed !== undefined || Either.isLeft(target)) return yield* noSignal
    const initial = yield* makeInitial(signalling.self(), target.right, signalling.sign)
    yield* unary(connection, "nodesConnectionSignalInitial", initial, { timeout: callTimeout })
  })
