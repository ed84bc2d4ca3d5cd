import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as Dns from "../src/services/Dns.js"

describe("Dns.layerStatic", () => {
  it.effect("answers from its table, names compared without case or a trailing dot", () =>
    Effect.gen(function* () {
      const dns = yield* Dns.Dns
      expect(yield* dns.lookup("seed.example")).toEqual(["10.0.0.1", "fd00::1"])
      expect(yield* dns.lookup("SEED.Example.")).toEqual(["10.0.0.1", "fd00::1"])
    }).pipe(Effect.provide(Dns.layerStatic({ "Seed.Example": ["10.0.0.1", "fd00::1"] })))
  )

  it.effect("fails an unknown name as NXDOMAIN does", () =>
    Effect.gen(function* () {
      const error = yield* Effect.flip((yield* Dns.Dns).lookup("nowhere.example"))
      expect(error).toMatchObject({ _tag: "DnsError", hostname: "nowhere.example", code: "ENOTFOUND" })
      expect(error.message).toBe("cannot resolve nowhere.example: no such name (ENOTFOUND)")
    }).pipe(Effect.provide(Dns.layerStatic({})))
  )
})
