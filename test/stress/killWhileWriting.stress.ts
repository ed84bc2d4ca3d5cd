/**
 * An agent process SIGKILLed while its NodeGraph is being written (control-API `nodesAdd` in a
 * loop), again and again on the same node path: every restart comes up with a loadable table
 * (`status` answers, `nodesGetAll` works, same NodeId). Rounds: QUICMESH_KILL_ROUNDS (default
 * 100), stopping early after QUICMESH_KILL_SECONDS (default 180); the count run is printed.
 * Run `npm run build` first.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import * as NodeId from "../../src/services/NodeId.js"
import { type AgentInfo, BIN, control } from "../nat/agents.js"

const ROUNDS = Number(process.env.QUICMESH_KILL_ROUNDS ?? 100)
const SECONDS = Number(process.env.QUICMESH_KILL_SECONDS ?? 180)

interface Child {
  readonly proc: ChildProcess
  readonly nodeId: string
}

const startChild = (dir: string) =>
  Effect.async<Child, Error>((resume) => {
    const proc = spawn(
      process.execPath,
      [BIN, "agent", "start", "--node-path", dir, "--host", "127.0.0.1", "--port", "0", "--format", "json"],
      { stdio: ["ignore", "pipe", "pipe"] }
    )
    let out = ""
    let done = false
    proc.stdout!.on("data", (d: Buffer) => {
      out += d.toString()
      const line = out.split("\n").find((l) => l.startsWith("{") && l.includes('"nodeId"'))
      if (line && !done) {
        done = true
        resume(Effect.succeed({ proc, nodeId: (JSON.parse(line) as { nodeId: string }).nodeId }))
      }
    })
    let err = ""
    proc.stderr!.on("data", (d: Buffer) => {
      err += d.toString()
    })
    proc.on("exit", (code) => {
      if (!done) {
        done = true
        resume(Effect.fail(new Error(`agent exited ${code} before it was ready: ${err.slice(-2000)}`)))
      }
    })
  }).pipe(Effect.timeout("30 seconds"))

const agentOf = (dir: string, nodeId: string): AgentInfo =>
  ({ name: "kill", nodeId, host: "127.0.0.1", port: 0, dir, proc: undefined as never }) as AgentInfo

const randomId = () =>
  NodeId.encode(crypto.getRandomValues(new Uint8Array(NodeId.NODE_ID_BYTES)) as NodeId.NodeId)

describe("an agent SIGKILLed while writing its NodeGraph", () => {
  it.scopedLive(
    "always restarts with a loadable table",
    () =>
      Effect.gen(function* () {
        const dir = yield* Effect.acquireRelease(
          Effect.sync(() => mkdtempSync(join(tmpdir(), "qm-killw-"))),
          (d) => Effect.sync(() => rmSync(d, { recursive: true, force: true }))
        )
        const t0 = performance.now()
        let rounds = 0
        let nodeId: string | undefined
        const sizes: Array<number> = []
        while (rounds < ROUNDS && performance.now() - t0 < SECONDS * 1000) {
          const child = yield* startChild(dir)
          try {
            if (nodeId === undefined) nodeId = child.nodeId
            expect(child.nodeId).toBe(nodeId)
            const agent = agentOf(dir, child.nodeId)
            // The table written before the previous kill loads.
            const status = yield* control(agent, (c) => c.status())
            expect(status).toBeDefined()
            const all = yield* control(agent, (c) => c.nodesGetAll())
            sizes.push(all.length)
            // Write in a loop; kill mid-loop after a random moment.
            const writer = yield* Effect.fork(
              control(agent, (c) =>
                Effect.forever(
                  c.nodesAdd({
                    nodeId: randomId(),
                    host: "127.0.0.2",
                    port: 1 + Math.floor(Math.random() * 60_000)
                  })
                )
              ).pipe(Effect.ignore)
            )
            yield* Effect.sleep(`${50 + Math.floor(Math.random() * 250)} millis`)
            child.proc.kill("SIGKILL")
            yield* Fiber.interrupt(writer)
          } finally {
            if (child.proc.exitCode === null && child.proc.signalCode === null) child.proc.kill("SIGKILL")
          }
          yield* Effect.async<void>((resume) => {
            if (child.proc.exitCode !== null || child.proc.signalCode !== null) resume(Effect.void)
            else child.proc.once("exit", () => resume(Effect.void))
          })
          rounds++
        }
        // A final restart loads too.
        const last = yield* startChild(dir)
        const finalAll = yield* control(agentOf(dir, last.nodeId), (c) => c.nodesGetAll())
        last.proc.kill("SIGKILL")
        console.log(
          `kill while writing: ${rounds} kills in ${Math.round((performance.now() - t0) / 1000)} s; table sizes on restart: min ${Math.min(
            ...sizes
          )}, max ${Math.max(...sizes)}, final ${finalAll.length}`
        )
        expect(rounds).toBeGreaterThan(0)
        // Entries that loaded once are never lost by a later kill.
        expect(finalAll.length).toBeGreaterThanOrEqual(Math.max(0, ...sizes))
        for (let i = 1; i < sizes.length; i++) expect(sizes[i]!).toBeGreaterThanOrEqual(sizes[i - 1]!)
      }),
    (SECONDS + 120) * 1000
  )
})
