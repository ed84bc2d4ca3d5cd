/**
 * A node's confirmed addresses, re-announced: when they change, every peer it holds a
 * connection to hears them (the identify exchange again), and that peer's closest-nodes
 * answers about the node carry the new addresses. On the simulated network.
 */
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect } from "effect"
import { simulate } from "../src/programs/SimRuntime.js"
import { makeWorld, type SimNode } from "../src/programs/Simulation.js"
import * as NodeId from "../src/services/NodeId.js"

const addressOf = (n: SimNode) => ({ host: n.host, port: n.port })

const connect = (from: SimNode, to: SimNode) => from.cm.getConnectionWithAddress(to.nodeId, addressOf(to))

/** What `peer` answers `asker` about `node` when asked for the nodes closest to it. */
const answerAbout = (asker: SimNode, peer: SimNode, node: SimNode) =>
  connect(asker, peer).pipe(
    Effect.flatMap((h) => h.client.closestNodesUpTo(node.nodeId, 20, Duration.seconds(5))),
    Effect.map((contacts) => contacts.find((c) => c.nodeIdEncoded === NodeId.encode(node.nodeId)))
  )

describe("re-announcing confirmed addresses", () => {
  it.effect("a peer told nothing confirmed at first answers with the address once it is confirmed", () =>
    simulate((ctx) =>
      Effect.gen(function* () {
        const w = yield* makeWorld(ctx, { seed: 19, latency: 10, jitter: 0 })
        const first = yield* w.addNode()
        const second = yield* w.addNode()
        const asker = yield* w.addNode()
        const node = yield* w.addNode()
        // One peer's word confirms nothing: the first peer hears that the node has no address.
        yield* connect(node, first)
        yield* Effect.sleep("5 seconds")
        expect(yield* node.cm.reachability).toMatchObject({ addresses: [], observers: 1 })
        expect((yield* answerAbout(asker, first, node))?.addresses).toBeUndefined()
        // A second peer on another IP confirms it: the change is told to both peers.
        yield* connect(node, second)
        yield* Effect.sleep("5 seconds")
        const r = yield* node.cm.reachability
        expect(r.addresses).toEqual([addressOf(node)])
        expect(yield* answerAbout(asker, first, node)).toMatchObject({ addresses: [addressOf(node)] })
        expect(yield* answerAbout(asker, second, node)).toMatchObject({ addresses: [addressOf(node)] })
      })
    )
  )
})
