/** The agent's reachability in `agent status`'s human line. */
import type { ReachabilityJson } from "../control/reachability.js"
import { hostPort } from "./shared.js"

/** ", reachability cone at HOST:PORT" for the status line, or nothing (an agent that does not tell). */
export const reachabilityText = (status: {
  readonly reachability?: typeof ReachabilityJson.Type | undefined
}) => {
  const r = status.reachability
  if (r === undefined) return ""
  const at = r.addresses.map((a) => hostPort(a.host, a.port))
  return `, reachability ${r.nat}${at.length > 0 ? ` at ${at.join(", ")}` : ""}`
}
