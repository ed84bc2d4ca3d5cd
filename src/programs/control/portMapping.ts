/**
 * The agent's port mapping in its status: the optional `portMapping` field of `status`, present
 * while the gateway grants a mapping of the node's port (see `PortMapper`).
 */
import { Effect, Option, Schema } from "effect"
import { PortMapper } from "../../services/PortMapper.js"

/** The external address the gateway forwards to the node, how, and until when (ms since the epoch). */
export const PortMappingJson = Schema.Struct({
  host: Schema.String,
  port: Schema.Number,
  protocol: Schema.Literal("pcp", "nat-pmp", "upnp"),
  expiresAt: Schema.Number
})

/** The status field of the agent's PortMapper: `{ portMapping }` while there is a mapping, `{}` otherwise. */
export const portMappingField = Effect.map(PortMapper, (mapper) =>
  mapper.current.pipe(
    Effect.map(Option.match({ onNone: () => ({}), onSome: (portMapping) => ({ portMapping }) }))
  )
)
