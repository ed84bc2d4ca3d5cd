/**
 * Entry point of the `quicmesh` command. Exit codes: 0 success, 1 the operation ran but
 * failed, 2 bad usage or bad input. Errors are one line on stderr, never a stack trace.
 */
import { ValidationError } from "@effect/cli"
import { NodeContext, NodeRuntime } from "@effect/platform-node"
import { Cause, Effect, Logger } from "effect"
import { cli } from "./Cli.js"

const exitWith = (code: number, message?: string) =>
  Effect.sync(() => {
    if (message) process.stderr.write(`quicmesh: ${message}\n`)
    process.exitCode = code
  })

const program = cli(process.argv).pipe(
  Effect.catchAll((e: unknown) => {
    const tag = (e as { _tag?: string })._tag
    if (tag === "UsageError") return exitWith(2, (e as Error).message)
    if (tag === "OperationError") return exitWith(1, (e as Error).message)
    // @effect/cli has already printed what was wrong with the command line.
    if (ValidationError.isValidationError(e)) return exitWith(2)
    return exitWith(1, e instanceof Error ? e.message : String(e))
  }),
  Effect.catchAllDefect((defect) =>
    exitWith(1, `internal error: ${Cause.pretty(Cause.die(defect)).split("\n")[0]}`)
  ),
  Effect.provide(NodeContext.layer),
  Effect.provide(Logger.replace(Logger.defaultLogger, Logger.prettyLogger({ stderr: true, colors: false })))
)

NodeRuntime.runMain(program as Effect.Effect<void>, {
  disableErrorReporting: true,
  disablePrettyLogger: true
})
