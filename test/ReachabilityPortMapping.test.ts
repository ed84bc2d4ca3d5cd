/**
 * A port mapping in the node's reachability, on real QUIC over loopback (nodes on 127.0.0.1-4)
 * with a PCP/NAT-PMP gateway of our own (test/fixtures/natGateway.ts): the mapped address is a
 * candidate that a dial-back through a node A never contacted must reach before A calls itself
 * `public` and announces it. A has one observer (B), so no observed address is confirmed: only
 * the mapping can make it public.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer, Option, SubscriptionRef } from "effect"
import * as PortMapperLive from "../src/layers/PortMapperLive.js"
import { PortMapper, type PortMapping } from "../src/services/PortMapper.js"
import { eventually, makeNode, type TestNode } from "./fixtures/cmNode.js"
import { type GatewaySettings, startNatGateway } from "./fixtures/natGateway.js"

const dial = (from: TestNode, to: TestNode) => from.cm.getConnectionWithAddress(to.nodeId, to.address)

/** A gateway on loopback with `settings`, closed with the scope. */
const gateway = (settings: Partial<GatewaySettings>) =>
  Effect.acquireRelease(
    Effect.promise(() => startNatGateway({ settings })),
    (gw) => Effect.promise(() => gw.close())
  )

/** A on 127.0.0.1 mapped at the gateway; B its one observer; D, connected to B only, the helper. */
const world = (name: string, settings: Partial<GatewaySettings>) =>
  Effect.gen(function* () {
    const gw = yield* gateway(settings)
    const a = yield* makeNode(`${name}/a`, {
      host: "127.0.0.1",
      portMapper: PortMapperLive.layer({ gateway: `127.0.0.1:${gw.port}` })
    })
    const b = yield* makeNode(`${name}/b`, { host: "127.0.0.2" })
    const d = yield* makeNode(`${name}/d`, { host: "127.0.0.4" })
    const mapping = yield* eventually(
      Effect.flatMap(Effect.provide(PortMapper, a.ctx), (m) => m.current),
      Option.isSome,
      "5 seconds"
    )
    yield* dial(d, b)
    yield* dial(a, b)
    return { a, mapping: Option.getOrThrow(mapping) }
  })

describe("Reachability with a port mapping", () => {
  it.scopedLive(
    "the mapped address reached by a dial-back makes the node public and is announced",
    () =>
      Effect.gen(function* () {
        // The gateway maps A's port to the same port on its external address.
        const { a, mapping } = yield* world("pmap1", { externalPort: (internal) => internal })
        expect(mapping).toMatchObject({ host: "198.51.100.7", port: a.address.port })
        const r = yield* eventually(a.cm.reachability, (r) => r.nat === "public", "15 seconds")
        // Announced; D's dial-back made it D's observation too, so A's own may join it.
        expect(r.addresses).toContainEqual({ host: "198.51.100.7", port: a.address.port })
      }),
    30_000
  )

  it.scopedLive(
    "a mapping granted after the node classified itself starts a classification at once",
    () =>
      Effect.gen(function* () {
        // A mapper whose mapping the test grants (the periodic check is minutes away).
        const ref = yield* SubscriptionRef.make(Option.none<PortMapping>())
        const a = yield* makeNode("pmap3/a", {
          host: "127.0.0.1",
          portMapper: Layer.succeed(PortMapper, { current: SubscriptionRef.get(ref), changes: ref.changes })
        })
        const b = yield* makeNode("pmap3/b", { host: "127.0.0.2" })
        const d = yield* makeNode("pmap3/d", { host: "127.0.0.4" })
        yield* dial(d, b)
        yield* dial(a, b)
        yield* eventually(a.cm.reachability, (r) => r.observers === 1, "5 seconds")
        // Past the settling second: the classification of B's observation has run (no port to check).
        yield* Effect.sleep("2 seconds")
        expect((yield* a.cm.reachability).nat).toBe("unknown")
        const mapped = { host: "198.51.100.7", port: a.address.port }
        yield* SubscriptionRef.set(
          ref,
          Option.some<PortMapping>({ ...mapped, protocol: "pcp", expiresAt: Date.now() + 7_200_000 })
        )
        const r = yield* eventually(a.cm.reachability, (r) => r.nat === "public", "8 seconds")
        expect(r.addresses).toContainEqual(mapped)
      }),
    30_000
  )

  it.scopedLive(
    "a mapped port the dial-back cannot reach is neither public nor announced",
    () =>
      Effect.gen(function* () {
        // The gateway's default: 10000 away from A's port, where nothing listens.
        const { a, mapping } = yield* world("pmap2", {})
        expect(mapping.port).not.toBe(a.address.port)
        yield* eventually(a.cm.reachability, (r) => r.observers === 1, "5 seconds")
        // Longer than the dial-back may take (its 5 s dial, the order and the proof).
        yield* Effect.sleep("9 seconds")
        expect(yield* a.cm.reachability).toMatchObject({ nat: "unknown", addresses: [], observers: 1 })
      }),
    30_000
  )
})
