/**
 * A mixed network: real Polykey 1.15.1 agents (child processes) and quicmesh nodes (full
 * connection managers on loopback QUIC, test/fixtures/cmNode.ts) joined through a Polykey
 * seed. quicmesh calls Polykey peers in Polykey's wire and answers theirs on the same port
 * (`internal/polykeyPeer.ts`): lookups both ways, and pings that prove acceptance.
 */
import { expect, it } from "@effect/vitest"
import { Effect, Option } from "effect"
import { unary } from "../../src/internal/polykey/rpcClient.js"
import type { Contact } from "../../src/services/Contact.js"
import * as NodeId from "../../src/services/NodeId.js"
import { eventually, makeNode, type TestNode } from "../fixtures/cmNode.js"
import { find, handledCalls, isRunning, type PolykeyAgent, ping, startPolykeyAgent } from "./agents.js"
import { describePolykey } from "./describePolykey.js"

const contactOf = (agent: PolykeyAgent): Contact => ({
  nodeId: agent.nodeIdBytes,
  host: agent.host,
  port: agent.port
})

/** A quicmesh node whose only seed is `seed`, joined. */
const joinedThrough = (name: string, seed: PolykeyAgent) =>
  Effect.gen(function* () {
    const node = yield* makeNode(name, { config: { seedNodes: [contactOf(seed)] } })
    yield* node.cm.syncNodeGraph({ timeout: "20 seconds" })
    return node
  })

const idOf = (x: PolykeyAgent | TestNode) => ("nodeIdBytes" in x ? x.nodeIdBytes : x.nodeId)

describePolykey("Polykey and quicmesh in one network", () => {
  it.scopedLive(
    "two Polykey agents and three quicmesh nodes joined through a Polykey seed: every quicmesh node finds and pings every node; a Polykey agent finds and pings a quicmesh node it never met, and finds through a quicmesh seed",
    () =>
      Effect.gen(function* () {
        const seed = yield* startPolykeyAgent()
        const other = yield* startPolykeyAgent({ seeds: [seed] })
        const q1 = yield* joinedThrough("mixed-q1", seed)
        const q2 = yield* joinedThrough("mixed-q2", seed)
        const q3 = yield* joinedThrough("mixed-q3", seed)

        for (const q of [q1, q2, q3]) {
          for (const target of [seed, other, q1, q2, q3]) {
            if (target === q) continue
            const found = yield* q.cm.findNode(idOf(target), { timeout: "15 seconds" })
            expect(Option.isSome(found), `${q.seed} finds ${NodeId.encode(idOf(target))}`).toBe(true)
            expect(yield* q.cm.pingNode(idOf(target), undefined, { timeout: "10 seconds" })).toBe(true)
          }
        }

        // Each peer is spoken to in its own wire, told by its certificate.
        const speaks = (from: TestNode, to: PolykeyAgent | TestNode) =>
          from.cm.withConnection(idOf(to), (handle) => Effect.succeed(handle.connection.speaks))
        expect(yield* speaks(q1, q2)).toBe("quicmesh")
        expect(yield* speaks(q1, seed)).toBe("polykey")
        expect(yield* speaks(q2, other)).toBe("polykey")

        // A fourth quicmesh node that only the seed knows: the other Polykey agent finds it by
        // its own lookup (through the seed), and pings it.
        const q4 = yield* joinedThrough("mixed-q4", seed)
        const address = yield* find(other, NodeId.encode(q4.nodeId))
        expect(address).toEqual({ host: q4.address.host, port: q4.address.port })
        expect(yield* ping(other, NodeId.encode(q4.nodeId))).toBe(true)

        // A Polykey agent whose only seed is a quicmesh node: its lookup of the other agent
        // goes through quicmesh's answer to Polykey's nodesClosestLocalNodesGet.
        const third = yield* startPolykeyAgent({
          seeds: [`${NodeId.encode(q1.nodeId)}@${q1.address.host}:${q1.address.port}`]
        })
        expect(yield* find(third, other)).toEqual({ host: other.host, port: other.port })
        expect(yield* ping(third, other)).toBe(true)
        for (const agent of [seed, other, third]) expect(isRunning(agent.pid)).toBe(true)
      }),
    120_000
  )

  it.scopedLive(
    "signalling through a Polykey relay between two quicmesh nodes: the target punches toward the source's address, the source's dial succeeds, and the relay lives on",
    () =>
      Effect.gen(function* () {
        const relay = yield* startPolykeyAgent()
        const source = yield* joinedThrough("signal-source", relay)
        const target = yield* joinedThrough("signal-target", relay)
        const toSource = (sent: ReadonlyArray<{ readonly host: string; readonly port: number }>) =>
          sent.filter((d) => d.port === source.address.port).length
        expect(toSource(yield* target.sentDatagrams)).toBe(0)
        // Both hold a connection to the relay now (an idle one may have closed since the join).
        for (const node of [source, target])
          yield* node.cm.getConnectionWithAddress(relay.nodeIdBytes, { host: relay.host, port: relay.port })
        // The source's signal goes to the Polykey relay as its Initial; the relay's Final
        // reaches the target, which punches toward the source as the relay sees it.
        yield* source.cm.sendSignalingMessage(relay.nodeIdBytes, source.nodeId, target.nodeId)
        yield* eventually(Effect.map(target.sentDatagrams, toSource), (n) => n > 0, "5 seconds")
        expect(isRunning(relay.pid)).toBe(true)
        // On loopback the source's dial of the target then succeeds.
        expect(yield* source.cm.pingNode(target.nodeId, target.address)).toBe(true)
        // A Final that the relay did not sign (from the source itself) makes no punch: `{}` all the same.
        const before = toSource(yield* target.sentDatagrams)
        const forged = yield* source.cm.withConnection(target.nodeId, (handle) =>
          unary(
            handle.connection,
            "nodesConnectionSignalFinal",
            {
              sourceNodeIdEncoded: NodeId.encode(source.nodeId),
              targetNodeIdEncoded: NodeId.encode(target.nodeId),
              address: { host: "127.0.0.1", port: 9 },
              requestSignature: "A".repeat(86),
              relaySignature: "A".repeat(86)
            },
            { timeout: "5 seconds" }
          )
        )
        expect(forged).toEqual({})
        yield* Effect.sleep("300 millis")
        const sent = yield* target.sentDatagrams
        expect(sent.some((d) => d.port === 9)).toBe(false)
        expect(toSource(sent)).toBeGreaterThanOrEqual(before)
      }),
    60_000
  )

  it.scopedLive(
    "signalling through a quicmesh relay between two Polykey agents: the target takes the relay's Final, the source finds it, both live",
    () =>
      Effect.gen(function* () {
        const relay = yield* makeNode("signal-relay")
        const seedOfRelay = `${NodeId.encode(relay.nodeId)}@${relay.address.host}:${relay.address.port}`
        const target = yield* startPolykeyAgent({ seeds: [seedOfRelay], verbose: true })
        const finals = handledCalls(target, "nodesConnectionSignalFinal")
        yield* eventually(
          Effect.map(relay.cm.listConnections, (open) => open.some((c) => c.nodeId === target.nodeId)),
          (held) => held,
          "20 seconds"
        )
        // The source knows only the relay: its lookup of the target asks the relay for its
        // active connections near it and signals through it (Initial to the relay, which
        // sends the target a Final it signed).
        const source = yield* startPolykeyAgent({ seeds: [seedOfRelay] })
        expect(yield* find(source, target)).toEqual({ host: target.host, port: target.port })
        yield* eventually(Effect.sync(finals), (n) => n > 0, "10 seconds")
        // The target checked both signatures: Polykey logs a failed check as an error.
        expect(target.stderr()).not.toMatch(/VerificationFailed/)
        expect(yield* ping(source, target)).toBe(true)
        for (const agent of [source, target]) expect(isRunning(agent.pid)).toBe(true)
      }),
    60_000
  )
})
