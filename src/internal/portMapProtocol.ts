/**
 * What the port-mapping session needs of a protocol (PCP, NAT-PMP): ask for a UDP mapping of an
 * internal port (or renew it: the same request again, suggesting the port held), and delete it.
 */
import { type Effect, Either } from "effect"
import { type PortMapError, type PortMapProtocol, PortMapRefused } from "../services/PortMapper.js"
import type { RetryPolicy } from "./gatewayChannel.js"

/** What the gateway granted: the external address and the lifetime in seconds. */
export interface Granted {
  readonly host: string
  readonly port: number
  readonly lifetimeSeconds: number
}

export interface MapRequest {
  readonly internalPort: number
  /** 0: no preference. */
  readonly suggestedPort: number
  readonly lifetimeSeconds: number
}

export interface MapProtocol {
  readonly protocol: PortMapProtocol
  readonly map: (request: MapRequest) => Effect.Effect<Granted, PortMapError>
  readonly unmap: (internalPort: number, retry: RetryPolicy) => Effect.Effect<void, PortMapError>
}

/** An answer's non-zero result code as a refusal, named from the protocol's table of result codes. */
export const refusal = (protocol: PortMapProtocol, resultCode: number, texts: ReadonlyArray<string>) =>
  Either.left(
    new PortMapRefused({ protocol, resultCode, detail: texts[resultCode] ?? "unknown result code" })
  )
