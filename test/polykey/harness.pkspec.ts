/**
 * The Polykey harness itself and where interop stands today: real Polykey 1.15.1 agents
 * (child processes, test/polykey/agents.ts) on loopback, talking among themselves through
 * Polykey's own client commands, and quicmesh's QUIC transport dialling one of them.
 */
import { existsSync, readFileSync } from "node:fs"
import { join } from "node:path"
import { expect, it } from "@effect/vitest"
import { Context, Effect, Exit, Layer, Scope } from "effect"
import * as QuicTransportLive from "../../src/layers/QuicTransportLive.js"
import { KeyRing } from "../../src/services/KeyRing.js"
import * as NodeId from "../../src/services/NodeId.js"
import { QuicTransport, QuicTransportConfig } from "../../src/services/QuicTransport.js"
import { connections, find, isRunning, type PolykeyAgent, ping, startPolykeyAgent } from "./agents.js"
import { describePolykey } from "./describePolykey.js"
import { plainCertKeyRing } from "./plainCertificate.js"

interface AgentStatus {
  readonly status: string
  readonly nodeIdEncoded: string
  readonly agentPort: number
  readonly sourceVersion: string
}

const status = (agent: PolykeyAgent) => agent.cli<AgentStatus>(["agent", "status"])

/** quicmesh's QUIC transport on 127.0.0.1, presenting a plain certificate; stopped with the scope. */
const plainCertNode = (seed: string) =>
  Effect.gen(function* () {
    const context = yield* Layer.build(
      QuicTransportLive.layer.pipe(
        Layer.provideMerge(plainCertKeyRing(seed)),
        Layer.provide(QuicTransportConfig.layer({ host: "127.0.0.1" }))
      )
    )
    const keyRing = Context.get(context, KeyRing)
    return { transport: Context.get(context, QuicTransport), nodeId: yield* keyRing.nodeId }
  })

describePolykey("Polykey harness", () => {
  it.scopedLive(
    "two agents, the second seeded with the first: both live, the second pings and finds the first",
    () =>
      Effect.gen(function* () {
        const first = yield* startPolykeyAgent()
        const second = yield* startPolykeyAgent({ seeds: [first] })
        for (const agent of [first, second]) {
          const s = yield* status(agent)
          expect(s).toMatchObject({
            status: "LIVE",
            nodeIdEncoded: agent.nodeId,
            agentPort: agent.port,
            sourceVersion: "1.15.1"
          })
          // Polykey's text NodeId is quicmesh's: the same key, the same encoding.
          expect(NodeId.encode(agent.nodeIdBytes)).toBe(agent.nodeId)
        }
        expect(yield* ping(second, first)).toBe(true)
        expect(yield* find(second, first)).toEqual({ host: first.host, port: first.port })
        const open = yield* connections(second)
        expect(open.map((c) => [c.nodeIdEncoded, c.host, c.port])).toContainEqual([
          first.nodeId,
          first.host,
          first.port
        ])
      })
  )

  // Polykey refuses a certificate without its own node-signature (OID 1.3.6.1.4.1.57167.2.2.2)
  // and version (…2.2.1) extensions (plainCertificate.ts makes one): quicmesh's client completes
  // the QUIC handshake (accepting Polykey's certificate: the NodeId it proves is the agent's),
  // then Polykey's custom verification fails and it closes the connection with QUIC error
  // 298 = 0x100 + TLS alert 42 (bad_certificate, RFC 9001 §4.8), keeping no connection to us.
  // This is what a quicmesh node meets while its KeyRing's certificates lack those extensions;
  // with Polykey-format certificates (#21) the same dial stays open and Polykey lists it.
  it.scopedLive(
    "Polykey refuses a certificate without its extensions right after the QUIC handshake (298)",
    () =>
      Effect.gen(function* () {
        const agent = yield* startPolykeyAgent({ verbose: true })
        const node = yield* plainCertNode("polykey-harness-plain")
        const connection = yield* node.transport.dial({
          host: agent.host,
          port: agent.port,
          expectedNodeIds: [agent.nodeIdBytes]
        })
        expect(NodeId.equals(connection.remoteNodeId, agent.nodeIdBytes)).toBe(true)
        const reason = yield* connection.closed.pipe(Effect.timeout("20 seconds"))
        expect(reason).toMatchObject({ _tag: "Peer", detail: expect.stringMatching(/\b298\b/) })
        expect(agent.stderr()).toContain("Failed connection due to custom TLS verification")
        const open = yield* connections(agent)
        expect(open.map((c) => c.nodeIdEncoded)).not.toContain(NodeId.encode(node.nodeId))
        expect(isRunning(agent.pid)).toBe(true)
      })
  )

  it.scopedLive("stop, kill and the end of the scope leave no Polykey process or folder behind", () =>
    Effect.gen(function* () {
      // stop: Polykey stops itself (exit 0, its status file says DEAD).
      const stopped = yield* startPolykeyAgent()
      yield* stopped.stop
      expect(stopped.proc.exitCode).toBe(0)
      expect(isRunning(stopped.pid)).toBe(false)
      const statusFile = JSON.parse(readFileSync(join(stopped.nodePath, "status.json"), "utf8"))
      expect(statusFile.status).toBe("DEAD")
      // kill: SIGKILL.
      const killed = yield* startPolykeyAgent()
      yield* killed.kill
      expect(killed.proc.signalCode).toBe("SIGKILL")
      expect(isRunning(killed.pid)).toBe(false)
      // A scope that closes with its agent running: the process is gone, and so is its folder.
      const scope = yield* Scope.make()
      const scoped = yield* startPolykeyAgent().pipe(Scope.extend(scope))
      expect(isRunning(scoped.pid)).toBe(true)
      yield* Scope.close(scope, Exit.void)
      expect(isRunning(scoped.pid)).toBe(false)
      expect(existsSync(scoped.nodePath)).toBe(false)
    })
  )
})
