/**
 * The `quicmesh` command line: `agent start|status|stop`, `nodes …`, `identity`, `sim`.
 */
import { existsSync } from "node:fs"
import { connect } from "node:net"
import { homedir } from "node:os"
import { resolve } from "node:path"
import { Args, Command, Options } from "@effect/cli"
import * as NodeSocket from "@effect/platform-node/NodeSocket"
import { RpcClient, RpcSerialization } from "@effect/rpc"
import { Config, Effect, Layer, Logger, LogLevel, Option, Schedule } from "effect"
import { KeyRing } from "../services/KeyRing.js"
import * as NodeId from "../services/NodeId.js"
import { ControlError, ControlRpcs } from "./ControlApi.js"
import {
  checkHost,
  checkPort,
  OperationError,
  parseAddress,
  parseNodeId,
  parseSeedNodes,
  positiveInt,
  UsageError
} from "./Input.js"
import { lockNodePath, pidAlive, socketPath } from "./NodePath.js"
import { simCommand } from "./SimCommand.js"

export const VERSION = "0.1.0"

// ---- Shared options ------------------------------------------------------------------

const nodePath = Options.directory("node-path").pipe(
  Options.withDescription("The node's directory (identity, routing table, control socket)"),
  Options.withFallbackConfig(Config.string("QUICMESH_NODE_PATH")),
  Options.optional
)
const resolveNodePath = (p: Option.Option<string>) =>
  resolve(Option.getOrElse(p, () => resolve(homedir(), ".quicmesh")))

/**
 * Where a value came from, for error messages: the flag when it is on the command line,
 * else the environment variable when that is set (flags win over the environment).
 */
const sourceOf = (flag: string, env: string) =>
  process.argv.some((a) => a === `--${flag}` || a.startsWith(`--${flag}=`)) || process.env[env] === undefined
    ? ""
    : ` (from ${env})`

const format = Options.text("format").pipe(
  Options.withDescription("Output format: human or json"),
  Options.withFallbackConfig(Config.string("QUICMESH_FORMAT")),
  Options.withDefault("human")
)
const checkFormat = (f: string): Effect.Effect<"human" | "json", UsageError> =>
  f === "human" || f === "json"
    ? Effect.succeed(f)
    : Effect.fail(
        new UsageError({
          message: `invalid format "${f}"${sourceOf("format", "QUICMESH_FORMAT")}: must be human or json`
        })
      )

const timeoutMs = Options.text("timeout").pipe(
  Options.withDescription("Timeout in milliseconds"),
  Options.optional
)
const checkTimeout = (t: Option.Option<string>) => positiveInt("timeout", t, " (milliseconds)")

// ---- Output --------------------------------------------------------------------------

const print = (fmt: "human" | "json", json: unknown, human: string) =>
  Effect.sync(() => process.stdout.write(fmt === "json" ? `${JSON.stringify(json)}\n` : `${human}\n`))

/** "host:port", with an IPv6 host in brackets ("[::1]:4000"). */
export const hostPort = (host: string, port: number) =>
  host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`

type Column<R> = readonly [title: string, cell: (row: R) => string]

/** A plain-text table: a header row, then one row each, columns padded to line up. */
const table = <R>(rows: ReadonlyArray<R>, columns: ReadonlyArray<Column<R>>, empty: string) => {
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

const nodeColumns: ReadonlyArray<
  Column<{ nodeId: string; host: string; port: number; bucketIndex: number; lastUpdated: number }>
> = [
  ["NODE ID", (r) => r.nodeId],
  ["ADDRESS", (r) => hostPort(r.host, r.port)],
  ["BUCKET", (r) => String(r.bucketIndex)],
  ["LAST UPDATED", (r) => new Date(r.lastUpdated).toISOString()]
]

// ---- Talking to the agent ------------------------------------------------------------

const agentReachable = (path: string) =>
  Effect.async<boolean>((resume) => {
    if (!existsSync(path)) return resume(Effect.succeed(false))
    const socket = connect({ path })
    socket.once("connect", () => {
      socket.destroy()
      resume(Effect.succeed(true))
    })
    socket.once("error", () => resume(Effect.succeed(false)))
  })

const makeControlClient = RpcClient.make(ControlRpcs)
type ControlClient = Effect.Effect.Success<typeof makeControlClient>

/** Runs `f` with a control client for the agent at `dir`; "no agent running" when there is none. */
const withAgent = <A>(
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

// ---- agent ---------------------------------------------------------------------------

const agentStart = Command.make(
  "start",
  {
    nodePath,
    host: Options.text("host").pipe(
      Options.withDescription("Address to listen on (default :: — every IPv6 and IPv4 address)"),
      Options.withFallbackConfig(Config.string("QUICMESH_HOST")),
      Options.withDefault("::")
    ),
    port: Options.text("port").pipe(
      Options.withDescription("UDP port to listen on (default 0: any free port)"),
      Options.withFallbackConfig(Config.string("QUICMESH_PORT")),
      Options.withDefault("0")
    ),
    seedNodes: Options.text("seed-nodes").pipe(
      Options.withDescription('Seed nodes: "NODEID@HOST:PORT;NODEID@HOST:PORT"'),
      Options.withFallbackConfig(Config.string("QUICMESH_SEED_NODES")),
      Options.withDefault("")
    ),
    format,
    verbose: Options.boolean("verbose").pipe(
      Options.withDescription("Debug logging on stderr"),
      Options.withFallbackConfig(Config.boolean("QUICMESH_VERBOSE"))
    )
  },
  (o) =>
    Effect.gen(function* () {
      const fmt = yield* checkFormat(o.format)
      const host = yield* checkHost(o.host, `host${sourceOf("host", "QUICMESH_HOST")}`)
      const portNumber = /^\d+$/.test(o.port.trim()) ? Number(o.port) : Number.NaN
      const port = yield* checkPort(portNumber).pipe(
        Effect.mapError(
          () =>
            new UsageError({
              message: `invalid port "${o.port}"${sourceOf("port", "QUICMESH_PORT")}: must be an integer from 0 to 65535`
            })
        )
      )
      const seedNodes = yield* parseSeedNodes(o.seedNodes).pipe(
        Effect.mapError(
          (e) => new UsageError({ message: `${e.message}${sourceOf("seed-nodes", "QUICMESH_SEED_NODES")}` })
        )
      )
      const dir = resolveNodePath(o.nodePath)
      // Lock first (a second agent fails at once), then load the node's layers: they load
      // only here, so the client commands start quickly.
      yield* lockNodePath(dir)
      const Agent = yield* Effect.promise(() => import("./Agent.js"))
      yield* Agent.runLocked({ nodePath: dir, host, port, seedNodes, format: fmt }).pipe(
        Logger.withMinimumLogLevel(o.verbose ? LogLevel.Debug : LogLevel.Info)
      )
    }).pipe(Effect.scoped)
).pipe(Command.withDescription("Run a node in the foreground until SIGINT or SIGTERM"))

const agentStatus = Command.make("status", { nodePath, format }, (o) =>
  Effect.gen(function* () {
    const fmt = yield* checkFormat(o.format)
    const dir = resolveNodePath(o.nodePath)
    const status = yield* withAgent(dir, (c) => c.status())
    yield* print(
      fmt,
      status,
      `agent LIVE at ${dir}: node ${status.nodeId} on ${hostPort(status.host, status.port)}, pid ${status.pid}, ${status.connections} connection(s), ${status.nodes} known node(s)`
    )
  })
).pipe(Command.withDescription("Show whether an agent runs at the node path, and its figures"))

const agentStop = Command.make("stop", { nodePath, format }, (o) =>
  Effect.gen(function* () {
    const fmt = yield* checkFormat(o.format)
    const dir = resolveNodePath(o.nodePath)
    const pid = yield* withAgent(dir, (c) =>
      c.status().pipe(Effect.flatMap((s) => Effect.as(c.stop(), s.pid)))
    )
    // Returns once the agent has run its finalizers and exited (as after SIGTERM).
    yield* Effect.sync(() => pidAlive(pid)).pipe(
      Effect.repeat({ while: (alive) => alive, schedule: Schedule.spaced("50 millis") }),
      Effect.timeoutFail({
        duration: "30 seconds",
        onTimeout: () =>
          new OperationError({ message: `agent at ${dir} (pid ${pid}) did not stop within 30 s` })
      })
    )
    yield* print(fmt, { stopped: true }, `agent at ${dir} stopped`)
  })
).pipe(Command.withDescription("Stop the agent at the node path (as SIGTERM does)"))

const agent = Command.make("agent").pipe(
  Command.withDescription("Run a node, or ask a running one about itself"),
  Command.withSubcommands([agentStart, agentStatus, agentStop])
)

// ---- nodes ---------------------------------------------------------------------------

const nodeIdArg = Args.text({ name: "NODEID" }).pipe(Args.withDescription("A NodeId (v…, 53 characters)"))

const nodesAdd = Command.make(
  "add",
  { nodePath, format, nodeId: nodeIdArg, address: Args.text({ name: "HOST:PORT" }) },
  (o) =>
    Effect.gen(function* () {
      const fmt = yield* checkFormat(o.format)
      const id = yield* parseNodeId(o.nodeId)
      const address = yield* parseAddress(o.address)
      yield* withAgent(resolveNodePath(o.nodePath), (c) =>
        c.nodesAdd({ nodeId: NodeId.encode(id), host: address.host, port: address.port })
      )
      yield* print(
        fmt,
        { success: true },
        `added ${NodeId.encode(id)} at ${hostPort(address.host, address.port)}`
      )
    })
).pipe(Command.withDescription("Add a node and its address to the agent's routing table"))

/** The options of a command about one node. */
const aboutNode = { nodePath, format, nodeId: nodeIdArg } as const

const nodesFind = Command.make("find", { ...aboutNode, timeout: timeoutMs }, (o) =>
  Effect.gen(function* () {
    const fmt = yield* checkFormat(o.format)
    const id = yield* parseNodeId(o.nodeId)
    const timeout = yield* checkTimeout(o.timeout)
    const r = yield* withAgent(resolveNodePath(o.nodePath), (c) =>
      c.nodesFind({ nodeId: NodeId.encode(id), timeout })
    )
    yield* print(
      fmt,
      r,
      r.success && r.address
        ? `found ${r.nodeId} at ${hostPort(r.address.host, r.address.port)}`
        : `${r.nodeId} not found`
    )
    if (!r.success) return yield* Effect.fail(new OperationError({ message: `node ${r.nodeId} not found` }))
  })
).pipe(Command.withDescription("Find a node's address, asking the network if it is not known"))

const nodesPing = Command.make(
  "ping",
  {
    ...aboutNode,
    address: Options.text("address").pipe(Options.withDescription("Try exactly HOST:PORT"), Options.optional),
    timeout: timeoutMs
  },
  (o) =>
    Effect.gen(function* () {
      const fmt = yield* checkFormat(o.format)
      const id = yield* parseNodeId(o.nodeId)
      const timeout = yield* checkTimeout(o.timeout)
      const address = Option.isSome(o.address) ? yield* parseAddress(o.address.value) : undefined
      const r = yield* withAgent(resolveNodePath(o.nodePath), (c) =>
        c.nodesPing({ nodeId: NodeId.encode(id), address, timeout })
      )
      yield* print(
        fmt,
        r,
        r.success ? `${NodeId.encode(id)} is alive` : `${NodeId.encode(id)} did not answer`
      )
      if (!r.success)
        return yield* Effect.fail(new OperationError({ message: `ping ${NodeId.encode(id)} failed` }))
    })
).pipe(Command.withDescription("Check that a node is alive now (true/false)"))

const nodesConnections = Command.make("connections", { nodePath, format }, (o) =>
  Effect.gen(function* () {
    const fmt = yield* checkFormat(o.format)
    const list = yield* withAgent(resolveNodePath(o.nodePath), (c) => c.nodesConnections())
    yield* print(
      fmt,
      list,
      table(
        list,
        [
          ["NODE ID", (r) => r.nodeId],
          ["ADDRESS", (r) => hostPort(r.host, r.port)],
          ["HOSTNAME", (r) => r.hostname ?? "-"],
          ["IN USE", (r) => String(r.usageCount)],
          ["IDLE TIMEOUT", (r) => (r.timeout === null ? "-" : `${(r.timeout / 1000).toFixed(1)} s`)],
          ["DIRECTION", (r) => (r.direction === "forward" ? "outbound" : "inbound")]
        ],
        "no connections"
      )
    )
  })
).pipe(Command.withDescription("List the agent's open connections"))

const nodesGetAll = Command.make("getall", { nodePath, format }, (o) =>
  Effect.gen(function* () {
    const fmt = yield* checkFormat(o.format)
    const list = yield* withAgent(resolveNodePath(o.nodePath), (c) => c.nodesGetAll())
    yield* print(fmt, list, table(list, nodeColumns, "no known nodes"))
  })
).pipe(Command.withDescription("List every node in the agent's routing table"))

const nodesClosest = Command.make(
  "closest",
  {
    ...aboutNode,
    limit: Options.text("limit").pipe(Options.withDescription("How many (default k = 20)"), Options.optional)
  },
  (o) =>
    Effect.gen(function* () {
      const fmt = yield* checkFormat(o.format)
      const id = yield* parseNodeId(o.nodeId)
      const limit = yield* positiveInt("limit", o.limit)
      const list = yield* withAgent(resolveNodePath(o.nodePath), (c) =>
        c.nodesClosest({ nodeId: NodeId.encode(id), limit })
      )
      yield* print(fmt, list, table(list, nodeColumns, "no known nodes"))
    })
).pipe(Command.withDescription("The known nodes closest to NODEID, nearest first"))

const nodes = Command.make("nodes").pipe(
  Command.withDescription("Find, ping and list nodes through a running agent"),
  Command.withSubcommands([nodesAdd, nodesFind, nodesPing, nodesConnections, nodesGetAll, nodesClosest])
)

// ---- identity ------------------------------------------------------------------------

const identity = Command.make("identity", { nodePath, format }, (o) =>
  Effect.gen(function* () {
    const fmt = yield* checkFormat(o.format)
    const dir = resolveNodePath(o.nodePath)
    const KeyRingLive = yield* Effect.promise(() => import("../layers/KeyRingLive.js"))
    const nodeId = yield* Effect.flatMap(KeyRing, (k) => k.nodeId).pipe(
      Effect.provide(KeyRingLive.layer({ nodePath: dir })),
      Effect.mapError((e) => new OperationError({ message: e.message }))
    )
    yield* print(fmt, { nodeId: NodeId.encode(nodeId) }, NodeId.encode(nodeId))
  })
).pipe(Command.withDescription("Print this node's NodeId (creates the identity if missing)"))

export const root = Command.make("quicmesh").pipe(
  Command.withDescription("Peer-to-peer node connection manager over QUIC"),
  Command.withSubcommands([agent, nodes, identity, simCommand])
)

export const cli = Command.run(root, { name: "quicmesh", version: VERSION })
