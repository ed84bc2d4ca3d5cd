/**
 * `agent stop` over and over: 50 start/stop cycles of real agents, several node paths at once.
 * Thirty are plain; twenty belong to agents joined to two peers, and half of those are stopped
 * right after a restart (the restarted agent is dialling its peers back when the stop arrives).
 * Each `agent stop` must exit 0 with its one line and nothing else, and each agent exit 0.
 */
import { join } from "node:path"
import { afterAll, describe, expect, it } from "@effect/vitest"
import { type AgentProcess, cleanup, cli, limited, startAgent, tmpDir } from "./helpers.js"

afterAll(cleanup, 30_000)

/**
 * Resolves once the agent has logged that it joined the network through its seeds (a join
 * takes a few seconds, longer beside the rest of the suite on two cores: up to 60 s here).
 */
const joined = async (agent: AgentProcess) => {
  for (let i = 0; i < 1200 && !agent.stderr().includes("joined the network"); i++)
    await new Promise((res) => setTimeout(res, 50))
  expect(agent.stderr()).toContain("joined the network")
}

/** `agent stop` on the agent's node path: exit 0, its line and nothing else; the agent exits 0. */
const stop = async (agent: AgentProcess) => {
  const r = await cli(["agent", "stop", "--node-path", agent.nodePath], { timeoutMs: 60_000 })
  expect({ code: r.code, signal: r.signal, stdout: r.stdout, stderr: r.stderr }).toEqual({
    code: 0,
    signal: null,
    stdout: `agent at ${agent.nodePath} stopped\n`,
    stderr: ""
  })
  expect(await agent.exited).toEqual({ code: 0, signal: null })
}

describe("quicmesh agent stop, 50 times", () => {
  it("exits 0 and prints its line every time, also right after a restart with peers", {
    timeout: 300_000
  }, async () => {
    const started = performance.now()
    const p1 = await startAgent()
    const p2 = await startAgent({ seeds: [p1.seed] })
    const seeds = [p1.seed, p2.seed]
    const cycles = { plain: 0, joined: 0, afterRestart: 0 }
    // Three node paths of 10 plain cycles each.
    const plain = (n: number) => async () => {
      const nodePath = join(tmpDir(), `plain-${n}`)
      for (let i = 0; i < 10; i++) {
        await stop(await startAgent({ nodePath }))
        cycles.plain++
      }
    }
    // Two node paths of 5 rounds: joined to both peers and stopped, then restarted (its table
    // holds the peers, which it dials back) and stopped at once.
    const withPeers = (n: number) => async () => {
      const nodePath = join(tmpDir(), `peers-${n}`)
      for (let round = 0; round < 5; round++) {
        const first = await startAgent({ nodePath, seeds })
        await joined(first)
        await stop(first)
        cycles.joined++
        await stop(await startAgent({ nodePath, seeds }))
        cycles.afterRestart++
      }
    }
    await limited(5, [withPeers(0), withPeers(1), plain(0), plain(1), plain(2)])
    expect(cycles).toEqual({ plain: 30, joined: 10, afterRestart: 10 })
    console.log(`50 agent start/stop cycles in ${((performance.now() - started) / 1000).toFixed(1)} s`)
  })
})
