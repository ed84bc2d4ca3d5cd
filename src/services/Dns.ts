/**
 * Dns: the IP addresses of a hostname. The connection manager resolves the hostnames it is
 * given to dial (`getMultiConnection`) through it. `layerStatic` answers from a table (for
 * simulations and tests); the live layer over the system resolver is `DnsNode.layer`
 * ("quicmesh/node").
 */
import { Context, Data, Effect, Layer } from "effect"

/** A name could not be resolved: no such name, no address, or the resolver failed. */
export class DnsError extends Data.TaggedError("DnsError")<{
  readonly hostname: string
  /** The resolver's error code where it gave one (ENOTFOUND, EAI_AGAIN, …). */
  readonly code: string | undefined
  readonly detail: string
  readonly cause?: unknown
}> {
  override get message() {
    return `cannot resolve ${this.hostname}: ${this.detail}`
  }
}

export interface DnsService {
  /** Every address of `hostname` (IPv4 and IPv6, as text), in the resolver's order. */
  readonly lookup: (hostname: string) => Effect.Effect<ReadonlyArray<string>, DnsError>
}

export class Dns extends Context.Tag("quicmesh/Dns")<Dns, DnsService>() {}

/**
 * A resolver that knows only `records` (hostname to addresses; names compare without regard to
 * case or a trailing dot). Any other name fails as a real resolver's NXDOMAIN does (ENOTFOUND).
 */
export const makeStatic = (records: Readonly<Record<string, ReadonlyArray<string>>>): DnsService => {
  const table = new Map<string, ReadonlyArray<string>>()
  for (const [name, addresses] of Object.entries(records)) table.set(canonical(name), addresses)
  return {
    lookup: (hostname) =>
      Effect.suspend(() => {
        const found = table.get(canonical(hostname))
        return found === undefined
          ? Effect.fail(new DnsError({ hostname, code: "ENOTFOUND", detail: "no such name (ENOTFOUND)" }))
          : Effect.succeed(found)
      })
  }
}

const canonical = (name: string) => name.toLowerCase().replace(/\.$/, "")

/** `makeStatic(records)` as a layer. */
export const layerStatic = (records: Readonly<Record<string, ReadonlyArray<string>>>): Layer.Layer<Dns> =>
  Layer.succeed(Dns, makeStatic(records))
