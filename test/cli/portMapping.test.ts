/**
 * Port mapping through the agent (the built program): `--port-mapping-gateway` points it at a
 * PCP/NAT-PMP gateway of our own on loopback (test/fixtures/natGateway.ts); `agent status`
 * shows the mapping, `agent stop` deletes it at the gateway; `--no-port-mapping` and
 * QUICMESH_PORT_MAPPING=false send the gateway nothing; bad values exit 2 with one line.
 */
import { join } from "node:path"
import { afterAll, describe, expect, it } from "@effect/vitest"
import { type NatGateway, startNatGateway } from "../fixtures/natGateway.js"
import { cleanup, cli, cliJson, oneErrorLine, startAgent, tmpDir } from "./helpers.js"

afterAll(cleanup, 30_000)

interface StatusJson {
  readonly port: number
  readonly portMapping?: { host: string; port: number; protocol: string; expiresAt: number }
}

const startWith = (
  gw: NatGateway,
  name: string,
  extra: ReadonlyArray<string>,
  env: Record<string, string> = {}
) =>
  startAgent({
    nodePath: join(tmpDir(), name),
    args: extra,
    env: { QUICMESH_PORT_MAPPING_GATEWAY: `127.0.0.1:${gw.port}`, ...env }
  })

const status = async (dir: string) =>
  (await cliJson<StatusJson>(["agent", "status", "--node-path", dir])).json

describe("quicmesh agent: port mapping", () => {
  it("bad values exit 2 with one line", { timeout: 60_000 }, async () => {
    const dir = join(tmpDir(), "bad")
    const [flag, env, gatewayEnv] = await Promise.all([
      cli(["agent", "start", "--node-path", dir, "--port-mapping-gateway", "router"]),
      cli(["agent", "start", "--node-path", dir], { env: { QUICMESH_PORT_MAPPING: "maybe" } }),
      cli(["agent", "start", "--node-path", dir], {
        env: { QUICMESH_PORT_MAPPING_GATEWAY: "10.0.0.1:99999" }
      })
    ])
    for (const r of [flag, env, gatewayEnv]) expect(r.code).toBe(2)
    expect(oneErrorLine(flag.stderr)).toBe(
      'quicmesh: invalid gateway "router": expected an IPv4 address, optionally with :PORT'
    )
    expect(oneErrorLine(env.stderr)).toBe(
      'quicmesh: invalid QUICMESH_PORT_MAPPING "maybe": must be true or false'
    )
    expect(oneErrorLine(gatewayEnv.stderr)).toBe(
      'quicmesh: invalid gateway "10.0.0.1:99999": expected an IPv4 address, optionally with :PORT (from QUICMESH_PORT_MAPPING_GATEWAY)'
    )
  })

  it("status shows the mapping the gateway granted; agent stop deletes it", { timeout: 90_000 }, async () => {
    const gw = await startNatGateway({ settings: { externalPort: () => 40000 } })
    try {
      const agent = await startWith(gw, "mapped", [])
      let json = await status(agent.nodePath)
      for (let i = 0; i < 40 && json.portMapping === undefined; i++) {
        await new Promise((r) => setTimeout(r, 250))
        json = await status(agent.nodePath)
      }
      expect(json.portMapping).toMatchObject({ host: "198.51.100.7", port: 40000, protocol: "pcp" })
      expect(json.portMapping!.expiresAt).toBeGreaterThan(Date.now() + 7000_000)
      expect(gw.mappings.get(`127.0.0.1:${agent.ready.port}`)).toMatchObject({
        protocol: "pcp",
        externalPort: 40000
      })
      const human = await cli(["agent", "status", "--node-path", agent.nodePath])
      expect(human.stdout).toContain(", port mapped at 198.51.100.7:40000 (pcp until ")
      expect((await cli(["agent", "stop", "--node-path", agent.nodePath])).code).toBe(0)
      expect(gw.mappings.size).toBe(0)
      expect(gw.requests.at(-1)!.bytes.readUInt32BE(4)).toBe(0) // lifetime 0: delete
    } finally {
      await gw.close()
    }
  })

  it("--no-port-mapping and QUICMESH_PORT_MAPPING=false: the gateway hears nothing", {
    timeout: 90_000
  }, async () => {
    const gw = await startNatGateway()
    try {
      const byFlag = await startWith(gw, "off-flag", ["--no-port-mapping"])
      const byEnv = await startWith(gw, "off-env", [], { QUICMESH_PORT_MAPPING: "false" })
      // Control: an agent with port mapping on, started after them, is heard and mapped.
      const on = await startWith(gw, "on", [])
      for (let i = 0; i < 40 && (await status(on.nodePath)).portMapping === undefined; i++)
        await new Promise((r) => setTimeout(r, 250))
      expect((await status(on.nodePath)).portMapping).toBeDefined()
      expect(new Set(gw.requests.map((r) => r.from.port)).size).toBe(1) // one client socket: `on`'s
      for (const agent of [byFlag, byEnv]) expect((await status(agent.nodePath)).portMapping).toBeUndefined()
    } finally {
      await gw.close()
    }
  })
})
