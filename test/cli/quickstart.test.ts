/**
 * The README quickstart as real processes on loopback: a seed agent, four agents joining
 * through it and one more that nobody but B knows of; then find, ping, connections, closest,
 * a killed peer, a restart on the same node path, and the control socket's permissions.
 */
import { statSync } from "node:fs"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Either } from "effect"
import * as NodeId from "../../src/services/NodeId.js"
import {
  type AgentProcess,
  cleanup,
  cli,
  cliJson,
  compareDistance,
  oneErrorLine,
  startAgent
} from "./helpers.js"

interface NodeRow {
  readonly nodeId: string
  readonly host: string
  readonly port: number
  readonly bucketIndex: number
  readonly lastUpdated: number
}
interface ConnectionRow {
  readonly nodeId: string
  readonly host: string
  readonly port: number
  readonly hostname: string | null
  readonly usageCount: number
  readonly timeout: number | null
}

const bytes = (id: string) => Either.getOrThrow(NodeId.decode(id))

let seed: AgentProcess
let a: AgentProcess
let b: AgentProcess
let c: AgentProcess
let d: AgentProcess
/** Joins nobody; only B is told its address (`nodes add`), so A can only learn it through the network. */
let z: AgentProcess

const np = (agent: AgentProcess) => ["--node-path", agent.nodePath]

beforeAll(async () => {
  seed = await startAgent()
  ;[a, b, c, d, z] = await Promise.all([
    startAgent({ seeds: [seed.seed] }),
    startAgent({ seeds: [seed.seed] }),
    startAgent({ seeds: [seed.seed] }),
    startAgent({ seeds: [seed.seed] }),
    startAgent()
  ])
}, 120_000)

afterAll(cleanup, 30_000)

describe("quickstart network", () => {
  it("each agent prints one JSON ready line and joins through the seed", { timeout: 60_000 }, async () => {
    for (const agent of [seed, a, b, c, d, z]) {
      expect(Object.keys(agent.ready).sort()).toEqual(["host", "nodeId", "port"])
      expect(agent.ready.host).toBe("127.0.0.1")
      expect(agent.ready.port).toBeGreaterThan(0)
      expect(Either.isRight(NodeId.decode(agent.ready.nodeId))).toBe(true)
    }
    const joined = [a, b, c, d].map((x) => x.ready.nodeId).sort()
    // Joining runs in the background after the ready line: wait until the seed knows all four.
    let seedKnows: ReadonlyArray<string> = []
    for (let i = 0; i < 40; i++) {
      const r = await cliJson<ReadonlyArray<NodeRow>>(["nodes", "getall", ...np(seed)])
      expect(r.code).toBe(0)
      seedKnows = r.json.map((n) => n.nodeId)
      if (joined.every((id) => seedKnows.includes(id))) break
      await new Promise((res) => setTimeout(res, 250))
    }
    expect(seedKnows).toEqual(expect.arrayContaining(joined))
    expect(seedKnows).not.toContain(z.ready.nodeId)

    const [status, human] = await Promise.all([
      cliJson<Record<string, unknown>>(["agent", "status", ...np(a)]),
      cli(["agent", "status", ...np(a)])
    ])
    expect(status.code).toBe(0)
    expect(status.json).toMatchObject({
      status: "LIVE",
      nodeId: a.ready.nodeId,
      host: "127.0.0.1",
      port: a.ready.port
    })
    expect(status.json.connections).toBeGreaterThanOrEqual(1)
    expect(status.json.nodes).toBeGreaterThanOrEqual(1)
    expect(human.code).toBe(0)
    expect(human.stdout).toContain(`LIVE at ${a.nodePath}`)
    expect(human.stdout).toContain(a.ready.nodeId)
  })

  it("A finds Z, which it never met and only B knows, then pings it and lists it in connections", {
    timeout: 60_000
  }, async () => {
    const [added, before] = await Promise.all([
      cliJson(["nodes", "add", z.ready.nodeId, `127.0.0.1:${z.ready.port}`, ...np(b)]),
      cliJson<ReadonlyArray<NodeRow>>(["nodes", "getall", ...np(a)])
    ])
    expect(added.code).toBe(0)
    expect(before.json.map((n) => n.nodeId)).not.toContain(z.ready.nodeId)

    const found = await cliJson(["nodes", "find", z.ready.nodeId, "--timeout", "20000", ...np(a)])
    expect(found.code).toBe(0)
    expect(found.json).toEqual({
      success: true,
      nodeId: z.ready.nodeId,
      address: { host: "127.0.0.1", port: z.ready.port }
    })

    const ping = await cliJson(["nodes", "ping", z.ready.nodeId, "--timeout", "10000", ...np(a)])
    expect(ping.json).toEqual({ success: true })
    expect(ping.code).toBe(0)

    const [conns, human] = await Promise.all([
      cliJson<ReadonlyArray<ConnectionRow>>(["nodes", "connections", ...np(a)]),
      cli(["nodes", "connections", ...np(a)])
    ])
    expect(conns.code).toBe(0)
    const toZ = conns.json.find((x) => x.nodeId === z.ready.nodeId)
    expect(toZ).toMatchObject({ host: "127.0.0.1", port: z.ready.port })
    expect(Object.keys(toZ!)).toEqual(
      expect.arrayContaining(["nodeId", "host", "port", "hostname", "usageCount", "timeout"])
    )
    expect(human.stdout.split("\n")[0]).toMatch(/^NODE ID\s+ADDRESS\s+HOSTNAME/)
    expect(human.stdout).toContain(`127.0.0.1:${z.ready.port}`)
  })

  it("nodes find of an unknown NodeId says not found and exits 1", { timeout: 60_000 }, async () => {
    const nobody = NodeId.encode(NodeId.unsafeFromBytes(new Uint8Array(32).fill(7)))
    const r = await cliJson(["nodes", "find", nobody, "--timeout", "3000", ...np(a)])
    expect(r.json).toEqual({ success: false, nodeId: nobody })
    expect(r.code).toBe(1)
    expect(oneErrorLine(r.stderr)).toContain("not found")
  })

  it("nodes closest lists known nodes nearest first, at most --limit", { timeout: 60_000 }, async () => {
    const target = z.ready.nodeId
    const [all, r] = await Promise.all([
      cliJson<ReadonlyArray<NodeRow>>(["nodes", "getall", ...np(seed)]),
      cliJson<ReadonlyArray<NodeRow>>(["nodes", "closest", target, "--limit", "3", ...np(seed)])
    ])
    expect(r.code).toBe(0)
    expect(r.json.length).toBe(Math.min(3, all.json.length))
    const t = bytes(target)
    const expected = [...all.json]
      .sort((x, y) => compareDistance(t, bytes(x.nodeId), bytes(y.nodeId)))
      .slice(0, 3)
      .map((n) => n.nodeId)
    expect(r.json.map((n) => n.nodeId)).toEqual(expected)
    for (const n of r.json)
      expect(Object.keys(n).sort()).toEqual(["bucketIndex", "host", "lastUpdated", "nodeId", "port"])
  })

  it("ping with a mismatched --address fails: that address answers as another node", {
    timeout: 60_000
  }, async () => {
    // C is alive at this address, but it is not Z.
    const r = await cliJson([
      "nodes",
      "ping",
      z.ready.nodeId,
      "--address",
      `127.0.0.1:${c.ready.port}`,
      "--timeout",
      "5000",
      ...np(a)
    ])
    expect(r.json).toEqual({ success: false })
    expect(r.code).toBe(1)
    expect(oneErrorLine(r.stderr)).toContain(z.ready.nodeId)
  })

  it("a peer killed with SIGKILL reads unreachable within the ping timeout", {
    timeout: 60_000
  }, async () => {
    // A holds a live connection to D first: the stale connection must not make ping lie.
    const alive = await cliJson(["nodes", "ping", d.ready.nodeId, "--timeout", "10000", ...np(a)])
    expect(alive.json).toEqual({ success: true })
    // The process start-up cost on this machine, measured on a command that does no waiting.
    const baseline = await cli(["agent", "status", ...np(a)])
    d.child.kill("SIGKILL")
    expect((await d.exited).signal).toBe("SIGKILL")
    const timeout = 2000
    const r = await cliJson(["nodes", "ping", d.ready.nodeId, "--timeout", String(timeout), ...np(a)])
    expect(r.json).toEqual({ success: false })
    expect(r.code).toBe(1)
    expect(r.ms).toBeLessThan(timeout + baseline.ms + 2500)
  })

  it("an agent restarted on the same node path keeps its NodeId and its NodeGraph", {
    timeout: 90_000
  }, async () => {
    const before = await cliJson<ReadonlyArray<NodeRow>>(["nodes", "getall", ...np(c)])
    expect(before.json.map((n) => n.nodeId)).toContain(seed.ready.nodeId)
    const stop = await cli(["agent", "stop", ...np(c)])
    expect(stop.code).toBe(0)
    // `agent stop` returns once the agent has exited, cleanly.
    expect(await c.exited).toEqual({ code: 0, signal: null })
    expect(c.stdout().trim().split("\n")).toEqual([c.readyLine])

    const again = await startAgent({ nodePath: c.nodePath })
    expect(again.ready.nodeId).toBe(c.ready.nodeId)
    const [after, identity] = await Promise.all([
      cliJson<ReadonlyArray<NodeRow>>(["nodes", "getall", ...np(again)]),
      cliJson(["identity", ...np(again)])
    ])
    expect(after.json.map((n) => n.nodeId)).toEqual(expect.arrayContaining(before.json.map((n) => n.nodeId)))
    expect(identity.json).toEqual({ nodeId: c.ready.nodeId })
    c = again
  })

  it("the node path is 0700 and the control socket 0600", () => {
    for (const agent of [seed, a, b]) {
      expect(statSync(agent.nodePath).mode & 0o777).toBe(0o700)
      const sock = statSync(`${agent.nodePath}/agent.sock`)
      expect(sock.isSocket()).toBe(true)
      expect(sock.mode & 0o777).toBe(0o600)
    }
  })

  it("SIGTERM and SIGINT stop agents cleanly: exit 0, socket and lock removed", {
    timeout: 60_000
  }, async () => {
    const t0 = performance.now()
    a.child.kill("SIGTERM")
    b.child.kill("SIGINT")
    expect(await a.exited).toEqual({ code: 0, signal: null })
    expect(await b.exited).toEqual({ code: 0, signal: null })
    expect(performance.now() - t0).toBeLessThan(10_000)
    for (const agent of [a, b]) {
      expect(() => statSync(`${agent.nodePath}/agent.sock`)).toThrow()
      expect(() => statSync(`${agent.nodePath}/agent.lock`)).toThrow()
      expect(agent.stderr()).toContain("agent stopping")
      expect(agent.stderr()).not.toMatch(/\n\s+at /)
    }
    const gone = await cli(["agent", "status", ...np(a)])
    expect(gone.code).toBe(1)
    expect(oneErrorLine(gone.stderr)).toBe(`quicmesh: no agent running at ${a.nodePath}`)
  })
})
