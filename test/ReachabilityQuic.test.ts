/**
 * The identify exchange and the dial-back on real QUIC over loopback (nodes on 127.0.0.1-5,
 * so that peers are on different IPs): peers tell a node what they observe, two of them on
 * different IPs confirm its address, a node it never contacted dials it back through a relay;
 * a peer's bad identify answers are typed errors that change nothing.
 */
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Either } from "effect"
import * as NodeId from "../src/services/NodeId.js"
import { eventually, makeNode, type TestNode } from "./fixtures/cmNode.js"
import { makeLyingNode } from "./fixtures/lyingIdentify.js"

const dial = (from: TestNode, to: TestNode) => from.cm.getConnectionWithAddress(to.nodeId, to.address)

describe("Reachability over QUIC", () => {
  it.scopedLive(
    "peers on two IPs confirm the address; a node never contacted dials it back: public",
    () =>
      Effect.gen(function* () {
        const a = yield* makeNode("reach/a", { host: "127.0.0.1" })
        const b = yield* makeNode("reach/b", { host: "127.0.0.2" })
        const c = yield* makeNode("reach/c", { host: "127.0.0.3" })
        const d = yield* makeNode("reach/d", { host: "127.0.0.4" })
        // D is connected to B (B can ask it to dial) and was never in touch with A.
        yield* dial(d, b)
        yield* dial(a, b)
        const one = yield* eventually(a.cm.reachability, (r) => r.observers === 1, "5 seconds")
        expect(one).toMatchObject({ nat: "unknown", addresses: [] })
        yield* dial(a, c)
        const r = yield* eventually(a.cm.reachability, (r) => r.nat === "public", "15 seconds")
        expect(r.addresses).toEqual([a.address])
      }),
    30_000
  )

  it.scopedLive(
    "without a node to dial back the node stays cone: B's word that it dialled proves nothing",
    () =>
      Effect.gen(function* () {
        const a = yield* makeNode("reach2/a", { host: "127.0.0.1" })
        const b = yield* makeNode("reach2/b", { host: "127.0.0.2" })
        const c = yield* makeNode("reach2/c", { host: "127.0.0.3" })
        yield* dial(a, b)
        yield* dial(a, c)
        const r = yield* eventually(a.cm.reachability, (r) => r.nat === "cone", "10 seconds")
        expect(r.addresses).toEqual([a.address])
        yield* Effect.sleep("3 seconds")
        expect((yield* a.cm.reachability).nat).toBe("cone")
        // D dials A: A's identify answer tells D its confirmed address, and D's closest-nodes
        // answers carry it for A. C heard it too: A re-announced it to its peers once confirmed.
        const d = yield* makeNode("reach2/d", { host: "127.0.0.4" })
        yield* dial(d, a)
        const aSeenByD = yield* dial(b, d).pipe(
          Effect.flatMap((h) => h.client.closestNodesUpTo(a.nodeId, 20, Duration.seconds(5))),
          Effect.map((contacts) => contacts.find((x) => x.nodeIdEncoded === NodeId.encode(a.nodeId)))
        )
        expect(aSeenByD).toMatchObject({ host: "127.0.0.1", port: a.address.port, addresses: [a.address] })
        const aSeenByC = yield* dial(b, c).pipe(
          Effect.flatMap((h) => h.client.closestNodesUpTo(a.nodeId, 20, Duration.seconds(5))),
          Effect.map((contacts) => contacts.find((x) => x.nodeIdEncoded === NodeId.encode(a.nodeId)))
        )
        expect(aSeenByC).toMatchObject({ host: "127.0.0.1", port: a.address.port, addresses: [a.address] })
      }),
    30_000
  )

  it.scopedLive(
    "bad identify answers are typed errors and leave the picture unchanged",
    () =>
      Effect.gen(function* () {
        const a = yield* makeNode("reach3/a", { host: "127.0.0.1" })
        const notAnIp = yield* makeLyingNode("reach3/x", "127.0.0.2", {
          observed: { host: "evil.example", port: 1 },
          confirmed: []
        })
        const tooMany = yield* makeLyingNode("reach3/y", "127.0.0.3", {
          observed: { host: "127.0.0.1", port: a.address.port },
          confirmed: Array.from({ length: 6 }, (_, i) => ({ host: "127.0.0.3", port: 1000 + i }))
        })
        const malformed = yield* makeLyingNode("reach3/w", "127.0.0.5", { observed: "127.0.0.1", extra: 1 })
        const honest = yield* makeLyingNode("reach3/z", "127.0.0.4", {
          observed: { host: "127.0.0.1", port: a.address.port },
          confirmed: []
        })
        for (const peer of [notAnIp, tooMany, malformed]) yield* dial(a, peer)
        yield* eventually(
          Effect.sync(() => notAnIp.asked() + tooMany.asked() + malformed.asked()),
          (n) => n === 3,
          "5 seconds"
        )
        yield* Effect.sleep("1500 millis")
        // No answer counted: no observer, nothing confirmed.
        expect(yield* a.cm.reachability).toMatchObject({ nat: "unknown", addresses: [], observers: 0 })
        // The oversized answer reaches the caller as a typed failure of the call.
        const conn = yield* dial(a, tooMany)
        const failed = yield* Effect.either(
          conn.client.identify!({
            observed: { host: "127.0.0.3", port: tooMany.address.port },
            confirmed: []
          })
        )
        expect(Either.isLeft(failed) && failed.left._tag).toBe("PeerCallError")
        // An honest peer on a third IP alone confirms nothing either (its word is one).
        yield* dial(a, honest)
        const r = yield* eventually(a.cm.reachability, (r) => r.observers === 1, "5 seconds")
        expect(r).toMatchObject({ nat: "unknown", addresses: [] })
      }),
    30_000
  )
})
