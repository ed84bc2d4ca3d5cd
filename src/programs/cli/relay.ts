/**
 * `agent start --relay` (or QUICMESH_RELAY=true): the node serves as a relay for nodes that
 * cannot be reached directly; and the relaying in `agent status`'s human line.
 */
import { Options } from "@effect/cli"
import type { RelayJson } from "../control/relay.js"

export const relayOptions = {
  relay: Options.boolean("relay").pipe(
    Options.withDescription(
      "Serve as a relay: nodes behind NATs reserve with this node and others reach them through it (also QUICMESH_RELAY=true)"
    )
  )
} as const

/** ", relay: 3 reservations, 2 circuits" / ", reachable via 2 relay(s)" for the status line, or nothing. */
export const relayText = (status: { readonly relay?: typeof RelayJson.Type | undefined }) => {
  const r = status.relay
  if (r === undefined) return ""
  const parts: Array<string> = []
  if (r.server !== undefined)
    parts.push(`relay for ${r.server.reservations} node(s), ${r.server.circuits} circuit(s)`)
  if (r.reservations.length > 0) parts.push(`reachable via ${r.reservations.length} relay(s)`)
  if (r.relayedConnections > 0) parts.push(`${r.relayedConnections} relayed connection(s)`)
  return parts.length === 0 ? "" : `, ${parts.join(", ")}`
}
