/**
 * A peer agent running as a child process (the built `bin/quicmesh.js`, run `npm run build`
 * first) is SIGKILLed while an in-process node's closest-nodes stream to it is in flight: the
 * caller gets a typed error within its timeout, the dead connection leaves its map once the
 * keep-alive timeout passes, and the next call reaches the agent restarted on the same node path
 * (same NodeId, new process, same port).
 */
import { describe, expect, it } from "@effect/vitest"
import { Cause, Duration, Effect, Either, Exit, Fiber, Option } from "effect"
import * as NodeId from "../../src/services/NodeId.js"
import { control, makeNodePath, spawnAgent } from "../fixtures/agentProcess.js"
import { eventually, makeNode } from "../fixtures/cmNode.js"

describe("a peer process killed mid-stream", () => {
  it.scopedLive(
    "typed error within the timeout, the connection leaves the map, a restarted agent is re-dialled",
    () =>
      Effect.gen(function* () {
        const dir = yield* makeNodePath("qm-kill-")
        const first = yield* spawnAgent({ dir, host: "127.0.0.1", readyTimeout: "20 seconds" })
        // Many contacts in the agent's graph, so its closest-nodes answer is a stream of items.
        // Each differs from the agent's NodeId in another bit, so each lands in its own bucket.
        const agentId = yield* Effect.orDie(NodeId.decode(first.nodeId))
        const contacts = 40
        // The control API reports the transport's inbound handshake cap.
        const status = yield* control(first, (c) => c.status())
        expect(status.transport).toMatchObject({ maxInboundHandshakes: 64, handshakesRefused: 0 })
        yield* control(first, (c) =>
          Effect.forEach(
            Array.from({ length: contacts }, (_, i) => i),
            (i) =>
              c.nodesAdd({ nodeId: NodeId.encode(flipBit(agentId, i)), host: "127.0.0.2", port: 30_000 + i }),
            { discard: true }
          )
        )
        const caller = yield* makeNode("kill-caller", {
          config: {
            seedNodes: [],
            connectionKeepAliveTimeoutTime: Duration.decode("2 seconds"),
            connectionKeepAliveIntervalTime: Duration.decode("500 millis")
          }
        })
        const target = agentId
        yield* caller.graph.setNode(target, { host: "127.0.0.1", port: first.port, scope: "local" })
        // Control: the stream works, and is long (capped at the table's k by the agent).
        const before = yield* caller.cm.getRemoteNodeClosestNodes(target, makeId(1), { timeout: "5 seconds" })
        expect(before.length).toBeGreaterThanOrEqual(10)
        expect(yield* caller.cm.hasConnection(target)).toBe(true)

        // Start the streaming call and kill the agent right after it started.
        const started = performance.now()
        const call = yield* Effect.fork(
          caller.cm
            .getRemoteNodeClosestNodes(target, makeId(2), { timeout: "1500 millis" })
            .pipe(Effect.either)
        )
        yield* Effect.sleep("1 millis")
        first.proc.kill("SIGKILL")
        const outcome = yield* Fiber.join(call)
        const elapsed = performance.now() - started
        console.log(
          `kill mid-stream: call ended after ${Math.round(elapsed)} ms with ${
            Either.isLeft(outcome)
              ? `${outcome.left._tag}: ${outcome.left.message}`
              : "success (answer beat the kill)"
          }`
        )
        if (Either.isLeft(outcome)) {
          expect(["NodeConnectionError", "RemoteQueryError"]).toContain(outcome.left._tag)
          // Within the timeout (plus scheduling slack).
          expect(elapsed).toBeLessThan(1_500 + 1_000)
        }
        // A call after the kill does not succeed, and fails with a typed error: a connection
        // closing under a call is a connection error, never a bare interruption.
        const afterKill = yield* caller.cm
          .getRemoteNodeClosestNodes(target, makeId(3), { timeout: "1 second" })
          .pipe(Effect.exit)
        expect(Exit.isFailure(afterKill)).toBe(true)
        const afterKillWas = Exit.isFailure(afterKill)
          ? Cause.isInterruptedOnly(afterKill.cause)
            ? "interruption"
            : Option.getOrElse(
                Option.map(Cause.failureOption(afterKill.cause), (e) => e._tag as string),
                () => "defect"
              )
          : "success"
        expect(["NodeConnectionError", "RemoteQueryError"]).toContain(afterKillWas)
        console.log(`kill mid-stream: the next call ended with ${afterKillWas}`)

        // The dead connection leaves the map (keep-alive timeout 2 s).
        const goneAt = performance.now()
        yield* eventually(caller.cm.hasConnection(target), (has) => !has, "8 seconds")
        const goneMs = performance.now() - goneAt
        const diag = yield* caller.diagnostics
        expect(diag.connections).toBe(0)

        // The agent restarts on the same node path and port: same NodeId, new process.
        const second = yield* spawnAgent({
          dir,
          host: "127.0.0.1",
          port: first.port,
          readyTimeout: "20 seconds"
        })
        expect(second.nodeId).toBe(first.nodeId)
        expect(second.proc.pid).not.toBe(first.proc.pid)
        const after = yield* caller.cm.getRemoteNodeClosestNodes(target, makeId(4), { timeout: "5 seconds" })
        expect(after.length).toBe(before.length)
        expect(yield* caller.cm.hasConnection(target)).toBe(true)
        console.log(
          `kill mid-stream: connection left the map ${Math.round(goneMs)} ms after the failed call; restarted agent answered ${after.length} contacts`
        )
      }),
    30_000
  )
})

/** `id` with bit `i` (counted from the last byte's lowest bit) flipped. */
function flipBit(id: NodeId.NodeId, i: number): NodeId.NodeId {
  const bytes = Uint8Array.from(id)
  bytes[bytes.length - 1 - (i >> 3)] = bytes[bytes.length - 1 - (i >> 3)]! ^ (1 << (i & 7))
  return bytes as NodeId.NodeId
}

/** A NodeId made from a small integer (not a real key: only the graph sees it). */
function makeId(i: number): NodeId.NodeId {
  const bytes = new Uint8Array(NodeId.NODE_ID_BYTES)
  bytes[0] = 0x40 | (i & 0x3f)
  bytes[NodeId.NODE_ID_BYTES - 1] = i
  return bytes as NodeId.NodeId
}
