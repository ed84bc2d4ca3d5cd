/**
 * The connection manager among several nodes on real QUIC over loopback: simultaneous
 * open, the connection limit, the lookup's concurrency bound, hole-punch signalling and
 * joining through seeds.
 */
import * as Dgram from "node:dgram"
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Layer, Option } from "effect"
import * as PeerRpcLive from "../src/layers/PeerRpcLive.js"
import * as NodeId from "../src/services/NodeId.js"
import { type PeerClient, PeerRpc } from "../src/services/PeerRpc.js"
import { eventually, makeNode, nodeIdOf, seedOf, type TestNode } from "./fixtures/cmNode.js"
import { signedRequest } from "./fixtures/holePunchRequest.js"

const deadAddress = { host: "127.0.0.1", port: 9 }

/** One QUIC connection on each side, and it is the same one: initiated by the smaller NodeId. */
const converged = (a: TestNode, b: TestNode) =>
  Effect.gen(function* () {
    const [la, lb] = [yield* a.cm.listConnections, yield* b.cm.listConnections]
    const [qa, qb] = [yield* a.quicConnections, yield* b.quicConnections]
    if (la.length !== 1 || lb.length !== 1 || qa !== 1 || qb !== 1) return false
    const aSmaller = NodeId.compare(a.nodeId, b.nodeId) < 0
    return (
      la[0]!.direction === (aSmaller ? "forward" : "reverse") &&
      lb[0]!.direction === (aSmaller ? "reverse" : "forward") &&
      (aSmaller ? la[0]!.port === b.address.port : lb[0]!.port === a.address.port)
    )
  })

describe("simultaneous open", () => {
  it.scopedLive(
    "50 races of A dialling B while B dials A all converge on one connection",
    () =>
      Effect.gen(function* () {
        const pairs = yield* Effect.forEach(
          Array.from({ length: 10 }, (_, i) => i),
          (i) => Effect.all([makeNode(`race-${i}-a`), makeNode(`race-${i}-b`)])
        )
        let races = 0
        for (let round = 0; round < 5; round++) {
          yield* Effect.forEach(
            pairs,
            ([a, b]) =>
              Effect.gen(function* () {
                const [ha, hb] = yield* Effect.all(
                  [
                    a.cm.getConnectionWithAddress(b.nodeId, b.address),
                    b.cm.getConnectionWithAddress(a.nodeId, a.address)
                  ],
                  { concurrency: 2 }
                )
                expect(NodeId.equals(ha.nodeId, b.nodeId)).toBe(true)
                expect(NodeId.equals(hb.nodeId, a.nodeId)).toBe(true)
                // Never zero, never two: both sides settle on the same single connection.
                const ok = yield* eventually(converged(a, b), (x) => x, "10 seconds").pipe(Effect.option)
                expect(ok).toEqual(Option.some(true))
                // And it works both ways.
                yield* a.cm.withConnection(b.nodeId, (h) => h.client.ping)
                yield* b.cm.withConnection(a.nodeId, (h) => h.client.ping)
                races++
                // Start the next round from nothing.
                yield* a.cm.destroyConnection(b.nodeId)
                yield* b.cm.destroyConnection(a.nodeId)
                yield* eventually(
                  Effect.all([a.quicConnections, b.quicConnections]),
                  ([x, y]) => x === 0 && y === 0,
                  "10 seconds"
                )
              }),
            { concurrency: "unbounded", discard: true }
          )
        }
        expect(races).toBe(50)
      }),
    180_000
  )
})

describe("connection limit", () => {
  it.scopedLive("prunes the least recently used idle connection, and fails only when none is idle", () =>
    Effect.gen(function* () {
      const a = yield* makeNode("limit-a", { config: { maxConnections: 2 } })
      const [b, c, d, e] = yield* Effect.all([
        makeNode("limit-b"),
        makeNode("limit-c"),
        makeNode("limit-d"),
        makeNode("limit-e")
      ])
      yield* a.cm.getConnectionWithAddress(b.nodeId, b.address)
      yield* a.cm.getConnectionWithAddress(c.nodeId, c.address)
      yield* a.cm.withConnection(b.nodeId, (h) => h.client.ping) // b is now more recently used than c
      yield* a.cm.getConnectionWithAddress(d.nodeId, d.address)
      const held = (yield* a.cm.listConnections).map((x) => x.nodeId).sort()
      expect(held).toEqual([NodeId.encode(b.nodeId), NodeId.encode(d.nodeId)].sort())
      // Both in use: nothing can be pruned, a new dial fails with a typed error.
      const error = yield* Effect.scoped(
        Effect.gen(function* () {
          yield* a.cm.acquireConnection(b.nodeId)
          yield* a.cm.acquireConnection(d.nodeId)
          return yield* a.cm.getConnectionWithAddress(e.nodeId, e.address).pipe(Effect.flip)
        })
      )
      expect(error).toMatchObject({ _tag: "NodeConnectionError", reason: "limit" })
      expect(yield* a.cm.listConnections).toHaveLength(2)
    })
  )
})

describe("lookup", () => {
  it.scopedLive(
    "keeps at most alpha queries in flight, uses the parallelism, and asks no node twice",
    () =>
      Effect.gen(function* () {
        let inFlight = 0
        let maxInFlight = 0
        let answered = 0
        const asked = new Map<string, number>()
        // The querying node's RPC client, counting closest-node queries in flight.
        const counting = Layer.effect(
          PeerRpc,
          Effect.map(PeerRpc, (inner) => ({
            ...inner,
            client: (connection) =>
              Effect.map(
                inner.client(connection),
                (client): PeerClient => ({
                  ping: client.ping,
                  closestNodes: (target) => client.closestNodes(target),
                  holePunchSignal: (message) => client.holePunchSignal(message),
                  closestNodesUpTo: (target, limit, timeout) =>
                    Effect.suspend(() => {
                      inFlight++
                      maxInFlight = Math.max(maxInFlight, inFlight)
                      const key = NodeId.encode(connection.remoteNodeId)
                      asked.set(key, (asked.get(key) ?? 0) + 1)
                      return client.closestNodesUpTo(target, limit, timeout)
                    }).pipe(
                      Effect.tap(() =>
                        Effect.sync(() => {
                          answered++
                        })
                      ),
                      Effect.ensuring(
                        Effect.sync(() => {
                          inFlight--
                        })
                      )
                    )
                })
              )
          }))
        ).pipe(Layer.provideMerge(PeerRpcLive.layer))
        const a = yield* makeNode("lookup-a", { peerRpc: counting })
        const others = yield* Effect.forEach(
          Array.from({ length: 16 }, (_, i) => i),
          (i) => makeNode(`lookup-${i}`),
          {
            concurrency: 4
          }
        )
        // a knows the first 12; each of those knows every other node; the target is known only to them.
        const target = others[15]!
        for (const o of others.slice(0, 12)) {
          yield* a.graph.setNode(o.nodeId, { ...o.address, scope: "local" })
          for (const p of others)
            if (p !== o) yield* o.graph.setNode(p.nodeId, { ...p.address, scope: "local" })
        }
        const result = yield* a.cm.getClosestGlobalNodes(target.nodeId, { timeout: "20 seconds" })
        expect(Option.map(result.address, (x) => x.port)).toEqual(Option.some(target.address.port))
        expect(maxInFlight).toBeLessThanOrEqual(3)
        expect(maxInFlight).toBeGreaterThanOrEqual(2)
        for (const [, n] of asked) expect(n).toBe(1)
        // The figures count what happened: the target was heard of in the first answers and
        // reached in the second round; contacted are the nodes that answered, and the target;
        // queries are the nodes asked, the target's dial, and at most alpha - 1 more that the
        // find cut short before they asked.
        expect(result.stats.rounds).toBe(2)
        expect(result.stats.contacted).toBe(answered + 1)
        expect(result.stats.queries).toBeGreaterThanOrEqual(asked.size + 1)
        expect(result.stats.queries).toBeLessThanOrEqual(asked.size + 3)
        // Live nodes it learned of are in its table now.
        expect(Option.isSome(yield* a.graph.getNode(target.nodeId))).toBe(true)
      }),
    120_000
  )

  it.scopedLive("a silent node does not stall the lookup", () =>
    Effect.gen(function* () {
      const a = yield* makeNode("silent-a")
      const b = yield* makeNode("silent-b")
      const c = yield* makeNode("silent-c")
      // a believes in a node at a dead address, and knows b, who knows c.
      yield* a.graph.setNode(nodeIdOf("silent-ghost"), { ...deadAddress, scope: "local" })
      yield* a.graph.setNode(b.nodeId, { ...b.address, scope: "local" })
      yield* b.graph.setNode(c.nodeId, { ...c.address, scope: "local" })
      const started = Date.now()
      const found = yield* a.cm.findNode(c.nodeId, { timeout: "9 seconds" })
      expect(Option.map(found, (x) => x.port)).toEqual(Option.some(c.address.port))
      // Found through b while the ghost's query (3 s per-query timeout) was still pending.
      expect(Date.now() - started).toBeLessThan(3000)
    })
  )
})

describe("hole-punch signalling", () => {
  it.scopedLive(
    "a relay forwards the request with the address it observed; the target punches toward it",
    () =>
      Effect.gen(function* () {
        const relay = yield* makeNode("punch-relay")
        const source = yield* makeNode("punch-source")
        const target = yield* makeNode("punch-target")
        yield* target.cm.getConnectionWithAddress(relay.nodeId, relay.address)
        yield* source.cm.getConnectionWithAddress(relay.nodeId, relay.address)
        // The source claims a false address: the relay must use what it observed instead.
        yield* source.cm.sendSignalingMessage(relay.nodeId, source.nodeId, target.nodeId, {
          host: "127.0.0.9",
          port: 1
        })
        const sent = yield* eventually(target.sentDatagrams, (xs) => xs.length > 0)
        expect(sent[0]).toMatchObject({ host: "127.0.0.1", port: source.address.port, size: 32 })
        expect(sent.some((d) => d.host === "127.0.0.9")).toBe(false)
      })
  )

  it.scopedLive("a relay refuses a source that is not the caller, and rate-limits each caller", () =>
    Effect.gen(function* () {
      const relay = yield* makeNode("punch2-relay", { config: { relayRateLimit: 3 } })
      const source = yield* makeNode("punch2-source")
      const target = yield* makeNode("punch2-target")
      yield* target.cm.getConnectionWithAddress(relay.nodeId, relay.address)
      yield* source.cm.getConnectionWithAddress(relay.nodeId, relay.address)
      // Signed by the key of `seed`, vouching for the address the relay sees the source at.
      const call = (seed: string) =>
        source.cm.withConnection(relay.nodeId, (h) =>
          h.client.holePunchSignal({
            request: signedRequest({
              seed,
              target: target.nodeId,
              addresses: [{ host: "127.0.0.1", port: source.address.port }],
              timestamp: Date.now()
            })
          })
        )
      const spoofed = yield* call("someone-else").pipe(Effect.flip)
      expect(spoofed.message).toMatch(/source .* must be the calling node/)
      const results = yield* Effect.forEach(
        Array.from({ length: 6 }, () => 0),
        () => Effect.either(call("punch2-source"))
      )
      const refused = results.filter((r) => r._tag === "Left")
      expect(refused.length).toBeGreaterThanOrEqual(3)
      expect(String((refused[0] as { left: Error }).left.message)).toMatch(/rate limited/)
    })
  )

  it.scopedLive(
    "dialling a non-seed node asks the seeds to signal it; messages to ourselves are dropped",
    () =>
      Effect.gen(function* () {
        const seed = yield* makeNode("punch3-seed")
        const target = yield* makeNode("punch3-target")
        const source = yield* makeNode("punch3-source", { config: { seedNodes: [seedOf(seed)] } })
        yield* target.cm.getConnectionWithAddress(seed.nodeId, seed.address)
        // The direct attempt goes to an address that swallows every packet (as a NAT does);
        // the signal through the seed still reaches the target.
        const blackHole = yield* Effect.acquireRelease(
          Effect.async<Dgram.Socket>((resume) => {
            const socket = Dgram.createSocket("udp4")
            socket.bind(0, "127.0.0.1", () => resume(Effect.succeed(socket)))
          }),
          (socket) => Effect.sync(() => socket.close())
        )
        const exit = yield* source.cm
          .getConnectionWithAddress(
            target.nodeId,
            { host: "127.0.0.1", port: blackHole.address().port },
            { timeout: "3 seconds" }
          )
          .pipe(Effect.exit)
        // The target, signalled, punches toward the source; it dials back only once it knows it
        // is behind a symmetric NAT, which it does not here: the dial fails.
        expect(exit._tag).toBe("Failure")
        const sent = yield* eventually(target.sentDatagrams, (xs) => xs.length > 0)
        expect(sent[0]).toMatchObject({ host: "127.0.0.1", port: source.address.port })
        // To ourselves: nothing is sent.
        const before = (yield* source.cm.listConnections).length
        yield* source.cm.sendSignalingMessage(source.nodeId, source.nodeId, target.nodeId)
        expect((yield* source.cm.listConnections).length).toBe(before)
      })
  )

  it.scopedLive("holePunchReverse sends at growing intervals until its timeout", () =>
    Effect.gen(function* () {
      const a = yield* makeNode("punch4-a", {
        config: { connectionHolePunchIntervalTime: Duration.millis(100) }
      })
      yield* a.cm.holePunchReverse("127.0.0.1", 9, { timeout: "1 second" })
      const sent = yield* a.sentDatagrams
      // 100 + 200 + 400 ms fit in a second: 4 packets (the first at once), not 10.
      expect(sent.length).toBe(4)
      expect(sent.every((d) => d.size === 32 && d.port === 9)).toBe(true)
    })
  )
})

describe("joining through seeds", () => {
  it.scopedLive(
    "nodes join through a seed, the network grows, and a newcomer learns the others",
    () =>
      Effect.gen(function* () {
        const seed = yield* makeNode("join-seed")
        // The seed's own list names itself: that entry is ignored.
        const self = yield* makeNode("join-self", { config: { seedNodes: [seedOf(seed)] } })
        expect(self.cm.isSeedNode(seed.nodeId)).toBe(true)
        const seedWithSelf = yield* makeNode("join-seed2", {
          config: { seedNodes: [{ nodeId: nodeIdOf("join-seed2"), host: "127.0.0.1", port: 1 }] }
        })
        expect(seedWithSelf.cm.getSeedNodes).toHaveLength(0)
        yield* seedWithSelf.cm.syncNodeGraph({ timeout: "2 seconds" })

        const members: Array<TestNode> = [self]
        yield* self.cm.syncNodeGraph()
        for (let i = 0; i < 5; i++) {
          const n = yield* makeNode(`join-${i}`, { config: { seedNodes: [seedOf(seed)] } })
          yield* n.cm.syncNodeGraph()
          members.push(n)
          // The seed learned of every node that joined through it.
          expect(yield* seed.graph.size).toBe(members.length)
        }
        const late = yield* makeNode("join-late", { config: { seedNodes: [seedOf(seed)] } })
        yield* late.cm.syncNodeGraph()
        expect(yield* late.graph.size).toBeGreaterThanOrEqual(members.length)
        // …and can reach one it never dialled before.
        const far = members[2]!
        expect(yield* late.cm.pingNode(far.nodeId)).toBe(true)
      }),
    120_000
  )

  it.scopedLive("an offline seed does not stop the join; only offline seeds fail with a typed error", () =>
    Effect.gen(function* () {
      const seed = yield* makeNode("offline-seed")
      const ghost = { nodeId: nodeIdOf("offline-ghost"), host: "127.0.0.1", port: 9 }
      const a = yield* makeNode("offline-a", { config: { seedNodes: [seedOf(seed), ghost] } })
      yield* a.cm.syncNodeGraph({ timeout: "3 seconds" })
      expect(yield* a.cm.hasConnection(seed.nodeId)).toBe(true)
      const b = yield* makeNode("offline-b", { config: { seedNodes: [ghost] } })
      const error = yield* b.cm.syncNodeGraph({ timeout: "1 second" }).pipe(Effect.flip)
      expect(error._tag).toBe("MultiConnectionError")
    })
  )
})
