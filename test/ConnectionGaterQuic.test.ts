/**
 * The connection gate over real QUIC on loopback: inbound handshakes refused by the transport
 * (TLS access_denied for a NodeId, a close at once for an address, IPv4-mapped addresses on a
 * dual-stack socket included), never reaching the manager; dials refused before any packet;
 * allow-only mode; a change closing the connections it refuses.
 */
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Either, Fiber, Layer, Option, Predicate, type Scope, Stream } from "effect"
import * as DnsNode from "../src/layers/DnsNode.js"
import * as KeyRingTest from "../src/layers/KeyRingTest.js"
import * as Node from "../src/layers/Node.js"
import * as NodeGraphMemory from "../src/layers/NodeGraphMemory.js"
import * as QuicTransportLive from "../src/layers/QuicTransportLive.js"
import * as ConnectionGater from "../src/services/ConnectionGater.js"
import { ConnectionManager, type ConnectionManagerService } from "../src/services/ConnectionManager.js"
import * as CMConfig from "../src/services/ConnectionManagerConfig.js"
import { KeyRing } from "../src/services/KeyRing.js"
import * as NodeId from "../src/services/NodeId.js"
import {
  type QuicConnection,
  QuicTransport,
  QuicTransportConfig,
  type QuicTransportService
} from "../src/services/QuicTransport.js"

const entry = (text: string) => Either.getOrThrow(ConnectionGater.parseEntry(text))
const noRules: ConnectionGater.GateRules = { allowOnly: false, deny: [], allow: [] }
const rules = (r: Partial<ConnectionGater.GateRules>): ConnectionGater.GateRules => ({ ...noRules, ...r })

/** A bare transport (with a gater in its context when `gate` is given), built in `scope`. */
const transportNode = (
  seed: string,
  scope: Scope.Scope,
  options: { readonly host?: string; readonly gate?: ConnectionGater.GateRules } = {}
) =>
  Effect.gen(function* () {
    const base = Layer.merge(
      KeyRingTest.layer(seed),
      QuicTransportConfig.layer({ host: options.host ?? "127.0.0.1" })
    )
    const context = yield* Layer.buildWithScope(
      QuicTransportLive.layer.pipe(
        Layer.provideMerge(
          options.gate === undefined ? base : Layer.merge(base, ConnectionGater.layer(options.gate))
        )
      ),
      scope
    )
    const transport = Context.get(context, QuicTransport)
    return { transport, nodeId: yield* Context.get(context, KeyRing).nodeId }
  })

/**
 * What `from` sees when it dials `to` and `to` refuses: in TLS 1.3 the server checks our
 * certificate after our side is done, so the dial may succeed and its connection then close.
 */
const refusalSeen = (
  from: QuicTransportService,
  to: { transport: QuicTransportService; nodeId: NodeId.NodeId }
) =>
  Effect.scoped(
    from.dial({ host: "127.0.0.1", port: to.transport.port, expectedNodeIds: [to.nodeId] }).pipe(
      Effect.flatMap((connection: QuicConnection) => connection.closed),
      Effect.map((reason) => `closed: ${reason._tag}: ${"detail" in reason ? reason.detail : ""}`),
      Effect.catchTag("DialError", (e) => Effect.succeed(`dial failed: ${e.message}`))
    )
  )

/** `to` accepts from `from`: the first connection `to`'s transport hands on. */
const acceptedFrom = (
  from: QuicTransportService,
  to: { transport: QuicTransportService; nodeId: NodeId.NodeId }
) =>
  Effect.gen(function* () {
    const incoming = yield* Effect.fork(Stream.runHead(to.transport.incoming))
    yield* from.dial({ host: "127.0.0.1", port: to.transport.port, expectedNodeIds: [to.nodeId] })
    return Option.getOrThrow(yield* Fiber.join(incoming))
  })

describe("ConnectionGater at the QUIC transport", () => {
  it.scoped(
    "a denied NodeId's handshake is refused in the TLS check (access_denied); it is never handed on",
    () =>
      Effect.gen(function* () {
        const scope = yield* Effect.scope
        const b = yield* transportNode("gate-b", scope)
        const c = yield* transportNode("gate-c", scope)
        const a = yield* transportNode("gate-a", scope, { gate: rules({ deny: [NodeId.encode(b.nodeId)] }) })
        const seen = yield* refusalSeen(b.transport, a)
        expect(seen).toMatch(/refused by the node's connection gate \(TLS access_denied\)$/)
        const stats = yield* a.transport.stats!
        expect(stats.connections).toBe(0)
        // The next connection A hands on is C's: B's never was.
        const first = yield* Effect.scoped(acceptedFrom(c.transport, a))
        expect(NodeId.encode(first.remoteNodeId)).toBe(NodeId.encode(c.nodeId))
      })
  )

  it.scoped("a denied range is refused once the handshake is done, with a reason the client reads", () =>
    Effect.gen(function* () {
      const scope = yield* Effect.scope
      const b = yield* transportNode("gate-b", scope)
      const a = yield* transportNode("gate-a", scope, { gate: rules({ deny: ["127.0.0.0/8"] }) })
      expect(yield* refusalSeen(b.transport, a)).toBe("closed: Peer: refused by the node's connection gate")
      expect((yield* a.transport.stats!).connections).toBe(0)
    })
  )

  it.scoped("an IPv4 peer on a dual-stack socket falls in a range given in IPv4-mapped form", () =>
    Effect.gen(function* () {
      const scope = yield* Effect.scope
      const b = yield* transportNode("gate-b", scope)
      const gate = rules({ deny: ["::ffff:127.0.0.0/104"] })
      const a = yield* transportNode("gate-a", scope, { host: "::", gate })
      expect(yield* refusalSeen(b.transport, a)).toBe("closed: Peer: refused by the node's connection gate")
      // Without the range, the same peer gets in.
      const open = yield* transportNode("gate-a2", scope, { host: "::" })
      const accepted = yield* Effect.scoped(acceptedFrom(b.transport, open))
      expect(NodeId.encode(accepted.remoteNodeId)).toBe(NodeId.encode(b.nodeId))
    })
  )
})

// ---- Whole nodes ------------------------------------------------------------------------------

interface GatedNode {
  readonly cm: ConnectionManagerService
  readonly gater: ConnectionGater.ConnectionGaterService
  readonly transport: QuicTransportService
  readonly nodeId: NodeId.NodeId
  readonly address: { readonly host: string; readonly port: number }
  /** Dials that reached the transport. */
  readonly dials: () => number
}

/** A whole node on loopback with a gater (no rules unless given); its transport counts dials. */
const gatedNode = (seed: string, gate: ConnectionGater.GateRules = noRules) =>
  Effect.gen(function* () {
    let dials = 0
    const counting = Layer.scoped(
      QuicTransport,
      Effect.map(
        QuicTransportLive.make,
        (inner): QuicTransportService => ({
          ...inner,
          dial: (options) => {
            dials++
            return inner.dial(options)
          }
        })
      )
    )
    const ctx = yield* Layer.build(
      Node.layerWith({
        keyRing: KeyRingTest.layer(seed),
        nodeGraph: NodeGraphMemory.layer(),
        transport: counting,
        options: { transport: { host: "127.0.0.1", port: 0 } },
        config: CMConfig.layer({}),
        dns: DnsNode.layer,
        gater: ConnectionGater.layer(gate)
      })
    )
    const cm = Context.get(ctx, ConnectionManager)
    return {
      cm,
      gater: Context.get(ctx, ConnectionGater.ConnectionGater),
      transport: Context.get(ctx, QuicTransport),
      nodeId: cm.nodeId,
      address: { host: cm.host, port: cm.port },
      dials: () => dials
    } satisfies GatedNode
  })

/** A fiber with the NodeId of the first connection `node`'s manager adds from now on. */
const firstAdded = (node: GatedNode) =>
  Effect.gen(function* () {
    const events = yield* node.cm.events
    return yield* events.pipe(
      Stream.filterMap((e) =>
        Predicate.isTagged(e, "ConnectionAdded") ? Option.some(NodeId.encode(e.nodeId)) : Option.none()
      ),
      Stream.runHead,
      Effect.map(Option.getOrThrow),
      Effect.fork
    )
  })

const connectedIds = (node: GatedNode) =>
  Effect.map(node.cm.listConnections, (list) => list.map((c) => c.nodeId as string))

/** `from` connects to `to` and waits until the connection is gone on its side or `to` holds it. */
const tryConnect = (from: GatedNode, to: GatedNode) =>
  from.cm.getConnectionWithAddress(to.nodeId, to.address).pipe(
    Effect.flatMap((handle) => handle.connection.closed),
    Effect.either
  )

describe("ConnectionGater in the node", () => {
  it.scoped("a denied NodeId is refused inbound and never enters the manager's map", () =>
    Effect.gen(function* () {
      const b = yield* gatedNode("gate-b")
      const a = yield* gatedNode("gate-a", rules({ deny: [NodeId.encode(b.nodeId)] }))
      const added = yield* firstAdded(a)
      // B's connection is closed by A's refusal (it may look made for a moment first).
      const seen = yield* tryConnect(b, a)
      expect(Either.isRight(seen) ? seen.right : seen.left).toMatchObject(
        Either.isRight(seen) ? { _tag: "Peer" } : { _tag: "NodeConnectionError" }
      )
      expect(yield* connectedIds(a)).toEqual([])
      expect((yield* a.transport.stats!).connections).toBe(0)
      // A accepts an allowed node afterwards; B was never added before it.
      const c = yield* gatedNode("gate-c")
      yield* c.cm.getConnectionWithAddress(a.nodeId, a.address)
      expect(yield* Fiber.join(added)).toBe(NodeId.encode(c.nodeId))
      expect(yield* connectedIds(a)).toEqual([NodeId.encode(c.nodeId)])
    })
  )

  it.scoped("allow-only with one NodeId: that node gets in, every other is refused", () =>
    Effect.gen(function* () {
      const b = yield* gatedNode("gate-b")
      const c = yield* gatedNode("gate-c")
      const a = yield* gatedNode("gate-a", rules({ allowOnly: true, allow: [NodeId.encode(c.nodeId)] }))
      const added = yield* firstAdded(a)
      yield* tryConnect(b, a)
      yield* c.cm.getConnectionWithAddress(a.nodeId, a.address)
      expect(yield* Fiber.join(added)).toBe(NodeId.encode(c.nodeId))
      expect(yield* connectedIds(a)).toEqual([NodeId.encode(c.nodeId)])
      // A's own dials obey it too: B cannot be dialled, C can.
      const toB = yield* Effect.flip(a.cm.getConnectionWithAddress(b.nodeId, b.address))
      expect(toB.reason).toBe("denied")
      expect(toB.detail).toBe(
        `refused by the connection gate: allow-only mode, and NodeId ${NodeId.encode(b.nodeId)} is not allowed`
      )
    })
  )

  it.scoped("a dial to a denied NodeId fails before any packet is sent, on every dial path", () =>
    Effect.gen(function* () {
      const b = yield* gatedNode("gate-b")
      const a = yield* gatedNode("gate-a", rules({ deny: [NodeId.encode(b.nodeId)] }))
      const withAddress = yield* Effect.flip(a.cm.getConnectionWithAddress(b.nodeId, b.address))
      expect(withAddress).toMatchObject({
        reason: "denied",
        detail: `refused by the connection gate: NodeId ${NodeId.encode(b.nodeId)} is denied`
      })
      // Without an address: refused before the lookup.
      expect((yield* Effect.flip(a.cm.getConnection(b.nodeId))).reason).toBe("denied")
      expect((yield* Effect.flip(a.cm.withConnection(b.nodeId, () => Effect.void))).reason).toBe("denied")
      expect(yield* a.cm.pingNode(b.nodeId, b.address)).toBe(false)
      const multi = yield* Effect.flip(a.cm.getMultiConnection([b.nodeId], [b.address]))
      expect(multi.detail).toMatch(/refused by the connection gate: NodeId .* is denied/)
      expect(a.dials()).toBe(0)
      const stats = yield* b.transport.stats!
      expect(stats.quicConnections).toBe(0)
      expect(stats.handshakesHighWater).toBe(0)
    })
  )

  it.scoped("a dial into a denied range fails before any packet is sent", () =>
    Effect.gen(function* () {
      const b = yield* gatedNode("gate-b")
      const a = yield* gatedNode("gate-a", rules({ deny: ["::ffff:127.0.0.0/104"] }))
      const e = yield* Effect.flip(a.cm.getConnectionWithAddress(b.nodeId, b.address))
      expect(e.reason).toBe("denied")
      expect(e.detail).toBe(
        "refused by the connection gate: address 127.0.0.1 is in the denied range 127.0.0.0/8"
      )
      expect(a.dials()).toBe(0)
      expect((yield* b.transport.stats!).handshakesHighWater).toBe(0)
    })
  )

  it.scoped("denying a connected node closes its connection; allowing it lets it back", () =>
    Effect.gen(function* () {
      const b = yield* gatedNode("gate-b")
      const a = yield* gatedNode("gate-a")
      const handle = yield* a.cm.getConnectionWithAddress(b.nodeId, b.address)
      expect(yield* connectedIds(a)).toEqual([NodeId.encode(b.nodeId)])
      const change = yield* a.gater.deny(entry(NodeId.encode(b.nodeId)))
      expect(change.changed).toBe(true)
      // Gone by the time the change returns.
      expect(yield* connectedIds(a)).toEqual([])
      const reason = yield* handle.connection.closed
      expect(reason._tag).toBe("Local")
      yield* a.gater.allow(entry(NodeId.encode(b.nodeId)))
      yield* a.cm.getConnectionWithAddress(b.nodeId, b.address)
      expect(yield* connectedIds(a)).toEqual([NodeId.encode(b.nodeId)])
    })
  )
})
