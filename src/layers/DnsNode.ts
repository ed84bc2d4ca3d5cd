/**
 * `Dns` over Node's system resolver (`node:dns/promises` `lookup`, every address): the names
 * the operating system resolves (hosts file, mDNS, DNS) resolve here.
 */
import { lookup as systemLookup } from "node:dns/promises"
import { Effect, Layer } from "effect"
import { Dns, DnsError, type DnsService } from "../services/Dns.js"

const codeOf = (cause: unknown): string | undefined => {
  const code = (cause as { code?: unknown } | null)?.code
  return typeof code === "string" ? code : undefined
}

export const make: DnsService = {
  lookup: (hostname) =>
    Effect.tryPromise({
      try: () => systemLookup(hostname, { all: true }),
      catch: (cause) =>
        new DnsError({
          hostname,
          code: codeOf(cause),
          detail: cause instanceof Error ? cause.message : String(cause),
          cause
        })
    }).pipe(Effect.map((found) => found.map((f) => f.address)))
}

export const layer: Layer.Layer<Dns> = Layer.succeed(Dns, make)
