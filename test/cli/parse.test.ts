/**
 * The CLI's input checks in process (the process-level exit codes are in input.test.ts):
 * seed lists, addresses, counts, and the connection manager's tuning from the environment.
 */
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Either, Option } from "effect"
import * as fc from "fast-check"
import { managerOptionsFromEnv } from "../../src/programs/Agent.js"
import {
  checkHost,
  configErrorText,
  envName,
  parseAddress,
  parseSeedNodes,
  positiveInt
} from "../../src/programs/Input.js"
import * as CMConfig from "../../src/services/ConnectionManagerConfig.js"
import * as NodeId from "../../src/services/NodeId.js"

const ID = "vl1a6qrjsjn9l1dm4njl9k719kanc83ga9le58abbl42t4rua7b30"

const failure = <A, E extends { message: string }>(self: Effect.Effect<A, E>) =>
  Effect.flip(self).pipe(Effect.map((e) => e.message))

describe("seed lists", () => {
  it.effect("two seeds, spaces and a trailing separator; empty means none", () =>
    Effect.gen(function* () {
      const seeds = yield* parseSeedNodes(` ${ID}@127.0.0.1:4000 ; ${ID}@[::1]:5000; `)
      expect(seeds.map((s) => [NodeId.encode(s.nodeId), s.host, s.port])).toEqual([
        [ID, "127.0.0.1", 4000],
        [ID, "::1", 5000]
      ])
      expect(yield* parseSeedNodes("")).toEqual([])
    })
  )

  it.effect("each malformed entry is named with what is wrong", () =>
    Effect.gen(function* () {
      expect(yield* failure(parseSeedNodes(`${ID}@127.0.0.1:1;nonsense`))).toBe(
        'invalid seed node "nonsense": expected NODEID@HOST:PORT'
      )
      expect(yield* failure(parseSeedNodes("vbad@127.0.0.1:4000"))).toMatch(
        /^invalid seed node "vbad@127\.0\.0\.1:4000": invalid NodeId "vbad"/
      )
      expect(yield* failure(parseSeedNodes(`${ID}@127.0.0.1:70000`))).toContain("must be 1-65535")
      expect(yield* failure(parseSeedNodes(`${ID}@bad_host!:1`))).toContain('invalid host "bad_host!"')
    })
  )

  it.prop(
    "NODEID@HOST:PORT lists parse back to what was written",
    [
      fc.array(
        fc.tuple(
          fc.uint8Array({ minLength: 32, maxLength: 32 }),
          fc.ipV4(),
          fc.integer({ min: 1, max: 65535 })
        ),
        { maxLength: 5 }
      )
    ],
    ([entries]) => {
      const text = entries
        .map(([b, h, p]) => `${NodeId.encode(NodeId.unsafeFromBytes(b))}@${h}:${p}`)
        .join(";")
      const parsed = Effect.runSync(parseSeedNodes(text))
      expect(parsed.map((s) => [NodeId.encode(s.nodeId), s.host, s.port])).toEqual(
        entries.map(([b, h, p]) => [NodeId.encode(NodeId.unsafeFromBytes(b)), h, p])
      )
    }
  )
})

describe("addresses, hosts and counts", () => {
  it.effect("HOST:PORT and [IPV6]:PORT; port 0 and 65536 refused", () =>
    Effect.gen(function* () {
      expect(yield* parseAddress("example.org:443")).toEqual({ host: "example.org", port: 443 })
      expect(yield* parseAddress("[fe80::1]:9")).toEqual({ host: "fe80::1", port: 9 })
      expect(yield* failure(parseAddress("127.0.0.1"))).toBe(
        'invalid address "127.0.0.1": expected HOST:PORT'
      )
      expect(yield* failure(parseAddress("127.0.0.1:0"))).toContain("must be 1-65535")
      expect(yield* failure(parseAddress("127.0.0.1:65536"))).toContain("must be 1-65535")
      expect(yield* failure(checkHost("a b"))).toBe('invalid host "a b": not an IP address or hostname')
      expect(yield* failure(checkHost("999.1.1.1"))).toBe(
        'invalid host "999.1.1.1": not an IP address or hostname'
      )
      expect(yield* checkHost("node-1.example")).toBe("node-1.example")
    })
  )

  it.effect("--timeout and --limit take whole numbers > 0", () =>
    Effect.gen(function* () {
      expect(yield* positiveInt("timeout", Option.some("1500"))).toBe(1500)
      expect(yield* positiveInt("timeout", Option.none())).toBeUndefined()
      for (const bad of ["0", "-1", "1.5", "abc", "", "1e3", "99999999999999999999"])
        expect(yield* failure(positiveInt("limit", Option.some(bad)))).toBe(
          `invalid limit "${bad}": must be a whole number > 0`
        )
    })
  )
})

describe("the connection manager's tuning from the environment", () => {
  it("option names map to QUICMESH_ variables", () => {
    expect(envName("connectionIdleTimeoutTime")).toBe("QUICMESH_CONNECTION_IDLE_TIMEOUT_TIME")
    expect(envName("maxConnections")).toBe("QUICMESH_MAX_CONNECTIONS")
    expect(envName("QUICMESH_VERBOSE")).toBe("QUICMESH_VERBOSE")
    expect(
      configErrorText('(Invalid data at maxConnections: "Expected an integer value but received "x"")')
    ).toBe('invalid QUICMESH_MAX_CONNECTIONS: expected an integer value but received "x"')
  })

  it.effect("defaults without variables; variables override; seeds come from the caller", () =>
    Effect.gen(function* () {
      const seeds = yield* parseSeedNodes(`${ID}@127.0.0.1:4000`)
      expect(yield* managerOptionsFromEnv(seeds, {})).toEqual({ ...CMConfig.defaults, seedNodes: seeds })
      const tuned = yield* managerOptionsFromEnv([], {
        QUICMESH_CONNECTION_IDLE_TIMEOUT_TIME: "30 seconds",
        QUICMESH_MAX_CONNECTIONS: "5",
        UNRELATED: "x"
      })
      expect(Duration.toMillis(tuned.connectionIdleTimeoutTime)).toBe(30_000)
      expect(tuned.maxConnections).toBe(5)
      expect(tuned.rpcCallTimeoutTime).toEqual(CMConfig.defaults.rpcCallTimeoutTime)
    })
  )

  it.effect("a bad value is a UsageError naming the variable", () =>
    Effect.gen(function* () {
      const bad = yield* Effect.flip(
        managerOptionsFromEnv([], { QUICMESH_CONNECTION_IDLE_TIMEOUT_TIME: "forever" })
      )
      expect(bad._tag).toBe("UsageError")
      expect(bad.message).toBe(
        'invalid QUICMESH_CONNECTION_IDLE_TIMEOUT_TIME: expected a duration but received "forever"'
      )
      expect(yield* failure(managerOptionsFromEnv([], { QUICMESH_MAX_CONNECTIONS: "0" }))).toBe(
        "invalid QUICMESH_MAX_CONNECTIONS: 0 must be at least 1"
      )
      expect(
        Either.isLeft(yield* Effect.either(managerOptionsFromEnv([], { QUICMESH_RELAY_RATE_LIMIT: "x" })))
      ).toBe(true)
    })
  )
})
