/**
 * Interop edge cases with real Polykey 1.15.1 agents (child processes, test/polykey/agents.ts)
 * and full quicmesh nodes (test/fixtures/cmNode.ts) on loopback: a ping Polykey refuses, a
 * certificate whose CN claims another node, renewed keys on either side, and a quicmesh node
 * stopping while Polykey agents call it.
 */
import { randomBytes } from "node:crypto"
import { expect, it } from "@effect/vitest"
import { Context, Effect, Exit, Fiber, Layer, Option, Ref, Scope } from "effect"
import * as NodeMethods from "../../src/internal/polykey/nodeMethods.js"
import * as KeyRingTest from "../../src/layers/KeyRingTest.js"
import * as QuicTransportLive from "../../src/layers/QuicTransportLive.js"
import { KeyRing } from "../../src/services/KeyRing.js"
import * as NodeId from "../../src/services/NodeId.js"
import { QuicTransport, QuicTransportConfig } from "../../src/services/QuicTransport.js"
import { eventually, makeNode, type TestNode } from "../fixtures/cmNode.js"
import {
  connections,
  find,
  handledCalls,
  isRunning,
  type PolykeyAgent,
  ping,
  renewKey,
  startPolykeyAgent,
  status
} from "./agents.js"
import { describePolykey } from "./describePolykey.js"
import { claimingKeyRing, plainCertKeyRing } from "./plainCertificate.js"

const addressOf = (agent: PolykeyAgent) => ({ host: agent.host, port: agent.port })
const seedAddressOf = (node: TestNode) =>
  `${NodeId.encode(node.nodeId)}@${node.address.host}:${node.address.port}`
const connectedIds = (agent: PolykeyAgent) =>
  Effect.map(connections(agent), (open) => open.map((c) => c.nodeIdEncoded))
const listedIds = (node: TestNode) =>
  Effect.map(node.cm.listConnections, (open) => open.map((c) => c.nodeId as string))

/** A bare quicmesh transport on 127.0.0.1 presenting `seed`'s key under a CN naming `claimed`. */
const claimingTransport = (seed: string, claimed: NodeId.NodeId) =>
  Effect.map(
    Layer.build(
      QuicTransportLive.layer.pipe(
        Layer.provide(claimingKeyRing(seed, claimed)),
        Layer.provide(QuicTransportConfig.layer({ host: "127.0.0.1" }))
      )
    ),
    (context) => Context.get(context, QuicTransport)
  )

describePolykey("Polykey interop", () => {
  it.scopedLive(
    "ping of a Polykey node that refuses our certificate is false; a quicmesh node whose certificate it accepts pings it true",
    () =>
      Effect.gen(function* () {
        const agent = yield* startPolykeyAgent()
        // A full manager whose certificate lacks Polykey's node signature: Polykey finishes the
        // QUIC handshake, then closes the connection (298) instead of answering.
        const refused = yield* makeNode("interop-refused", { keyRing: plainCertKeyRing("interop-refused") })
        const accepted = yield* makeNode("interop-accepted")
        const options = { timeout: "10 seconds" } as const
        expect(yield* refused.cm.pingNode(agent.nodeIdBytes, addressOf(agent), options)).toBe(false)
        expect(yield* accepted.cm.pingNode(agent.nodeIdBytes, addressOf(agent), options)).toBe(true)
        const open = yield* connectedIds(agent)
        expect(open).toContain(NodeId.encode(accepted.nodeId))
        expect(open).not.toContain(NodeId.encode(refused.nodeId))
      })
  )

  it.scopedLive(
    "a certificate whose CN names another node's id: a quicmesh node refuses it (298, nothing admitted), Polykey 1.15.1 accepts it under the victim's id",
    () =>
      Effect.gen(function* () {
        const agent = yield* startPolykeyAgent()
        const victim = yield* makeNode("interop-cn-victim")
        const target = yield* makeNode("interop-cn-target")
        const attacker = KeyRingTest.nodeIdOf("interop-cn-attacker")
        const forger = yield* claimingTransport("interop-cn-attacker", victim.nodeId)

        // The dialler's handshake completes (TLS 1.3: the server checks the client's
        // certificate after the client's Finished), then the quicmesh node closes it with
        // bad_certificate (0x100 + 42) and admits nothing.
        const forged = yield* forger.dial({ ...target.address, expectedNodeIds: [target.nodeId] })
        const reason = yield* forged.closed.pipe(Effect.timeout("10 seconds"))
        expect(reason).toMatchObject({ _tag: "Peer", detail: expect.stringMatching(/\b298\b/) })
        expect(yield* listedIds(target)).toEqual([])
        expect(yield* target.cm.hasConnection(victim.nodeId)).toBe(false)

        // The same construction with the attacker's own id in the CN is admitted: the CN alone
        // made the difference.
        const honest = yield* claimingTransport(
          "interop-cn-attacker-honest",
          KeyRingTest.nodeIdOf("interop-cn-attacker-honest")
        )
        yield* honest.dial({ ...target.address, expectedNodeIds: [target.nodeId] })
        yield* eventually(listedIds(target), (ids) => ids.length === 1, "10 seconds")
        expect(yield* listedIds(target)).toEqual([
          NodeId.encode(KeyRingTest.nodeIdOf("interop-cn-attacker-honest"))
        ])

        // Polykey reads the NodeId from the CN: it lists the attacker's connection as the
        // victim's (the victim never dialled it; the port is the forger's).
        const toPolykey = yield* forger.dial({ ...addressOf(agent), expectedNodeIds: [agent.nodeIdBytes] })
        const open = yield* eventually(
          connections(agent),
          (cs) => cs.some((c) => c.nodeIdEncoded === NodeId.encode(victim.nodeId)),
          "10 seconds"
        )
        expect(open.find((c) => c.nodeIdEncoded === NodeId.encode(victim.nodeId))).toMatchObject({
          port: forger.port
        })
        expect(open.map((c) => c.nodeIdEncoded)).not.toContain(NodeId.encode(attacker))
        // It serves the impostor's calls, and tells its peers the victim is at the forger's address.
        const contacts = yield* NodeMethods.closestLocalNodes(toPolykey, victim.nodeId, {
          timeout: "10 seconds"
        })
        expect(contacts).toContainEqual({
          nodeIdEncoded: NodeId.encode(victim.nodeId),
          host: "127.0.0.1",
          port: forger.port
        })
      })
  )

  it.scopedLive(
    "a Polykey agent that renewed its key (two-certificate chain) pings and finds a quicmesh node, which knows it by its new NodeId; renewed chains on both sides are accepted by Polykey",
    () =>
      Effect.gen(function* () {
        const agent = yield* startPolykeyAgent()
        const other = yield* startPolykeyAgent()
        const node = yield* makeNode("interop-renew-node")
        const options = { timeout: "10 seconds" } as const
        // The quicmesh node knows the agent by its first NodeId, then lets that connection go.
        const previous = agent.nodeIdBytes
        yield* node.cm.getConnectionWithAddress(previous, addressOf(agent), options)
        yield* eventually(node.graph.getNode(previous), Option.isSome, "10 seconds")
        yield* node.cm.destroyConnection(previous)
        yield* eventually(connectedIds(agent), (ids) => ids.length === 0, "10 seconds")
        const renewed = yield* renewKey(agent)
        expect(renewed.nodeId).not.toBe(agent.nodeId)
        expect((yield* status(agent)).nodeIdEncoded).toBe(renewed.nodeId)

        // The renewed agent dials the quicmesh node, presenting [new key's certificate issued by
        // the old key, the old self-signed one].
        const nodeIdEncoded = NodeId.encode(node.nodeId)
        yield* agent.cli(["nodes", "add", nodeIdEncoded, node.address.host, String(node.address.port)])
        expect(yield* ping(agent, nodeIdEncoded)).toBe(true)
        expect(yield* find(agent, nodeIdEncoded)).toEqual(node.address)

        // quicmesh knows the agent by its new key, learns from the chain that it renewed from
        // the old one, and forgets that one.
        expect(yield* listedIds(node)).toEqual([renewed.nodeId])
        const renewedFrom = yield* node.cm.withConnection(renewed.nodeIdBytes, (handle) =>
          Effect.succeed(handle.connection.remoteRenewedFrom)
        )
        expect(renewedFrom && NodeId.encode(renewedFrom)).toBe(agent.nodeId)
        expect(Option.isSome(yield* node.graph.getNode(renewed.nodeIdBytes))).toBe(true)
        yield* eventually(node.graph.getNode(previous), Option.isNone, "10 seconds")
        expect(yield* node.cm.pingNode(renewed.nodeIdBytes, addressOf(agent), options)).toBe(true)
        expect(yield* node.cm.pingNode(previous, addressOf(agent), options)).toBe(false)

        // Polykey's own check of a client's renewed chain (it verifies every signature in it):
        // with @peculiar/x509 1.9.5 (the harness's pin) another Polykey agent accepts the renewed
        // agent; with 1.14.3 that check throws inside the TLS callback and the process exits.
        yield* agent.cli(["nodes", "add", other.nodeId, other.host, String(other.port)])
        expect(yield* ping(agent, other)).toBe(true)
        expect(yield* connectedIds(other)).toContain(renewed.nodeId)
        expect(isRunning(other.pid)).toBe(true)

        // A quicmesh node that renewed its key presents the same shape of chain to Polykey.
        const renewing = yield* makeNode("interop-renew-quicmesh")
        yield* Context.get(renewing.ctx, KeyRing).renew
        const renewedQuicmesh = KeyRingTest.nodeIdOf(KeyRingTest.renewedSeed("interop-renew-quicmesh", 1))
        yield* eventually(
          Effect.sync(() => renewing.cm.nodeId),
          (id) => NodeId.equals(id, renewedQuicmesh),
          "10 seconds"
        )
        expect(yield* renewing.cm.pingNode(other.nodeIdBytes, addressOf(other), options)).toBe(true)
        const open = yield* connectedIds(other)
        expect(open).toContain(NodeId.encode(renewedQuicmesh))
        expect(open).not.toContain(NodeId.encode(renewing.nodeId))
        for (const a of [agent, other]) expect(isRunning(a.pid)).toBe(true)
      })
  )

  it.scopedLive(
    "a quicmesh node stopping while Polykey agents call it and relay to it leaves every Polykey process running",
    () =>
      Effect.gen(function* () {
        const serving = yield* Scope.make()
        yield* Effect.addFinalizer(() => Scope.close(serving, Exit.void))
        const node = yield* makeNode("interop-stop-node").pipe(Scope.extend(serving))
        // The relay has the quicmesh node as its seed; the other two reach it through the relay
        // (its nodesConnectionSignalInitial, forwarded to the quicmesh node as a Final).
        const relay = yield* startPolykeyAgent({ seeds: [seedAddressOf(node)], verbose: true })
        const relayed = handledCalls(relay, "nodesConnectionSignalInitial")
        const callers = [
          relay,
          yield* startPolykeyAgent({ seeds: [relay] }),
          yield* startPolykeyAgent({ seeds: [relay] })
        ]
        yield* eventually(
          listedIds(node),
          (ids) => callers.every((a) => ids.includes(a.nodeId)),
          "20 seconds"
        )

        // Every agent looks up unknown ids in a loop: each lookup asks the quicmesh node for its
        // closest nodes, and the two behind the relay connect to it again through the relay's
        // signalling while the quicmesh node keeps dropping their connections.
        const done = yield* Ref.make(callers.map(() => 0))
        const underWay = yield* Ref.make(0)
        const lookUp = (agent: PolykeyAgent, index: number) =>
          Effect.gen(function* () {
            const unknown = NodeId.encode(randomBytes(32) as unknown as NodeId.NodeId)
            // Not found, or the lookup failed: either way the agent answered its client.
            yield* Ref.update(underWay, (n) => n + 1)
            yield* Effect.either(find(agent, unknown)).pipe(
              Effect.ensuring(Ref.update(underWay, (n) => n - 1))
            )
            yield* Ref.update(done, (ns) => ns.map((n, i) => (i === index ? n + 1 : n)))
          })
        const relayedAtStart = relayed()
        const loops = yield* Effect.forEach(callers, (agent, i) =>
          Effect.fork(Effect.forever(lookUp(agent, i)))
        )
        const churn = yield* Effect.fork(
          Effect.forever(
            Effect.forEach(callers.slice(1), (a) => node.cm.destroyConnection(a.nodeIdBytes, "churn")).pipe(
              Effect.zipRight(Effect.sleep("500 millis"))
            )
          )
        )
        yield* eventually(Ref.get(done), (ns) => ns.every((n) => n >= 2), "40 seconds")
        yield* Fiber.interrupt(churn)
        expect(relayed()).toBeGreaterThan(relayedAtStart)

        // The quicmesh node stops with lookups under way; they go on against a node that is gone.
        expect(yield* Ref.get(underWay)).toBeGreaterThan(0)
        yield* Scope.close(serving, Exit.void)
        yield* Effect.sleep("3 seconds")
        yield* Fiber.interruptAll(loops)
        for (const agent of callers) {
          expect(isRunning(agent.pid), agent.stderr().slice(-2000)).toBe(true)
          expect((yield* status(agent)).status).toBe("LIVE")
        }
      }),
    120_000
  )
})
