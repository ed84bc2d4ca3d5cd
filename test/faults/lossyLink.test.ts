/**
 * Two real nodes on loopback with the UDP fault relay between them (10% loss each way, 100 ms
 * delay each way): connecting, pings, lookups and streaming closest-node queries still succeed
 * within their timeouts, and the relay proves the faults really happened.
 */
import { describe, expect, it } from "@effect/vitest"
import { Chunk, Effect, Stream } from "effect"
import * as NodeId from "../../src/services/NodeId.js"
import { makeNode } from "../fixtures/cmNode.js"
import { makeUdpRelay } from "./udpRelay.js"

describe("a lossy, slow link (10% loss, 100 ms delay)", () => {
  it.scopedLive(
    "connect, ping, closest-nodes streams and a lookup all succeed within their timeouts",
    () =>
      Effect.gen(function* () {
        const b = yield* makeNode("lossy-b")
        const a = yield* makeNode("lossy-a", { config: { seedNodes: [] } })
        // b knows a few nodes, so its closest-nodes answers are streams of several items.
        for (let i = 0; i < 8; i++)
          yield* b.graph.setNode(makeId(i), {
            host: "127.0.0.2",
            port: 10_000 + i,
            scope: "local"
          })
        const relay = yield* makeUdpRelay({
          listenHost: "127.0.0.1",
          targetHost: "127.0.0.1",
          targetPort: b.address.port,
          lossRate: 0.1,
          delayMs: 100,
          seed: 7
        })
        const via = { host: "127.0.0.1", port: relay.port }
        const started = performance.now()
        yield* a.cm.getConnectionWithAddress(b.nodeId, via, { timeout: "10 seconds" })
        const connectMs = performance.now() - started
        const pings: Array<number> = []
        for (let i = 0; i < 10; i++) {
          const t = performance.now()
          expect(yield* a.cm.pingNode(b.nodeId, undefined, { timeout: "5 seconds" })).toBe(true)
          pings.push(performance.now() - t)
        }
        // Every ping crossed the relay twice each way: at least 200 ms round trip.
        expect(Math.min(...pings)).toBeGreaterThanOrEqual(190)
        for (let i = 0; i < 5; i++) {
          const contacts = yield* a.cm.getRemoteNodeClosestNodes(b.nodeId, makeId(100 + i), {
            timeout: "5 seconds"
          })
          expect(contacts.length).toBe(8)
        }
        // A streaming closest-nodes call through withConnectionStream delivers every item.
        const lookup = yield* a.cm
          .withConnectionStream(b.nodeId, (h) => h.client.closestNodes(makeId(3)))
          .pipe(Stream.runCollect, Effect.timeout("5 seconds"))
        expect(Chunk.size(lookup)).toBe(8)
        const stats = relay.stats()
        console.log(
          `lossy link: connect ${Math.round(connectMs)} ms, ping median ${Math.round(
            pings.sort((x, y) => x - y)[5]!
          )} ms, dropped ${stats.toTarget.dropped}/${stats.toTarget.received} to b and ${stats.toClient.dropped}/${stats.toClient.received} to a`
        )
        // The faults were real: datagrams were dropped in both directions.
        expect(stats.toTarget.dropped + stats.toClient.dropped).toBeGreaterThan(0)
      }),
    30_000
  )
})

/** A NodeId made from a small integer (not a real key: only the graph sees it). */
function makeId(i: number): NodeId.NodeId {
  const bytes = new Uint8Array(NodeId.NODE_ID_BYTES)
  bytes[0] = 0x40 | (i & 0x3f)
  bytes[NodeId.NODE_ID_BYTES - 1] = i
  return bytes as NodeId.NodeId
}
