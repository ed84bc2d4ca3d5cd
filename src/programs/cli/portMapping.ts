/**
 * `agent start`'s port-mapping options: `--no-port-mapping` (or QUICMESH_PORT_MAPPING=false)
 * turns it off, `--port-mapping-gateway HOST[:PORT]` (or QUICMESH_PORT_MAPPING_GATEWAY) names the
 * gateway instead of the default route's; and the mapping in `agent status`'s human line.
 */
import { Options } from "@effect/cli"
import { Config, Effect, Option } from "effect"
import { parseGateway } from "../../internal/gatewayRoute.js"
import type { PortMappingJson } from "../control/portMapping.js"
import { UsageError } from "../Input.js"
import { hostPort, sourceOf } from "./shared.js"

export const portMappingOptions = {
  noPortMapping: Options.boolean("no-port-mapping").pipe(
    Options.withDescription(
      "Do not ask the gateway for a port mapping (PCP/NAT-PMP); also QUICMESH_PORT_MAPPING=false"
    )
  ),
  portMappingGateway: Options.text("port-mapping-gateway").pipe(
    Options.withDescription(
      "The gateway to ask for a port mapping, HOST[:PORT] (default: the default route's)"
    ),
    Options.withFallbackConfig(Config.string("QUICMESH_PORT_MAPPING_GATEWAY")),
    Options.optional
  )
} as const

const ON = ["true", "1", "yes", "on"]
const OFF = ["false", "0", "no", "off"]

/** The agent's port-mapping settings from the options and QUICMESH_PORT_MAPPING; bad values are UsageErrors. */
export const checkPortMapping = (
  o: { readonly noPortMapping: boolean; readonly portMappingGateway: Option.Option<string> },
  env: Record<string, string | undefined> = process.env
): Effect.Effect<{ readonly enabled: boolean; readonly gateway: string | undefined }, UsageError> =>
  Effect.gen(function* () {
    const fromEnv = env.QUICMESH_PORT_MAPPING?.trim().toLowerCase()
    if (fromEnv !== undefined && fromEnv !== "" && !ON.includes(fromEnv) && !OFF.includes(fromEnv))
      return yield* new UsageError({
        message: `invalid QUICMESH_PORT_MAPPING "${env.QUICMESH_PORT_MAPPING}": must be true or false`
      })
    const gateway = Option.getOrUndefined(o.portMappingGateway)
    const parsed = gateway === undefined ? undefined : parseGateway(gateway)
    if (typeof parsed === "string")
      return yield* new UsageError({
        message: `${parsed}${sourceOf("port-mapping-gateway", "QUICMESH_PORT_MAPPING_GATEWAY")}`
      })
    return { enabled: !o.noPortMapping && !OFF.includes(fromEnv ?? ""), gateway }
  })

/** ", port mapped at HOST:PORT (pcp until …)" for the status line, or nothing. */
export const portMappingText = (status: {
  readonly portMapping?: typeof PortMappingJson.Type | undefined
}) =>
  status.portMapping === undefined
    ? ""
    : `, port mapped at ${hostPort(status.portMapping.host, status.portMapping.port)} (${status.portMapping.protocol} until ${new Date(status.portMapping.expiresAt).toISOString()})`
