/**
 * Polykey's JSON-RPC wire against real Polykey 1.15.1 agents (src/internal/polykey/): quicmesh's
 * rpcClient calling a Polykey agent over QuicTransportLive, and Polykey agents calling
 * quicmesh's rpcServer on a bare quicmesh transport that routes every inbound stream to it.
 */
import { expect, it } from "@effect/vitest"
import { Duration, Effect, Exit, Fiber, Ref, Scope, Stream } from "effect"
import { sign } from "../../src/internal/certificates.js"
import * as NodeMethods from "../../src/internal/polykey/nodeMethods.js"
import * as RpcClient from "../../src/internal/polykey/rpcClient.js"
import { type PolykeyMethods, servePolykeyStream, unaryMethod } from "../../src/internal/polykey/rpcServer.js"
import * as KeyRingTest from "../../src/layers/KeyRingTest.js"
import type { Contact, WireContact } from "../../src/services/Contact.js"
import * as NodeId from "../../src/services/NodeId.js"
import type { AgentHandlers, PeerCallError } from "../../src/services/PeerRpc.js"
import type { QuicConnection } from "../../src/services/QuicTransport.js"
import { connect, quicNode } from "../fixtures/quicNode.js"
import { connections, find, isRunning, type PolykeyAgent, startPolykeyAgent } from "./agents.js"
import { describePolykey } from "./describePolykey.js"

const callTimeout = { timeout: Duration.seconds(10) }

const contactOf = (agent: PolykeyAgent): WireContact =>
  ({ nodeIdEncoded: agent.nodeId, host: agent.host, port: agent.port }) as WireContact

const callerOf = (connection: QuicConnection): Contact => ({
  nodeId: connection.remoteNodeId,
  host: connection.remoteHost,
  port: connection.remotePort
})

/** Serves `methods` on every stream of `connection` until the scope closes. */
const servePolykey = (connection: QuicConnection, methods: PolykeyMethods) =>
  connection.handleStreams((socket) => servePolykeyStream(socket, callerOf(connection), methods))

/**
 * A bare quicmesh transport whose every inbound connection is served with `methods` (every
 * stream to `servePolykeyStream`) while `serving` lasts.
 */
const polykeyServer = (seed: string, methods: PolykeyMethods, serving: Scope.Scope) =>
  Effect.gen(function* () {
    const node = yield* quicNode(seed, serving)
    yield* Stream.runForEach(node.transport.incoming, (connection) =>
      servePolykey(connection, methods).pipe(Scope.extend(serving))
    ).pipe(Effect.forkIn(serving))
    return { ...node, seedAddress: `${NodeId.encode(node.nodeId)}@127.0.0.1:${node.transport.port}` }
  })

/** Agent handlers answering `closestNodes` with `answer`, recording who asked. */
const answering = (
  answer: ReadonlyArray<WireContact>,
  callers: Ref.Ref<ReadonlyArray<string>>
): AgentHandlers => ({
  touch: () => Effect.void,
  closestNodes: (caller) =>
    Ref.update(callers, (c) => [...c, NodeId.encode(caller.nodeId)]).pipe(Effect.as(answer)),
  holePunchSignal: () => Effect.void
})

/** Runs `effect` every 500 ms until `done` holds of its value (at most `times` tries): that value. */
const until = <A, E>(
  effect: Effect.Effect<A, E>,
  done: (a: A) => boolean,
  times = 40
): Effect.Effect<A, E | Error> =>
  Effect.flatMap(effect, (a) =>
    done(a)
      ? Effect.succeed(a)
      : times <= 1
        ? Effect.fail(new Error("condition not met in time"))
        : Effect.zipRight(Effect.sleep("500 millis"), until(effect, done, times - 1))
  )

const failureOf = (exit: Exit.Exit<unknown, PeerCallError>) =>
  Exit.isFailure(exit) && exit.cause._tag === "Fail" ? exit.cause.error : undefined

describePolykey("Polykey JSON-RPC wire", () => {
  it.scopedLive(
    "quicmesh's client calls a Polykey agent: its node graph as WireContacts, refusals typed, the agent unharmed",
    () =>
      Effect.gen(function* () {
        const first = yield* startPolykeyAgent()
        const second = yield* startPolykeyAgent({ seeds: [first] })
        const scope = yield* Effect.scope
        const node = yield* quicNode("polykey-wire-client", scope)
        const connection = yield* node.transport.dial({
          host: first.host,
          port: first.port,
          expectedNodeIds: [first.nodeIdBytes]
        })
        // Streams Polykey opens to us are answered by our server. The first agent relays the
        // second's signalling to us (we are among its active connections): its process exits
        // unless our answer to that Final is {}.
        const asked = yield* Ref.make<ReadonlyArray<string>>([])
        yield* servePolykey(
          connection,
          NodeMethods.polykeyMethods(NodeMethods.fromAgentHandlers(answering([], asked)))
        )
        // The second agent syncs with its seed when it starts: the first learns it from its connection.
        const contacts = yield* until(
          NodeMethods.closestLocalNodes(connection, second.nodeIdBytes, callTimeout),
          (cs) => cs.some((c) => c.nodeIdEncoded === second.nodeId)
        )
        expect(contacts).toContainEqual(contactOf(second))
        // Polykey answers a NodeId that is not one with its own (remote) error.
        const invalid = yield* Effect.exit(
          RpcClient.serverStream(connection, "nodesClosestLocalNodesGet", { nodeIdEncoded: "x" }, callTimeout)
        )
        expect(failureOf(invalid)).toMatchObject({
          reason: "remote",
          detail: expect.stringMatching(/code -32006/)
        })
        // A method Polykey does not serve: it resets the stream, which reads as the peer's refusal.
        const unknown = yield* Effect.exit(
          RpcClient.unary(connection, "quicmeshNoSuchMethod", {}, callTimeout)
        )
        expect(failureOf(unknown)).toMatchObject({ reason: "remote", detail: expect.stringMatching(/reset/) })
        // Calls interrupted mid-way: right after the header, and after the first result of several.
        for (const delay of [0, 1, 2, 5, 10]) {
          const call = yield* Effect.fork(
            NodeMethods.closestLocalNodes(connection, second.nodeIdBytes, callTimeout)
          )
          yield* Effect.sleep(Duration.millis(delay))
          yield* Fiber.interrupt(call)
        }
        const one = yield* NodeMethods.closestLocalNodes(connection, second.nodeIdBytes, {
          ...callTimeout,
          limit: 1
        })
        expect(one.length).toBe(1)
        yield* Effect.sleep("1 second")
        expect(isRunning(first.pid)).toBe(true)
        // The connection and the agent go on answering.
        expect(
          yield* NodeMethods.closestLocalNodes(connection, second.nodeIdBytes, callTimeout)
        ).toContainEqual(contactOf(second))
        const open = yield* connections(first)
        expect(open.map((c) => c.nodeIdEncoded)).toContain(NodeId.encode(node.nodeId))
      })
  )

  it.scopedLive(
    "a Polykey agent seeded with a quicmesh node learns a Polykey node from its answer and finds it",
    () =>
      Effect.gen(function* () {
        // A Polykey node nobody but quicmesh's answer tells the new agent of.
        const hidden = yield* startPolykeyAgent()
        const callers = yield* Ref.make<ReadonlyArray<string>>([])
        const serving = yield* Effect.scope
        const server = yield* polykeyServer(
          "polykey-wire-server",
          NodeMethods.polykeyMethods(NodeMethods.fromAgentHandlers(answering([contactOf(hidden)], callers))),
          serving
        )
        const agent = yield* startPolykeyAgent({ seeds: [server.seedAddress] })
        // Its start syncs from its seed: it asks quicmesh for the nodes near itself, and connects to them.
        yield* until(connections(agent), (open) => open.some((c) => c.nodeIdEncoded === hidden.nodeId))
        expect(yield* Ref.get(callers)).toContain(agent.nodeId)
        expect(yield* find(agent, hidden)).toEqual({ host: hidden.host, port: hidden.port })
        expect(isRunning(agent.pid)).toBe(true)
      })
  )

  // The call whose end matters most: a Polykey relay forwarding a source's signalling to us,
  // in flight when we stop. Polykey 1.15.1 rethrows (unhandled: its process exits) anything but
  // `{}` or a connection error from this Final, so our server answers it `{}` even when stopping.
  it.scopedLive(
    "a Polykey relay's Final in flight when the quicmesh node stops gets {}: the Polykey agent runs on",
    () =>
      Effect.gen(function* () {
        const relay = yield* startPolykeyAgent({ verbose: true })
        const scope = yield* Effect.scope
        const serving = yield* Scope.make()
        yield* Effect.addFinalizer(() => Scope.close(serving, Exit.void))
        const target = yield* quicNode("polykey-wire-target", scope)
        const source = yield* quicNode("polykey-wire-source", scope)
        const dial = (node: typeof target) =>
          node.transport.dial({ host: relay.host, port: relay.port, expectedNodeIds: [relay.nodeIdBytes] })
        const toTarget = yield* dial(target)
        const fromSource = yield* dial(source)
        const finals = yield* Ref.make<ReadonlyArray<unknown>>([])
        const hangingFinal = unaryMethod((_caller, params) =>
          Ref.update(finals, (f) => [...f, params]).pipe(Effect.zipRight(Effect.never))
        )
        const methods = NodeMethods.polykeyMethods({
          ...NodeMethods.fromAgentHandlers(answering([], yield* Ref.make<ReadonlyArray<string>>([]))),
          nodesConnectionSignalFinal: hangingFinal
        })
        yield* servePolykey(toTarget, methods).pipe(Scope.extend(serving))
        // The source's Initial: its signature over source‖target, as Polykey's sources make it.
        const signature = sign(
          KeyRingTest.makeKeyPair("polykey-wire-source"),
          new Uint8Array([...source.nodeId, ...target.nodeId])
        )
        const answer = yield* RpcClient.unary(
          fromSource,
          "nodesConnectionSignalInitial",
          {
            targetNodeIdEncoded: NodeId.encode(target.nodeId),
            signature: Buffer.from(signature).toString("base64url")
          },
          callTimeout
        )
        // The relay answers the target's address and forwards the Final to it.
        expect(answer).toEqual({ host: "127.0.0.1", port: target.transport.port })
        yield* until(Ref.get(finals), (f) => f.length === 1)
        expect((yield* Ref.get(finals))[0]).toMatchObject({
          sourceNodeIdEncoded: NodeId.encode(source.nodeId),
          targetNodeIdEncoded: NodeId.encode(target.nodeId)
        })
        // The target stops serving with the Final in flight.
        yield* Scope.close(serving, Exit.void)
        yield* Effect.sleep("2 seconds")
        expect(isRunning(relay.pid)).toBe(true)
        expect((yield* relay.cli<{ status: string }>(["agent", "status"])).status).toBe("LIVE")
      })
  )

  it.scopedLive(
    "quicmesh's client and server over QUIC: a claims or vault method gets a JSON-RPC error",
    () =>
      Effect.gen(function* () {
        const scope = yield* Effect.scope
        const a = yield* quicNode("polykey-wire-a", scope)
        const b = yield* quicNode("polykey-wire-b", scope)
        const { connA, connB } = yield* connect(a, b)
        const callers = yield* Ref.make<ReadonlyArray<string>>([])
        const agent = answering(
          [{ nodeIdEncoded: NodeId.encode(a.nodeId), host: "127.0.0.1", port: 1 } as WireContact],
          callers
        )
        yield* servePolykey(connB, NodeMethods.polykeyMethods(NodeMethods.fromAgentHandlers(agent)))
        for (const method of [
          "nodesClaimsGet",
          "nodesCrossSignClaim",
          "notificationsSend",
          "vaultsScan",
          "vaultsGitInfoGet"
        ]) {
          const exit = yield* Effect.exit(RpcClient.unary(connA, method, {}, callTimeout))
          expect(failureOf(exit)).toMatchObject({
            reason: "remote",
            detail: `Error: method "${method}" is not served by this node (code -32601)`
          })
        }
        expect(yield* NodeMethods.closestLocalNodes(connA, b.nodeId, callTimeout)).toHaveLength(1)
      })
  )
})
