/**
 * The connection gate on the simulated network (no QUIC handshake to refuse in): the manager
 * closes a refused inbound connection before it enters the map, refuses dials before the
 * transport is asked, and closes the connections a change refuses. The same manager as on
 * QUIC; only the transport differs.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Fiber } from "effect"
import * as KeyRingTest from "../src/layers/KeyRingTest.js"
import * as Node from "../src/layers/Node.js"
import * as NodeGraphMemory from "../src/layers/NodeGraphMemory.js"
import * as PeerRpcSim from "../src/layers/PeerRpcSim.js"
import { simulate } from "../src/programs/SimRuntime.js"
import { makeWorld, type SimWorld } from "../src/programs/Simulation.js"
import * as ConnectionGater from "../src/services/ConnectionGater.js"
import * as Dns from "../src/services/Dns.js"
import * as NodeConfig from "../src/services/NodeConfig.js"
import * as NodeId from "../src/services/NodeId.js"

const entry = (text: string) => Either.getOrThrow(ConnectionGater.parseEntry(text))

/** A node of `w` built by hand with `gater`; its transport counts the dials and datagrams it is asked for. */
const gatedNode = (w: SimWorld, gater: ConnectionGater.ConnectionGaterService) =>
  Effect.gen(function* () {
    const keyRing = yield* KeyRingTest.make("gate/sim")
    const nodeId = yield* keyRing.nodeId
    const host = yield* w.sim.addHost({})
    const config = NodeConfig.make({})
    const inner = yield* w.sim.bind({ host: host.host }, nodeId)
    let dials = 0
    let datagrams = 0
    const { manager } = yield* Node.make({
      config: config.manager,
      keyRing,
      nodeGraph: yield* NodeGraphMemory.make(nodeId),
      transport: {
        ...inner,
        dial: (options) => {
          dials++
          return inner.dial(options)
        },
        sendDatagram: (host, port, data) => {
          datagrams++
          return inner.sendDatagram(host, port, data)
        }
      },
      peerRpc: PeerRpcSim.make(w.sim, config.rpc.rpcCallTimeoutTime),
      dns: Dns.makeStatic({}),
      gater
    })
    return {
      cm: manager,
      address: { host: manager.host, port: manager.port },
      dials: () => dials,
      datagrams: () => datagrams
    }
  })

const ids = (list: ReadonlyArray<{ readonly nodeId: string }>) => list.map((c) => c.nodeId as string)

describe("ConnectionGater on the simulated network", () => {
  it.effect(
    "refused inbound never enters the map; dials are refused before the transport; a change closes",
    () =>
      simulate((ctx) =>
        Effect.gen(function* () {
          const w = yield* makeWorld(ctx, { seed: 18, latency: 10, jitter: 0 })
          const x = yield* w.addNode()
          const y = yield* w.addNode()
          const gater = yield* ConnectionGater.make({
            rules: { allowOnly: false, deny: [NodeId.encode(x.nodeId)], allow: [] }
          })
          const a = yield* gatedNode(w, gater)

          // X dials A: the transport lets it through, the manager closes it before the map.
          const fromX = yield* x.cm
            .getConnectionWithAddress(KeyRingTest.nodeIdOf("gate/sim"), a.address)
            .pipe(
              Effect.flatMap((handle) => handle.connection.closed),
              Effect.fork
            )
          const closed = yield* Fiber.join(fromX)
          expect(closed).toEqual({ _tag: "Peer", detail: "refused by the connection gate" })
          expect(ids(yield* a.cm.listConnections)).toEqual([])

          // A dials X: refused before the transport is asked.
          const toX = yield* Effect.flip(
            a.cm.getConnectionWithAddress(x.nodeId, { host: x.host, port: x.port })
          )
          expect(toX.reason).toBe("denied")
          expect(a.dials()).toBe(0)

          // Y is let in; denying it closes its connection before the change returns.
          yield* a.cm.getConnectionWithAddress(y.nodeId, { host: y.host, port: y.port })
          expect(ids(yield* a.cm.listConnections)).toEqual([NodeId.encode(y.nodeId)])
          const change = yield* gater.deny(entry(`${y.host}/32`))
          expect(change.rules.deny).toEqual([NodeId.encode(x.nodeId), `${y.host}/32`])
          expect(ids(yield* a.cm.listConnections)).toEqual([])
          expect(a.dials()).toBe(1)
        })
      )
  )

  it.effect("no hole is punched toward a refused node, even when an allowed relay asks", () =>
    simulate((ctx) =>
      Effect.gen(function* () {
        const w = yield* makeWorld(ctx, { seed: 18, latency: 10, jitter: 0 })
        const x = yield* w.addNode()
        const relay = yield* w.addNode()
        const gater = yield* ConnectionGater.make({
          rules: { allowOnly: false, deny: [NodeId.encode(x.nodeId)], allow: [] }
        })
        const a = yield* gatedNode(w, gater)
        const aId = KeyRingTest.nodeIdOf("gate/sim")
        yield* relay.cm.getConnectionWithAddress(aId, a.address)
        yield* x.cm.getConnectionWithAddress(relay.nodeId, { host: relay.host, port: relay.port })
        // X asks A, through the relay A holds a connection with, to punch toward it.
        const ask = Effect.zipRight(
          x.cm.sendSignalingMessage(relay.nodeId, x.nodeId, aId),
          Effect.sleep("200 millis")
        )
        yield* ask
        expect(a.datagrams()).toBe(0)
        // Once X is allowed, the same request has A punch.
        yield* gater.remove(entry(NodeId.encode(x.nodeId)))
        yield* ask
        expect(a.datagrams()).toBeGreaterThan(0)
      })
    )
  )
})
