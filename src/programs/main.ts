/**
 * Entry point of the `quicmesh` command. Exit codes: 0 success, 1 the operation ran but
 * failed, 2 bad usage or bad input. Errors are one line on stderr, never a stack trace.
 * SIGINT and SIGTERM interrupt the command: the agent runs every finalizer and exits 0; a
 * one-shot command cut short exits 130.
 */
import { HelpDoc, ValidationError } from "@effect/cli"
import * as NodeContext from "@effect/platform-node/NodeContext"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { Cause, Console, Effect, Exit, Logger } from "effect"
import { cli } from "./Cli.js"
import { configErrorText } from "./Input.js"

const exitWith = (code: number, message?: string) =>
  Effect.sync(() => {
    if (message) process.stderr.write(`quicmesh: ${message}\n`)
    process.exitCode = code
  })

/** One line of plain text: no ANSI escapes, whitespace collapsed. */
export const oneLine = (text: string) =>
  text
    // biome-ignore lint/suspicious/noControlCharactersInRegex: ANSI escape sequences
    .replace(/\u001b\[[0-9;]*m/g, "")
    .replace(/\s+/g, " ")
    .trim()

/** The command tree, to name the word @effect/cli could not place ("nodes gates": a group in a group). */
const COMMANDS: Record<string, ReadonlyArray<string>> = {
  agent: ["start", "status", "stop"],
  nodes: ["add", "find", "ping", "connections", "getall", "closest", "deny", "allow", "gates"],
  "nodes gates": ["remove", "allow-only"],
  identity: ["renew"],
  sim: []
}
const TOP = Object.keys(COMMANDS).filter((k) => !k.includes(" "))

/** "unknown command "frob"" / "unknown nodes command "--bogus"", from the words typed. */
const unknownCommand = (argv: ReadonlyArray<string>): string | undefined => {
  const [first, second, third] = argv
  if (first === undefined) return undefined
  const subs = TOP.includes(first) ? COMMANDS[first] : undefined
  if (subs === undefined) return `unknown command "${first}": expected one of ${TOP.join(", ")}`
  if (second !== undefined && subs.length > 0 && !subs.includes(second))
    return `unknown ${first} command "${second}": expected one of ${subs.join(", ")}`
  const nested = COMMANDS[`${first} ${second}`]
  if (nested !== undefined && third !== undefined && !third.startsWith("-") && !nested.includes(third))
    return `unknown ${first} ${second} command "${third}": expected one of ${nested.join(", ")}`
  return undefined
}

const describeValidationError = (e: ValidationError.ValidationError): string => {
  const text = configErrorText(oneLine(HelpDoc.toAnsiText(e.error)))
  switch (e._tag) {
    case "CommandMismatch":
    case "MissingSubcommand":
      return `${unknownCommand(process.argv.slice(2)) ?? (text || "unknown command")} (see quicmesh --help)`
    default:
      return text || `invalid command line (${e._tag})`
  }
}

/**
 * @effect/cli prints its own parse errors (several lines, with blank ones) through
 * `Console.error`; we silence that and print each as one line of our own. Help, version
 * and completions go through `Console.log` and are left alone; so are our logs, which go
 * through the console's `unsafe` side.
 */
const quietCliErrors = <A, E, R>(self: Effect.Effect<A, E, R>) =>
  Console.consoleWith((console) => Console.withConsole(self, { ...console, error: () => Effect.void }))

const isAgentStart = process.argv.slice(2).some((a, i, all) => a === "agent" && all[i + 1] === "start")

const program = cli(process.argv).pipe(
  quietCliErrors,
  Effect.catchTags({
    UsageError: (e) => exitWith(2, e.message),
    OperationError: (e) => exitWith(1, e.message)
  }),
  Effect.catchAll((e: unknown) =>
    ValidationError.isValidationError(e)
      ? exitWith(2, describeValidationError(e))
      : exitWith(1, oneLine(e instanceof Error ? e.message : String(e)))
  ),
  Effect.catchAllDefect((defect) =>
    exitWith(1, `internal error: ${oneLine(Cause.pretty(Cause.die(defect)).split("\n")[0] ?? "")}`)
  ),
  Effect.provide(NodeContext.layer),
  Effect.provide(Logger.replace(Logger.defaultLogger, Logger.prettyLogger({ stderr: true, colors: false })))
)

NodeRuntime.runMain(program as Effect.Effect<void>, {
  disableErrorReporting: true,
  disablePrettyLogger: true,
  // Interrupted by SIGINT/SIGTERM: for the agent a clean stop, exit 0; a one-shot command
  // cut short exits 130 as shells expect. Otherwise the code the program set.
  teardown: (exit, onExit) => {
    const set = typeof process.exitCode === "number" ? process.exitCode : 0
    if (Exit.isFailure(exit) && Cause.isInterruptedOnly(exit.cause)) return onExit(isAgentStart ? 0 : 130)
    onExit(Exit.isFailure(exit) ? 1 : set)
  }
})
