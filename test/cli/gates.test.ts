/**
 * `quicmesh nodes deny|allow|gates` against agents running as processes: bad input, the rules
 * through the control API and their file surviving a restart, a corrupt gating file, and a
 * denied node's handshakes refused (it never shows in `nodes connections`).
 */
import { writeFileSync } from "node:fs"
import { join } from "node:path"
import { afterAll, describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { control } from "../fixtures/agentProcess.js"
import { type AgentProcess, cleanup, cli, cliJson, oneErrorLine, startAgent, tmpDir } from "./helpers.js"

afterAll(cleanup, 30_000)

interface Gates {
  readonly allowOnly: boolean
  readonly deny: ReadonlyArray<string>
  readonly allow: ReadonlyArray<string>
}
interface Change {
  readonly changed: boolean
  readonly closed: number
  readonly gates: Gates
}

const at = (agent: AgentProcess) => ["--node-path", agent.nodePath] as const

/** Stops an agent with SIGTERM and waits for it to exit. */
const stop = async (agent: AgentProcess) => {
  agent.child.kill("SIGTERM")
  return agent.exited
}

const connections = async (agent: AgentProcess) =>
  (await cliJson<ReadonlyArray<{ nodeId: string }>>(["nodes", "connections", ...at(agent)])).json.map(
    (c) => c.nodeId
  )

describe("quicmesh nodes deny|allow|gates", () => {
  it("bad NodeIds, CIDRs and modes exit 2 with one line, before any agent is asked", {
    timeout: 60_000
  }, async () => {
    const dir = tmpDir()
    const cases: ReadonlyArray<readonly [ReadonlyArray<string>, string]> = [
      [["nodes", "deny", "bogus"], 'quicmesh: invalid entry "bogus": not a NodeId'],
      [
        ["nodes", "allow", "10.0.0.0/33"],
        'quicmesh: invalid entry "10.0.0.0/33": not a CIDR: the prefix length must be a whole number from 0 to 32'
      ],
      [
        ["nodes", "deny", "300.0.0.0/8"],
        'quicmesh: invalid entry "300.0.0.0/8": not a CIDR: "300.0.0.0" is not an IP address'
      ],
      [["nodes", "gates", "remove", "2001:db8::/200"], 'quicmesh: invalid entry "2001:db8::/200"'],
      [
        ["nodes", "gates", "allow-only", "maybe"],
        'quicmesh: invalid allow-only mode "maybe": must be on or off'
      ],
      [["nodes", "deny"], "quicmesh: Missing argument <NODEID|CIDR>"],
      [
        ["nodes", "gates", "frob"],
        'quicmesh: unknown nodes gates command "frob": expected one of remove, allow-only (see quicmesh --help)'
      ]
    ]
    const results = await Promise.all(cases.map(([args]) => cli([...args, "--node-path", dir])))
    results.forEach((r, i) => {
      expect(r.code).toBe(2)
      expect(r.stdout).toBe("")
      expect(oneErrorLine(r.stderr).startsWith(cases[i]![1])).toBe(true)
    })
  })

  it("the rules change through the agent, are listed, and survive a restart", {
    timeout: 120_000
  }, async () => {
    const a = await startAgent()
    // The control API checks entries too: one line, nothing changed.
    const bad = await Effect.runPromise(
      Effect.flip(control({ dir: a.nodePath }, (c) => c.gatesDeny({ entry: "10.0.0.0/99" })))
    )
    expect(bad).toMatchObject({
      _tag: "ControlError",
      message:
        'invalid entry "10.0.0.0/99": not a CIDR: the prefix length must be a whole number from 0 to 32 (expected a NodeId, or a CIDR such as 203.0.113.0/24 or 2001:db8::/32)'
    })
    const other = "vhu587grog4j76h4qrhqhoj6tnalaqllc1p7dn2p36njtfabn0ed0"
    const denied = await cliJson<Change>(["nodes", "deny", "10.1.2.3/8", ...at(a)])
    expect(denied.code).toBe(0)
    expect(denied.json).toEqual({
      changed: true,
      closed: 0,
      gates: { allowOnly: false, deny: ["10.0.0.0/8"], allow: [] }
    })
    const human = await cli(["nodes", "deny", other, ...at(a)])
    expect(human.stdout).toBe(`denied ${other}\n`)
    expect((await cli(["nodes", "deny", other, ...at(a)])).stdout).toBe(`${other} was already denied\n`)
    expect((await cli(["nodes", "allow", "::ffff:192.0.2.0/120", ...at(a)])).stdout).toBe(
      "allowed 192.0.2.0/24 (allow-only mode is off: it matters once it is on)\n"
    )
    expect((await cli(["nodes", "gates", "allow-only", "on", ...at(a)])).stdout).toBe(
      "allow-only mode on: only the 1 allowed entry may connect\n"
    )
    const listed = await cliJson<Gates>(["nodes", "gates", ...at(a)])
    expect(listed.json).toEqual({ allowOnly: true, deny: ["10.0.0.0/8", other], allow: ["192.0.2.0/24"] })
    expect((await cli(["nodes", "gates", ...at(a)])).stdout).toBe(
      [
        "allow-only mode: on",
        "LIST   ENTRY",
        "deny   10.0.0.0/8",
        `deny   ${other}`,
        "allow  192.0.2.0/24",
        ""
      ].join("\n")
    )

    await stop(a)
    const again = await startAgent({ nodePath: a.nodePath })
    expect((await cliJson<Gates>(["nodes", "gates", ...at(again)])).json).toEqual(listed.json)
    expect((await cli(["nodes", "gates", "remove", "10.0.0.0/8", ...at(again)])).stdout).toBe(
      "removed 10.0.0.0/8\n"
    )
    const absent = await cli(["nodes", "gates", "remove", "10.0.0.0/8", ...at(again)])
    expect(absent.code).toBe(1)
    expect(oneErrorLine(absent.stderr)).toBe("quicmesh: 10.0.0.0/8 is on neither list")
    expect((await cli(["nodes", "gates", "allow-only", "off", ...at(again)])).code).toBe(0)
    expect((await cliJson<Gates>(["nodes", "gates", ...at(again)])).json).toEqual({
      allowOnly: false,
      deny: [other],
      allow: ["192.0.2.0/24"]
    })
  })

  it("a corrupt gating file stops the agent at start with one line naming the file", {
    timeout: 60_000
  }, async () => {
    const dir = tmpDir()
    const file = join(dir, "gates.json")
    writeFileSync(file, '{"version":1,"allowOnly":false,"deny":["not-an-entry"],"allow":[]}')
    const r = await cli(["agent", "start", "--node-path", dir, "--host", "127.0.0.1", "--port", "0"])
    expect(r.code).toBe(1)
    expect(r.stdout).toBe("")
    expect(oneErrorLine(r.stderr)).toMatch(
      new RegExp(`^quicmesh: agent failed: gating file ${file} is corrupt: invalid entry "not-an-entry"`)
    )
  })

  it("a denied node's handshakes are refused: it never shows in `nodes connections`", {
    timeout: 120_000
  }, async () => {
    const [a, b] = await Promise.all([startAgent(), startAgent()])
    const aAddress = `127.0.0.1:${a.ready.port}`
    expect((await cli(["nodes", "deny", b.ready.nodeId, ...at(a)])).code).toBe(0)
    // B reaches A's socket; A refuses it in the handshake.
    const refused = await cli(["nodes", "ping", a.ready.nodeId, "--address", aAddress, ...at(b)])
    expect(refused.code).toBe(1)
    expect(await connections(a)).toEqual([])
    // Taken off the list, B gets in; denied again, its connection is closed.
    expect((await cli(["nodes", "gates", "remove", b.ready.nodeId, ...at(a)])).code).toBe(0)
    const alive = await cli(["nodes", "ping", a.ready.nodeId, "--address", aAddress, ...at(b)])
    expect(alive.stdout).toBe(`${a.ready.nodeId} is alive\n`)
    expect(await connections(a)).toEqual([b.ready.nodeId])
    const again = await cliJson<Change>(["nodes", "deny", b.ready.nodeId, ...at(a)])
    expect(again.json.closed).toBe(1)
    expect(await connections(a)).toEqual([])
  })
})
