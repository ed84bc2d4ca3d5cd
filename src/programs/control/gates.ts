/**
 * The control API's connection gate: list the rules, deny or allow a NodeId or CIDR, take an
 * entry off its list, switch allow-only mode. A change is saved (the agent's gates.json) and in
 * force before the call returns, and the connections it refuses are closed by then: `closed`
 * counts them.
 */
import { Rpc, RpcGroup } from "@effect/rpc"
import { Effect, Either, Schema } from "effect"
import {
  ConnectionGater,
  type GateChange,
  type GateEntry,
  type GatesFileError,
  parseEntry
} from "../../services/ConnectionGater.js"
import { ConnectionManager } from "../../services/ConnectionManager.js"
import * as NodeId from "../../services/NodeId.js"
import { ControlError } from "./error.js"

export const GatesJson = Schema.Struct({
  allowOnly: Schema.Boolean,
  deny: Schema.Array(Schema.String),
  allow: Schema.Array(Schema.String)
})

/** A change: whether it changed anything, the connections it closed, the rules after it. */
export const GateChangeJson = Schema.Struct({
  changed: Schema.Boolean,
  closed: Schema.Number,
  gates: GatesJson
})

const Entry = { entry: Schema.String }

export class GateRpcs extends RpcGroup.make(
  Rpc.make("gatesList", { success: GatesJson }),
  Rpc.make("gatesDeny", { payload: Entry, success: GateChangeJson, error: ControlError }),
  Rpc.make("gatesAllow", { payload: Entry, success: GateChangeJson, error: ControlError }),
  Rpc.make("gatesRemove", { payload: Entry, success: GateChangeJson, error: ControlError }),
  Rpc.make("gatesAllowOnly", {
    payload: { on: Schema.Boolean },
    success: GateChangeJson,
    error: ControlError
  })
) {}

/** The handlers of `GateRpcs`, over the node's gater and manager. */
export const gateHandlers = Effect.gen(function* () {
  const gater = yield* ConnectionGater
  const cm = yield* ConnectionManager

  /** Runs `change`, counting the connections held before it that its rules refuse. */
  const changing = (change: Effect.Effect<GateChange, GatesFileError>) =>
    Effect.gen(function* () {
      const before = yield* cm.listConnections
      const result = yield* change
      const closed = before.filter((c) => {
        const id = NodeId.decode(c.nodeId)
        return Either.isRight(id) && gater.refusal(id.right, c.host) !== undefined
      }).length
      return { changed: result.changed, closed: result.changed ? closed : 0, gates: result.rules }
    }).pipe(Effect.mapError((e) => new ControlError({ message: e.message })))

  const withEntry =
    (f: (entry: GateEntry) => Effect.Effect<GateChange, GatesFileError>) =>
    ({ entry }: { readonly entry: string }) =>
      Either.match(parseEntry(entry), {
        onLeft: (e) => Effect.fail(new ControlError({ message: e.message })),
        onRight: (parsed) => changing(f(parsed))
      })

  return {
    gatesList: () => gater.rules,
    gatesDeny: withEntry(gater.deny),
    gatesAllow: withEntry(gater.allow),
    gatesRemove: withEntry(gater.remove),
    gatesAllowOnly: ({ on }: { readonly on: boolean }) => changing(gater.setAllowOnly(on))
  }
})
