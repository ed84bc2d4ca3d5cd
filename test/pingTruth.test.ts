/**
 * `pingNode` tells the truth, over real QUIC on loopback. In TLS 1.3 the client has finished
 * its side of the handshake before the server has checked the client's certificate: a peer
 * that refuses our certificate lets our dial succeed, then closes the connection. Alive means
 * the peer accepted us and answered (a round trip on the connection), with or without an
 * address; such a peer is not alive.
 */
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer } from "effect"
import * as DnsNode from "../src/layers/DnsNode.js"
import * as KeyRingTest from "../src/layers/KeyRingTest.js"
import * as Node from "../src/layers/Node.js"
import * as NodeGraphMemory from "../src/layers/NodeGraphMemory.js"
import * as QuicTransportLive from "../src/layers/QuicTransportLive.js"
import { ConnectionManager } from "../src/services/ConnectionManager.js"
import * as CMConfig from "../src/services/ConnectionManagerConfig.js"
import { CertificateError, KeyRing } from "../src/services/KeyRing.js"
import * as NodeId from "../src/services/NodeId.js"
import { makeNode, nodeIdOf } from "./fixtures/cmNode.js"

/** KeyRingTest's key for `seed`, whose certificate check refuses every chain proving `refused`. */
const refusingKeyRing = (seed: string, refused: NodeId.NodeId) =>
  Layer.effect(
    KeyRing,
    Effect.map(KeyRingTest.make(seed), (inner) => ({
      ...inner,
      verifyCertChain: (certs: ReadonlyArray<Uint8Array>) =>
        inner.verifyCertChain(certs).pipe(
          Effect.filterOrFail(
            (id) => !NodeId.equals(id, refused),
            () => new CertificateError({ reason: "broken-chain", index: 0, detail: "refused by this peer" })
          )
        )
    }))
  )

/** A node on loopback that refuses the certificate of `refused` (its QUIC server's check). */
const makeRefusingNode = (seed: string, refused: NodeId.NodeId) =>
  Effect.gen(function* () {
    const ctx = yield* Layer.build(
      Node.layerWith({
        keyRing: refusingKeyRing(seed, refused),
        nodeGraph: NodeGraphMemory.layer(),
        transport: QuicTransportLive.layer,
        options: { transport: { host: "127.0.0.1", port: 0 } },
        config: CMConfig.layer({}),
        dns: DnsNode.layer
      })
    )
    const cm = Context.get(ctx, ConnectionManager)
    return { cm, nodeId: cm.nodeId, address: { host: cm.host, port: cm.port } }
  })

const timeout = { timeout: "5 seconds" } as const

describe("pingNode: alive means the peer accepted us and answered", () => {
  it.scopedLive(
    "a peer that refuses our certificate after the handshake is not alive, with or without an address",
    () =>
      Effect.gen(function* () {
        const pinger = yield* makeNode("ping-truth-pinger")
        expect(NodeId.equals(pinger.nodeId, nodeIdOf("ping-truth-pinger"))).toBe(true)
        const refuser = yield* makeRefusingNode("ping-truth-refuser", pinger.nodeId)
        // Its handshake completes on our side (the dial itself succeeds)...
        const dialled = yield* Effect.scoped(
          pinger.transport
            .dial({ ...refuser.address, expectedNodeIds: [refuser.nodeId], timeout: "5 seconds" })
            .pipe(
              Effect.as("connected"),
              Effect.orElseSucceed(() => "refused")
            )
        )
        expect(dialled).toBe("connected")
        // ...but the peer never accepts us: no ping proves it alive.
        expect(yield* pinger.cm.pingNode(refuser.nodeId, refuser.address, timeout)).toBe(false)
        // Without an address, the graph's is dialled.
        yield* pinger.graph.setNode(refuser.nodeId, { ...refuser.address, scope: "local" })
        expect(yield* pinger.cm.pingNode(refuser.nodeId, undefined, timeout)).toBe(false)
        expect(yield* pinger.cm.hasConnection(refuser.nodeId)).toBe(false)
      }),
    30_000
  )

  it.scopedLive(
    "an honest peer is alive, with and without an address; the refusing peer still answers others",
    () =>
      Effect.gen(function* () {
        const pinger = yield* makeNode("ping-truth-honest-pinger")
        const honest = yield* makeNode("ping-truth-honest")
        expect(yield* pinger.cm.pingNode(honest.nodeId, honest.address, timeout)).toBe(true)
        expect(yield* pinger.cm.hasConnection(honest.nodeId)).toBe(true)
        yield* pinger.cm.destroyConnection(honest.nodeId)
        yield* pinger.graph.setNode(honest.nodeId, { ...honest.address, scope: "local" })
        expect(yield* pinger.cm.pingNode(honest.nodeId, undefined, timeout)).toBe(true)
        // A peer that refuses one node is alive to the others.
        const refuser = yield* makeRefusingNode("ping-truth-refuser-2", pinger.nodeId)
        expect(yield* honest.cm.pingNode(refuser.nodeId, refuser.address, timeout)).toBe(true)
        expect(yield* pinger.cm.pingNode(refuser.nodeId, refuser.address, timeout)).toBe(false)
      }),
    30_000
  )
})
