/**
 * The examples in examples/ run as a user runs them (`npx tsx examples/<name>.ts`, importing
 * "quicmesh" through the repository's tsconfig paths), exit 0 by themselves and print what
 * they claim; the README quotes each of them whole.
 */
import { spawnSync } from "node:child_process"
import { readFileSync } from "node:fs"
import { join } from "node:path"
import { describe, expect, it } from "vitest"

const root = join(import.meta.dirname, "..")
const readme = readFileSync(join(root, "README.md"), "utf8")
const tsx = join(root, "node_modules", ".bin", "tsx")

/** Runs examples/`name`.ts to its end; its exit code and output. */
const runExample = (name: string) => {
  const result = spawnSync(tsx, [join("examples", `${name}.ts`)], {
    cwd: root,
    encoding: "utf8",
    timeout: 90_000,
    env: { ...process.env, NO_COLOR: "1" }
  })
  return { status: result.status, stdout: result.stdout, stderr: result.stderr }
}

describe("examples", () => {
  it("notes.ts: C sends notes to B by NodeId, A watches them arrive and lists them; an empty note is refused typed", () => {
    const { status, stdout, stderr } = runExample("notes")
    expect(status, stderr).toBe(0)
    for (const line of [
      "B and C joined through A",
      "B got note #1 from C: hello B, this is C",
      "C sent note #1 to B",
      "C sent note #2 to B",
      "A watching B: #1 from C: hello B, this is C",
      "A watching B: #2 from C: see you at the next hop",
      "C sent an empty note to B: refused with EmptyNoteError",
      "B's notes (asked by A): #1 from C, #2 from C"
    ])
      expect(stdout).toContain(line)
  }, 120_000)

  it("fileTransfer.ts: 3 MiB over a raw stream with progress, its SHA-256 checked on arrival", () => {
    const { status, stdout, stderr } = runExample("fileTransfer")
    expect(status, stderr).toBe(0)
    const sha = /A: sending 3\.0 MiB, SHA-256 ([0-9a-f]{64})/.exec(stdout)?.[1]
    expect(sha).toBeDefined()
    for (const percent of [25, 50, 75, 100]) {
      expect(stdout).toMatch(new RegExp(`A sent [0-9.]+ MiB of 3\\.0 MiB \\(${percent}%\\)`))
      expect(stdout).toMatch(new RegExp(`B received [0-9.]+ MiB of 3\\.0 MiB \\(${percent}%\\)`))
    }
    expect(stdout).toContain(`B: SHA-256 ${sha} matches`)
    expect(stdout).toContain(`A: B answered "ok ${sha}"`)
    expect(stdout).toContain("done: 3.0 MiB arrived intact")
  }, 120_000)
})

describe("README", () => {
  for (const name of ["notes", "fileTransfer"])
    it(`quotes examples/${name}.ts whole`, () => {
      const source = readFileSync(join(root, "examples", `${name}.ts`), "utf8")
      const fence = "```"
      expect(readme).toContain(`${fence}ts\n${source}${fence}\n`)
    })
})
