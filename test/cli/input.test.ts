/**
 * Bad usage and bad input: exit code 2, nothing on stdout, and one line on stderr naming
 * the bad value, never a stack trace or a help dump. None of these needs a running agent
 * (the input is checked before the agent is asked, and before an agent starts).
 */
import { join } from "node:path"
import { afterAll, describe, expect, it } from "@effect/vitest"
import { type CliResult, cleanup, cli, limited, oneErrorLine, tmpDir } from "./helpers.js"

afterAll(cleanup, 30_000)

const NODE_ID = "vl1a6qrjsjn9l1dm4njl9k719kanc83ga9le58abbl42t4rua7b30"

interface Case {
  readonly name: string
  readonly args: ReadonlyArray<string>
  readonly env?: Record<string, string>
  /** What the one stderr line must contain. */
  readonly says: ReadonlyArray<string>
}

const dir = join(tmpDir(), "node")
const start = ["agent", "start", "--node-path", dir, "--host", "127.0.0.1"]
/** These fail after taking the lock, so each gets a node path of its own. */
const startOwn = () => ["agent", "start", "--node-path", join(tmpDir(), "node"), "--host", "127.0.0.1"]

const cases: ReadonlyArray<Case> = [
  { name: "port 99999", args: [...start, "--port", "99999"], says: ['invalid port "99999"', "0 to 65535"] },
  {
    name: "malformed seed list",
    args: [...start, "--seed-nodes", `${NODE_ID}@127.0.0.1:1;nonsense`],
    says: ['invalid seed node "nonsense"', "NODEID@HOST:PORT"]
  },
  { name: "unknown format", args: ["agent", "status", "--format", "xml"], says: ['invalid format "xml"'] },
  { name: "bad NodeId", args: ["nodes", "find", "vnotanodeid"], says: ['invalid NodeId "vnotanodeid"'] },
  {
    name: "bad address",
    args: ["nodes", "ping", NODE_ID, "--address", "127.0.0.1"],
    says: ['invalid address "127.0.0.1"', "HOST:PORT"]
  },
  {
    name: "bad timeout",
    args: ["nodes", "ping", NODE_ID, "--timeout", "soon"],
    says: ['invalid timeout "soon"', "milliseconds"]
  },
  { name: "unknown option", args: ["agent", "status", "--bogus"], says: ["--bogus"] },
  { name: "missing argument", args: ["nodes", "find"], says: ["Missing argument <NODEID>"] },
  { name: "unknown command", args: ["frob"], says: ['unknown command "frob"'] },
  { name: "unknown subcommand", args: ["nodes", "frob"], says: ['unknown nodes command "frob"'] },
  {
    name: "sim with an unknown option",
    args: ["sim", "--nodes", "5", "--lookups", "1", "--seed", "1", "--bogus"],
    says: ["unknown argument", "--bogus"]
  },
  {
    name: "sim with a report in a folder that does not exist (refused before the run)",
    args: [
      "sim",
      "--nodes",
      "5",
      "--lookups",
      "1",
      "--seed",
      "1",
      "--report",
      "/nonexistent-quicmesh/r.html"
    ],
    says: ["cannot write the --report file", "the folder /nonexistent-quicmesh does not exist"]
  },
  {
    name: "sim with a report path that is a folder",
    args: ["sim", "--nodes", "5", "--lookups", "1", "--seed", "1", "--report", tmpDir()],
    says: ["cannot write the --report file", "is a folder"]
  },
  {
    name: "QUICMESH_PORT=abc",
    args: start,
    env: { QUICMESH_PORT: "abc" },
    says: ['invalid port "abc" (from QUICMESH_PORT)']
  },
  {
    name: "bad QUICMESH_VERBOSE",
    args: start,
    env: { QUICMESH_VERBOSE: "loud" },
    says: ["invalid QUICMESH_VERBOSE", '"loud"']
  },
  {
    name: "bad manager tuning QUICMESH_CONNECTION_IDLE_TIMEOUT_TIME",
    args: [...startOwn(), "--port", "0"],
    env: { QUICMESH_CONNECTION_IDLE_TIMEOUT_TIME: "forever" },
    says: ["invalid QUICMESH_CONNECTION_IDLE_TIMEOUT_TIME", '"forever"']
  },
  {
    name: "bad QUICMESH_RECEIVE_BUFFER_SIZE",
    args: [...startOwn(), "--port", "0"],
    env: { QUICMESH_RECEIVE_BUFFER_SIZE: "-1" },
    says: ["invalid QUICMESH_RECEIVE_BUFFER_SIZE", "0 or more"]
  }
]

describe("bad input exits 2 with one line naming the bad value", () => {
  let results: ReadonlyArray<CliResult> = []

  it("runs every case", { timeout: 120_000 }, async () => {
    results = await limited(
      3,
      cases.map((c) => () => cli(c.args, c.env ? { env: c.env } : {}))
    )
    expect(results.length).toBe(cases.length)
  })

  for (const [i, c] of cases.entries())
    it(c.name, () => {
      const r = results[i]!
      expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 2, stdout: "" })
      const line = oneErrorLine(r.stderr)
      for (const s of c.says) expect(line).toContain(s)
    })

  it("no bad start created or locked the node path's agent files", async () => {
    const status = await cli(["agent", "status", "--node-path", dir])
    expect(status.code).toBe(1)
    expect(oneErrorLine(status.stderr)).toBe(`quicmesh: no agent running at ${dir}`)
  })
})
