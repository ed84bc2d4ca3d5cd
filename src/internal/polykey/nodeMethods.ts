/**
 * nodeMethods: Polykey's node-to-node agent methods, as a connection manager serves and calls
 * them over Polykey's wire.
 *
 * - Served (`PolykeyHandlers`, made from the manager's `AgentHandlers` by `fromAgentHandlers`
 *   and turned into the server's method table by `polykeyMethods`): `nodesClosestLocalNodesGet`
 *   and `nodesClosestActiveConnectionsGet`, server streams of contact messages (contacts.ts)
 *   for the `{ nodeIdEncoded }` they are given; and the signalling methods
 *   `nodesConnectionSignalInitial` / `nodesConnectionSignalFinal` (unary, their params
 *   checked by their provider), the Initial only when provided. The Final is always served
 *   and always answered `{}`, whatever its provider does (fails, dies, times out, the node
 *   stops), and with no provider at all: a Polykey node relays Finals to any node it holds a
 *   connection to (it lists them as its active connections), and its process exits when a
 *   Final ends in anything else. Every other Polykey method (claims, notifications, vaults)
 *   is left out: the server answers it with a JSON-RPC error.
 * - Called (`closestLocalNodes`, `closestActiveConnections`): the same two methods on a
 *   Polykey peer, its answers read into `WireContact`s (bad records dropped).
 */
import { Array as Arr, Effect, Either, type Option, Predicate } from "effect"
import type { Contact, WireContact } from "../../services/Contact.js"
import * as NodeId from "../../services/NodeId.js"
import type { AgentHandlers, PeerCallError } from "../../services/PeerRpc.js"
import type { QuicConnection } from "../../services/QuicTransport.js"
import * as Contacts from "./contacts.js"
import { ErrorCode, PolykeyRpcError } from "./jsonRpc.js"
import * as RpcClient from "./rpcClient.js"
import { type PolykeyMethods, serverStreamMethod, type UnaryMethod, unaryMethod } from "./rpcServer.js"

/** What a node answers Polykey peers with. */
export interface PolykeyHandlers {
  /** The nodes of the graph nearest `target`. */
  readonly nodesClosestLocalNodesGet: (
    caller: Contact,
    target: NodeId.NodeId
  ) => Effect.Effect<ReadonlyArray<WireContact>>
  /** The nodes nearest `target` that the node holds a connection to (and so can signal). */
  readonly nodesClosestActiveConnectionsGet: (
    caller: Contact,
    target: NodeId.NodeId
  ) => Effect.Effect<ReadonlyArray<WireContact>>
  /** Signalling (its provider checks the params): the source's request, answered as relay. */
  readonly nodesConnectionSignalInitial?: UnaryMethod | undefined
  /** Signalling: the relay's request, answered as target (answered `{}` whatever it does). */
  readonly nodesConnectionSignalFinal?: UnaryMethod | undefined
}

/**
 * The manager's handlers as Polykey's: both contact methods answer `closestNodes` (every call
 * counts as use of the connection). `activeConnections`, when given, answers
 * `nodesClosestActiveConnectionsGet` instead: Polykey asks the answering node to signal each
 * node listed there, so the list is best limited to nodes the node is connected to.
 */
export const fromAgentHandlers = (
  handlers: AgentHandlers,
  options: {
    readonly activeConnections?: PolykeyHandlers["nodesClosestActiveConnectionsGet"]
    readonly signalInitial?: UnaryMethod
    readonly signalFinal?: UnaryMethod
  } = {}
): PolykeyHandlers => {
  const closest = (caller: Contact, target: NodeId.NodeId) =>
    Effect.zipRight(handlers.touch(caller), handlers.closestNodes(caller, target))
  const active = options.activeConnections
  return {
    nodesClosestLocalNodesGet: closest,
    nodesClosestActiveConnectionsGet:
      active === undefined
        ? closest
        : (caller, target) => Effect.zipRight(handlers.touch(caller), active(caller, target)),
    nodesConnectionSignalInitial: options.signalInitial,
    nodesConnectionSignalFinal: options.signalFinal
  }
}

/** The target of a `{ nodeIdEncoded }` request. */
const targetOf = (params: unknown): Either.Either<NodeId.NodeId, PolykeyRpcError> => {
  const text = Predicate.isRecord(params) ? params.nodeIdEncoded : undefined
  const target = typeof text === "string" ? NodeId.decode(text) : undefined
  return target !== undefined && Either.isRight(target)
    ? Either.right(target.right)
    : Either.left(
        new PolykeyRpcError({ code: ErrorCode.InvalidParams, detail: "`nodeIdEncoded` is not a NodeId" })
      )
}

/** A server-stream method answering `{ nodeIdEncoded }` with one message per contact. */
const contactsMethod = <M>(
  answer: (caller: Contact, target: NodeId.NodeId) => Effect.Effect<ReadonlyArray<WireContact>>,
  toMessage: (contact: WireContact) => Option.Option<M>
) =>
  serverStreamMethod((caller, params) =>
    Effect.flatMap(targetOf(params), (target) =>
      Effect.map(answer(caller, target), (contacts) => Arr.getSomes(contacts.map(toMessage)))
    )
  )

/** What a Polykey relay must get from a Final, always. */
const FINAL_ANSWER = {}

/** The Final with no signalling provider: acknowledged, nothing done. */
const acknowledgedFinal = unaryMethod(() => Effect.succeed(FINAL_ANSWER))

/** The server's method table for `handlers`. */
export const polykeyMethods = (handlers: PolykeyHandlers): PolykeyMethods => ({
  nodesClosestLocalNodesGet: contactsMethod(handlers.nodesClosestLocalNodesGet, (c) =>
    Contacts.toNodeContactMessage(c)
  ),
  nodesClosestActiveConnectionsGet: contactsMethod(
    handlers.nodesClosestActiveConnectionsGet,
    Contacts.toActiveConnectionMessage
  ),
  ...(handlers.nodesConnectionSignalInitial === undefined
    ? {}
    : { nodesConnectionSignalInitial: handlers.nodesConnectionSignalInitial }),
  nodesConnectionSignalFinal: {
    ...(handlers.nodesConnectionSignalFinal ?? acknowledgedFinal),
    insteadOfError: FINAL_ANSWER
  }
})

/** A call of a contact method on a Polykey peer, its answers read as contacts. */
const contactsCall =
  (method: string, fromMessage: (message: unknown) => Option.Option<WireContact>) =>
  (
    connection: QuicConnection,
    target: NodeId.NodeId,
    options: RpcClient.StreamCallOptions
  ): Effect.Effect<ReadonlyArray<WireContact>, PeerCallError> =>
    Effect.map(
      RpcClient.serverStream(connection, method, { nodeIdEncoded: NodeId.encode(target) }, options),
      (messages) => Arr.getSomes(messages.map(fromMessage))
    )

/** Asks a Polykey peer for the nodes of its graph nearest `target`. */
export const closestLocalNodes = contactsCall("nodesClosestLocalNodesGet", Contacts.fromNodeContactMessage)

/** Asks a Polykey peer for the nodes nearest `target` it holds connections to. */
export const closestActiveConnections = contactsCall(
  "nodesClosestActiveConnectionsGet",
  Contacts.fromActiveConnectionMessage
)
