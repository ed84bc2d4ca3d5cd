/**
 * Real Polykey 1.15.1 agents as child processes, for interop tests and benchmarks. Polykey is
 * GPL-3.0: it lives in the harness folder (test/polykey/install.mjs, `npm run polykey:install`),
 * never in quicmesh's dependencies, and only ever runs in a process of its own.
 *
 * What Polykey needs, from its source (polykey 1.15.1's `PolykeyAgent.createPolykeyAgent`, and
 * Polykey-CLI 0.12.0's `agent start`, `nodes ping|find|connections|add`, which wrap it):
 * - The npm package `polykey` is the library only (no `bin`); the CLI is the separate
 *   Polykey-CLI project, which the npm registry here does not carry. So agents start through
 *   test/polykey/agentMain.mjs, a launcher that calls `PolykeyAgent.createPolykeyAgent` with the
 *   options the CLI's `agent start` builds, from flags named as the CLI's; and CLI commands run
 *   through test/polykey/clientMain.mjs, which does what the CLI's commands do: `PolykeyClient`
 *   to the agent's client service with the password as `Basic` authorization, output as
 *   `--format json` prints it, exit 1 when a ping or find fails.
 * - CLI flag → agent option: `--node-path` (PK_NODE_PATH) → nodePath, where `status.json` (live
 *   agent's pid, NodeId, client host/port) and `state/` (keys, db, vaults) go; `--password-file`
 *   (or PK_PASSWORD) → password; `--agent-host/--agent-port` (PK_AGENT_HOST/PORT; default `::`
 *   and 0: a free port) → agentServiceHost/Port, the QUIC port peers dial; `--client-host/
 *   --client-port` (PK_CLIENT_HOST/PORT; default localhost, 0) → the WebSocket client service;
 *   `--seed-nodes 'nodeId@host:port;…'` (PK_SEED_NODES; the CLI adds the network's DNS seeds
 *   unless the list omits `<defaults>`) → seedNodes `{ [nodeId]: [host, port] }`, added to the
 *   node graph and synced from at start; `--workers N` → workers (left unset: no worker threads);
 *   `--private-key-file` / `--recovery-code-file` → keys.privateKeyPath / keys.recoveryCode;
 *   `--password-ops-limit/--password-mem-limit` (min|interactive|moderate|…) → the password hash
 *   cost (the CLI's default "moderate" takes seconds; Polykey's tests use "min").
 * - Fast start: password hash at "min", `strictMemoryLock: false` and a given 32-byte Ed25519
 *   seed (`keys.privateKey`: random unless chosen) instead of a recovery code, whose BIP-39 key
 *   derivation costs time. An agent is ready about 2 s after spawn on an idle machine.
 * - NodeId: the raw 32-byte Ed25519 public key; its text form is multibase base32hex (`v…`),
 *   the same as quicmesh's NodeIdEncoded.
 * - Polykey always runs MDNS (multicast, port 64023 by default, on every interface): each
 *   agent here gets a free port of its own unless `mdns: true`, so agents find each other only
 *   through seeds and lookups, as quicmesh nodes do.
 * - Stopping: SIGTERM/SIGINT (or the launcher's stdin closing) → `PolykeyAgent.stop()`, exit 0.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process"
import { createSocket } from "node:dgram"
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { dirname, join, resolve } from "node:path"
import { fileURLToPath } from "node:url"
import { Data, type Duration, Effect, Either, type Scope } from "effect"
import * as NodeId from "../../src/services/NodeId.js"
import { awaitReady, CliError, exitOf, hasExited, killOf } from "../fixtures/childProcess.js"

export const POLYKEY_VERSION = "1.15.1"

/** test/polykey in the source tree, where the launchers are (this file also runs compiled, in build/bench). */
const here = (() => {
  let dir = dirname(fileURLToPath(import.meta.url))
  while (!existsSync(join(dir, "package.json")) && dirname(dir) !== dir) dir = dirname(dir)
  return join(dir, "test", "polykey")
})()
const AGENT_MAIN = join(here, "agentMain.mjs")
/** agentMain.mjs with a command channel that times the agent's own calls (bench/polykey.ts). */
const BENCH_MAIN = join(here, "benchMain.mjs")
const CLIENT_MAIN = join(here, "clientMain.mjs")

/** The harness folder: `QUICMESH_POLYKEY_DIR`, else `<repo>/.polykey-harness`. */
export const harnessDir = resolve(
  process.env.QUICMESH_POLYKEY_DIR || join(here, "..", "..", ".polykey-harness")
)

/** Why Polykey agents cannot start here, or undefined when the harness is in place. */
export const harnessProblem = (): string | undefined => {
  const manifest = join(harnessDir, "node_modules", "polykey", "package.json")
  if (!existsSync(manifest))
    return `polykey is not installed in ${harnessDir}: run \`npm run polykey:install\``
  const version = (JSON.parse(readFileSync(manifest, "utf8")) as { version: string }).version
  return version === POLYKEY_VERSION
    ? undefined
    : `${harnessDir} holds polykey ${version}, not ${POLYKEY_VERSION}: run \`npm run polykey:install\``
}

export class PolykeyStartError extends Data.TaggedError("PolykeyStartError")<{
  readonly detail: string
}> {
  override get message() {
    return `polykey agent did not start: ${this.detail}`
  }
}

/** What one CLI command did: its exit code, its stdout's last line parsed as JSON (if any). */
export interface CliOutcome {
  readonly code: number
  readonly json: unknown
  readonly stdout: string
  readonly stderr: string
}

export interface StartPolykeyOptions {
  /** Seed nodes: running agents, or `nodeId@host:port` strings. */
  readonly seeds?: ReadonlyArray<PolykeyAgent | string>
  /** The agent (QUIC) port; 0 (the default) lets the agent pick a free one. */
  readonly port?: number
  /** The 32-byte Ed25519 seed of the agent's key (its NodeId follows from it); random if absent. */
  readonly privateKey?: Uint8Array
  /** Join the default MDNS port shared by every Polykey agent (false: a port of its own). */
  readonly mdns?: boolean
  /** Polykey's INFO logs on stderr (kept in `stderr()`). */
  readonly verbose?: boolean
  /** How long the agent may take to be live; 60 s by default. */
  readonly readyTimeout?: Duration.DurationInput
  /** Start it with test/polykey/benchMain.mjs, which takes timing commands on its stdin. */
  readonly bench?: boolean
}

/** A running Polykey agent, child of this process. */
export interface PolykeyAgent {
  /** Polykey's NodeIdEncoded (`v` + base32hex), as its CLI prints it. */
  readonly nodeId: string
  /** The raw NodeId: the agent's Ed25519 public key, comparable with quicmesh's NodeIds. */
  readonly nodeIdBytes: NodeId.NodeId
  /** Where its QUIC (agent) service listens: 127.0.0.1. */
  readonly host: string
  readonly port: number
  /** Its client service (WebSocket RPC), which the CLI talks to. */
  readonly clientPort: number
  /** `nodeId@host:port`, as Polykey's `--seed-nodes` and quicmesh's `--seed-nodes` take it. */
  readonly seedAddress: string
  readonly pid: number
  readonly nodePath: string
  readonly passwordFile: string
  readonly proc: ChildProcess
  /** Its stderr so far (the last 64 KiB). */
  readonly stderr: () => string
  /** Runs a Polykey CLI command against it (test/polykey/clientMain.mjs says which). */
  readonly run: (args: ReadonlyArray<string>) => Effect.Effect<CliOutcome, CliError>
  /** As `run`, failing unless the command exits 0; its JSON output. */
  readonly cli: <A = unknown>(args: ReadonlyArray<string>) => Effect.Effect<A, CliError>
  /** SIGTERM (Polykey stops itself), SIGKILL if still running after 15 s; waits for its exit. */
  readonly stop: Effect.Effect<void>
  /** SIGKILL (if still running); waits for its exit. */
  readonly kill: Effect.Effect<void>
  /** Completes when it has exited. */
  readonly exited: Effect.Effect<void>
}

interface Ready {
  readonly nodeId: string
  readonly publicKey: string
  readonly agentHost: string
  readonly agentPort: number
  readonly clientPort: number
  readonly pid: number
}

/** True while a process with this pid exists (signal 0 probes without signalling). */
export const isRunning = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM"
  }
}

/** A UDP port free on every interface right now (for an agent's own MDNS port). */
const freeUdpPort: Effect.Effect<number> = Effect.async<number>((resume) => {
  const socket = createSocket("udp4")
  socket.bind(0, () => {
    const { port } = socket.address()
    socket.close(() => resume(Effect.succeed(port)))
  })
})

const runCli =
  (agent: { readonly nodePath: string; readonly passwordFile: string }) =>
  (args: ReadonlyArray<string>): Effect.Effect<CliOutcome, CliError> =>
    Effect.async<CliOutcome, CliError>((resume) => {
      const all = [
        CLIENT_MAIN,
        "--harness",
        harnessDir,
        "--node-path",
        agent.nodePath,
        "--password-file",
        agent.passwordFile,
        ...args,
        "--format",
        "json"
      ]
      const child = execFile(
        process.execPath,
        all,
        { encoding: "utf8", timeout: 120_000 },
        (error, stdout, stderr) => {
          const code = error === null ? 0 : (error as { code?: number | string }).code
          if (typeof code !== "number") {
            resume(
              Effect.fail(new CliError({ program: "polykey", args, code: code ?? "killed", stdout, stderr }))
            )
            return
          }
          const last = stdout.trim().split("\n").pop() ?? ""
          let json: unknown
          try {
            json = last === "" ? undefined : JSON.parse(last)
          } catch {
            json = undefined
          }
          resume(Effect.succeed({ code, json, stdout, stderr }))
        }
      )
      return Effect.sync(() => child.kill("SIGKILL"))
    })

const seedText = (seed: PolykeyAgent | string) => (typeof seed === "string" ? seed : seed.seedAddress)

/**
 * Starts a Polykey agent on 127.0.0.1 with a fresh node path in a temporary folder, and waits
 * until it is live. When the scope closes it is SIGKILLed (if still running) and its folder
 * removed.
 */
export const startPolykeyAgent = (
  options: StartPolykeyOptions = {}
): Effect.Effect<PolykeyAgent, PolykeyStartError, Scope.Scope> =>
  Effect.gen(function* () {
    const problem = harnessProblem()
    if (problem !== undefined) return yield* new PolykeyStartError({ detail: problem })
    const dir = yield* Effect.acquireRelease(
      Effect.sync(() => mkdtempSync(join(tmpdir(), "qm-polykey-"))),
      (d) => Effect.sync(() => rmSync(d, { recursive: true, force: true }))
    )
    const nodePath = join(dir, "node")
    const passwordFile = join(dir, "password")
    mkdirSync(nodePath)
    writeFileSync(passwordFile, "quicmesh-polykey-harness\n", { mode: 0o600 })
    const mdnsPort = options.mdns ? undefined : yield* freeUdpPort
    const args = [
      options.bench ? BENCH_MAIN : AGENT_MAIN,
      "--harness",
      harnessDir,
      "--node-path",
      nodePath,
      "--password-file",
      passwordFile,
      "--agent-host",
      "127.0.0.1",
      "--agent-port",
      String(options.port ?? 0),
      "--client-host",
      "127.0.0.1",
      "--seed-nodes",
      (options.seeds ?? []).map(seedText).join(";"),
      ...(options.privateKey ? ["--private-key-hex", Buffer.from(options.privateKey).toString("hex")] : []),
      ...(mdnsPort === undefined ? [] : ["--mdns-port", String(mdnsPort)]),
      ...(options.verbose ? ["--verbose"] : [])
    ]
    return yield* Effect.acquireRelease(
      Effect.suspend(() => {
        // stdin stays open: the launcher stops its agent when it closes (this process died).
        const proc = spawn(process.execPath, args, { stdio: ["pipe", "pipe", "pipe"] })
        const kill = killOf(proc)
        const stop = Effect.suspend(() => {
          if (!hasExited(proc)) proc.kill("SIGTERM")
          return exitOf(proc).pipe(
            Effect.timeoutTo({ duration: "15 seconds", onSuccess: () => Effect.void, onTimeout: () => kill }),
            Effect.flatten
          )
        })
        const agent = (ready: Ready, stderr: () => string): PolykeyAgent => ({
          nodeId: ready.nodeId,
          nodeIdBytes: NodeId.unsafeFromBytes(Buffer.from(ready.publicKey, "hex")),
          host: ready.agentHost,
          port: ready.agentPort,
          clientPort: ready.clientPort,
          seedAddress: `${ready.nodeId}@${ready.agentHost}:${ready.agentPort}`,
          pid: ready.pid,
          nodePath,
          passwordFile,
          proc,
          stderr,
          run: runCli({ nodePath, passwordFile }),
          cli: <A>(cliArgs: ReadonlyArray<string>) =>
            runCli({ nodePath, passwordFile })(cliArgs).pipe(
              Effect.flatMap((o) =>
                o.code === 0
                  ? Effect.succeed(o.json as A)
                  : Effect.fail(new CliError({ program: "polykey", args: cliArgs, ...o }))
              )
            ),
          stop,
          kill,
          exited: exitOf(proc)
        })
        return awaitReady(proc, {
          isReady: (l) => l.startsWith("{") && l.includes('"nodeId"'),
          ready: (line, stderr) => agent(JSON.parse(line) as Ready, stderr),
          failed: (detail) => new PolykeyStartError({ detail }),
          timeout: options.readyTimeout ?? "60 seconds"
        })
      }),
      (agent) => agent.kill
    )
  })

/** `nodes ping <target>` from `agent`: Polykey's verdict (true: the target answered). */
export const ping = (agent: PolykeyAgent, target: string | PolykeyAgent) =>
  agent.run(["nodes", "ping", typeof target === "string" ? target : target.nodeId]).pipe(
    Effect.flatMap((o) => {
      const success = (o.json as { success?: unknown } | undefined)?.success
      return typeof success === "boolean"
        ? Effect.succeed(success)
        : Effect.fail(new CliError({ program: "polykey", args: ["nodes", "ping"], ...o }))
    })
  )

/** `nodes find <target>` from `agent`: the address Polykey found, or undefined when it found none. */
export const find = (agent: PolykeyAgent, target: string | PolykeyAgent) =>
  agent.run(["nodes", "find", typeof target === "string" ? target : target.nodeId]).pipe(
    Effect.flatMap((o) => {
      const address = (o.json as { nodeAddress?: [string, number] } | undefined)?.nodeAddress
      if (o.code === 0 && address !== undefined) return Effect.succeed({ host: address[0], port: address[1] })
      if (o.code === 1 && o.stderr.includes("Failed to find node")) return Effect.succeed(undefined)
      return Effect.fail(new CliError({ program: "polykey", args: ["nodes", "find"], ...o }))
    })
  )

export interface PolykeyConnection {
  readonly nodeIdEncoded: string
  readonly host: string
  readonly port: number
  readonly hostname: string
  readonly timeout: number
  readonly usageCount: number
}

/** `nodes connections` of `agent`: its active node connections. */
export const connections = (agent: PolykeyAgent) =>
  agent.cli<ReadonlyArray<PolykeyConnection>>(["nodes", "connections"])

/** `agent status` of `agent`: what its client service says of it (NodeId, ports, version). */
export interface PolykeyStatus {
  readonly status: string
  readonly nodeIdEncoded: string
  readonly agentPort: number
  readonly sourceVersion: string
}

export const status = (agent: PolykeyAgent) => agent.cli<PolykeyStatus>(["agent", "status"])

/**
 * `keys renew` on `agent`: Polykey's KeysKeyPairRenew, a new key pair whose certificate the old
 * key issues (the agent then presents a two-certificate chain). Its new NodeId: `agent.nodeId`
 * and `agent.nodeIdBytes` keep the one it started with.
 */
export const renewKey = (agent: PolykeyAgent) =>
  agent.cli<{ nodeIdEncoded: string }>(["keys", "renew"]).pipe(
    Effect.map(({ nodeIdEncoded }) => ({
      nodeId: nodeIdEncoded,
      nodeIdBytes: Either.getOrThrow(NodeId.decode(nodeIdEncoded))
    }))
  )

/**
 * How many calls of `method` a verbose agent has served since now (its RPC server logs
 * "Handling stream with method (…)" for each).
 */
export const handledCalls = (agent: PolykeyAgent, method: string): (() => number) => {
  const line = `Handling stream with method (${method})`
  let count = 0
  let partial = ""
  agent.proc.stderr!.on("data", (chunk: Buffer) => {
    const lines = (partial + chunk.toString()).split("\n")
    partial = lines.pop() ?? ""
    for (const l of lines) if (l.includes(line)) count++
  })
  return () => count
}
