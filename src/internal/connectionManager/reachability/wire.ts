/**
 * The reachability methods on the agent RPC wire: the server's handlers (delegating to the
 * node's `ReachabilityHandlers`, with the caller the connection proves) and the client's
 * calls (failures as `PeerCallError`). A peer that serves no such method (an older node)
 * answers `RpcUnknownMethodError`: the caller reads it as a "remote" failure and goes on.
 */
import { type Cause, Effect, Predicate } from "effect"
import { RpcHandlerError } from "../../../services/AgentRpc.js"
import { Caller } from "../../../services/Contact.js"
import { type AgentHandlers, PeerCallError } from "../../../services/PeerRpc.js"
import type {
  DialBackOrder,
  DialBackRefused,
  DialBackRequest,
  IdentifyMessage,
  ReachabilityCalls,
  ReachabilityHandlers
} from "../../../services/Reachability.js"
import type { AgentCallError, AgentClient } from "../../../services/RpcServer.js"

/** The node's reachability handlers, or a refusal when the node was served without them. */
const reachabilityOf = (h: AgentHandlers, method: string) =>
  h.reachability === undefined
    ? Effect.fail(new RpcHandlerError({ method, detail: "this node keeps no reachability" }))
    : Effect.succeed(h.reachability)

const refusal = (method: string) => (e: DialBackRefused) => new RpcHandlerError({ method, detail: e.detail })

/** Runs `f` with the call's caller and the node's reachability handlers (the call touches the connection). */
const handle = <A, E>(
  served: Effect.Effect<AgentHandlers>,
  method: string,
  f: (r: ReachabilityHandlers, caller: Caller["Type"]) => Effect.Effect<A, E>
) =>
  Effect.gen(function* () {
    const caller = yield* Caller
    const h = yield* served
    yield* h.touch(caller)
    return yield* Effect.flatMap(reachabilityOf(h, method), (r) => f(r, caller))
  })

/** The server's handlers of the reachability methods, over the handlers served on the connection. */
export const wireHandlers = (served: Effect.Effect<AgentHandlers>) => ({
  nodesIdentify: (message: IdentifyMessage) =>
    handle(served, "nodesIdentify", (r, caller) => r.identify(caller, message)).pipe(
      // An identify answer has no error of its own: a node without reachability answers what it sees.
      Effect.catchTag("RpcHandlerError", () =>
        Effect.flatMap(Caller, (c) =>
          Effect.succeed({ observed: { host: c.host, port: c.port }, confirmed: [] })
        )
      )
    ),
  nodesDialBackRequest: (request: DialBackRequest) =>
    handle(served, "nodesDialBackRequest", (r, caller) =>
      r.dialBackRequest(caller, request).pipe(Effect.mapError(refusal("nodesDialBackRequest")))
    ),
  nodesDialBack: (order: DialBackOrder) =>
    handle(served, "nodesDialBack", (r, caller) =>
      r.dialBack(caller, order).pipe(Effect.mapError(refusal("nodesDialBack")))
    ),
  nodesDialBackProof: ({ nonce }: { readonly nonce: string }) =>
    handle(served, "nodesDialBackProof", (r, caller) => r.dialBackProof(caller, nonce)).pipe(
      Effect.catchTag("RpcHandlerError", () => Effect.void)
    )
})

/** A failed call's `PeerCallError`: a timeout or a broken stream is ours, anything else the peer's. */
const failedCall = (method: string, e: AgentCallError | RpcHandlerError) =>
  new PeerCallError({
    method,
    reason: Predicate.isTagged(e, "RpcTimeoutError")
      ? "timeout"
      : Predicate.isTagged(e, "RpcStreamError")
        ? "connection"
        : "remote",
    detail: e.message,
    cause: e
  })

/**
 * The client's reachability calls; `closedUnderneath` reads a call interrupted by its
 * connection's close as the client's other calls do.
 */
export const wireCalls = (
  client: AgentClient,
  closedUnderneath: (
    method: string
  ) => (cause: Cause.Cause<PeerCallError>) => Effect.Effect<never, PeerCallError>
): ReachabilityCalls => {
  const wrap = <A>(method: string, call: Effect.Effect<A, AgentCallError | RpcHandlerError>) =>
    call.pipe(
      Effect.mapError((e) => failedCall(method, e)),
      Effect.catchAllCause(closedUnderneath(method))
    )
  return {
    identify: (message) => wrap("nodesIdentify", client.nodesIdentify(message)),
    dialBackRequest: (request) => wrap("nodesDialBackRequest", client.nodesDialBackRequest(request)),
    dialBack: (order) => wrap("nodesDialBack", client.nodesDialBack(order)),
    dialBackProof: (nonce) => wrap("nodesDialBackProof", client.nodesDialBackProof({ nonce }))
  }
}
