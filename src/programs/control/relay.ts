/**
 * The agent's relaying in its status: the optional `relay` field of `status` (optional so that a
 * CLI newer than its running agent still reads the agent's status).
 */
import { Effect, Schema } from "effect"
import { ConnectionManager, type RelayStatus } from "../../services/ConnectionManager.js"

export const RelayJson = Schema.Struct({
  /** The relays the node holds reservations with. */
  reservations: Schema.Array(Schema.String),
  /** The node's connections that run through a relay. */
  relayedConnections: Schema.Number,
  /** Present when the node serves as a relay (`--relay`). */
  server: Schema.optional(
    Schema.Struct({
      reservations: Schema.Number,
      circuits: Schema.Number,
      bytesForwarded: Schema.Number,
      refused: Schema.Record({ key: Schema.String, value: Schema.Number })
    })
  )
})

const toJson = (r: RelayStatus): typeof RelayJson.Type => ({
  reservations: [...r.reservations],
  relayedConnections: r.relayedConnections,
  ...(r.server === undefined
    ? {}
    : {
        server: {
          reservations: r.server.reservations,
          circuits: r.server.circuits,
          bytesForwarded: r.server.bytesForwarded,
          refused: { ...r.server.refused }
        }
      })
})

/** The status field of the agent's manager: `{ relay }`. */
export const relayField = Effect.map(ConnectionManager, (cm) =>
  Effect.map(cm.relays, (r) => ({ relay: toJson(r) }))
)
