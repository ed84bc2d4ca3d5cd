/**
 * `quicmesh sim` as a user runs it: the built program, which runs the simulation in a child
 * node with larger semi-spaces. The JSON it prints, the report it writes, its determinism
 * across processes, and an interrupt that leaves no process behind.
 */
import { execFileSync, spawn } from "node:child_process"
import { readFileSync } from "node:fs"
import { join } from "node:path"
import { afterAll, describe, expect, it } from "@effect/vitest"
import { BIN, cleanup, cli, ROOT, tmpDir } from "./helpers.js"

const MARKER = "--seed 918273"

/** Processes on the machine whose command line holds the interrupt test's marker. */
const marked = () =>
  execFileSync("ps", ["-eo", "pid,args"], { encoding: "utf8" })
    .split("\n")
    .filter((line) => line.includes(MARKER))
    .map((line) => ({ pid: Number.parseInt(line.trim(), 10), args: line.trim() }))

afterAll(async () => {
  // A child left running by a failure of the interrupt test goes too.
  for (const { pid } of marked()) process.kill(pid, "SIGKILL")
  await cleanup()
}, 30_000)

interface SimJson {
  readonly joined: number
  readonly lookups: { readonly total: number; readonly succeeded: number; readonly successRate: number }
  readonly traceHash: string
  readonly ok: boolean
  readonly replay: string
}

const run = (seed: number, extra: ReadonlyArray<string> = []) =>
  cli(["sim", "--nodes", "40", "--lookups", "10", "--seed", String(seed), "--format", "json", ...extra], {
    timeoutMs: 120_000
  })

describe("quicmesh sim", () => {
  it("prints one JSON report, writes the HTML report, and replays to the same trace", {
    timeout: 240_000
  }, async () => {
    const file = join(tmpDir(), "report.html")
    const [first, again, other] = await Promise.all([run(5, ["--report", file]), run(5), run(6)])
    expect(first.code).toBe(0)
    const report = JSON.parse(first.stdout) as SimJson
    expect(report.ok).toBe(true)
    expect(report.joined).toBe(40)
    expect(report.lookups).toEqual({ total: 10, succeeded: 10, successRate: 1 })
    expect(report.replay).toContain("--seed 5")
    // Progress on stderr, the report's path after it; stdout holds only the JSON.
    expect(first.stderr).toContain("build + join: 40/40")
    expect(first.stderr).toContain(`report written to ${file}`)
    const html = readFileSync(file, "utf8")
    expect(html.startsWith("<!doctype html>")).toBe(true)
    expect(html).toContain("<svg")
    // Another process, the same seed: the same trace; another seed: another trace.
    expect((JSON.parse(again.stdout) as SimJson).traceHash).toBe(report.traceHash)
    expect((JSON.parse(other.stdout) as SimJson).traceHash).not.toBe(report.traceHash)
  })

  it("SIGINT during the build stops the run and its child: no process is left", {
    timeout: 120_000
  }, async () => {
    const child = spawn(
      process.execPath,
      [BIN, "sim", "--nodes", "5000", "--lookups", "10", ...MARKER.split(" ")],
      {
        cwd: ROOT,
        stdio: ["ignore", "pipe", "pipe"]
      }
    )
    let stderr = ""
    const progressed = new Promise<void>((resolve) =>
      child.stderr.setEncoding("utf8").on("data", (d: string) => {
        stderr += d
        if (stderr.includes("build + join:")) resolve()
      })
    )
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      child.on("exit", (code, signal) => resolve({ code, signal }))
    )
    await progressed
    // The simulating child is running beside its parent.
    expect(marked().length).toBe(2)
    child.kill("SIGINT")
    const exit = await exited
    expect(exit.code === 130 || exit.signal === "SIGINT").toBe(true)
    expect(marked()).toEqual([])
  })
})
