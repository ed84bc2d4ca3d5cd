/**
 * The agent's reachability in its status: the optional `reachability` field of `status`
 * (optional so that a CLI newer than its running agent still reads the agent's status).
 */
import { Effect, Schema } from "effect"
import { ConnectionManager } from "../../services/ConnectionManager.js"
import type { Reachability } from "../../services/Reachability.js"

/** The NAT class, the confirmed external addresses, the peer IPs observing us and when it was worked out. */
export const ReachabilityJson = Schema.Struct({
  nat: Schema.Literal("public", "cone", "symmetric", "unknown"),
  addresses: Schema.Array(Schema.Struct({ host: Schema.String, port: Schema.Number })),
  observers: Schema.Number,
  /** ms since the epoch; 0 before the first classification. */
  checkedAt: Schema.Number
})

const toJson = (r: Reachability): typeof ReachabilityJson.Type => ({
  nat: r.nat,
  addresses: r.addresses.map((a) => ({ host: a.host, port: a.port })),
  observers: r.observers,
  checkedAt: r.checkedAt
})

/** The status field of the agent's manager: `{ reachability }`. */
export const reachabilityField = Effect.map(ConnectionManager, (cm) =>
  Effect.map(cm.reachability, (r) => ({ reachability: toJson(r) }))
)
