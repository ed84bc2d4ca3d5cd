/** The observed-address store and the identify answer's checks. */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either } from "effect"
import { checkIdentify } from "../src/internal/connectionManager/reachability/keeper.js"
import { ObservedAddresses } from "../src/internal/connectionManager/reachability/observed.js"

const at = (host: string, port: number) => ({ host, port })

describe("ObservedAddresses", () => {
  it("an address counts once peers on two different IPs observed it, however often one repeats it", () => {
    const o = new ObservedAddresses(8, 60_000)
    for (let i = 0; i < 10; i++) o.record("p1", "198.51.100.1", at("203.0.113.7", 4000), i)
    expect(o.confirmed(10)).toEqual([])
    expect(o.classify(10)).toBe("unknown")
    // A second peer on the same IP: still one IP.
    o.record("p2", "198.51.100.1", at("203.0.113.7", 4000), 11)
    expect(o.confirmed(12)).toEqual([])
    o.record("p3", "198.51.100.2", at("203.0.113.7", 4000), 12)
    expect(o.confirmed(13)).toEqual([at("203.0.113.7", 4000)])
    expect(o.classify(13)).toBe("cone")
    expect(o.observers(13)).toBe(2)
    expect(o.observedBy("p1", 13)).toEqual(at("203.0.113.7", 4000))
  })

  it("peers on different IPs seeing different ports of one IP: symmetric; a liar cannot outvote two", () => {
    const o = new ObservedAddresses(8, 60_000)
    o.record("p1", "198.51.100.1", at("203.0.113.7", 4000), 0)
    o.record("p2", "198.51.100.2", at("203.0.113.7", 4001), 0)
    expect(o.classify(1)).toBe("symmetric")
    expect(o.confirmed(1)).toEqual([])
    const c = new ObservedAddresses(8, 60_000)
    c.record("p1", "198.51.100.1", at("203.0.113.7", 4000), 0)
    c.record("p2", "198.51.100.2", at("203.0.113.7", 4000), 0)
    c.record("liar", "198.51.100.3", at("203.0.113.7", 9999), 0)
    expect(c.classify(1)).toBe("cone")
    expect(c.confirmed(1)).toEqual([at("203.0.113.7", 4000)])
  })

  it("stale observations stop counting and are dropped; the store keeps at most `limit` peers", () => {
    const o = new ObservedAddresses(3, 1_000)
    o.record("p1", "198.51.100.1", at("203.0.113.7", 4000), 0)
    o.record("p2", "198.51.100.2", at("203.0.113.7", 4000), 500)
    expect(o.confirmed(900)).toHaveLength(1)
    expect(o.confirmed(1_200)).toEqual([])
    expect(o.observedBy("p1", 1_200)).toBeUndefined()
    expect(o.prune(1_200)).toBe(true)
    expect(o.size).toBe(1)
    for (let i = 0; i < 10; i++) o.record(`q${i}`, `198.51.100.${10 + i}`, at("203.0.113.7", 4000), 1_300)
    expect(o.size).toBe(3)
    // The latest three are kept.
    expect(o.observedBy("q9", 1_300)).toBeDefined()
    expect(o.observedBy("q0", 1_300)).toBeUndefined()
  })
})

describe("checkIdentify", () => {
  it.effect("an answer that cannot be true is a typed error; a peer vouches only for its own IP", () =>
    Effect.gen(function* () {
      const bad = yield* Effect.either(
        checkIdentify("peer", "198.51.100.1", { observed: at("not-an-ip", 4000), confirmed: [] })
      )
      expect(Either.isLeft(bad) && bad.left._tag).toBe("IdentifyAnswerInvalid")
      const zero = yield* Effect.either(
        checkIdentify("peer", "198.51.100.1", { observed: at("203.0.113.7", 0), confirmed: [] })
      )
      expect(Either.isLeft(zero)).toBe(true)
      const badConfirmed = yield* Effect.either(
        checkIdentify("peer", "198.51.100.1", { observed: at("203.0.113.7", 1), confirmed: [at("x", 1)] })
      )
      expect(Either.isLeft(badConfirmed)).toBe(true)
      const ok = yield* checkIdentify("peer", "198.51.100.1", {
        observed: at("203.0.113.7", 4000),
        confirmed: [at("198.51.100.1", 5000), at("192.0.2.9", 5000)]
      })
      expect(ok).toEqual({ observed: at("203.0.113.7", 4000), confirmed: [at("198.51.100.1", 5000)] })
    })
  )
})
