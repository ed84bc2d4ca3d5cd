/**
 * PortMapper: a UDP port mapping for the node's QUIC port, asked of the gateway in front of it.
 *
 * When the node listens on a private address behind a gateway, the live layer
 * (`PortMapperLive` in "quicmesh/node") asks that gateway to forward an external UDP port to
 * the node's port with PCP (RFC 6887), falling back to NAT-PMP (RFC 6886) when the gateway
 * answers PCP with NAT-PMP's "unsupported version" or not at all, and to UPnP IGD when it speaks
 * neither. It renews the mapping at half
 * its lifetime, deletes it when its scope closes, and runs entirely in the background: a gateway
 * that does not answer is retried a bounded number of times with backoff, then left alone.
 *
 * The service is the mapping as a value (`current`) and as a change stream (`changes`), for the
 * parts of the node that announce or verify its external addresses. `layerNoop` (never a
 * mapping) is for simulated worlds and tests; `layerStatic` holds a fixed value.
 */
import { Context, Data, Effect, Layer, Option, Stream, SubscriptionRef } from "effect"

/** The protocols a mapping can be made with. */
export type PortMapProtocol = "pcp" | "nat-pmp" | "upnp"

/** A mapping the gateway granted: its external address, how it was made, until when (ms since the epoch). */
export interface PortMapping {
  readonly host: string
  readonly port: number
  readonly protocol: PortMapProtocol
  readonly expiresAt: number
}

export interface PortMapperService {
  /** The mapping held now. */
  readonly current: Effect.Effect<Option.Option<PortMapping>>
  /** The mapping held now, then every change (granted, renewed, moved, expired, deleted). */
  readonly changes: Stream.Stream<Option.Option<PortMapping>>
}

export class PortMapper extends Context.Tag("quicmesh/PortMapper")<PortMapper, PortMapperService>() {}

// ---- Errors (each leaves the mapping held as it was) ---------------------------------------

/**
 * An answer that cannot be what was asked: too short or too long, not a multiple of 4 (PCP),
 * another version, another opcode, no response bit, another nonce, protocol or internal port.
 */
export class PortMapMalformedAnswer extends Data.TaggedError("PortMapMalformedAnswer")<{
  readonly protocol: PortMapProtocol
  readonly reason: "length" | "version" | "opcode" | "nonce" | "mapping"
  readonly detail: string
}> {
  override get message() {
    return `${this.protocol} answer rejected (${this.reason}): ${this.detail}`
  }
}

/** The gateway speaks another version of the protocol (a NAT-PMP gateway answering PCP). */
export class PortMapUnsupportedVersion extends Data.TaggedError("PortMapUnsupportedVersion")<{
  readonly protocol: PortMapProtocol
  readonly gatewayVersion: number
}> {
  override get message() {
    return `the gateway does not speak ${this.protocol} (it answered with version ${this.gatewayVersion})`
  }
}

/** The gateway answered with a result code other than success. */
export class PortMapRefused extends Data.TaggedError("PortMapRefused")<{
  readonly protocol: PortMapProtocol
  readonly resultCode: number
  readonly detail: string
}> {
  override get message() {
    return `${this.protocol} request refused by the gateway: ${this.detail} (result ${this.resultCode})`
  }
}

/** No answer after every retransmission. */
export class PortMapTimeout extends Data.TaggedError("PortMapTimeout")<{
  readonly protocol: PortMapProtocol
  readonly gateway: string
  readonly attempts: number
}> {
  override get message() {
    return `no ${this.protocol} answer from ${this.gateway} after ${this.attempts} attempt(s)`
  }
}

/** The local UDP socket failed (bind, send, or an ICMP error such as "port unreachable"). */
export class PortMapSocketError extends Data.TaggedError("PortMapSocketError")<{
  readonly gateway: string
  readonly detail: string
  readonly cause?: unknown
}> {
  override get message() {
    return `port-mapping socket to ${this.gateway} failed: ${this.detail}`
  }
}

export type PortMapError =
  | PortMapMalformedAnswer
  | PortMapUnsupportedVersion
  | PortMapRefused
  | PortMapTimeout
  | PortMapSocketError

// ---- Constructors ----------------------------------------------------------------------------

/** The service over a ref holding the mapping (what the live layer writes). */
export const fromRef = (
  ref: SubscriptionRef.SubscriptionRef<Option.Option<PortMapping>>
): PortMapperService => ({
  current: SubscriptionRef.get(ref),
  changes: ref.changes
})

/** Never a mapping: port mapping off, simulated worlds, tests. */
export const layerNoop: Layer.Layer<PortMapper> = Layer.succeed(PortMapper, {
  current: Effect.succeed(Option.none()),
  changes: Stream.make(Option.none())
})

/** A fixed mapping (tests of what consumes one). */
export const layerStatic = (mapping: Option.Option<PortMapping>): Layer.Layer<PortMapper> =>
  Layer.succeed(PortMapper, { current: Effect.succeed(mapping), changes: Stream.make(mapping) })
