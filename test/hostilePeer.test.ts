/**
 * A hostile peer on real QUIC over loopback: a node whose closest-nodes answers carry bad
 * contacts (fixtures/hostilePeer.ts). For each kind of bad answer, what the asking node takes
 * from it is exactly the good part (or nothing, when the answer does not even decode), its
 * NodeGraph holds none of the bad contacts, and a lookup still finds its target through the
 * honest nodes.
 *
 * The network: A (the asking node) knows the hostile node H and, in most cases, the honest
 * node P; P knows the target T. A knows nothing of T.
 */
import { randomBytes } from "node:crypto"
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Either, Option, Stream } from "effect"
import type { Address } from "../src/services/Address.js"
import { RemoteQueryError } from "../src/services/ConnectionManager.js"
import * as NodeId from "../src/services/NodeId.js"
import { makeNode, type TestNode } from "./fixtures/cmNode.js"
import { type Answer, makeHostileNode, type PingAnswer, type RawContact } from "./fixtures/hostilePeer.js"

interface World {
  readonly a: TestNode
  readonly hostile: TestNode
  readonly p: TestNode
  readonly t: TestNode
}

const contact = (nodeId: NodeId.NodeId, address: Address): RawContact => ({
  nodeIdEncoded: NodeId.encode(nodeId),
  host: address.host,
  port: address.port
})
const of = (node: TestNode) => contact(node.nodeId, node.address)
const randomId = () => randomBytes(NodeId.NODE_ID_BYTES) as unknown as NodeId.NodeId
const deadAddress = { host: "127.0.0.1", port: 9 }

/** Builds the network; H answers with `answerOf(world)`. */
const makeWorld = (name: string, answerOf: (w: World) => Answer, aKnowsP = true) =>
  Effect.gen(function* () {
    let answer: Answer = () => Stream.empty
    const hostile = yield* makeHostileNode(`hostile-${name}-h`, () => answer)
    const [a, p, t] = yield* Effect.all([
      makeNode(`hostile-${name}-a`),
      makeNode(`hostile-${name}-p`),
      makeNode(`hostile-${name}-t`)
    ])
    yield* p.cm.getConnectionWithAddress(t.nodeId, t.address)
    yield* a.cm.getConnectionWithAddress(hostile.nodeId, hostile.address)
    if (aKnowsP) yield* a.cm.getConnectionWithAddress(p.nodeId, p.address)
    const world = { a, hostile, p, t }
    answer = answerOf(world)
    return world
  })

const always =
  (contacts: ReadonlyArray<RawContact>): Answer =>
  () =>
    Stream.fromIterable(contacts)

/** What A takes from H's answer about T: NodeIds and addresses, in order. */
const heardFromHostile = (w: World) =>
  w.a.cm
    .getRemoteNodeClosestNodes(w.hostile.nodeId, w.t.nodeId)
    .pipe(Effect.map((contacts) => contacts.map((c) => `${NodeId.encode(c.nodeId)}@${c.host}:${c.port}`)))

const heard = (nodeId: NodeId.NodeId, address: Address) =>
  `${NodeId.encode(nodeId)}@${address.host}:${address.port}`
const heardNode = (node: TestNode) => heard(node.nodeId, node.address)

/** A's lookup of T succeeds, and A's NodeGraph holds only H, P and T, each at its own address. */
const lookupSucceedsAndGraphIsClean = (w: World) =>
  Effect.gen(function* () {
    const found = yield* w.a.cm.findNode(w.t.nodeId, { timeout: Duration.seconds(6) })
    expect(Option.map(found, (x) => `${x.host}:${x.port}`)).toEqual(
      Option.some(`${w.t.address.host}:${w.t.address.port}`)
    )
    const held = (yield* w.a.graph.getBuckets).flatMap(([, contacts]) => contacts)
    const known = [w.hostile, w.p, w.t]
    const entries = held.map((c) => {
      const node = known.find((n) => NodeId.equals(n.nodeId, c.nodeId))
      return { node: node?.seed, addresses: c.addresses.map((x) => `${x.host}:${x.port}`) }
    })
    expect(entries).toEqual(
      expect.arrayContaining([{ node: w.t.seed, addresses: [`${w.t.address.host}:${w.t.address.port}`] }])
    )
    for (const e of entries) {
      const node = known.find((n) => n.seed === e.node)
      expect(node).toBeDefined()
      expect(e.addresses).toEqual([`${node!.address.host}:${node!.address.port}`])
    }
  })

describe("a hostile peer's closest-nodes answers", () => {
  it.scopedLive("our own NodeId is dropped", () =>
    Effect.gen(function* () {
      const w = yield* makeWorld("self", (w) => always([of(w.a), contact(w.a.nodeId, deadAddress), of(w.p)]))
      expect(yield* heardFromHostile(w)).toEqual([heardNode(w.p)])
      yield* lookupSucceedsAndGraphIsClean(w)
    })
  )

  it.scopedLive("the answering peer's own NodeId at another address is dropped", () =>
    Effect.gen(function* () {
      const w = yield* makeWorld("answerer", (w) => always([contact(w.hostile.nodeId, deadAddress), of(w.p)]))
      expect(yield* heardFromHostile(w)).toEqual([heardNode(w.p)])
      yield* lookupSucceedsAndGraphIsClean(w)
    })
  )

  it.scopedLive("an answer with malformed NodeIds is refused whole", () =>
    Effect.gen(function* () {
      const w = yield* makeWorld("malformed", (w) =>
        always([
          of(w.p),
          { nodeIdEncoded: "vnot-a-node-id", host: "127.0.0.1", port: 4000 },
          {
            nodeIdEncoded: `v${"!".repeat(NodeId.encode(w.t.nodeId).length - 1)}`,
            host: "127.0.0.1",
            port: 4000
          },
          { nodeIdEncoded: `x${NodeId.encode(w.t.nodeId).slice(1)}`, host: "127.0.0.1", port: 4000 }
        ])
      )
      const answer = yield* Effect.either(heardFromHostile(w))
      expect(Either.isLeft(answer) && answer.left instanceof RemoteQueryError).toBe(true)
      yield* lookupSucceedsAndGraphIsClean(w)
    })
  )

  it.scopedLive("port 0 is dropped", () =>
    Effect.gen(function* () {
      const w = yield* makeWorld("port0", (w) =>
        always([
          contact(w.t.nodeId, { host: "127.0.0.1", port: 0 }),
          contact(randomId(), { host: "127.0.0.1", port: 0 }),
          of(w.p)
        ])
      )
      expect(yield* heardFromHostile(w)).toEqual([heardNode(w.p)])
      yield* lookupSucceedsAndGraphIsClean(w)
    })
  )

  it.scopedLive("an answer with port 70000 is refused whole", () =>
    Effect.gen(function* () {
      const w = yield* makeWorld("port70000", (w) =>
        always([of(w.p), contact(w.t.nodeId, { host: "127.0.0.1", port: 70000 })])
      )
      const answer = yield* Effect.either(heardFromHostile(w))
      expect(Either.isLeft(answer) && answer.left instanceof RemoteQueryError).toBe(true)
      yield* lookupSucceedsAndGraphIsClean(w)
    })
  )

  it.scopedLive("hosts that are neither IP addresses nor host names are dropped", () =>
    Effect.gen(function* () {
      const w = yield* makeWorld("hosts", (w) =>
        always([
          contact(randomId(), { host: "", port: 4000 }),
          contact(randomId(), { host: "not a host!", port: 4000 }),
          contact(randomId(), { host: `${"a".repeat(300)}.example`, port: 4000 }),
          contact(randomId(), { host: "256.1.1.1", port: 4000 }),
          of(w.p)
        ])
      )
      expect(yield* heardFromHostile(w)).toEqual([heardNode(w.p)])
      yield* lookupSucceedsAndGraphIsClean(w)
    })
  )

  it.scopedLive("an answer of 10,000 contacts is capped at k, and the rest is never sent", () =>
    Effect.gen(function* () {
      let produced = 0
      const w = yield* makeWorld(
        "flood",
        (w) => () =>
          Stream.range(0, 9_999).pipe(
            Stream.map((i) =>
              i === 0 ? of(w.p) : contact(randomId(), { host: "127.0.0.1", port: 1000 + i })
            ),
            Stream.rechunk(50),
            Stream.tap(() => Effect.sync(() => produced++))
          )
      )
      const answer = yield* heardFromHostile(w)
      expect(answer.length).toBe(w.a.graph.k)
      expect(answer[0]).toBe(heardNode(w.p))
      // The query stops reading at k and the call ends: the hostile server stops sending soon
      // after (what it produced is what was sent, or about to be; about 100 here, idle).
      expect(produced).toBeLessThan(2_500)
      yield* lookupSucceedsAndGraphIsClean(w)
    })
  )

  it.scopedLive("duplicates are taken once", () =>
    Effect.gen(function* () {
      const w = yield* makeWorld("duplicates", (w) =>
        always([of(w.p), of(w.p), of(w.t), of(w.p), of(w.t), contact(w.p.nodeId, deadAddress)])
      )
      expect(yield* heardFromHostile(w)).toEqual([heardNode(w.p), heardNode(w.t)])
      yield* lookupSucceedsAndGraphIsClean(w)
    })
  )

  it.scopedLive("50 contacts from one public /24 are capped at 2", () =>
    Effect.gen(function* () {
      const sybils = Array.from({ length: 50 }, (_, i) => ({
        nodeId: randomId(),
        address: { host: `203.0.113.${i + 1}`, port: 4000 }
      }))
      const w = yield* makeWorld("subnet", (w) =>
        always([of(w.p), ...sybils.map((s) => contact(s.nodeId, s.address))])
      )
      expect(yield* heardFromHostile(w)).toEqual([
        heardNode(w.p),
        heard(sybils[0]!.nodeId, sybils[0]!.address),
        heard(sybils[1]!.nodeId, sybils[1]!.address)
      ])
      yield* lookupSucceedsAndGraphIsClean(w)
    })
  )

  it.scopedLive("the target at a wrong address: the lookup tries the address an honest node gives", () =>
    Effect.gen(function* () {
      // A knows only H, which names T at a dead address before anyone else names T.
      const w = yield* makeWorld(
        "wrong-target",
        (w) => always([contact(w.t.nodeId, deadAddress), of(w.p)]),
        false
      )
      expect(yield* heardFromHostile(w)).toEqual([heard(w.t.nodeId, deadAddress), heardNode(w.p)])
      yield* lookupSucceedsAndGraphIsClean(w)
    })
  )

  it.scopedLive("a contact at a dead address is tried at the addresses it confirmed for itself", () =>
    Effect.gen(function* () {
      // Only H names T: at a dead address, with T's real address among those T confirmed.
      const w = yield* makeWorld(
        "confirmed-target",
        (w) => always([{ ...contact(w.t.nodeId, deadAddress), addresses: [w.t.address] }]),
        false
      )
      yield* lookupSucceedsAndGraphIsClean(w)
    })
  )

  it.scopedLive(
    "an answer that does not match its schema fails the call with a typed error, not a defect",
    () =>
      Effect.gen(function* () {
        let pingAnswer: PingAnswer = (nonce) => nonce
        const hostile = yield* makeHostileNode(
          "hostile-ping-h",
          () => () => Stream.empty,
          () => pingAnswer
        )
        const a = yield* makeNode("hostile-ping-a")
        yield* a.cm.getConnectionWithAddress(hostile.nodeId, hostile.address)
        const ping = a.cm.withConnection(hostile.nodeId, (h) => h.client.ping).pipe(Effect.either)
        expect(Either.isRight(yield* ping)).toBe(true)
        pingAnswer = () => ({ not: "a nonce" })
        const refused = yield* ping
        expect(Either.isLeft(refused) && refused.left.message).toMatch(/does not match its schema/)
      })
  )
})
