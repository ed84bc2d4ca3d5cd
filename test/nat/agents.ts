/**
 * quicmesh agents (the built program, `bin/quicmesh.js`) running inside NAT lab namespaces, and
 * the CLI talking to them over their control sockets from the root namespace (a Unix socket file
 * is reachable from every network namespace). Run `npm run build` first.
 */
import { Effect, type Scope } from "effect"
import {
  agentStartArgs,
  cli,
  control,
  isReadyLine,
  makeNodePath,
  parseReady
} from "../fixtures/agentProcess.js"
import type { Lab, LabProcess } from "./lab.js"

/** The control API and the CLI, from the root namespace (see test/fixtures/agentProcess.ts). */
export { cli, control }

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
  /** The node path (the same identity across restarts); a fresh one removed with the scope unless given. */
  readonly dir?: string
  /** Serve as a relay (`agent start --relay`). */
  readonly relay?: boolean
}

/** Starts an agent in lab node `name`, listening on the node's own address; stopped with the scope. */
export const startAgent = (
  lab: Lab,
  name: string,
  options: StartAgentOptions = {}
): Effect.Effect<AgentInfo, unknown, Scope.Scope> =>
  Effect.gen(function* () {
    const dir = options.dir ?? (yield* makeNodePath(`qm-nat-${name}-`))
    const node = lab.node(name)
    const seeds = (options.seeds ?? []).map((s) => `${s.nodeId}@${lab.node(s.name).publicIp}:${s.port}`)
    const proc = yield* lab.spawn(
      name,
      process.execPath,
      [
        ...agentStartArgs({ dir, host: node.ip, port: options.port ?? 0, seeds, verbose: true }),
        ...(options.relay ? ["--relay"] : [])
      ],
      { env: { ...process.env, ...options.env } }
    )
    const ready = parseReady(yield* proc.waitForLine(isReadyLine, "30 seconds"))
    return { name, nodeId: ready.nodeId, host: ready.host, port: ready.port, dir, proc }
  })

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
  /** "direct", "punched" or "relayed". */
  readonly path?: string | undefined
  /** The relay's NodeId for a relayed connection (null otherwise). */
  readonly relay?: string | null | undefined
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
