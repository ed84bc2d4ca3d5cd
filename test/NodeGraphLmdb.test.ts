import { spawn } from "node:child_process"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, describe, expect, it } from "@effect/vitest"
import { Context, Effect, Exit, FastCheck as fc, Layer, Option, Scope, TestClock } from "effect"
import { KademliaTable, type TablePersistence, toService } from "../src/internal/kademliaTable.js"
import * as NodeGraphLmdb from "../src/layers/NodeGraphLmdb.js"
import * as NodeGraphMemory from "../src/layers/NodeGraphMemory.js"
import { type NodeAddress, NodeGraph, type NodeGraphService } from "../src/services/NodeGraph.js"
import { bucketIndex, inBucket, NODE_ID_BYTES, type NodeId } from "../src/services/NodeId.js"
import { stubKeyRing } from "./fixtures/stubKeyRing.js"

const root = mkdtempSync(join(tmpdir(), "quicmesh-nodegraph-"))
afterAll(() => rmSync(root, { recursive: true, force: true }))
let dirs = 0
const freshDir = () => join(root, `db${dirs++}`, "nodegraph")

const hex = (id: Uint8Array) => Buffer.from(id).toString("hex")
const idFrom = (bytes: ArrayLike<number>) => Uint8Array.from(bytes) as NodeId
const idInBucket = (own: NodeId, i: number, seed: number): NodeId =>
  inBucket(
    own,
    i,
    Array.from({ length: NODE_ID_BYTES }, (_, j) => (seed * 131 + j * 17) & 0xff)
  )
const addr = (port: number, host = "127.0.0.1"): NodeAddress => ({ host, port, scope: "global" })
const own = idFrom(new Uint8Array(NODE_ID_BYTES).fill(0xa7))

/** Everything observable about a graph, for comparing two of them. */
const snapshot = (graph: NodeGraphService) =>
  Effect.gen(function* () {
    const buckets = yield* graph.getBuckets
    const refreshed: Array<[number, number]> = []
    for (let i = 0; i < 256; i++) {
      const at = yield* graph.getBucketRefreshedAt(i)
      if (Option.isSome(at)) refreshed.push([i, at.value])
    }
    return {
      buckets: buckets.map(([i, contacts]) => [
        i,
        contacts.map((c) => ({ id: hex(c.nodeId), addresses: c.addresses, lastSeen: c.lastSeen }))
      ]),
      refreshed,
      size: yield* graph.size
    }
  })

/** Runs `f` against a graph opened at `path`, closing it afterwards. */
const withGraph = <A, E>(
  ownId: NodeId,
  path: string,
  f: (graph: NodeGraphService) => Effect.Effect<A, E>,
  k?: number
) => Effect.scoped(Effect.flatMap(NodeGraphLmdb.make(ownId, k === undefined ? { path } : { path, k }), f))

describe("NodeGraphLmdb", () => {
  it.effect("everything survives close and reopen: nodes, their order, addresses, refresh times", () =>
    Effect.gen(function* () {
      const path = freshDir()
      const before = yield* withGraph(own, path, (graph) =>
        Effect.gen(function* () {
          const nodes = Array.from({ length: 30 }, (_, n) => idInBucket(own, 250 + (n % 6), n))
          for (const [n, id] of nodes.entries()) {
            yield* TestClock.adjust(n % 3 === 0 ? 0 : 10) // some equal lastSeen: order must still hold
            yield* graph.setNode(id, addr(2000 + n))
          }
          yield* graph.setNode(nodes[0]!, addr(7, "example.com")) // refresh: moves to the end
          expect(yield* graph.unsetNode(nodes[1]!)).toBe(true)
          yield* TestClock.adjust(5)
          yield* graph.markBucketRefreshed(250)
          return yield* snapshot(graph)
        })
      )
      expect(before.size).toBe(29)
      const after = yield* withGraph(own, path, snapshot)
      expect(after).toEqual(before)
      // And the reopened graph keeps working, and writes again.
      yield* withGraph(own, path, (graph) => graph.setNode(idInBucket(own, 3, 1), addr(1)))
      expect((yield* withGraph(own, path, snapshot)).size).toBe(30)
    })
  )

  it.effect.prop(
    "a random sequence of operations leaves the same state as the memory layer, before and after reopen",
    {
      k: fc.integer({ min: 1, max: 3 }),
      ops: fc.array(
        fc.tuple(fc.constantFrom("set", "set", "unset", "mark"), fc.integer({ min: 0, max: 11 }), fc.nat(3)),
        { maxLength: 40 }
      )
    },
    ({ k, ops }) =>
      Effect.gen(function* () {
        const path = freshDir()
        const nodes = Array.from({ length: 12 }, (_, n) => idInBucket(own, 252 + (n % 4), n))
        const memory = yield* NodeGraphMemory.make(own, { k })
        const run = (graph: NodeGraphService) =>
          Effect.forEach(ops, ([op, n, port]) =>
            op === "set"
              ? Effect.map(graph.setNode(nodes[n]!, addr(port)), (r) => r._tag)
              : op === "unset"
                ? Effect.map(graph.unsetNode(nodes[n]!), String)
                : Effect.as(graph.markBucketRefreshed(n), "marked")
          )
        const lmdbState = yield* withGraph(own, path, (graph) => Effect.zip(run(graph), snapshot(graph)), k)
        const memoryState = yield* Effect.zip(run(memory), snapshot(memory))
        expect(lmdbState).toEqual(memoryState)
        expect(yield* withGraph(own, path, snapshot, k)).toEqual(memoryState[1])
      }),
    { fastCheck: { numRuns: 25 } }
  )

  it.effect(
    "a new own NodeId (key renewal) re-lays the buckets, drops our own id and old refresh times",
    () =>
      Effect.gen(function* () {
        const path = freshDir()
        const nodes = Array.from({ length: 40 }, (_, n) => idInBucket(own, 200 + (n % 50), n))
        const renewed = nodes[7]!
        yield* withGraph(own, path, (graph) =>
          Effect.gen(function* () {
            for (const [n, id] of nodes.entries()) yield* graph.setNode(id, addr(3000 + n))
            yield* graph.markBucketRefreshed(201)
          })
        )
        const check = (graph: NodeGraphService) =>
          Effect.gen(function* () {
            expect(hex(graph.ownNodeId)).toBe(hex(renewed))
            expect(yield* graph.size).toBe(39)
            expect(Option.isNone(yield* graph.getNode(renewed))).toBe(true)
            for (const [i, contacts] of yield* graph.getBuckets)
              for (const c of contacts) expect(bucketIndex(renewed, c.nodeId)).toBe(i)
            for (const [n, id] of nodes.entries())
              if (id !== renewed)
                expect(Option.map(yield* graph.getNode(id), (c) => c.addresses[0]!.port)).toEqual(
                  Option.some(3000 + n)
                )
            expect(yield* graph.getBucketRefreshedAt(201)).toEqual(Option.none())
            const err = yield* Effect.flip(graph.setNode(renewed, addr(1)))
            expect(err).toMatchObject({ _tag: "NodeGraphInputError", field: "nodeId" })
          })
        yield* withGraph(renewed, path, check)
        yield* withGraph(renewed, path, check) // the rewrite was persisted
      })
  )

  it.effect("reopening with a smaller k keeps the most recently seen k of each bucket", () =>
    Effect.gen(function* () {
      const path = freshDir()
      const nodes = Array.from({ length: 6 }, (_, n) => idInBucket(own, 254, n))
      yield* withGraph(own, path, (graph) =>
        Effect.forEach(nodes, (id) => Effect.zipRight(TestClock.adjust(1), graph.setNode(id, addr(1))), {
          discard: true
        })
      )
      const kept = (graph: NodeGraphService) =>
        Effect.map(graph.getBucket(254), (b) => b.map((c) => hex(c.nodeId)))
      expect(yield* withGraph(own, path, kept, 2)).toEqual(nodes.slice(4).map(hex))
      // The others were deleted from the store, not just hidden.
      expect(yield* withGraph(own, path, kept, 20)).toEqual(nodes.slice(4).map(hex))
    })
  )

  it.effect("an unusable path fails with NodeGraphStorageError", () =>
    Effect.gen(function* () {
      const file = join(root, "not-a-directory")
      writeFileSync(file, "x")
      const exit = yield* Effect.exit(withGraph(own, join(file, "nodegraph"), (g) => g.size))
      expect(exit).toMatchObject({ _tag: "Failure" })
      if (Exit.isFailure(exit)) expect(exit.cause).toMatchObject({ error: { _tag: "NodeGraphStorageError" } })
    })
  )

  it.effect(
    "the layer takes our NodeId from the KeyRing and closes the store with its scope; failed writes are undone",
    () =>
      Effect.gen(function* () {
        const path = freshDir()
        const layer = NodeGraphLmdb.layer({ path, k: 7 }).pipe(Layer.provide(stubKeyRing(own)))
        const other = idInBucket(own, 99, 1)
        const scope = yield* Scope.make()
        const ctx = yield* Layer.buildWithScope(layer, scope)
        const graph = Context.get(ctx, NodeGraph)
        expect(hex(graph.ownNodeId)).toBe(hex(own))
        expect(graph.k).toBe(7)
        yield* graph.setNode(other, addr(5))
        yield* Scope.close(scope, Exit.void)
        // The store is closed: a write now fails as a storage error and the table change is undone.
        const late = idInBucket(own, 98, 2)
        const err = yield* Effect.flip(graph.setNode(late, addr(6)))
        expect(err._tag).toBe("NodeGraphStorageError")
        expect(Option.isNone(yield* graph.getNode(late))).toBe(true)
        expect(yield* graph.size).toBe(1)
        const refreshErr = yield* Effect.flip(graph.markBucketRefreshed(98))
        expect(refreshErr._tag).toBe("NodeGraphStorageError")
        expect(yield* graph.getBucketRefreshedAt(98)).toEqual(Option.none())
        expect(yield* Effect.flip(graph.unsetNode(other))).toMatchObject({ _tag: "NodeGraphStorageError" })
        expect(Option.isSome(yield* graph.getNode(other))).toBe(true)
        // After close, the store reopens (in another layer instance) with the write in it.
        const found = yield* Effect.provide(
          Effect.flatMap(NodeGraph, (g) => g.getNode(other)),
          layer
        )
        expect(Option.map(found, (c) => c.addresses[0]!.port)).toEqual(Option.some(5))
      })
  )
})

describe("setNode without waiting for the commit", () => {
  /** A store whose writes stay pending until the test settles them. */
  const pendingStore = () => {
    const writes: Array<{ resolve: () => void; reject: (e: unknown) => void }> = []
    const pending = () =>
      new Promise<void>((resolve, reject) => {
        writes.push({ resolve, reject })
      })
    const persistence: TablePersistence = {
      putNode: pending,
      removeNode: pending,
      putRefreshedAt: pending
    }
    return { writes, persistence }
  }

  it.live("by default setNode waits for the commit; with awaitCommit false it returns at once", () =>
    Effect.gen(function* () {
      const { writes, persistence } = pendingStore()
      const graph = toService(new KademliaTable(own, 20), persistence)
      const a = idInBucket(own, 90, 1)
      const waiting = yield* Effect.fork(graph.setNode(a, addr(1)))
      yield* Effect.sleep("20 millis")
      expect(waiting.unsafePoll()).toBeNull()
      writes[0]!.resolve()
      expect(yield* waiting.await).toMatchObject({ _tag: "Success", value: { _tag: "Added" } })

      const b = idInBucket(own, 91, 2)
      const result = yield* graph.setNode(b, addr(2), { awaitCommit: false })
      expect(result._tag).toBe("Added")
      expect(writes).toHaveLength(2)
      expect(Option.isSome(yield* graph.getNode(b))).toBe(true)
    })
  )

  it.live("a write that fails after setNode returned undoes the change and is reported", () =>
    Effect.gen(function* () {
      const { writes, persistence } = pendingStore()
      const reported: Array<string> = []
      const graph = toService(new KademliaTable(own, 20), persistence, (e) => reported.push(e._tag))
      const a = idInBucket(own, 90, 3)
      yield* graph.setNode(a, addr(3), { awaitCommit: false })
      expect(Option.isSome(yield* graph.getNode(a))).toBe(true)
      writes[0]!.reject(new Error("disk full"))
      yield* Effect.promise(() => new Promise((r) => setImmediate(r)))
      expect(Option.isNone(yield* graph.getNode(a))).toBe(true)
      expect(reported).toEqual(["NodeGraphStorageError"])
    })
  )

  it.effect("on lmdb the node is readable at once and committed afterwards", () =>
    Effect.gen(function* () {
      const path = freshDir()
      const a = idInBucket(own, 77, 4)
      yield* withGraph(own, path, (g) =>
        Effect.gen(function* () {
          expect((yield* g.setNode(a, addr(7), { awaitCommit: false }))._tag).toBe("Added")
          expect(Option.isSome(yield* g.getNode(a))).toBe(true)
        })
      )
      const reopened = yield* withGraph(own, path, (g) => g.getNode(a))
      expect(Option.map(reopened, (c) => c.addresses[0]!.port)).toEqual(Option.some(7))
    })
  )
})

// ---------------------------------------------------------------------------------------------
// SIGKILL
// ---------------------------------------------------------------------------------------------

/** Starts the writer child, waits for `acks` acknowledged NodeIds, SIGKILLs it, returns them. */
const killWriterAfter = (path: string, acks: number) =>
  Effect.async<ReadonlyArray<string>, Error>((resume) => {
    const child = spawn(
      process.execPath,
      ["--import", "tsx", join(import.meta.dirname, "fixtures", "nodeGraphWriter.ts"), path, hex(own)],
      { stdio: ["ignore", "pipe", "pipe"] }
    )
    const acked: Array<string> = []
    let pending = ""
    let stderr = ""
    let killed = false
    child.stdout.setEncoding("utf8")
    child.stdout.on("data", (chunk: string) => {
      pending += chunk
      const lines = pending.split("\n")
      pending = lines.pop()! // a partial line was not fully acknowledged
      for (const line of lines) if (line !== "ready") acked.push(line)
      if (!killed && acked.length >= acks) {
        killed = true
        child.kill("SIGKILL")
      }
    })
    child.stderr.on("data", (chunk) => {
      stderr += String(chunk)
    })
    child.on("exit", (code, signal) => {
      if (signal === "SIGKILL") resume(Effect.succeed(acked))
      else resume(Effect.fail(new Error(`writer exited early (${code}): ${stderr}`)))
    })
    return Effect.sync(() => child.kill("SIGKILL"))
  })

describe("NodeGraphLmdb after SIGKILL", () => {
  it.live(
    "every acknowledged write is present after the writer is killed mid-stream (5 times)",
    () =>
      Effect.gen(function* () {
        const path = freshDir()
        const all = new Set<string>()
        for (let round = 0; round < 5; round++) {
          const acked = yield* killWriterAfter(path, 200 + round * 60)
          expect(acked.length).toBeGreaterThanOrEqual(200 + round * 60)
          for (const id of acked) all.add(id)
          yield* withGraph(
            own,
            path,
            (graph) =>
              Effect.gen(function* () {
                const size = yield* graph.size
                expect(size).toBeGreaterThanOrEqual(all.size)
                const missing: Array<string> = []
                for (const id of all)
                  if (Option.isNone(yield* graph.getNode(idFrom(Buffer.from(id, "hex"))))) missing.push(id)
                expect(missing).toEqual([])
              }),
            1_000_000
          )
        }
      }),
    60_000
  )
})
