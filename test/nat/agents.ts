/**
 * quicmesh agents (the built program, `bin/quicmesh.js`) running inside NAT lab namespaces, and
 * the CLI talking to them over their control sockets from the root namespace (a Unix socket file
 * is reachable from every network namespace). Run `npm run build` first.
 */
import { execFile } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { NodeSocket } from "@effect/platform-node"
import { RpcClient, RpcSerialization } from "@effect/rpc"
import { Data, Effect, Layer, type Scope } from "effect"
import { ControlRpcs } from "../../src/services/ControlApi.js"
import type { Lab, LabProcess } from "./lab.js"

export const BIN = fileURLToPath(new URL("../../bin/quicmesh.js", import.meta.url))

export interface AgentInfo {
  readonly name: string
  readonly nodeId: string
  /** The address the agent listens on (private for LAN hosts). */
  readonly host: string
  readonly port: number
  readonly dir: string
  readonly proc: LabProcess
}

export interface StartAgentOptions {
  readonly port?: number
  readonly seeds?: ReadonlyArray<AgentInfo>
  /** Manager options as environment (e.g. `{ connectionIdleTimeoutTime: "5 seconds" }`). */
  readonly env?: Record<string, string>
}

/** Starts an agent in lab node `name`, listening on the node's own address; stopped with the scope. */
export const startAgent = (
  lab: Lab,
  name: string,
  options: StartAgentOptions = {}
): Effect.Effect<AgentInfo, unknown, Scope.Scope> =>
  Effect.gen(function* () {
    const dir = yield* Effect.acquireRelease(
      Effect.sync(() => mkdtempSync(join(tmpdir(), `qm-nat-${name}-`))),
      (d) => Effect.sync(() => rmSync(d, { recursive: true, force: true }))
    )
    const node = lab.node(name)
    const seeds = (options.seeds ?? []).map((s) => `${s.nodeId}@${lab.node(s.name).publicIp}:${s.port}`)
    const proc = yield* lab.spawn(
      name,
      process.execPath,
      [
        BIN,
        "agent",
        "start",
        "--node-path",
        dir,
        "--host",
        node.ip,
        "--port",
        String(options.port ?? 0),
        "--seed-nodes",
        seeds.join(";"),
        "--format",
        "json",
        "--verbose"
      ],
      { env: { ...process.env, ...options.env } }
    )
    const line = yield* proc.waitForLine((l) => l.startsWith("{") && l.includes('"nodeId"'), "30 seconds")
    const ready = JSON.parse(line) as { nodeId: string; host: string; port: number }
    return { name, nodeId: ready.nodeId, host: ready.host, port: ready.port, dir, proc }
  })

export class CliError extends Data.TaggedError("CliError")<{
  readonly args: ReadonlyArray<string>
  readonly code: number | string
  readonly stdout: string
  readonly stderr: string
}> {
  override get message() {
    return `quicmesh ${this.args.join(" ")} exited ${this.code}: ${this.stderr.trim()}`
  }
}

/** Runs `quicmesh <args> --node-path dir --format json` (root namespace); parses the JSON output. */
export const cli = <A = unknown>(agent: AgentInfo, args: ReadonlyArray<string>): Effect.Effect<A, CliError> =>
  Effect.async<A, CliError>((resume) => {
    const all = [...args, "--node-path", agent.dir, "--format", "json"]
    const child = execFile(
      process.execPath,
      [BIN, ...all],
      { encoding: "utf8", timeout: 120_000 },
      (error, stdout, stderr) => {
        if (error) {
          const code = (error as { code?: number | string }).code ?? "error"
          resume(Effect.fail(new CliError({ args: all, code, stdout, stderr })))
          return
        }
        try {
          resume(Effect.succeed(JSON.parse(stdout.trim().split("\n").pop() ?? "null") as A))
        } catch {
          resume(Effect.fail(new CliError({ args: all, code: "bad-json", stdout, stderr })))
        }
      }
    )
    return Effect.sync(() => child.kill("SIGKILL"))
  })

const controlClient = RpcClient.make(ControlRpcs)
export type ControlClient = Effect.Effect.Success<typeof controlClient>

/**
 * Runs `f` with a control-API client on the agent's socket, in this process (what the CLI does,
 * without its ~2 s start-up per command).
 */
export const control = <A, E>(
  agent: AgentInfo,
  f: (client: ControlClient) => Effect.Effect<A, E>
): Effect.Effect<A, unknown> =>
  Effect.scoped(
    controlClient.pipe(
      Effect.flatMap(f),
      Effect.provide(
        RpcClient.layerProtocolSocket({ retryTransientErrors: false }).pipe(
          Layer.provide(NodeSocket.layerNet({ path: join(agent.dir, "agent.sock") })),
          Layer.provide(RpcSerialization.layerNdjson)
        )
      )
    )
  )

/** `nodes ping` with a timeout in milliseconds. */
export const ping = (agent: AgentInfo, target: AgentInfo, timeoutMs: number) =>
  control(agent, (c) => c.nodesPing({ nodeId: target.nodeId, timeout: timeoutMs })).pipe(
    Effect.map((r) => r.success)
  )

export interface ConnectionJson {
  readonly nodeId: string
  readonly host: string
  readonly port: number
  readonly direction: string
}

export const connections = (agent: AgentInfo): Effect.Effect<ReadonlyArray<ConnectionJson>, unknown> =>
  control(agent, (c) => c.nodesConnections())

export const getAll = (agent: AgentInfo) => control(agent, (c) => c.nodesGetAll())

export const find = (agent: AgentInfo, target: AgentInfo, timeoutMs: number) =>
  control(agent, (c) => c.nodesFind({ nodeId: target.nodeId, timeout: timeoutMs }))

/** Polls `check` every 250 ms until `until` holds (or fails after `attempts`). */
export const poll = <A, E>(
  check: Effect.Effect<A, E>,
  until: (a: A) => boolean,
  attempts = 40
): Effect.Effect<A, E | string> =>
  Effect.gen(function* () {
    let last: A | undefined
    for (let i = 0; i < attempts; i++) {
      last = yield* check
      if (until(last)) return last
      yield* Effect.sleep("250 millis")
    }
    return yield* Effect.fail(`condition not reached; last: ${JSON.stringify(last)}`)
  })
