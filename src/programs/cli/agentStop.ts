/**
 * `agent stop`: asks the agent at a node path to stop, then waits for its process to exit.
 *
 * The exit of the agent's process is what decides, not the answer to `stop`: the agent starts
 * shutting down (its control server first) as soon as it has the request, so that answer
 * races the shutdown. It can arrive, be lost with the socket, or come back as an interruption
 * (the RPC server interrupts the calls still running when it stops). Whatever it is, or none
 * within `answerTimeout`, the command waits for the pid the agent reported in its status to exit.
 */
import { execFileSync } from "node:child_process"
import { readFileSync } from "node:fs"
import { Cause, Duration, Effect, Exit, Schedule } from "effect"
import { OperationError } from "../Input.js"
import { pidAlive } from "../NodePath.js"
import { withAgent } from "./shared.js"

export interface StopOptions {
  /** How long to wait for the answer to `stop` before waiting on the process anyway. */
  readonly answerTimeout?: Duration.DurationInput
  /** How long the agent may take to run its finalizers and exit. */
  readonly exitTimeout?: Duration.DurationInput
}

/** Whether `pid` is a zombie: exited, its exit status not yet collected by its parent. */
const isZombie = (pid: number): boolean => {
  try {
    if (process.platform === "linux") {
      // The state follows the command name, which is in parentheses.
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8")
      return stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z")
    }
    return execFileSync("ps", ["-o", "stat=", "-p", String(pid)], { encoding: "utf8" })
      .trim()
      .startsWith("Z")
  } catch {
    return false
  }
}

/**
 * Whether the process `pid` has exited: gone, or a zombie (an agent started in the background
 * by a parent that never collects its children stays one after it exits).
 */
export const processExited = (pid: number): boolean => !pidAlive(pid) || isZombie(pid)

/** Whether the process `pid` exits within `within` (polled every 50 ms). */
export const awaitExit = (pid: number, within: Duration.DurationInput): Effect.Effect<boolean> =>
  Effect.sync(() => !processExited(pid)).pipe(
    Effect.repeat({ while: (alive) => alive, schedule: Schedule.spaced("50 millis") }),
    Effect.as(true),
    Effect.timeoutTo({ duration: within, onSuccess: (gone) => gone, onTimeout: () => false })
  )

/** What became of the `stop` request, for the error when the agent does not exit. */
const answerText = (exit: Exit.Exit<unknown, unknown>): string =>
  Exit.match(exit, {
    onSuccess: () => "it accepted the request",
    onFailure: (cause) => {
      if (Cause.isInterruptedOnly(cause)) return "its answer was cut short"
      const error = Cause.squash(cause)
      return `the request failed: ${error instanceof Error ? error.message : String(error)}`
    }
  })

/**
 * Stops the agent at `dir` and returns once its process has exited; fails with one line when
 * there is no agent, or when it is still running after `exitTimeout`.
 */
export const stopAgent = (dir: string, options: StopOptions = {}): Effect.Effect<void, OperationError> =>
  Effect.gen(function* () {
    const answerTimeout = options.answerTimeout ?? Duration.seconds(5)
    const exitTimeout = options.exitTimeout ?? Duration.seconds(30)
    const { pid, answer } = yield* withAgent(dir, (c) =>
      c.status().pipe(
        Effect.flatMap((s) =>
          c.stop().pipe(
            Effect.timeoutFail({
              duration: answerTimeout,
              onTimeout: () =>
                new OperationError({ message: `no answer within ${Duration.format(answerTimeout)}` })
            }),
            Effect.exit,
            Effect.map((answer) => ({ pid: s.pid, answer }))
          )
        )
      )
    )
    if (yield* awaitExit(pid, exitTimeout)) return
    return yield* Effect.fail(
      new OperationError({
        message: `agent at ${dir} (pid ${pid}) did not stop within ${Duration.format(exitTimeout)} (${answerText(answer)})`
      })
    )
  })
