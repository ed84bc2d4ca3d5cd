/**
 * Key renewal end to end, in a library user's program: `KeyRing.renew` moves the KeyRing's
 * listeners, the routing table (buckets laid out anew, in memory and in lmdb) and the
 * connection manager on real QUIC over loopback to the new NodeId before it returns; the old
 * connections close, the node joins again under its new NodeId, its peers forget the old one
 * (its certificate chain proves the renewal), and a dial that expects the old NodeId fails.
 */
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Exit, Option, Scope } from "effect"
import { renewedFrom } from "../src/internal/certificates.js"
import * as KeyRingTest from "../src/layers/KeyRingTest.js"
import * as NodeGraphLmdb from "../src/layers/NodeGraphLmdb.js"
import * as NodeGraphMemory from "../src/layers/NodeGraphMemory.js"
import { KeyRing, type Renewal } from "../src/services/KeyRing.js"
import type { NodeGraphService } from "../src/services/NodeGraph.js"
import * as NodeId from "../src/services/NodeId.js"
import { eventually, makeNode, nodeIdOf } from "./fixtures/cmNode.js"

const hex = (id: Uint8Array) => Buffer.from(id).toString("hex")
const renewedId = (seed: string) => nodeIdOf(KeyRingTest.renewedSeed(seed, 1))
const address = { host: "10.0.0.1", port: 4000, scope: "global" } as const

/** Every stored node sits in the bucket of its distance to the graph's owner. */
const laidOutAround = (graph: NodeGraphService, owner: NodeId.NodeId) =>
  Effect.map(graph.getBuckets, (buckets) =>
    buckets.every(([index, contacts]) => contacts.every((c) => NodeId.bucketIndex(owner, c.nodeId) === index))
  )

describe("KeyRing.onRenew", () => {
  it.scoped(
    "runs inside renew with the old and new NodeId, until its scope closes; a failing listener does not fail renew",
    () =>
      Effect.gen(function* () {
        const keyRing = yield* KeyRingTest.make("onrenew")
        const seen: Array<Renewal> = []
        const scope = yield* Scope.make()
        yield* keyRing.onRenew((r) => Effect.sync(() => seen.push(r))).pipe(Scope.extend(scope))
        yield* keyRing.onRenew(() => Effect.die("listener bug"))
        yield* keyRing.renew
        // Heard before renew returned, with both NodeIds.
        expect(seen.map((r) => [hex(r.previous), hex(r.nodeId)])).toEqual([
          [hex(nodeIdOf("onrenew")), hex(renewedId("onrenew"))]
        ])
        expect(seen[0]!.tls).toEqual(yield* keyRing.tlsConfig)
        yield* Scope.close(scope, Exit.void)
        yield* keyRing.renew
        expect(seen.length).toBe(1)
      })
  )
})

describe("NodeGraph.changeOwner", () => {
  const owner = nodeIdOf("graph-owner")
  const next = nodeIdOf("graph-next")
  const others = Array.from({ length: 40 }, (_, i) => nodeIdOf(`graph-node-${i}`))

  const fill = (graph: NodeGraphService) =>
    Effect.gen(function* () {
      // Our next NodeId is known to the table before the renewal: it must go.
      for (const id of [next, ...others]) yield* graph.setNode(id, address)
      yield* graph.markBucketRefreshed(NodeId.bucketIndex(owner, others[0]!))
    })

  /** The nodes stored now, our next NodeId left out. */
  const storedOthers = (graph: NodeGraphService) =>
    Effect.map(graph.getBuckets, (buckets) =>
      buckets.flatMap(([, cs]) => cs.map((c) => c.nodeId)).filter((id) => !NodeId.equals(id, next))
    )

  const checkMoved = (graph: NodeGraphService, k: number, stored: ReadonlyArray<NodeId.NodeId>) =>
    Effect.gen(function* () {
      expect(hex(graph.ownNodeId)).toBe(hex(next))
      expect(yield* laidOutAround(graph, next)).toBe(true)
      expect(Option.isNone(yield* graph.getNode(next))).toBe(true)
      // At most k per bucket around the new owner, every stored node kept that fits.
      const perBucket = new Map<number, number>()
      for (const id of stored) {
        const i = NodeId.bucketIndex(next, id)
        perBucket.set(i, (perBucket.get(i) ?? 0) + 1)
      }
      const expected = [...perBucket.values()].reduce((n, c) => n + Math.min(c, k), 0)
      expect(yield* graph.size).toBe(expected)
      for (const [index] of yield* graph.getBuckets)
        expect(Option.isNone(yield* graph.getBucketRefreshedAt(index))).toBe(true)
    })

  it.effect("the memory graph lays its buckets out around the new NodeId", () =>
    Effect.gen(function* () {
      const graph = yield* NodeGraphMemory.make(owner, { k: 3 })
      yield* fill(graph)
      expect(yield* laidOutAround(graph, owner)).toBe(true)
      expect(Option.isSome(yield* graph.getNode(next))).toBe(true)
      const stored = yield* storedOthers(graph)
      yield* graph.changeOwner(next)
      yield* checkMoved(graph, 3, stored)
    })
  )

  it.scoped("the lmdb graph does too, and records the new owner: reopened for it, nothing is re-laid", () =>
    Effect.gen(function* () {
      const dir = yield* Effect.acquireRelease(
        Effect.sync(() => mkdtempSync(join(tmpdir(), "renewal-lmdb-"))),
        (d) => Effect.sync(() => rmSync(d, { recursive: true, force: true }))
      )
      const path = join(dir, "nodegraph")
      const first = yield* Scope.make()
      const graph = yield* NodeGraphLmdb.make(owner, { path, k: 3 }).pipe(Scope.extend(first))
      yield* fill(graph)
      const stored = yield* storedOthers(graph)
      yield* graph.changeOwner(next)
      yield* checkMoved(graph, 3, stored)
      const bucket = NodeId.bucketIndex(next, others[0]!)
      yield* graph.markBucketRefreshed(bucket)
      const before = yield* graph.getBuckets
      yield* Scope.close(first, Exit.void)
      // Reopened for the new owner: the same table, and the refresh time made since kept
      // (a store whose recorded owner differed would have been re-laid and lost it).
      const reopened = yield* NodeGraphLmdb.make(next, { path, k: 3 })
      expect((yield* reopened.getBuckets).map(([i, cs]) => [i, cs.map((c) => hex(c.nodeId))])).toEqual(
        before.map(([i, cs]) => [i, cs.map((c) => hex(c.nodeId))])
      )
      expect(Option.isSome(yield* reopened.getBucketRefreshedAt(bucket))).toBe(true)
    })
  )
})

describe("a renewal on a running node (real QUIC on loopback)", () => {
  it.scopedLive(
    "the manager, its graph and its answers move at once; peers forget the old NodeId; dials expecting it fail",
    () =>
      Effect.gen(function* () {
        const a = yield* makeNode("renew-a")
        const b = yield* makeNode("renew-b")
        const c = yield* makeNode("renew-c")
        yield* a.cm.getConnectionWithAddress(b.nodeId, b.address)
        yield* a.cm.getConnectionWithAddress(c.nodeId, c.address)
        yield* eventually(b.graph.getNode(a.nodeId), Option.isSome)
        const old = a.nodeId
        const renewed = renewedId("renew-a")

        yield* Context.get(a.ctx, KeyRing).renew

        // When renew returns, with no waiting: the manager's own id and the graph's owner.
        expect(hex(a.cm.nodeId)).toBe(hex(renewed))
        expect(hex(a.graph.ownNodeId)).toBe(hex(renewed))
        expect(yield* laidOutAround(a.graph, renewed)).toBe(true)
        expect(Option.isSome(yield* a.graph.getNode(b.nodeId))).toBe(true)
        // Pinging ourselves is refused for the new NodeId (it is us), not for the old one.
        expect(yield* a.cm.pingNode(renewed)).toBe(false)

        // The old connections close; A joins again as its new NodeId, and B and C, seeing the
        // new chain signed by the old key, forget the old NodeId.
        for (const peer of [b, c]) {
          yield* eventually(peer.graph.getNode(old), Option.isNone, "10 seconds")
          yield* eventually(peer.cm.hasConnection(old), (has) => !has, "10 seconds")
          yield* eventually(peer.graph.getNode(renewed), Option.isSome, "10 seconds")
        }
        const seenByB = (yield* b.cm.listConnections).find((x) => x.nodeId === NodeId.encode(renewed))
        expect(seenByB).toBeDefined()

        // A dial that expects the old NodeId fails: A answers only as its new one.
        const dialOld = yield* b.cm.getConnectionWithAddress(old, a.address).pipe(Effect.flip)
        expect(dialOld.message).toContain("mismatch")
        expect(yield* b.cm.pingNode(old, a.address)).toBe(false)
        // B finds the new NodeId; C's answer about A's neighbourhood comes from A's moved table
        // (A leaves itself and the caller out).
        expect(Option.isSome(yield* b.cm.findNode(renewed))).toBe(true)
        const answer = yield* c.cm.getRemoteNodeClosestNodes(renewed, renewed)
        expect(answer.map((x) => hex(x.nodeId))).toEqual([hex(b.nodeId)])
        // A's lookups never put A in its own table, though its peers now list it.
        yield* a.cm.getClosestGlobalNodes(nodeIdOf("renew-somewhere"))
        expect(Option.isNone(yield* a.graph.getNode(renewed))).toBe(true)
        expect(Option.isNone(yield* a.graph.getNode(old))).toBe(true)
        // A's hole-punch handler takes a signal for its new NodeId as its own: it punches toward B.
        yield* b.cm.sendSignalingMessage(renewed, b.nodeId, renewed)
        yield* eventually(a.sentDatagrams, (sent) => sent.some((d) => d.port === b.address.port))
      })
  )

  it.scopedLive("a peer's chain shows the renewal: the new leaf is issued by the old key", () =>
    Effect.gen(function* () {
      const a = yield* makeNode("chain-a")
      const keyRing = Context.get(a.ctx, KeyRing)
      expect(renewedFrom(yield* keyRing.certChainDer)).toBeUndefined()
      yield* keyRing.renew
      const chain = yield* keyRing.certChainDer
      expect(hex(yield* keyRing.verifyCertChain(chain))).toBe(hex(renewedId("chain-a")))
      expect(hex(renewedFrom(chain)!)).toBe(hex(nodeIdOf("chain-a")))
    })
  )
})
