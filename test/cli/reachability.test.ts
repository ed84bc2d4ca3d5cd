/**
 * Reachability through real agents (the built program) on loopback addresses of their own:
 * an agent joined to two seeds on two other IPs sees its address confirmed by both, and
 * `agent status` shows the class and the address (JSON and the human line).
 */
import { join } from "node:path"
import { afterAll, describe, expect, it } from "@effect/vitest"
import { type AgentProcess, cleanup, cli, cliJson, startAgent, tmpDir } from "./helpers.js"

afterAll(cleanup, 30_000)

interface StatusJson {
  readonly port: number
  readonly reachability?: {
    readonly nat: string
    readonly addresses: ReadonlyArray<{ host: string; port: number }>
    readonly observers: number
  }
}

const agentOn = (host: string, name: string, seeds: ReadonlyArray<AgentProcess> = []) =>
  startAgent({
    nodePath: join(tmpDir(), name),
    host,
    seeds: seeds.map((s) => `${s.ready.nodeId}@${s.ready.host}:${s.ready.port}`)
  })

describe("quicmesh agent status: reachability", () => {
  it("peers on two IPs confirm the agent's address: status shows cone and the address", {
    timeout: 90_000
  }, async () => {
    const [s1, s2] = await Promise.all([agentOn("127.0.0.2", "s1"), agentOn("127.0.0.3", "s2")])
    const a = await agentOn("127.0.0.1", "a", [s1, s2])
    const status = async () =>
      (await cliJson<StatusJson>(["agent", "status", "--node-path", a.nodePath])).json
    let json = await status()
    for (let i = 0; i < 80 && json.reachability?.nat !== "cone"; i++) {
      await new Promise((r) => setTimeout(r, 250))
      json = await status()
    }
    expect(json.reachability).toEqual({
      nat: "cone",
      addresses: [{ host: "127.0.0.1", port: a.ready.port }],
      observers: 2,
      checkedAt: expect.any(Number)
    })
    const human = await cli(["agent", "status", "--node-path", a.nodePath])
    expect(human.code).toBe(0)
    expect(human.stdout).toContain(`, reachability cone at 127.0.0.1:${a.ready.port}`)
    // A seed alone on its IP, dialled by one node: too few peers to tell.
    const seedStatus = (await cliJson<StatusJson>(["agent", "status", "--node-path", s1.nodePath])).json
    expect(seedStatus.reachability).toMatchObject({ nat: "unknown", addresses: [] })
  })
})
