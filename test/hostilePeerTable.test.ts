/**
 * Routing-table hygiene without a network: the buckets' IP-diversity limit (both NodeGraph
 * layers), `Address.isLocalHost`, and the filter a lookup runs over a peer's answer.
 */
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { describe, expect, it } from "@effect/vitest"
import { Effect, type Scope } from "effect"
import { type AnswerContext, filterAnswer } from "../src/internal/connectionManager/answerFilter.js"
import * as IpDiversity from "../src/internal/ipDiversity.js"
import * as NodeGraphLmdb from "../src/layers/NodeGraphLmdb.js"
import * as NodeGraphMemory from "../src/layers/NodeGraphMemory.js"
import { ipDiversityFromEnv } from "../src/programs/Agent.js"
import * as Address from "../src/services/Address.js"
import type { WireContact } from "../src/services/Contact.js"
import {
  DEFAULT_IP_DIVERSITY,
  type NodeAddress,
  type NodeGraphService,
  type SetNodeResult
} from "../src/services/NodeGraph.js"
import * as NodeId from "../src/services/NodeId.js"

const own = Uint8Array.from({ length: NodeId.NODE_ID_BYTES }, (_, i) => (i * 37) & 255) as NodeId.NodeId
/** The n-th NodeId in bucket `bucket` of `own`. */
const idIn = (bucket: number, n: number) => {
  const noise = new Uint8Array(NodeId.NODE_ID_BYTES)
  noise[NodeId.NODE_ID_BYTES - 1] = n & 255
  noise[NodeId.NODE_ID_BYTES - 2] = n >> 8
  return NodeId.inBucket(own, bucket, noise)
}
const at = (host: string, port = 4000): NodeAddress => ({ host, port, scope: "global" })
const tags = (results: ReadonlyArray<SetNodeResult>) => results.map((r) => r._tag)
/** Sets node n of `bucket` at each host in turn (node numbers from `first`). */
const setAll = (graph: NodeGraphService, bucket: number, hosts: ReadonlyArray<string>, first = 0) =>
  Effect.forEach(hosts, (host, i) => graph.setNode(idIn(bucket, first + i), at(host)))

type Layer = "memory" | "lmdb"

const makeGraph = (
  layer: Layer,
  ipDiversity?: IpDiversity.IpDiversityOption,
  path?: string
): Effect.Effect<NodeGraphService, unknown, Scope.Scope> => {
  const options = ipDiversity === undefined ? {} : { ipDiversity }
  if (layer === "memory") return NodeGraphMemory.make(own, options)
  const dir = path ?? mkdtempSync(join(tmpdir(), "quicmesh-diversity-"))
  return Effect.tap(NodeGraphLmdb.make(own, { path: dir, ...options }), () =>
    path === undefined
      ? Effect.addFinalizer(() => Effect.sync(() => rmSync(dir, { recursive: true })))
      : Effect.void
  )
}

for (const layer of ["memory", "lmdb"] as const) {
  describe(`IP diversity per bucket (${layer})`, () => {
    it.scoped(
      "at most 2 nodes of one public /24 in a bucket by default; other /24s and buckets are apart",
      () =>
        Effect.gen(function* () {
          const graph = yield* makeGraph(layer)
          expect(graph.ipDiversity).toEqual(DEFAULT_IP_DIVERSITY)
          const first = yield* setAll(graph, 250, [
            "203.0.113.1",
            "203.0.113.2",
            "203.0.113.3",
            "203.0.113.200"
          ])
          expect(tags(first)).toEqual(["Added", "Added", "IpGroupFull", "IpGroupFull"])
          expect(first[2]).toEqual({ _tag: "IpGroupFull", bucketIndex: 250, group: "v4:cb0071/24" })
          // Another /24 in the same bucket, and the same /24 in another bucket.
          expect(tags(yield* setAll(graph, 250, ["203.0.114.1", "198.51.100.7"], 10))).toEqual([
            "Added",
            "Added"
          ])
          expect(tags(yield* setAll(graph, 249, ["203.0.113.9", "203.0.113.10"], 20))).toEqual([
            "Added",
            "Added"
          ])
          expect(yield* graph.size).toBe(6)
          // A slot frees when a node of the group leaves.
          expect(yield* graph.unsetNode(idIn(250, 0))).toBe(true)
          expect(tags(yield* setAll(graph, 250, ["203.0.113.3"], 2))).toEqual(["Added"])
        })
    )

    it.scoped("at most 2 nodes of one public /48 in a bucket by default", () =>
      Effect.gen(function* () {
        const graph = yield* makeGraph(layer)
        const results = yield* setAll(graph, 240, [
          "2001:db8:1:1::1",
          "2001:db8:1:2::1",
          "2001:db8:1:ffff::5",
          "2001:db8:2::1",
          "2001:db8:1::"
        ])
        expect(tags(results)).toEqual(["Added", "Added", "IpGroupFull", "Added", "IpGroupFull"])
        expect(results[2]).toEqual({ _tag: "IpGroupFull", bucketIndex: 240, group: "v6:20010db80001/48" })
      })
    )

    it.scoped("loopback, private, link-local, carrier-NAT and ULA addresses are not limited", () =>
      Effect.gen(function* () {
        const graph = yield* makeGraph(layer)
        const hosts = [
          ...Array.from({ length: 4 }, () => "127.0.0.1"),
          ...Array.from({ length: 3 }, (_, i) => `10.0.0.${i + 1}`),
          ...Array.from({ length: 3 }, (_, i) => `192.168.1.${i + 1}`),
          ...Array.from({ length: 3 }, (_, i) => `172.16.0.${i + 1}`),
          ...Array.from({ length: 3 }, (_, i) => `169.254.0.${i + 1}`),
          ...Array.from({ length: 3 }, (_, i) => `100.64.0.${i + 1}`),
          ...Array.from({ length: 3 }, (_, i) => `fd00::${i + 1}`),
          ...Array.from({ length: 3 }, (_, i) => `fe80::${i + 1}`),
          "::1",
          "localhost"
        ]
        expect(hosts.length).toBeGreaterThan(graph.k)
        const results = yield* setAll(graph, 230, hosts)
        expect(tags(results).slice(0, graph.k)).toEqual(Array(graph.k).fill("Added"))
        expect(results[graph.k]?._tag).toBe("BucketFull")
      })
    )

    it.scoped("host names count by their last two labels", () =>
      Effect.gen(function* () {
        const graph = yield* makeGraph(layer)
        const results = yield* setAll(graph, 220, [
          "a.evil.example",
          "b.evil.example",
          "c.b.evil.example",
          "good.example"
        ])
        expect(tags(results)).toEqual(["Added", "Added", "IpGroupFull", "Added"])
      })
    )

    it.scoped(
      "a node moving into a full group is refused and keeps its address; within its group it moves",
      () =>
        Effect.gen(function* () {
          const graph = yield* makeGraph(layer)
          yield* setAll(graph, 210, ["203.0.113.1", "203.0.113.2", "198.51.100.1"])
          const moved = yield* graph.setNode(idIn(210, 2), at("203.0.113.3"))
          expect(moved._tag).toBe("IpGroupFull")
          const node = yield* graph.getNode(idIn(210, 2))
          expect(node._tag === "Some" && node.value.addresses.map((a) => a.host)).toEqual(["198.51.100.1"])
          expect((yield* graph.setNode(idIn(210, 0), at("203.0.113.77")))._tag).toBe("Updated")
        })
    )

    it.scoped("configurable: per group, prefix lengths, off", () =>
      Effect.gen(function* () {
        const three = yield* makeGraph(layer, { maxPerGroup: 3 })
        expect(
          tags(yield* setAll(three, 250, ["203.0.113.1", "203.0.113.2", "203.0.113.3", "203.0.113.4"]))
        ).toEqual(["Added", "Added", "Added", "IpGroupFull"])
        const wide = yield* makeGraph(layer, { ipv4Prefix: 16 })
        expect(tags(yield* setAll(wide, 250, ["203.0.1.1", "203.0.2.1", "203.0.3.1", "203.1.0.1"]))).toEqual([
          "Added",
          "Added",
          "IpGroupFull",
          "Added"
        ])
        const off = yield* makeGraph(layer, false)
        expect(off.ipDiversity).toBeUndefined()
        const hosts = Array.from({ length: 10 }, (_, i) => `203.0.113.${i + 1}`)
        expect(tags(yield* setAll(off, 250, hosts))).toEqual(Array(10).fill("Added"))
      })
    )

    it.scoped("a key renewal re-lays the buckets and counts the groups anew", () =>
      Effect.gen(function* () {
        const graph = yield* makeGraph(layer)
        yield* setAll(graph, 250, ["203.0.113.1", "203.0.113.2"])
        // Our NodeId with its last bit flipped: every bucket above 0 keeps its nodes.
        const renewed = NodeId.inBucket(own, 0, new Uint8Array(NodeId.NODE_ID_BYTES))
        yield* graph.changeOwner(renewed)
        expect(NodeId.bucketIndex(renewed, idIn(250, 0))).toBe(250)
        expect(yield* graph.size).toBe(2)
        expect((yield* graph.setNode(idIn(250, 5), at("203.0.113.3")))._tag).toBe("IpGroupFull")
        yield* graph.unsetNode(idIn(250, 0))
        expect((yield* graph.setNode(idIn(250, 5), at("203.0.113.3")))._tag).toBe("Added")
      })
    )
  })
}

describe("IP diversity in the lmdb store", () => {
  it.scoped("nodes past the limit (stored while it was off) are dropped on open, the most recent kept", () =>
    Effect.gen(function* () {
      const dir = mkdtempSync(join(tmpdir(), "quicmesh-diversity-"))
      yield* Effect.addFinalizer(() => Effect.sync(() => rmSync(dir, { recursive: true })))
      yield* Effect.scoped(
        Effect.flatMap(makeGraph("lmdb", false, dir), (graph) =>
          setAll(graph, 250, ["203.0.113.1", "203.0.113.2", "203.0.113.3", "203.0.113.4", "10.0.0.1"])
        )
      )
      const graph = yield* makeGraph("lmdb", undefined, dir)
      const hosts = (yield* graph.getBucket(250)).map((c) => c.addresses[0]!.host)
      expect(hosts.sort()).toEqual(["10.0.0.1", "203.0.113.3", "203.0.113.4"])
    })
  )

  it.effect(
    "the agent reads the limit from QUICMESH_IP_DIVERSITY_*; 0 turns it off; a bad value is one line",
    () =>
      Effect.gen(function* () {
        expect(yield* ipDiversityFromEnv({})).toEqual(DEFAULT_IP_DIVERSITY)
        expect(yield* ipDiversityFromEnv({ QUICMESH_IP_DIVERSITY_MAX_PER_GROUP: "0" })).toBe(false)
        expect(
          yield* ipDiversityFromEnv({
            QUICMESH_IP_DIVERSITY_MAX_PER_GROUP: "3",
            QUICMESH_IP_DIVERSITY_IPV4_PREFIX: "16",
            QUICMESH_IP_DIVERSITY_IPV6_PREFIX: "32"
          })
        ).toEqual({ maxPerGroup: 3, ipv4Prefix: 16, ipv6Prefix: 32 })
        const bad = yield* Effect.flip(ipDiversityFromEnv({ QUICMESH_IP_DIVERSITY_IPV4_PREFIX: "40" }))
        expect(bad.message).toBe("invalid QUICMESH_IP_DIVERSITY_IPV4_PREFIX: 40 is not in 1–32")
        const notANumber = yield* Effect.flip(
          ipDiversityFromEnv({ QUICMESH_IP_DIVERSITY_MAX_PER_GROUP: "two" })
        )
        expect(notANumber.message).toBe(
          'invalid QUICMESH_IP_DIVERSITY_MAX_PER_GROUP: expected an integer value but received "two"'
        )
      })
  )

  it("an invalid limit is a RangeError naming the option", () => {
    expect(() => IpDiversity.resolve({ maxPerGroup: 0 })).toThrow(/ipDiversity.maxPerGroup/)
    expect(() => IpDiversity.resolve({ ipv4Prefix: 33 })).toThrow(/ipDiversity.ipv4Prefix/)
    expect(() => IpDiversity.resolve({ ipv6Prefix: 0 })).toThrow(/ipDiversity.ipv6Prefix/)
  })
})

describe("Address.isLocalHost", () => {
  it("host names that merely start with fc or fd are not local", () => {
    for (const host of [
      "fdroid.org",
      "fc.example.com",
      "fd00.example.net",
      "fcc.gov",
      "10.example.com",
      "127.example.org"
    ])
      expect([host, Address.isLocalHost(host)]).toEqual([host, false])
  })

  it("IPv6 in fc00::/7 and fe80::/10, loopback and private IPv4 are local; public addresses are not", () => {
    const local = [
      "fc00::1",
      "fd12:3456:789a::1",
      "[fdff::1]",
      "fe80::1",
      "febf::1",
      "fe80::1%eth0",
      "::1",
      "::",
      "localhost",
      "node.localhost",
      "127.0.0.1",
      "127.255.0.9",
      "10.1.2.3",
      "172.16.0.1",
      "172.31.255.255",
      "192.168.0.1",
      "169.254.10.10",
      "100.64.0.1",
      "100.127.255.255",
      "0.0.0.0",
      "::ffff:192.168.1.1"
    ]
    const publicHosts = [
      "fec0::1",
      "fb00::1",
      "2001:db8::1",
      "::2",
      "8.8.8.8",
      "172.32.0.1",
      "172.15.0.1",
      "192.169.0.1",
      "100.128.0.1",
      "11.0.0.1",
      "example.com"
    ]
    expect(local.filter((h) => !Address.isLocalHost(h))).toEqual([])
    expect(publicHosts.filter((h) => Address.isLocalHost(h))).toEqual([])
  })

  it("ipBytes reads IPv4 and every IPv6 spelling", () => {
    expect(Array.from(Address.ipBytes("192.0.2.1")!)).toEqual([192, 0, 2, 1])
    expect(Buffer.from(Address.ipBytes("2001:db8::1")!).toString("hex")).toBe(
      "20010db8000000000000000000000001"
    )
    expect(Buffer.from(Address.ipBytes("::ffff:0:1.2.3.4")!).toString("hex")).toBe(
      "0000000000000000ffff000001020304"
    )
    expect(Buffer.from(Address.ipBytes("[1::]")!).toString("hex")).toBe("00010000000000000000000000000000")
    expect(Address.ipBytes("example.com")).toBeUndefined()
  })
})

describe("a lookup's filter over a peer's answer", () => {
  const key = (n: number) => NodeId.encode(idIn(200, n)) as string
  const wire = (n: number, host = "127.0.0.1", port = 4000): WireContact =>
    ({ nodeIdEncoded: key(n), host, port }) as WireContact
  const context: AnswerContext = {
    selfKey: NodeId.encode(own) as string,
    answererKey: key(1),
    targetKey: key(2),
    limit: 20,
    ipDiversity: DEFAULT_IP_DIVERSITY
  }
  const taken = (answer: ReadonlyArray<WireContact>, ctx = context) =>
    filterAnswer(answer, ctx).map(
      (c) => `${c.key === context.targetKey ? "target" : c.key}@${c.address.host}:${c.address.port}`
    )

  it("drops ourselves, the answerer, undecodable ids, bad ports and hosts, and duplicates", () => {
    const bad = [
      { nodeIdEncoded: context.selfKey, host: "127.0.0.1", port: 4000 },
      wire(1),
      { nodeIdEncoded: "vnot-a-node-id", host: "127.0.0.1", port: 4000 },
      { nodeIdEncoded: 42, host: "127.0.0.1", port: 4000 },
      wire(3, "127.0.0.1", 0),
      wire(3, "127.0.0.1", 70000),
      wire(3, "127.0.0.1", 1.5),
      wire(3, "bad host"),
      wire(3, "x".repeat(300)),
      { nodeIdEncoded: key(3), host: 7, port: 4000 }
    ] as unknown as ReadonlyArray<WireContact>
    expect(taken([...bad, wire(3, "[::FFFF:127.0.0.1]", 5), wire(3, "127.0.0.1", 6), wire(4)])).toEqual([
      `${key(3)}@127.0.0.1:5`,
      `${key(4)}@127.0.0.1:4000`
    ])
  })

  it("takes at most `limit` contacts, however long the answer", () => {
    const answer = Array.from({ length: 10_000 }, (_, i) => wire(10 + i))
    expect(taken(answer).length).toBe(20)
    expect(taken(answer, { ...context, limit: 3 })).toEqual(
      [10, 11, 12].map((n) => `${key(n)}@127.0.0.1:4000`)
    )
  })

  it("takes at most maxPerGroup contacts of one public group, the target always; none when off", () => {
    const answer = [
      ...Array.from({ length: 50 }, (_, i) => wire(10 + i, `203.0.113.${i + 1}`)),
      wire(2, "203.0.113.99"),
      wire(5, "198.51.100.1")
    ]
    expect(taken(answer)).toEqual([
      `${key(10)}@203.0.113.1:4000`,
      `${key(11)}@203.0.113.2:4000`,
      "target@203.0.113.99:4000",
      `${key(5)}@198.51.100.1:4000`
    ])
    expect(taken(answer, { ...context, ipDiversity: undefined }).length).toBe(20)
  })
})
