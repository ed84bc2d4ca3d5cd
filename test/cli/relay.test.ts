/**
 * `agent start --relay` through the built program: the agent serves as a relay (its status
 * shows the relay's figures, JSON and human line), QUICMESH_RELAY does the same, a bad value
 * is one line and exit 2, and an agent started without it shows no relay figures.
 */
import { join } from "node:path"
import { afterAll, describe, expect, it } from "@effect/vitest"
import { cleanup, cli, cliJson, startAgent, tmpDir } from "./helpers.js"

afterAll(cleanup, 30_000)

interface StatusJson {
  readonly relay?: {
    readonly reservations: ReadonlyArray<string>
    readonly relayedConnections: number
    readonly server?: {
      readonly reservations: number
      readonly circuits: number
      readonly bytesForwarded: number
      readonly refused: Record<string, number>
    }
  }
}

const status = async (nodePath: string) =>
  (await cliJson<StatusJson>(["agent", "status", "--node-path", nodePath])).json

describe("quicmesh agent start --relay", () => {
  it("serves as a relay: status shows the relay's figures; without the flag, none", {
    timeout: 60_000
  }, async () => {
    const relay = await startAgent({ nodePath: join(tmpDir(), "relay"), args: ["--relay"] })
    const plain = await startAgent({ nodePath: join(tmpDir(), "plain") })
    const fromEnv = await startAgent({ nodePath: join(tmpDir(), "env"), env: { QUICMESH_RELAY: "true" } })
    const served = await status(relay.nodePath)
    expect(served.relay).toEqual({
      reservations: [],
      relayedConnections: 0,
      server: {
        reservations: 0,
        circuits: 0,
        bytesForwarded: 0,
        refused: expect.objectContaining({ "circuit-limit": 0, "reservation-limit": 0 })
      }
    })
    expect((await status(fromEnv.nodePath)).relay?.server).toMatchObject({ circuits: 0 })
    expect((await status(plain.nodePath)).relay).toEqual({ reservations: [], relayedConnections: 0 })
    const human = await cli(["agent", "status", "--node-path", relay.nodePath])
    expect(human.code).toBe(0)
    expect(human.stdout).toContain(", relay for 0 node(s), 0 circuit(s)")
    const plainHuman = await cli(["agent", "status", "--node-path", plain.nodePath])
    expect(plainHuman.stdout).not.toContain("relay")
  })

  it("a bad QUICMESH_RELAY is one line naming it, exit 2", { timeout: 30_000 }, async () => {
    const r = await cli(["agent", "start", "--node-path", join(tmpDir(), "bad"), "--port", "0"], {
      env: { QUICMESH_RELAY: "maybe" }
    })
    expect(r.code).toBe(2)
    expect(r.stderr.trim().split("\n")).toHaveLength(1)
    expect(r.stderr).toContain("QUICMESH_RELAY")
  })
})
