/**
 * The `quicmesh` command line: `agent start|status|stop`, `nodes …`, `identity`, `sim`.
 * What the commands share (options, output, the agent's control client) is in `cli/shared.ts`.
 */
import { Args, Command, Options } from "@effect/cli"
import { Config, Effect, Logger, LogLevel, Option } from "effect"
import * as NodeId from "../services/NodeId.js"
import { stopAgent } from "./cli/agentStop.js"
import { gateCommands } from "./cli/gates.js"
import { identityCommand } from "./cli/identity.js"
import { checkPortMapping, portMappingOptions, portMappingText } from "./cli/portMapping.js"
import { reachabilityText } from "./cli/reachability.js"
import { relayOptions, relayText } from "./cli/relay.js"
import {
  aboutNode,
  checkFormat,
  checkTimeout,
  format,
  hostPort,
  nodeColumns,
  nodePath,
  print,
  resolveNodePath,
  sourceOf,
  table,
  timeoutMs,
  withAgent
} from "./cli/shared.js"
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
import { lockNodePath } from "./NodePath.js"
import { simCommand } from "./SimCommand.js"

export const VERSION = "0.1.0"

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
    ...portMappingOptions,
    ...relayOptions,
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
      const portMapping = yield* checkPortMapping(o)
      const dir = resolveNodePath(o.nodePath)
      // Lock first (a second agent fails at once), then load the node's layers: they load
      // only here, so the client commands start quickly.
      yield* lockNodePath(dir)
      const Agent = yield* Effect.promise(() => import("./Agent.js"))
      yield* Agent.runLocked({
        nodePath: dir,
        host,
        port,
        seedNodes,
        format: fmt,
        portMapping,
        relay: o.relay
      }).pipe(Logger.withMinimumLogLevel(o.verbose ? LogLevel.Debug : LogLevel.Info))
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
      `agent LIVE at ${dir}: node ${status.nodeId} on ${hostPort(status.host, status.port)}, pid ${status.pid}, ${status.connections} connection(s), ${status.nodes} known node(s)${portMappingText(status)}${reachabilityText(status)}${relayText(status)}`
    )
  })
).pipe(Command.withDescription("Show whether an agent runs at the node path, and its figures"))

const agentStop = Command.make("stop", { nodePath, format }, (o) =>
  Effect.gen(function* () {
    const fmt = yield* checkFormat(o.format)
    const dir = resolveNodePath(o.nodePath)
    // Returns once the agent has run its finalizers and exited (as after SIGTERM).
    yield* stopAgent(dir)
    yield* print(fmt, { stopped: true }, `agent at ${dir} stopped`)
  })
).pipe(Command.withDescription("Stop the agent at the node path (as SIGTERM does)"))

const agent = Command.make("agent").pipe(
  Command.withDescription("Run a node, or ask a running one about itself"),
  Command.withSubcommands([agentStart, agentStatus, agentStop])
)

// ---- nodes ---------------------------------------------------------------------------

const nodesAdd = Command.make("add", { ...aboutNode, address: Args.text({ name: "HOST:PORT" }) }, (o) =>
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
          ["DIRECTION", (r) => (r.direction === "forward" ? "outbound" : "inbound")],
          ["PATH", (r) => (r.path === "relayed" ? `relayed via ${r.relay ?? "?"}` : (r.path ?? "direct"))]
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
  Command.withSubcommands([
    nodesAdd,
    nodesFind,
    nodesPing,
    nodesConnections,
    nodesGetAll,
    nodesClosest,
    ...gateCommands
  ])
)

export const root = Command.make("quicmesh").pipe(
  Command.withDescription("Peer-to-peer node connection manager over QUIC"),
  Command.withSubcommands([agent, nodes, identityCommand, simCommand])
)

export const cli = Command.run(root, { name: "quicmesh", version: VERSION })
