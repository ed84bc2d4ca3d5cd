/**
 * NodeGraph benchmarks.
 *
 * 1. getClosestNodes(target, 20) on a table of 5,000 nodes with k = 20. Random NodeIds would fill
 *    only the ~12 farthest buckets (≈ 240 nodes), so the ids are generated bucket by bucket: 20 in
 *    every bucket 5–255 (up to 5,000), random bits below the bucket's bit. Half the targets are
 *    uniformly random, half are drawn in a random bucket near our own id (so the walk has to
 *    cross many buckets). Baseline: brute force, sorting all 5,000 by XOR distance per query.
 * 2. setNode throughput on the lmdb layer (every write awaited until lmdb commits), one writer
 *    at a time and 64 concurrent writers, against the memory layer as baseline.
 */
import { randomBytes } from "node:crypto"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Effect } from "effect"
import * as NodeGraphLmdb from "../src/layers/NodeGraphLmdb.js"
import * as NodeGraphMemory from "../src/layers/NodeGraphMemory.js"
import type { NodeAddress, NodeContact, NodeGraphService } from "../src/services/NodeGraph.js"
import { compare, inBucket, NODE_ID_BYTES, type NodeId } from "../src/services/NodeId.js"
import type { BenchResult, BenchSuite } from "./types.js"

const SUITE = "nodeGraph"
const randomId = () => Uint8Array.from(randomBytes(NODE_ID_BYTES)) as NodeId
const address: NodeAddress = { host: "127.0.0.1", port: 4000, scope: "global" }

/** A random NodeId in bucket `i` relative to `own`. */
const idInBucket = (own: NodeId, i: number): NodeId => inBucket(own, i, randomBytes(NODE_ID_BYTES))

const mean = (xs: ReadonlyArray<number>) => xs.reduce((a, b) => a + b, 0) / xs.length

const bruteForce = (contacts: ReadonlyArray<NodeContact>, target: Uint8Array, limit: number) => {
  const withDistance = contacts.map((c) => {
    const d = new Uint8Array(NODE_ID_BYTES)
    for (let j = 0; j < NODE_ID_BYTES; j++) d[j] = c.nodeId[j]! ^ target[j]!
    return { c, d }
  })
  withDistance.sort((a, b) => compare(a.d, b.d))
  return withDistance.slice(0, limit).map((x) => x.c)
}

const closestNodes = async (): Promise<Array<BenchResult>> => {
  const own = randomId()
  const graph = await Effect.runPromise(NodeGraphMemory.make(own, { k: 20 }))
  let added = 0
  for (let i = 255; i >= 5 && added < 5000; i--)
    for (let n = 0; n < 20 && added < 5000; ) {
      const r = Effect.runSync(graph.setNode(idInBucket(own, i), address))
      if (r._tag === "Added") {
        n++
        added++
      }
    }
  const size = Effect.runSync(graph.size)
  const contacts = Effect.runSync(graph.getBuckets).flatMap(([, cs]) => cs)
  const targets = Array.from({ length: 2000 }, (_, n) =>
    n % 2 === 0 ? randomId() : idInBucket(own, Math.floor(Math.random() * 256))
  )
  // Correctness spot check against brute force.
  for (const t of targets.slice(0, 50)) {
    const a = Effect.runSync(graph.getClosestNodes(t, 20)).map((c) => Buffer.from(c.nodeId).toString("hex"))
    const b = bruteForce(contacts, t, 20).map((c) => Buffer.from(c.nodeId).toString("hex"))
    if (a.join() !== b.join()) throw new Error("getClosestNodes disagrees with brute force")
  }
  const run = (f: (t: NodeId) => unknown, rounds: number) => {
    for (let i = 0; i < 200; i++) f(targets[i % targets.length]!) // warm-up
    const times: Array<number> = []
    for (let i = 0; i < rounds; i++) {
      const t = targets[i % targets.length]!
      const t0 = performance.now()
      f(t)
      times.push(performance.now() - t0)
    }
    return mean(times)
  }
  const ours = run((t) => Effect.runSync(graph.getClosestNodes(t, 20)), 20_000)
  const brute = run((t) => bruteForce(contacts, t, 20), 300)
  return [
    {
      suite: SUITE,
      name: `getClosestNodes(k=20), ${size} nodes`,
      value: ours,
      unit: "ms/query",
      baselineName: "brute-force sort",
      baseline: brute,
      ratio: ours / brute,
      target: "< 0.5 ms",
      met: ours < 0.5,
      notes:
        "k=20; ids generated 20 per bucket 5–255 so 5,000 fit; half the targets random, half near own id; mean over 20,000 queries incl. Effect.runSync"
    }
  ]
}

const throughput = async (graph: NodeGraphService, n: number, concurrency: number) => {
  const ids = Array.from({ length: n }, randomId)
  const t0 = performance.now()
  await Effect.runPromise(
    Effect.forEach(ids, (id) => graph.setNode(id, address), { concurrency, discard: true })
  )
  return n / ((performance.now() - t0) / 1000)
}

const setNodeThroughput = async (): Promise<Array<BenchResult>> => {
  const dir = mkdtempSync(join(tmpdir(), "quicmesh-bench-nodegraph-"))
  try {
    const own = randomId()
    const options = { k: 1_000_000 } // no bucket is ever full: every setNode is a real insert
    const memory = await Effect.runPromise(NodeGraphMemory.make(own, options))
    const memoryOps = await throughput(memory, 20_000, 1)
    const results: Array<BenchResult> = []
    for (const [concurrency, n] of [
      [1, 1_000],
      [64, 10_000]
    ] as const) {
      const ops = await Effect.runPromise(
        Effect.scoped(
          Effect.flatMap(
            NodeGraphLmdb.make(own, { path: join(dir, `c${concurrency}`, "nodegraph"), ...options }),
            (graph) => Effect.promise(() => throughput(graph, n, concurrency))
          )
        )
      )
      results.push({
        suite: SUITE,
        name: `setNode lmdb, ${concurrency === 1 ? "one writer" : `${concurrency} concurrent writers`}`,
        value: ops,
        unit: "ops/s",
        baselineName: "memory layer",
        baseline: memoryOps,
        ratio: ops / memoryOps,
        notes: `${n} inserts of random ids, each acknowledged after lmdb commits (higher is better; ratio = lmdb / memory)`
      })
    }
    return results
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

export const suite: BenchSuite = {
  name: SUITE,
  run: async () => [...(await closestNodes()), ...(await setNodeThroughput())]
}
