/**
 * One agent's life as a process: environment variables and flags, the node path lock,
 * "no agent running", identity without an agent, `agent stop`, help and version.
 */
import { createSocket } from "node:dgram"
import { join } from "node:path"
import { afterAll, describe, expect, it } from "@effect/vitest"
import { cleanup, cli, cliJson, oneErrorLine, startAgentWith, tmpDir } from "./helpers.js"

afterAll(cleanup, 30_000)

/** A UDP port that was free a moment ago. */
const freePort = () =>
  new Promise<number>((res) => {
    const s = createSocket("udp4")
    s.bind(0, "127.0.0.1", () => {
      const { port } = s.address()
      s.close(() => res(port))
    })
  })

describe("quicmesh agent", () => {
  it("status with no agent exits 1 with 'no agent running at <path>'; identity works without one", {
    timeout: 60_000
  }, async () => {
    const dir = join(tmpDir(), "idle")
    const [status, identity, again] = await Promise.all([
      cli(["agent", "status", "--node-path", dir]),
      cliJson<{ nodeId: string }>(["identity", "--node-path", join(tmpDir(), "id")]),
      cli(["nodes", "getall", "--node-path", dir])
    ])
    expect(status.code).toBe(1)
    expect(status.stdout).toBe("")
    expect(oneErrorLine(status.stderr)).toBe(`quicmesh: no agent running at ${dir}`)
    expect(again.code).toBe(1)
    expect(oneErrorLine(again.stderr)).toBe(`quicmesh: no agent running at ${dir}`)
    expect(identity.code).toBe(0)
    expect(Object.keys(identity.json)).toEqual(["nodeId"])
    expect(identity.json.nodeId).toMatch(/^v[0-9a-v]{52}$/)
  })

  it("environment variables are honoured and flags win over them", { timeout: 90_000 }, async () => {
    const dir = join(tmpDir(), "env")
    // Node path, host and format from the environment; the bad QUICMESH_PORT loses to --port.
    const x = await startAgentWith(["agent", "start", "--port", "0"], dir, {
      env: {
        QUICMESH_NODE_PATH: dir,
        QUICMESH_HOST: "127.0.0.1",
        QUICMESH_FORMAT: "json",
        QUICMESH_PORT: "not-a-port",
        QUICMESH_RECEIVE_BUFFER_SIZE: "262144"
      }
    })
    expect(x.ready.host).toBe("127.0.0.1")
    expect(x.ready.port).toBeGreaterThan(0)

    // Port and seed nodes from the environment, node path from the flag.
    const port = await freePort()
    const yDir = join(tmpDir(), "env-y")
    const y = await startAgentWith(["agent", "start", "--node-path", yDir, "--format", "json"], yDir, {
      env: { QUICMESH_HOST: "127.0.0.1", QUICMESH_PORT: String(port), QUICMESH_SEED_NODES: x.seed }
    })
    expect(y.ready.port).toBe(port)

    const env = { QUICMESH_NODE_PATH: dir, QUICMESH_FORMAT: "json" }
    const [asJson, asHuman, identity] = await Promise.all([
      cli(["agent", "status"], { env }),
      cli(["agent", "status", "--format", "human"], { env }),
      cli(["identity"], { env })
    ])
    expect(JSON.parse(asJson.stdout)).toMatchObject({
      status: "LIVE",
      nodeId: x.ready.nodeId,
      transport: { receiveBufferRequested: 262144 }
    })
    expect(asHuman.stdout).toMatch(
      new RegExp(`^agent LIVE at ${dir}: node ${x.ready.nodeId} on 127\\.0\\.0\\.1:`)
    )
    expect(JSON.parse(identity.stdout)).toEqual({ nodeId: x.ready.nodeId })

    // Y joined through the seed it was given in QUICMESH_SEED_NODES.
    let known: ReadonlyArray<string> = []
    for (let i = 0; i < 40 && !known.includes(x.ready.nodeId); i++) {
      if (i > 0) await new Promise((res) => setTimeout(res, 250))
      const r = await cliJson<ReadonlyArray<{ nodeId: string }>>(["nodes", "getall", "--node-path", yDir])
      known = r.json.map((n) => n.nodeId)
    }
    expect(known).toContain(x.ready.nodeId)

    const stops = await Promise.all([
      cli(["agent", "stop", "--node-path", dir]),
      cli(["agent", "stop", "--node-path", yDir, "--format", "json"])
    ])
    expect(stops.map((s) => s.code)).toEqual([0, 0])
    expect(stops[0].stdout).toBe(`agent at ${dir} stopped\n`)
    expect(JSON.parse(stops[1].stdout)).toEqual({ stopped: true })
    expect(await x.exited).toEqual({ code: 0, signal: null })
    expect(await y.exited).toEqual({ code: 0, signal: null })
  })

  it("human ready line; unreachable seed retried; a second agent on the same node path fails fast with exit 1, the first keeps running", {
    timeout: 60_000
  }, async () => {
    const dir = join(tmpDir(), "locked")
    // Its seed is unreachable (nothing listens on port 9): logged and retried, never fatal.
    const deadSeed = "vl1a6qrjsjn9l1dm4njl9k719kanc83ga9le58abbl42t4rua7b30@127.0.0.1:9"
    const first = await startAgentWith(
      ["agent", "start", "--node-path", dir, "--host", "127.0.0.1", "--port", "0", "--seed-nodes", deadSeed],
      dir,
      { env: { QUICMESH_CONNECTION_CONNECT_TIMEOUT_TIME: "500 millis" } }
    )
    expect(first.readyLine).toBe(
      `agent ready: node ${first.ready.nodeId} listening on 127.0.0.1:${first.ready.port}`
    )
    const second = await cli(["agent", "start", "--node-path", dir, "--host", "127.0.0.1", "--port", "0"])
    expect(second.code).toBe(1)
    expect(second.stdout).toBe("")
    expect(oneErrorLine(second.stderr)).toBe(
      `quicmesh: another agent (pid ${first.child.pid}) is running at ${dir}`
    )
    const status = await cliJson(["agent", "status", "--node-path", dir])
    expect(status.code).toBe(0)
    expect(status.json).toMatchObject({ status: "LIVE", nodeId: first.ready.nodeId, port: first.ready.port })
    expect(first.child.exitCode).toBe(null)
    for (let i = 0; i < 60 && (first.stderr().match(/will retry/g) ?? []).length < 2; i++)
      await new Promise((res) => setTimeout(res, 250))
    expect(
      (first.stderr().match(/joining the network failed, will retry: .*127\.0\.0\.1:9/g) ?? []).length
    ).toBeGreaterThanOrEqual(2)
    expect(first.child.exitCode).toBe(null)
  })

  it("--help, COMMAND --help and --version", { timeout: 60_000 }, async () => {
    const [help, pingHelp, version] = await Promise.all([
      cli(["--help"]),
      cli(["nodes", "ping", "--help"]),
      cli(["--version"])
    ])
    expect(help.code).toBe(0)
    for (const cmd of ["agent start", "agent status", "agent stop", "nodes find", "nodes ping", "identity"])
      expect(help.stdout).toContain(cmd)
    expect(pingHelp.code).toBe(0)
    expect(pingHelp.stdout).toContain("--address")
    expect(pingHelp.stdout).toContain("--timeout")
    expect(version.code).toBe(0)
    expect(version.stdout.trim()).toBe("0.1.0")
  })
})
