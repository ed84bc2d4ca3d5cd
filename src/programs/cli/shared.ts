/**
 * What the CLI's commands share: the common options (node path, format, timeout), output
 * (print, tables, host:port) and the control-API client of a running agent.
 */
import { existsSync } from "node:fs"
import { connect } from "node:net"
import { homedir } from "node:os"
import { resolve } from "node:path"
import { Args, Options } from "@effect/cli"
import * as NodeSocket from "@effect/platform-node/NodeSocket"
import { RpcClient, RpcSerialization } from "@effect/rpc"
import { Cause, Config, Effect, Layer, Option } from "effect"
import { ControlError, ControlRpcs } from "../ControlApi.js"
import { OperationError, positiveInt, UsageError } from "../Input.js"
import { socketPath } from "../NodePath.js"

// ---- Shared options ------------------------------------------------------------------

export const nodePath = Options.directory("node-path").pipe(
  Options.withDescription("The node's directory (identity, routing table, control socket)"),
  Options.withFallbackConfig(Config.string("QUICMESH_NODE_PATH")),
  Options.optional
)
export const resolveNodePath = (p: Option.Option<string>) =>
  resolve(Option.getOrElse(p, () => resolve(homedir(), ".quicmesh")))

/**
 * Where a value came from, for error messages: the flag when it is on the command line,
 * else the environment variable when that is set (flags win over the environment).
 */
export const sourceOf = (flag: string, env: string) =>
  process.argv.some((a) => a === `--${flag}` || a.startsWith(`--${flag}=`)) || process.env[env] === undefined
    ? ""
    : ` (from ${env})`

export const format = Options.text("format").pipe(
  Options.withDescription("Output format: human or json"),
  Options.withFallbackConfig(Config.string("QUICMESH_FORMAT")),
  Options.withDefault("human")
)
export const checkFormat = (f: string): Effect.Effect<"human" | "json", UsageError> =>
  f === "human" || f === "json"
    ? Effect.succeed(f)
    : Effect.fail(
        new UsageError({
          message: `invalid format "${f}"${sourceOf("format", "QUICMESH_FORMAT")}: must be human or json`
        })
      )

export const timeoutMs = Options.text("timeout").pipe(
  Options.withDescription("Timeout in milliseconds"),
  Options.optional
)
export const checkTimeout = (t: Option.Option<string>) => positiveInt("timeout", t, " (milliseconds)")

// ---- Output --------------------------------------------------------------------------

export const print = (fmt: "human" | "json", json: unknown, human: string) =>
  Effect.sync(() => process.stdout.write(fmt === "json" ? `${JSON.stringify(json)}\n` : `${human}\n`))

/** "host:port", with an IPv6 host in brackets ("[::1]:4000"). */
export const hostPort = (host: string, port: number) =>
  host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`

export type Column<R> = readonly [title: string, cell: (row: R) => string]

/** A plain-text table: a header row, then one row each, columns padded to line up. */
export const table = <R>(rows: ReadonlyArray<R>, columns: ReadonlyArray<Column<R>>, empty: string) => {
  if (rows.length === 0) return empty
  const cells = rows.map((r) => columns.map(([, cell]) => cell(r)))
  const widths = columns.map(([title], i) => Math.max(title.length, ...cells.map((row) => row[i]!.length)))
  const line = (xs: ReadonlyArray<string>) =>
    xs
      .map((x, i) => x.padEnd(widths[i]!))
      .join("  ")
      .trimEnd()
  return [line(columns.map(([title]) => title)), ...cells.map(line)].join("\n")
}

export const nodeColumns: ReadonlyArray<
  Column<{ nodeId: string; host: string; port: number; bucketIndex: number; lastUpdated: number }>
> = [
  ["NODE ID", (r) => r.nodeId],
  ["ADDRESS", (r) => hostPort(r.host, r.port)],
  ["BUCKET", (r) => String(r.bucketIndex)],
  ["LAST UPDATED", (r) => new Date(r.lastUpdated).toISOString()]
]

// ---- Talking to the agent ------------------------------------------------------------

export const agentReachable = (path: string) =>
  Effect.async<boolean>((resume) => {
    if (!existsSync(path)) return resume(Effect.succeed(false))
    const socket = connect({ path })
    socket.once("connect", () => {
      socket.destroy()
      resume(Effect.succeed(true))
    })
    socket.once("error", () => resume(Effect.succeed(false)))
  })

export const makeControlClient = RpcClient.make(ControlRpcs)
export type ControlClient = Effect.Effect.Success<typeof makeControlClient>

/** Runs `f` with a control client for the agent at `dir`; "no agent running" when there is none. */
export const withAgent = <A>(
  dir: string,
  f: (client: ControlClient) => Effect.Effect<A, unknown>
): Effect.Effect<A, OperationError> =>
  Effect.gen(function* () {
    const path = socketPath(dir)
    if (!(yield* agentReachable(path)))
      return yield* Effect.fail(new OperationError({ message: `no agent running at ${dir}` }))
    return yield* Effect.scoped(
      makeControlClient.pipe(
        Effect.flatMap(f),
        Effect.provide(
          RpcClient.layerProtocolSocket({ retryTransientErrors: false }).pipe(
            Layer.provide(NodeSocket.layerNet({ path })),
            Layer.provide(RpcSerialization.layerNdjson)
          )
        )
      )
    ).pipe(
      // An interruption that reaches us here is the agent's: its RPC server answers the calls
      // it cuts short while stopping with one. (A signal to this process interrupts this fiber
      // itself, which skips the handler and still exits 130.) A failure, never a silent exit.
      Effect.catchAllCause((cause) =>
        Cause.isInterruptedOnly(cause)
          ? Effect.fail(new OperationError({ message: `the agent at ${dir} stopped before it answered` }))
          : Effect.failCause(cause)
      )
    )
  }).pipe(
    Effect.mapError((e: unknown) =>
      e instanceof OperationError
        ? e
        : e instanceof ControlError
          ? new OperationError({ message: e.message })
          : new OperationError({ message: `lost the agent at ${dir}: ${(e as Error).message ?? String(e)}` })
    )
  )

// ---- Arguments about one node ----------------------------------------------------------

export const nodeIdArg = Args.text({ name: "NODEID" }).pipe(
  Args.withDescription("A NodeId (v…, 53 characters)")
)

/** The options of a command about one node. */
export const aboutNode = { nodePath, format, nodeId: nodeIdArg } as const
