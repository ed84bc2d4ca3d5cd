import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, FastCheck as fc, Layer, Option, TestClock } from "effect"
import * as NodeGraphMemory from "../src/layers/NodeGraphMemory.js"
import {
  DEFAULT_BUCKET_LIMIT,
  MAX_ADDRESSES,
  type NodeAddress,
  type NodeContact,
  NodeGraph,
  type NodeGraphInputError,
  type NodeGraphService,
  type NodeGraphStorageError,
  type SetNodeResult
} from "../src/services/NodeGraph.js"
import {
  bucketIndex,
  compare,
  distanceBytes,
  inBucket,
  NODE_ID_BYTES,
  type NodeId
} from "../src/services/NodeId.js"
import { stubKeyRing } from "./fixtures/stubKeyRing.js"

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const hex = (id: Uint8Array) => Buffer.from(id).toString("hex")
const idFrom = (bytes: ArrayLike<number>) => Uint8Array.from(bytes) as NodeId
/** A NodeId at bucket `i` from `own`, the lower bits taken from `noise`. */
const idInBucket = (own: NodeId, i: number, noise: Uint8Array): NodeId => inBucket(own, i, noise)
const addr = (port = 4000, host = "127.0.0.1"): NodeAddress => ({ host, port, scope: "global" })
const ids = (contacts: ReadonlyArray<NodeContact>) => contacts.map((c) => hex(c.nodeId))

const arbBytes = fc.uint8Array({ minLength: NODE_ID_BYTES, maxLength: NODE_ID_BYTES })
/** Node ids relative to own: uniformly random (far buckets) or in a chosen bucket (near ones). */
const arbRelative = fc.oneof(
  fc.record({ bucket: fc.constant(-1), noise: arbBytes }),
  fc.record({ bucket: fc.integer({ min: 0, max: 255 }), noise: arbBytes }),
  fc.record({ bucket: fc.integer({ min: 0, max: 12 }), noise: arbBytes })
)
const realise = (own: NodeId, r: { bucket: number; noise: Uint8Array }): NodeId =>
  r.bucket < 0 ? idFrom(r.noise) : idInBucket(own, r.bucket, r.noise)

const allContacts = (graph: NodeGraphService) =>
  Effect.map(graph.getBuckets, (buckets) => buckets.flatMap(([, contacts]) => contacts))

const bruteForceClosest = (contacts: ReadonlyArray<NodeContact>, target: Uint8Array, limit: number) =>
  [...contacts]
    .sort((a, b) => compare(distanceBytes(a.nodeId, target), distanceBytes(b.nodeId, target)))
    .slice(0, limit)

const fill = (graph: NodeGraphService, nodeIds: ReadonlyArray<NodeId>) =>
  Effect.forEach(nodeIds, (id, n) => graph.setNode(id, addr(1000 + (n % 60000))).pipe(Effect.either), {
    discard: true
  })

// ---------------------------------------------------------------------------------------------
// Properties against brute force and a model
// ---------------------------------------------------------------------------------------------

describe("NodeGraph (memory): properties", () => {
  it.effect.prop(
    "getClosestNodes returns exactly the `limit` nearest nodes by XOR distance, nearest first",
    {
      own: arbBytes,
      k: fc.integer({ min: 1, max: 12 }),
      nodes: fc.array(arbRelative, { maxLength: 150 }),
      targets: fc.array(fc.oneof(arbRelative, fc.constant("own" as const), fc.nat()), {
        minLength: 1,
        maxLength: 6
      }),
      limit: fc.option(fc.integer({ min: 0, max: 80 }), { nil: undefined })
    },
    ({ own, k, nodes, targets, limit }) =>
      Effect.gen(function* () {
        const ownId = idFrom(own)
        const graph = yield* NodeGraphMemory.make(ownId, { k })
        yield* fill(
          graph,
          nodes.map((r) => realise(ownId, r)).filter((id) => bucketIndex(ownId, id) >= 0)
        )
        const contacts = yield* allContacts(graph)
        for (const t of targets) {
          // A target may be our own id, a stored node's id, or any id.
          const target =
            t === "own"
              ? ownId
              : typeof t === "number"
                ? (contacts[t % Math.max(1, contacts.length)]?.nodeId ?? ownId)
                : realise(ownId, t)
          const got = yield* graph.getClosestNodes(target, limit)
          const expected = bruteForceClosest(contacts, target, limit ?? k)
          expect(ids(got)).toEqual(ids(expected))
          expect(got.length).toBe(Math.min(limit ?? k, contacts.length))
        }
      }),
    { fastCheck: { numRuns: 150 } }
  )

  it.effect.prop(
    "every node sits in the bucket of its XOR distance, and no bucket exceeds k",
    {
      own: arbBytes,
      k: fc.integer({ min: 1, max: 6 }),
      nodes: fc.array(arbRelative, { maxLength: 200 })
    },
    ({ own, k, nodes }) =>
      Effect.gen(function* () {
        const ownId = idFrom(own)
        const graph = yield* NodeGraphMemory.make(ownId, { k })
        const nodeIds = nodes.map((r) => realise(ownId, r)).filter((id) => bucketIndex(ownId, id) >= 0)
        const results = yield* Effect.forEach(nodeIds, (id) => graph.setNode(id, addr()))
        expect(results.map((r) => r.bucketIndex)).toEqual(nodeIds.map((id) => bucketIndex(ownId, id)))
        const buckets = yield* graph.getBuckets
        let total = 0
        for (const [i, contacts] of buckets) {
          expect(contacts.length).toBeGreaterThan(0)
          expect(contacts.length).toBeLessThanOrEqual(k)
          for (const c of contacts) expect(bucketIndex(ownId, c.nodeId)).toBe(i)
          expect(ids(yield* graph.getBucket(i))).toEqual(ids(contacts))
          total += contacts.length
        }
        expect(buckets.map(([i]) => i)).toEqual([...buckets.map(([i]) => i)].sort((a, b) => a - b))
        expect(yield* graph.size).toBe(total)
        // A bucket holds min(k, distinct nodes offered to it).
        const offered = new Map<number, Set<string>>()
        for (const id of nodeIds) {
          const i = bucketIndex(ownId, id)
          offered.set(i, (offered.get(i) ?? new Set()).add(hex(id)))
        }
        for (const [i, set] of offered) expect((yield* graph.getBucket(i)).length).toBe(Math.min(k, set.size))
      }),
    { fastCheck: { numRuns: 100 } }
  )

  it.effect.prop(
    "setNode/unsetNode follow classic Kademlia (a model): LRS order, refresh, BucketFull with the LRS node",
    {
      own: arbBytes,
      k: fc.integer({ min: 1, max: 4 }),
      // A small pool of nodes in a few buckets, so that buckets fill and nodes repeat.
      pool: fc.array(fc.record({ bucket: fc.integer({ min: 250, max: 255 }), noise: arbBytes }), {
        minLength: 1,
        maxLength: 20
      }),
      ops: fc.array(fc.tuple(fc.boolean(), fc.nat(), fc.integer({ min: 0, max: 3 })), { maxLength: 120 })
    },
    ({ own, k, pool, ops }) =>
      Effect.gen(function* () {
        const ownId = idFrom(own)
        const graph = yield* NodeGraphMemory.make(ownId, { k })
        const nodeIds = pool.map((r) => realise(ownId, r))
        const model = new Map<number, Array<string>>() // bucket → ids, LRS first
        for (const [isSet, which, tick] of ops) {
          const id = nodeIds[which % nodeIds.length]!
          const i = bucketIndex(ownId, id)
          const bucket = model.get(i) ?? []
          model.set(i, bucket)
          const at = bucket.indexOf(hex(id))
          yield* TestClock.adjust(tick)
          if (isSet) {
            const result: SetNodeResult = yield* graph.setNode(id, addr())
            if (at >= 0) {
              expect(result).toEqual({ _tag: "Updated", bucketIndex: i })
              bucket.splice(at, 1)
              bucket.push(hex(id))
            } else if (bucket.length >= k) {
              expect(result._tag).toBe("BucketFull")
              if (result._tag === "BucketFull") expect(hex(result.leastRecentlySeen.nodeId)).toBe(bucket[0])
            } else {
              expect(result).toEqual({ _tag: "Added", bucketIndex: i })
              bucket.push(hex(id))
            }
          } else {
            expect(yield* graph.unsetNode(id)).toBe(at >= 0)
            if (at >= 0) bucket.splice(at, 1)
          }
        }
        for (const [i, bucket] of model) expect(ids(yield* graph.getBucket(i))).toEqual(bucket)
        expect(yield* graph.size).toBe([...model.values()].reduce((n, b) => n + b.length, 0))
      }),
    { fastCheck: { numRuns: 100 } }
  )
})

// ---------------------------------------------------------------------------------------------
// Examples
// ---------------------------------------------------------------------------------------------

const own = idFrom(new Uint8Array(NODE_ID_BYTES).fill(0x55))
const noise = (seed: number) =>
  idFrom(Array.from({ length: NODE_ID_BYTES }, (_, j) => (seed * 31 + j * 7) & 0xff))

describe("NodeGraph (memory): behaviour", () => {
  it.effect("refreshing a node makes it most recently seen, with the Clock's time", () =>
    Effect.gen(function* () {
      const graph = yield* NodeGraphMemory.make(own)
      const [a, b, c] = [1, 2, 3].map((s) => idInBucket(own, 200, noise(s)))
      yield* TestClock.adjust(1000)
      yield* graph.setNode(a!, addr())
      yield* TestClock.adjust(1000)
      yield* graph.setNode(b!, addr())
      yield* TestClock.adjust(1000)
      yield* graph.setNode(c!, addr())
      expect(ids(yield* graph.getBucket(200))).toEqual([a, b, c].map((x) => hex(x!)))
      yield* TestClock.adjust(500)
      expect(yield* graph.setNode(a!, addr())).toEqual({ _tag: "Updated", bucketIndex: 200 })
      const bucket = yield* graph.getBucket(200)
      expect(ids(bucket)).toEqual([b, c, a].map((x) => hex(x!)))
      expect(bucket.map((x) => x.lastSeen)).toEqual([2000, 3000, 3500])
      expect(Option.map(yield* graph.getNode(a!), (x) => x.lastSeen)).toEqual(Option.some(3500))
    })
  )

  it.effect("addresses: newest first, a known address moves to the front, at most 5 (oldest dropped)", () =>
    Effect.gen(function* () {
      const graph = yield* NodeGraphMemory.make(own)
      const id = idInBucket(own, 255, noise(9))
      for (const port of [1, 2, 3]) yield* graph.setNode(id, addr(port))
      const ports = Effect.map(graph.getNode(id), (o) => Option.getOrThrow(o).addresses.map((a) => a.port))
      expect(yield* ports).toEqual([3, 2, 1])
      yield* graph.setNode(id, { host: "127.0.0.1", port: 1, scope: "local" })
      expect(yield* ports).toEqual([1, 3, 2])
      expect(Option.getOrThrow(yield* graph.getNode(id)).addresses[0]!.scope).toBe("local")
      yield* graph.setNode(id, addr(2, "example.com"))
      expect(yield* ports).toEqual([2, 1, 3, 2])
      for (const port of [4, 5, 6]) yield* graph.setNode(id, addr(port))
      const addresses = Option.getOrThrow(yield* graph.getNode(id)).addresses
      expect(addresses.length).toBe(MAX_ADDRESSES)
      expect(addresses.map((a) => `${a.host}:${a.port}`)).toEqual([
        "127.0.0.1:6",
        "127.0.0.1:5",
        "127.0.0.1:4",
        "example.com:2",
        "127.0.0.1:1"
      ])
    })
  )

  it.effect("a full bucket changes nothing; after unsetNode of the dead LRS node the new one fits", () =>
    Effect.gen(function* () {
      const graph = yield* NodeGraphMemory.make(own, { k: 3 })
      const nodes = [1, 2, 3, 4].map((s) => idInBucket(own, 100, noise(s)))
      for (const id of nodes.slice(0, 3)) expect((yield* graph.setNode(id, addr()))._tag).toBe("Added")
      yield* graph.setNode(nodes[0]!, addr()) // nodes[1] is now the LRS
      const before = yield* graph.getBucket(100)
      const full = yield* graph.setNode(nodes[3]!, addr(9))
      expect(full._tag).toBe("BucketFull")
      if (full._tag === "BucketFull") {
        expect(full.bucketIndex).toBe(100)
        expect(hex(full.leastRecentlySeen.nodeId)).toBe(hex(nodes[1]!))
      }
      expect(yield* graph.getBucket(100)).toEqual(before)
      expect(Option.isNone(yield* graph.getNode(nodes[3]!))).toBe(true)
      expect(yield* graph.unsetNode(nodes[1]!)).toBe(true)
      expect(yield* graph.unsetNode(nodes[1]!)).toBe(false)
      expect(yield* graph.setNode(nodes[3]!, addr(9))).toEqual({ _tag: "Added", bucketIndex: 100 })
      expect(ids(yield* graph.getBucket(100))).toEqual([nodes[2], nodes[0], nodes[3]].map((x) => hex(x!)))
      expect(yield* graph.size).toBe(3)
    })
  )

  it.effect("getClosestNodes defaults to k and walks into other buckets", () =>
    Effect.gen(function* () {
      const graph = yield* NodeGraphMemory.make(own, { k: 4 })
      for (let i = 0; i < 40; i++) yield* graph.setNode(idInBucket(own, 10 + i, noise(i)), addr())
      expect(graph.k).toBe(4)
      const got = yield* graph.getClosestNodes(own)
      expect(got.map((c) => bucketIndex(own, c.nodeId))).toEqual([10, 11, 12, 13])
      expect((yield* graph.getClosestNodes(own, 100)).length).toBe(40)
      expect(yield* graph.getClosestNodes(own, 0)).toEqual([])
    })
  )

  it.effect("bucket refresh times: none until marked, then the Clock's time", () =>
    Effect.gen(function* () {
      const graph = yield* NodeGraphMemory.make(own)
      expect(yield* graph.getBucketRefreshedAt(7)).toEqual(Option.none())
      yield* TestClock.adjust(12_345)
      yield* graph.markBucketRefreshed(7)
      expect(yield* graph.getBucketRefreshedAt(7)).toEqual(Option.some(12_345))
      expect(yield* graph.getBucketRefreshedAt(8)).toEqual(Option.none())
    })
  )

  it.effect("the layer takes our own NodeId from the KeyRing", () =>
    Effect.gen(function* () {
      const graph = yield* NodeGraph
      expect(hex(graph.ownNodeId)).toBe(hex(own))
      expect(graph.k).toBe(DEFAULT_BUCKET_LIMIT)
      const err = yield* Effect.flip(graph.setNode(own, addr()))
      expect(err).toMatchObject({ _tag: "NodeGraphInputError", field: "nodeId" })
    }).pipe(Effect.provide(NodeGraphMemory.layer().pipe(Layer.provide(stubKeyRing(own)))))
  )
})

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

describe("NodeGraph (memory): validation", () => {
  const other = idInBucket(own, 255, noise(1))
  const fieldOf = <A>(effect: Effect.Effect<A, NodeGraphInputError | NodeGraphStorageError>) =>
    Effect.map(Effect.either(effect), (e) =>
      Either.isRight(e) ? "ok" : e.left._tag === "NodeGraphInputError" ? e.left.field : e.left._tag
    )

  it.effect("setNode rejects bad NodeIds, our own NodeId, bad hosts and bad ports, storing nothing", () =>
    Effect.gen(function* () {
      const graph = yield* NodeGraphMemory.make(own)
      expect(yield* fieldOf(graph.setNode(new Uint8Array(31) as NodeId, addr()))).toBe("nodeId")
      expect(yield* fieldOf(graph.setNode(new Uint8Array(33) as NodeId, addr()))).toBe("nodeId")
      expect(yield* fieldOf(graph.setNode(own, addr()))).toBe("nodeId")
      for (const host of [
        "",
        "-bad.example",
        "bad-.example",
        "a..b",
        "under_score.com",
        "x".repeat(64),
        "[::1]",
        "1.2.3.4:80",
        "a b"
      ])
        expect(yield* fieldOf(graph.setNode(other, addr(80, host)))).toBe("host")
      for (const port of [-1, 65536, 1.5, Number.NaN, Number.POSITIVE_INFINITY])
        expect(yield* fieldOf(graph.setNode(other, addr(port)))).toBe("port")
      expect(yield* graph.size).toBe(0)
      for (const host of [
        "10.0.0.1",
        "::1",
        "fe80::1",
        "localhost",
        "node-1.example.com",
        "EXAMPLE.org",
        "1e100.net"
      ])
        expect(yield* fieldOf(graph.setNode(other, addr(0, host)))).toBe("ok")
      expect(yield* fieldOf(graph.setNode(other, addr(65535)))).toBe("ok")
      const err = yield* Effect.flip(graph.setNode(other, addr(70000)))
      expect(err._tag).toBe("NodeGraphInputError")
      expect(err.message).toContain("port")
    })
  )

  it.effect("bucket indexes outside 0–255 and bad limits are rejected with their field", () =>
    Effect.gen(function* () {
      const graph = yield* NodeGraphMemory.make(own)
      for (const i of [-1, 256, 1.5, Number.NaN]) {
        expect(yield* fieldOf(graph.getBucket(i))).toBe("bucketIndex")
        expect(yield* fieldOf(graph.getBucketRefreshedAt(i))).toBe("bucketIndex")
        expect(yield* fieldOf(graph.markBucketRefreshed(i))).toBe("bucketIndex")
      }
      expect(yield* fieldOf(graph.getBucket(0))).toBe("ok")
      expect(yield* fieldOf(graph.getBucket(255))).toBe("ok")
      for (const limit of [-1, 2.5, Number.NaN])
        expect(yield* fieldOf(graph.getClosestNodes(other, limit))).toBe("limit")
      expect(yield* fieldOf(graph.getClosestNodes(new Uint8Array(5) as NodeId))).toBe("nodeId")
      // Lookups of malformed ids simply find nothing.
      expect(Option.isNone(yield* graph.getNode(new Uint8Array(3) as NodeId))).toBe(true)
      expect(yield* graph.unsetNode(new Uint8Array(3) as NodeId)).toBe(false)
    })
  )
})
