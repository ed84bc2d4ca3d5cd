/**
 * The control API's identity calls: `identityRenew` renews the running node's key (see
 * `KeyRing.renew`): when it answers, the transport, the connection manager and the routing
 * table use the new NodeId, and the old one is answered for no more.
 */
import { Rpc, RpcGroup } from "@effect/rpc"
import { Effect, Schema } from "effect"
import { KeyRing } from "../../services/KeyRing.js"
import * as NodeId from "../../services/NodeId.js"
import { ControlError } from "./error.js"

/** A renewal: the NodeId before and after it. */
export const RenewalJson = Schema.Struct({ previous: Schema.String, nodeId: Schema.String })

export class IdentityRpcs extends RpcGroup.make(
  Rpc.make("identityRenew", { success: RenewalJson, error: ControlError })
) {}

/** The handlers of `IdentityRpcs`, over the node's KeyRing. */
export const identityHandlers = Effect.gen(function* () {
  const keyRing = yield* KeyRing
  // One renewal at a time through the API, so that "before" and "after" are one renewal's.
  const lock = yield* Effect.makeSemaphore(1)
  return {
    identityRenew: () =>
      lock.withPermits(1)(
        Effect.gen(function* () {
          const previous = yield* keyRing.nodeId
          yield* keyRing.renew.pipe(Effect.mapError((e) => new ControlError({ message: e.message })))
          const nodeId = yield* keyRing.nodeId
          return { previous: NodeId.encode(previous), nodeId: NodeId.encode(nodeId) }
        })
      )
  }
})
