/**
 * Running the built `quicmesh` command (node bin/quicmesh.js, so `npm run build` first) as
 * real processes: one-shot commands with their exit code, stdout, stderr and wall time, and
 * agents read up to their ready line. Every child is tracked and killed by `killAll`.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { existsSync, mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join, resolve } from "node:path"

export const ROOT = resolve(import.meta.dirname, "../..")
export const BIN = join(ROOT, "bin/quicmesh.js")

if (!existsSync(join(ROOT, "dist/programs/main.js")))
  throw new Error("test/cli needs the built program: run `npm run build` (npm test does) first")

/** The environment children get: ours without any QUICMESH_* variable, plus `extra`. */
export const childEnv = (extra: Record<string, string> = {}): NodeJS.ProcessEnv => {
  const env: NodeJS.ProcessEnv = {}
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("QUICMESH_")) env[k] = v
  // No colours and a home directory of our own, so nothing touches ~/.quicmesh.
  return { ...env, NO_COLOR: "1", HOME: scratchHome, ...extra }
}

const children = new Set<ChildProcess>()
const dirs: Array<string> = []

/** A fresh temporary directory, removed by `cleanup`. */
export const tmpDir = (prefix = "quicmesh-cli-") => {
  const dir = mkdtempSync(join(tmpdir(), prefix))
  dirs.push(dir)
  return dir
}
const scratchHome = tmpDir("quicmesh-home-")

export interface CliResult {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
  readonly stdout: string
  readonly stderr: string
  /** Wall time from spawn to exit. */
  readonly ms: number
}

/** Runs `quicmesh ...args` to completion (killed after `timeoutMs`). */
export const cli = (
  args: ReadonlyArray<string>,
  options: { readonly env?: Record<string, string>; readonly timeoutMs?: number } = {}
): Promise<CliResult> =>
  new Promise((resolvePromise, reject) => {
    const started = performance.now()
    const child = spawn(process.execPath, [BIN, ...args], { cwd: ROOT, env: childEnv(options.env) })
    children.add(child)
    let stdout = ""
    let stderr = ""
    child.stdout.setEncoding("utf8").on("data", (d: string) => {
      stdout += d
    })
    child.stderr.setEncoding("utf8").on("data", (d: string) => {
      stderr += d
    })
    const timer = setTimeout(() => child.kill("SIGKILL"), options.timeoutMs ?? 30_000)
    child.on("error", reject)
    child.on("close", (code, signal) => {
      clearTimeout(timer)
      children.delete(child)
      resolvePromise({ code, signal, stdout, stderr, ms: performance.now() - started })
    })
  })

/** `cli` and parse stdout as one JSON value. */
export const cliJson = async <A = unknown>(
  args: ReadonlyArray<string>,
  options: { readonly env?: Record<string, string>; readonly timeoutMs?: number } = {}
): Promise<CliResult & { readonly json: A }> => {
  const r = await cli([...args, "--format", "json"], options)
  let json: A
  try {
    json = JSON.parse(r.stdout) as A
  } catch {
    throw new Error(`not JSON (exit ${r.code}): ${JSON.stringify(r.stdout)} stderr: ${r.stderr}`)
  }
  return { ...r, json }
}

export interface Ready {
  readonly nodeId: string
  readonly host: string
  readonly port: number
}

export interface AgentProcess {
  readonly nodePath: string
  readonly child: ChildProcess
  readonly ready: Ready
  /** The ready line exactly as printed. */
  readonly readyLine: string
  /** Everything on stdout / stderr so far. */
  readonly stdout: () => string
  readonly stderr: () => string
  /** "NODEID@127.0.0.1:PORT", for --seed-nodes. */
  readonly seed: string
  /** Resolves when the process has exited. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
}

/**
 * Starts `quicmesh agent start --node-path DIR --host HOST --port 0 --format json …` (HOST
 * 127.0.0.1 unless given) and resolves on its ready line (rejects if it exits first or is not
 * ready in time).
 */
export const startAgent = (
  options: {
    readonly nodePath?: string
    readonly host?: string
    readonly seeds?: ReadonlyArray<string>
    readonly args?: ReadonlyArray<string>
    readonly env?: Record<string, string>
    readonly readyTimeoutMs?: number
  } = {}
): Promise<AgentProcess> => {
  const nodePath = options.nodePath ?? join(tmpDir(), "node")
  const args = [
    "agent",
    "start",
    "--node-path",
    nodePath,
    "--host",
    options.host ?? "127.0.0.1",
    "--port",
    "0",
    "--format",
    "json",
    ...(options.seeds && options.seeds.length > 0 ? ["--seed-nodes", options.seeds.join(";")] : []),
    ...(options.args ?? [])
  ]
  return startAgentWith(args, nodePath, options)
}

/** The ready line: JSON, or the human sentence "agent ready: node V… listening on HOST:PORT". */
export const parseReadyLine = (line: string): Ready => {
  if (line.startsWith("{")) return JSON.parse(line) as Ready
  const m = /^agent ready: node (v[0-9a-v]{52}) listening on (?:\[(.+)\]|([^:]+)):(\d+)$/.exec(line)
  if (!m) throw new Error("unreadable")
  return { nodeId: m[1]!, host: m[2] ?? m[3]!, port: Number(m[4]) }
}

/** Starts `quicmesh ...args` (an `agent start`) and resolves on its ready line. */
export const startAgentWith = (
  args: ReadonlyArray<string>,
  nodePath: string,
  options: { readonly env?: Record<string, string>; readonly readyTimeoutMs?: number } = {}
): Promise<AgentProcess> =>
  new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { cwd: ROOT, env: childEnv(options.env) })
    children.add(child)
    let stdout = ""
    let stderr = ""
    let settled = false
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res) =>
      child.on("close", (code, signal) => {
        children.delete(child)
        res({ code, signal })
      })
    )
    const fail = (why: string) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      child.kill("SIGKILL")
      reject(new Error(`agent at ${nodePath} ${why}; stdout: ${stdout} stderr: ${stderr}`))
    }
    const timer = setTimeout(() => fail("was not ready in time"), options.readyTimeoutMs ?? 45_000)
    child.stderr.setEncoding("utf8").on("data", (d: string) => {
      stderr += d
    })
    child.stdout.setEncoding("utf8").on("data", (d: string) => {
      stdout += d
      const nl = stdout.indexOf("\n")
      if (settled || nl < 0) return
      settled = true
      clearTimeout(timer)
      const readyLine = stdout.slice(0, nl)
      try {
        const ready = parseReadyLine(readyLine)
        resolvePromise({
          nodePath,
          child,
          ready,
          readyLine,
          stdout: () => stdout,
          stderr: () => stderr,
          seed: `${ready.nodeId}@127.0.0.1:${ready.port}`,
          exited
        })
      } catch {
        child.kill("SIGKILL")
        reject(new Error(`agent at ${nodePath} printed a ready line we cannot read: ${readyLine}`))
      }
    })
    child.on("close", (code) => fail(`exited (code ${code}) before it was ready`))
  })

/** Kills every child still running (SIGKILL) and removes the temporary directories. */
export const cleanup = async () => {
  const waits = [...children].map(
    (child) =>
      new Promise<void>((res) => {
        if (child.exitCode !== null || child.signalCode !== null) return res()
        child.once("close", () => res())
        child.kill("SIGKILL")
      })
  )
  await Promise.all(waits)
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true })
}

/** Runs `fs` with at most `n` in flight (the machine is small). */
export const limited = async <A>(n: number, fs: ReadonlyArray<() => Promise<A>>): Promise<Array<A>> => {
  const out: Array<A> = new Array(fs.length)
  let next = 0
  const worker = async () => {
    while (next < fs.length) {
      const i = next++
      out[i] = await fs[i]!()
    }
  }
  await Promise.all(Array.from({ length: Math.min(n, fs.length) }, worker))
  return out
}

/** XOR distance between two NodeIds' bytes, compared: negative when `a` is nearer to `target`. */
export const compareDistance = (target: Uint8Array, a: Uint8Array, b: Uint8Array) => {
  for (let i = 0; i < target.length; i++) {
    const da = target[i]! ^ a[i]!
    const db = target[i]! ^ b[i]!
    if (da !== db) return da - db
  }
  return 0
}

/** The single line a failing command must print on stderr, with no stack trace. */
export const oneErrorLine = (stderr: string) => {
  const lines = stderr.split("\n").filter((l) => l.length > 0)
  if (lines.length !== 1 || /\n\s+at /.test(stderr) || !lines[0]!.startsWith("quicmesh: "))
    throw new Error(`expected one "quicmesh: …" line on stderr, got: ${JSON.stringify(stderr)}`)
  return lines[0]!
}
