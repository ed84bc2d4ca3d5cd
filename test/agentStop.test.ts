/**
 * `agent stop` against a stand-in agent: a control server on a Unix socket whose `status`
 * reports the pid of a child process (the "agent") and whose `stop` ends that child and then
 * answers in each way an agent shutting down can: an answer, an interruption, no answer, or
 * the server stopped under the call. The process's exit decides; an agent that does not exit
 * is one line of error. And the control client never turns the agent's interruption into ours.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import * as NodeSocketServer from "@effect/platform-node/NodeSocketServer"
import { Rpc, RpcGroup, RpcSerialization, RpcServer } from "@effect/rpc"
import { describe, expect, it } from "@effect/vitest"
import { Cause, Deferred, Effect, Exit, Fiber, Layer, Scope } from "effect"
import { StatusJson } from "../src/programs/ControlApi.js"
import { stopAgent } from "../src/programs/cli/agentStop.js"
import { withAgent } from "../src/programs/cli/shared.js"
import { socketPath } from "../src/programs/NodePath.js"

/** The two calls `agent stop` makes, with the control API's names and schemas. */
class StopRpcs extends RpcGroup.make(Rpc.make("status", { success: StatusJson }), Rpc.make("stop", {})) {}

/** What the stand-in does on `stop`, after ending its process (except "stays"). */
type OnStop = "answers" | "interrupts" | "never answers" | "shuts its server down" | "stays"

const exitOf = (child: ChildProcess) =>
  Effect.async<void>((resume) => {
    if (child.exitCode !== null || child.signalCode !== null) return resume(Effect.void)
    child.once("exit", () => resume(Effect.void))
  })

/**
 * A stand-in agent in a fresh node path; its child process and server end with the scope. Its
 * status reports the child's pid, or `reportPid` when given.
 */
const standIn = (onStop: OnStop, reportPid?: number) =>
  Effect.gen(function* () {
    const dir = yield* Effect.acquireRelease(
      Effect.sync(() => mkdtempSync(join(tmpdir(), "quicmesh-stop-"))),
      (d) => Effect.sync(() => rmSync(d, { recursive: true, force: true }))
    )
    const child = yield* Effect.acquireRelease(
      Effect.sync(() => spawn(process.execPath, ["-e", "setInterval(() => {}, 1000)"], { stdio: "ignore" })),
      (c) => Effect.sync(() => c.kill("SIGKILL")).pipe(Effect.zipRight(exitOf(c)))
    )
    const serverScope = yield* Effect.acquireRelease(Scope.make(), (s) => Scope.close(s, Exit.void))
    const shutdown = yield* Deferred.make<void>()
    const endProcess = Effect.sync(() => child.kill("SIGTERM")).pipe(Effect.zipRight(exitOf(child)))
    const handlers = StopRpcs.toLayer({
      status: () =>
        Effect.succeed({
          status: "LIVE" as const,
          nodeId: "v",
          host: "127.0.0.1",
          port: 1,
          connections: 0,
          nodes: 0,
          pid: reportPid ?? child.pid!
        }),
      stop: () => {
        switch (onStop) {
          case "answers":
            return endProcess
          case "interrupts":
            return Effect.zipRight(endProcess, Effect.interrupt)
          case "never answers":
            return Effect.zipRight(endProcess, Effect.never)
          case "shuts its server down":
            // As the agent does: the call starts the shutdown, which stops the server under it.
            return endProcess.pipe(
              Effect.zipRight(Deferred.succeed(shutdown, undefined)),
              Effect.zipRight(Effect.never)
            )
          case "stays":
            return Effect.void
        }
      }
    })
    yield* Layer.buildWithScope(
      RpcServer.layer(StopRpcs).pipe(
        Layer.provide(handlers),
        Layer.provide(RpcServer.layerProtocolSocketServer),
        Layer.provide(RpcSerialization.layerNdjson),
        Layer.provide(NodeSocketServer.layer({ path: socketPath(dir) }))
      ),
      serverScope
    )
    yield* Deferred.await(shutdown).pipe(
      Effect.zipRight(Scope.close(serverScope, Exit.void)),
      Effect.forkScoped
    )
    return { dir, child }
  })

describe("agent stop", () => {
  for (const onStop of ["answers", "interrupts", "never answers", "shuts its server down"] as const)
    it.scopedLive(`succeeds once the agent has exited, when the agent ${onStop}`, () =>
      Effect.gen(function* () {
        const agent = yield* standIn(onStop)
        const exit = yield* stopAgent(agent.dir, {
          answerTimeout: "300 millis",
          exitTimeout: "10 seconds"
        }).pipe(Effect.exit)
        expect(exit).toEqual(Exit.void)
        expect(agent.child.exitCode !== null || agent.child.signalCode !== null).toBe(true)
      })
    )

  it.scopedLive("an agent that exited but was never collected by its parent (a zombie) has stopped", () =>
    Effect.gen(function* () {
      // `true` exits at once; its parent execs `sleep`, which never collects it.
      const parent = yield* Effect.acquireRelease(
        Effect.sync(() =>
          spawn("sh", ["-c", "true & echo $!; exec sleep 60"], { stdio: ["ignore", "pipe", "ignore"] })
        ),
        (c) => Effect.sync(() => c.kill("SIGKILL")).pipe(Effect.zipRight(exitOf(c)))
      )
      const zombie = yield* Effect.async<number>((resume) => {
        parent.stdout!.once("data", (d: Buffer) => resume(Effect.succeed(Number.parseInt(d.toString(), 10))))
      })
      const agent = yield* standIn("stays", zombie)
      const exit = yield* stopAgent(agent.dir, { exitTimeout: "5 seconds" }).pipe(Effect.exit)
      expect(exit).toEqual(Exit.void)
    })
  )

  it.scopedLive("an agent that does not exit: one line naming it, its pid and what its answer was", () =>
    Effect.gen(function* () {
      const agent = yield* standIn("stays")
      const error = yield* stopAgent(agent.dir, { exitTimeout: "500 millis" }).pipe(Effect.flip)
      expect(error.message).toBe(
        `agent at ${agent.dir} (pid ${agent.child.pid}) did not stop within 500ms (it accepted the request)`
      )
      expect(agent.child.exitCode).toBe(null)
    })
  )

  it.scopedLive("no agent: one line", () =>
    Effect.gen(function* () {
      const dir = join(tmpdir(), "quicmesh-stop-nobody")
      const error = yield* stopAgent(dir).pipe(Effect.flip)
      expect(error.message).toBe(`no agent running at ${dir}`)
    })
  )
})

describe("the control client", () => {
  it.scopedLive("an interruption from the agent is a failure; our own interruption stays one", () =>
    Effect.gen(function* () {
      const agent = yield* standIn("interrupts")
      const theirs = yield* withAgent(agent.dir, (c) => c.stop()).pipe(Effect.exit)
      expect(theirs).toEqual(
        Exit.fail(
          expect.objectContaining({ message: `the agent at ${agent.dir} stopped before it answered` })
        )
      )
      const other = yield* standIn("never answers")
      const call = yield* withAgent(other.dir, (c) => c.stop()).pipe(Effect.fork)
      yield* exitOf(other.child)
      const ours = yield* Fiber.interrupt(call)
      expect(Exit.isFailure(ours) && Cause.isInterruptedOnly(ours.cause)).toBe(true)
    })
  )
})
