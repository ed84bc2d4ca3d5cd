/**
 * One deadline per operation, in a simulated world (virtual time): an operation whose steps are
 * each slow (finding the address, the dial, the peer's answer, a name's resolution, a join's
 * lookup) fails or ends at its one timeout, never at the sum of its steps' timeouts.
 *
 * Timings: a slow link has 300 ms one way, so a dial over it takes 600 ms and so does a call;
 * every operation below gets 1 s, which each step alone fits in and two steps do not.
 */
import { describe, expect, it } from "@effect/vitest"
import { Cause, Duration, Effect, Exit, Option } from "effect"
import * as KeyRingTest from "../src/layers/KeyRingTest.js"
import * as Node from "../src/layers/Node.js"
import * as NodeGraphMemory from "../src/layers/NodeGraphMemory.js"
import * as PeerRpcSim from "../src/layers/PeerRpcSim.js"
import { simulate } from "../src/programs/SimRuntime.js"
import { makeWorld, type SimNode, type SimWorld } from "../src/programs/Simulation.js"
import type { Contact } from "../src/services/Contact.js"
import * as Dns from "../src/services/Dns.js"
import * as NodeConfig from "../src/services/NodeConfig.js"
import type { NodeGraphService } from "../src/services/NodeGraph.js"
import * as Protocols from "../src/services/Protocols.js"
import { signedRequest } from "./fixtures/holePunchRequest.js"

const T = 1_000
const timeout = { timeout: Duration.millis(T) }
const SLOW = { latency: "300 millis", jitter: 0 } as const

/**
 * A node of `w` built by hand, so that its parts can be slowed: its graph's `getNode` takes
 * `graphDelay`, its resolver is `dns`; `seeds` are its seeds. Its links to `slowTo` are slow.
 */
const handNode = (
  w: SimWorld,
  options: {
    readonly graphDelay?: Duration.DurationInput
    readonly dns?: Dns.DnsService
    readonly seeds?: ReadonlyArray<SimNode>
    readonly slowTo?: ReadonlyArray<SimNode>
    /** How slow (default `SLOW`). */
    readonly link?: { readonly latency: Duration.DurationInput; readonly jitter: 0 }
    readonly bucketRefreshInterval?: Duration.Duration
  } = {}
) =>
  Effect.gen(function* () {
    const keyRing = yield* KeyRingTest.make("deadline/hand")
    const nodeId = yield* keyRing.nodeId
    const table = yield* NodeGraphMemory.make(nodeId, { k: 6 })
    const delay = options.graphDelay
    const graph: NodeGraphService =
      delay === undefined ? table : { ...table, getNode: (id) => Effect.delay(table.getNode(id), delay) }
    const host = yield* w.sim.addHost({})
    for (const other of options.slowTo ?? [])
      yield* w.sim.setLink(host.host, other.host, options.link ?? SLOW)
    const seedNodes = (options.seeds ?? []).map(
      (s): Contact => ({ nodeId: s.nodeId, host: s.host, port: s.port })
    )
    const config = NodeConfig.make({
      seedNodes,
      ...(options.bucketRefreshInterval ? { bucketRefreshInterval: options.bucketRefreshInterval } : {})
    })
    const transport = yield* w.sim.bind({ host: host.host }, nodeId)
    const { manager } = yield* Node.make({
      config: config.manager,
      keyRing,
      nodeGraph: graph,
      transport,
      peerRpc: PeerRpcSim.make(w.sim, config.rpc.rpcCallTimeoutTime),
      dns: options.dns ?? Dns.makeStatic({})
    })
    return { cm: manager, table, host: host.host }
  })

/** A world of a seed and `size - 1` joined nodes on fast links (10 ms, no jitter). */
const world = (ctx: Parameters<typeof makeWorld>[0], size: number) =>
  Effect.gen(function* () {
    const w = yield* makeWorld(ctx, { seed: 18, latency: 10, jitter: 0, k: 6, protocols: true })
    const seed = yield* w.addNode({ seed: true })
    yield* w.join(seed)
    const others: Array<SimNode> = []
    for (let i = 1; i < size; i++) {
      const node = yield* w.addNode()
      expect(yield* w.join(node)).toBe(true)
      others.push(node)
    }
    return { w, seed, others }
  })

/** Runs `effect`, with the virtual milliseconds it took. */
const timed = <A, E, R>(w: SimWorld, effect: Effect.Effect<A, E, R>) =>
  Effect.gen(function* () {
    const start = yield* w.now
    const exit = yield* Effect.exit(effect)
    return { exit, took: (yield* w.now) - start }
  })

const addressOf = (node: SimNode) => ({ host: node.host, port: node.port, scope: "global" as const })

/** The error an operation failed with, if it failed. */
const failureOf = <A, E>(exit: Exit.Exit<A, E>) =>
  Exit.isFailure(exit) ? Option.getOrUndefined(Cause.failureOption(exit.cause)) : undefined

describe("one deadline per operation (simulated network, virtual time)", () => {
  it.effect("getConnection: a slow address lookup and a slow dial fail at the one timeout", () =>
    simulate((ctx) =>
      Effect.gen(function* () {
        const { w, others } = yield* world(ctx, 2)
        const target = others[0]!
        const a = yield* handNode(w, { graphDelay: "600 millis", slowTo: [target] })
        yield* a.table.setNode(target.nodeId, addressOf(target))
        const got = yield* timed(w, a.cm.getConnection(target.nodeId, timeout))
        expect(got.took).toBe(T)
        expect(failureOf(got.exit)).toMatchObject({ _tag: "NodeConnectionError", reason: "timeout" })
        // withConnection and acquireConnection get their connection the same way.
        yield* a.cm.destroyConnection(target.nodeId)
        const used = yield* timed(
          w,
          a.cm.withConnection(target.nodeId, () => Effect.void, timeout)
        )
        expect(used.took).toBe(T)
        expect(Exit.isFailure(used.exit)).toBe(true)
        // With the time for both, it connects.
        const ok = yield* timed(w, a.cm.getConnection(target.nodeId, { timeout: "2 seconds" }))
        expect(Exit.isSuccess(ok.exit)).toBe(true)
        expect(ok.took).toBe(1_200)
      })
    )
  )

  it.effect("openStream: a slow dial and a slow answer fail at the one timeout", () =>
    simulate((ctx) =>
      Effect.gen(function* () {
        const { w, others } = yield* world(ctx, 2)
        const target = others[0]!
        const proto = Protocols.ProtocolId.unsafeMake("deadline/1")
        yield* target.protocols!.handle(proto, () => Effect.void)
        const a = yield* handNode(w, { slowTo: [target] })
        yield* a.table.setNode(target.nodeId, addressOf(target))
        const opened = yield* timed(w, Effect.scoped(a.cm.openStream(target.nodeId, proto, timeout)))
        expect(opened.took).toBe(T)
        expect(Exit.isFailure(opened.exit)).toBe(true)
        // On the connection now held, the answer alone fits.
        const again = yield* timed(w, Effect.scoped(a.cm.openStream(target.nodeId, proto, timeout)))
        expect(Exit.isSuccess(again.exit)).toBe(true)
      })
    )
  )

  it.effect("a call after a dial (closest nodes, ping) shares the timeout with the dial", () =>
    simulate((ctx) =>
      Effect.gen(function* () {
        const { w, others } = yield* world(ctx, 3)
        const [target, other] = [others[0]!, others[1]!]
        const a = yield* handNode(w, { slowTo: [target] })
        yield* a.table.setNode(target.nodeId, addressOf(target))
        const asked = yield* timed(w, a.cm.getRemoteNodeClosestNodes(target.nodeId, other.nodeId, timeout))
        expect(asked.took).toBe(T)
        expect(failureOf(asked.exit)).toMatchObject({ _tag: "RemoteQueryError" })
        // The dial succeeded (600 ms) and the connection is kept: the call alone fits now.
        const again = yield* timed(w, a.cm.getRemoteNodeClosestNodes(target.nodeId, other.nodeId, timeout))
        expect(Exit.isSuccess(again.exit)).toBe(true)
        expect(again.took).toBe(600)
        // pingNode: a fresh connection and its round trip (600 ms each) do not fit in 1 s.
        yield* a.cm.destroyConnection(target.nodeId)
        const ping = yield* timed(w, a.cm.pingNode(target.nodeId, undefined, timeout))
        expect(ping.exit).toEqual(Exit.succeed(false))
        expect(ping.took).toBe(T)
        const pingAt = yield* timed(w, a.cm.pingNode(target.nodeId, addressOf(target), timeout))
        expect(pingAt.exit).toEqual(Exit.succeed(false))
        expect(pingAt.took).toBe(T)
      })
    )
  )

  it.effect("relaySignalingMessage takes a timeout and fails at it", () =>
    simulate((ctx) =>
      Effect.gen(function* () {
        const { w, others } = yield* world(ctx, 3)
        const [target, source] = [others[0]!, others[1]!]
        const a = yield* handNode(w, { slowTo: [target] })
        expect(yield* a.cm.pingNode(target.nodeId, addressOf(target), { timeout: "2 seconds" })).toBe(true)
        const relayed = yield* timed(
          w,
          a.cm.relaySignalingMessage(
            signedRequest({ seed: "deadline-source", target: target.nodeId, addresses: [], timestamp: 0 }),
            addressOf(source),
            {
              timeout: "200 millis"
            }
          )
        )
        expect(relayed.took).toBe(200)
        expect(failureOf(relayed.exit)).toMatchObject({ _tag: "NodeConnectionError", reason: "timeout" })
      })
    )
  )

  it.effect("getMultiConnection: a slow name resolution and a slow dial fail at the one timeout", () =>
    simulate((ctx) =>
      Effect.gen(function* () {
        const { w, others } = yield* world(ctx, 2)
        const target = others[0]!
        const names = Dns.makeStatic({ "target.example": [target.host] })
        const slowDns: Dns.DnsService = { lookup: (name) => Effect.delay(names.lookup(name), "600 millis") }
        const a = yield* handNode(w, { dns: slowDns, slowTo: [target] })
        const multi = yield* timed(
          w,
          a.cm.getMultiConnection([target.nodeId], [{ host: "target.example", port: target.port }], timeout)
        )
        expect(multi.took).toBe(T)
        expect(failureOf(multi.exit)).toMatchObject({ _tag: "MultiConnectionError" })
        expect(yield* a.cm.hasConnection(target.nodeId)).toBe(false)
      })
    )
  )

  it.effect("findNode: a slow table read and a slow lookup end at the one timeout", () =>
    simulate((ctx) =>
      Effect.gen(function* () {
        const { w, seed, others } = yield* world(ctx, 16)
        // Reading the table takes 600 ms; the lookup's queries 320 ms each (links of 80 ms).
        const a = yield* handNode(w, {
          graphDelay: "600 millis",
          seeds: [seed],
          slowTo: [seed, ...others],
          link: { latency: "80 millis", jitter: 0 }
        })
        const missing = KeyRingTest.nodeIdOf("deadline/nobody")
        const found = yield* timed(w, a.cm.findNode(missing, timeout))
        expect(found.exit).toEqual(Exit.succeed(Option.none()))
        expect(found.took).toBe(T)
      })
    )
  )

  it.effect("syncNodeGraph and refreshBuckets end at the one timeout, whatever their steps", () =>
    simulate((ctx) =>
      Effect.gen(function* () {
        const { w, seed, others } = yield* world(ctx, 16)
        // A second seed that never answers: connecting to the seeds takes the whole timeout
        // (the call waits for every seed), and the join's lookup gets nothing of it.
        const silent = yield* w.addNode({ seed: true })
        // Every link of the new node takes 80 ms: a query (a dial and an answer, 320 ms) fits
        // in a lookup's third of the timeout.
        const a = yield* handNode(w, {
          seeds: [seed, silent],
          slowTo: [seed, ...others],
          link: { latency: "80 millis", jitter: 0 },
          bucketRefreshInterval: Duration.zero
        })
        yield* w.sim.partition([a.host], [silent.host])
        const joined = yield* timed(w, a.cm.syncNodeGraph(timeout))
        expect(Exit.isSuccess(joined.exit)).toBe(true)
        expect(joined.took).toBe(T)
        expect(yield* a.cm.hasConnection(seed.nodeId)).toBe(true)
        // Every bucket is stale at once; each lookup alone would take most of the timeout.
        yield* a.table.setNode(others[0]!.nodeId, addressOf(others[0]!))
        yield* a.table.setNode(others[1]!.nodeId, addressOf(others[1]!))
        expect((yield* a.table.getBuckets).length).toBeGreaterThanOrEqual(2)
        const refreshed = yield* timed(w, a.cm.refreshBuckets(timeout))
        expect(Exit.isSuccess(refreshed.exit)).toBe(true)
        expect(refreshed.took).toBeLessThanOrEqual(T)
      })
    )
  )
})
