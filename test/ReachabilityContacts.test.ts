/**
 * A dial-back proves `public` only when it comes from a node, and an IP, the node never sent
 * a packet to: a packet it sent (a hole punch, a dial that never connected) opened its NAT's
 * filter for that peer, which then gets in as the dial-back helper. On the simulated network
 * (restricted NATs filter by address and port, as the real ones do); `watchSends` records
 * the sends of the manager's transport.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either } from "effect"
import { Contacts, watchSends } from "../src/internal/connectionManager/reachability/contacts.js"
import { simulate } from "../src/programs/SimRuntime.js"
import { makeWorld, type SimNode, type SimWorld } from "../src/programs/Simulation.js"
import * as NodeId from "../src/services/NodeId.js"
import type { QuicTransportService } from "../src/services/QuicTransport.js"

const addressOf = (n: SimNode) => ({ host: n.host, port: n.port })

const connect = (from: SimNode, to: SimNode) => from.cm.getConnectionWithAddress(to.nodeId, addressOf(to))

/** Three seeds (public, each its own IP). */
const threeSeeds = (w: SimWorld) =>
  Effect.all([w.addNode({ seed: true }), w.addNode({ seed: true }), w.addNode({ seed: true })])

/** `node`'s external address: what peers on two IPs confirmed for it. */
const confirmedAddress = (node: SimNode) =>
  Effect.map(node.cm.reachability, (r) => {
    expect(r.nat).toBe("cone")
    return r.addresses[0]!
  })

describe("dial-back proof from a node we sent packets to", () => {
  it.effect(
    "a restricted node that punched toward the helper stays cone (the helper's proof is ignored)",
    () =>
      simulate((ctx) =>
        Effect.gen(function* () {
          const w = yield* makeWorld(ctx, { seed: 19, latency: 10, jitter: 0 })
          const seeds = yield* threeSeeds(w)
          // H, behind a restricted NAT, joins: the seeds are connected to it (it is their only helper).
          const helper = yield* w.addNode({ nat: "restricted" })
          expect(yield* w.join(helper)).toBe(true)
          yield* Effect.sleep("10 seconds")
          const helperAddress = yield* confirmedAddress(helper)
          // R punches toward H's external address (as a hole-punch target does), then meets the seeds.
          const node = yield* w.addNode({ nat: "restricted" })
          yield* node.cm.holePunchReverse(helperAddress.host, helperAddress.port, { timeout: "2 seconds" })
          for (const s of seeds) yield* connect(node, s)
          yield* Effect.sleep("30 seconds")
          // H's dial-back got through R's NAT (R's punch had opened it: H is the fourth observer)
          // and proved the nonce, which proves nothing.
          const r = yield* node.cm.reachability
          expect(r.observers).toBe(4)
          expect(r.nat).toBe("cone")
        })
      )
  )

  it.effect("a restricted node whose dial to the helper never connected stays cone", () =>
    simulate((ctx) =>
      Effect.gen(function* () {
        const w = yield* makeWorld(ctx, { seed: 19, latency: 10, jitter: 0 })
        // R, behind a restricted NAT, comes first: it has no seeds to signal a dial through.
        const node = yield* w.addNode({ nat: "restricted" })
        const seeds = yield* threeSeeds(w)
        // P, public, joins the seeds; H, behind a restricted NAT, is connected to P alone.
        const relay = yield* w.addNode()
        expect(yield* w.join(relay)).toBe(true)
        const helper = yield* w.addNode({ nat: "restricted" })
        yield* connect(helper, relay)
        const helperHost = (yield* w.sim.hostInfo(helper.host))!.publicHost
        // R dials H at its NAT's address: H's NAT drops it, R's NAT now lets H in.
        const dialled = yield* Effect.either(
          node.cm.getConnectionWithAddress(
            helper.nodeId,
            { host: helperHost, port: 40000 },
            { timeout: "3 seconds" }
          )
        )
        expect(Either.isLeft(dialled)).toBe(true)
        expect(yield* node.cm.listConnections).toEqual([])
        // R meets P first (its first relay, whose only possible helper is H), then the seeds.
        yield* connect(node, relay)
        for (const s of seeds) yield* connect(node, s)
        yield* Effect.sleep("30 seconds")
        // P did not ask H (R named it as contacted); had it, H's proof would be ignored.
        const r = yield* node.cm.reachability
        expect(r.nat).toBe("cone")
        expect(r.observers).toBe(4)
      })
    )
  )
})

describe("Contacts", () => {
  it("records the NodeIds and the IP of a dial and the IP of a datagram, bounded, the latest first", () => {
    const contacts = new Contacts(2)
    const seen: Array<string> = []
    const transport = {
      dial: (o: { host: string }) => {
        seen.push(`dial ${o.host}`)
        return Effect.never
      },
      sendDatagram: (host: string) => {
        seen.push(`datagram ${host}`)
        return Effect.void
      }
    } as unknown as QuicTransportService
    const watched = watchSends(transport, contacts)
    const a = NodeId.unsafeFromBytes(new Uint8Array(32).fill(1))
    const b = NodeId.unsafeFromBytes(new Uint8Array(32).fill(2))
    const c = NodeId.unsafeFromBytes(new Uint8Array(32).fill(3))
    const [ka, kb, kc] = [a, b, c].map((n) => NodeId.encode(n) as string)
    watched.dial({ host: "1.0.0.1", port: 1, expectedNodeIds: [a] })
    watched.sendDatagram("::ffff:1.0.0.2", 2, new Uint8Array(1))
    expect(seen).toEqual(["dial 1.0.0.1", "datagram ::ffff:1.0.0.2"])
    expect(contacts.contacted(ka!, "9.9.9.9")).toBe(true)
    expect(contacts.contacted("someone-else", "1.0.0.2")).toBe(true)
    expect(contacts.contacted(kb!, "9.9.9.9")).toBe(false)
    watched.dial({ host: "1.0.0.3", port: 1, expectedNodeIds: [b, c] })
    // At most two of each: a and 1.0.0.1 are forgotten.
    expect(contacts.latest()).toEqual([kc, kb])
    expect(contacts.contacted(ka!, "1.0.0.1")).toBe(false)
  })
})
