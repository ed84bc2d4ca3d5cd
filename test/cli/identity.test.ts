/**
 * `quicmesh identity renew`: on a running agent in a network (through the control API) and on
 * the key files when no agent runs; bad options and a corrupt key file.
 */
import { readFileSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { afterAll, describe, expect, it } from "@effect/vitest"
import { Either } from "effect"
import {
  certChainFromPem,
  keyPairFromPem,
  renewedFrom,
  verifyCertChain
} from "../../src/internal/certificates.js"
import * as NodeId from "../../src/services/NodeId.js"
import { type AgentProcess, cleanup, cli, cliJson, oneErrorLine, startAgent, tmpDir } from "./helpers.js"

afterAll(cleanup, 30_000)

interface RenewalJson {
  readonly previous: string
  readonly nodeId: string
}

const np = (a: AgentProcess) => ["--node-path", a.nodePath]
const sleep = (ms: number) => new Promise((res) => setTimeout(res, ms))

/** Re-runs `attempt` (up to `tries` times, 250 ms apart) until `done` holds; the last result. */
const until = async <A>(attempt: () => Promise<A>, done: (a: A) => boolean, tries = 40): Promise<A> => {
  let last = await attempt()
  for (let i = 1; i < tries && !done(last); i++) {
    await sleep(250)
    last = await attempt()
  }
  return last
}

/** The NodeIds in an agent's routing table. */
const known = async (a: AgentProcess) =>
  (await cliJson<Array<{ nodeId: string }>>(["nodes", "getall", ...np(a)])).json.map((n) => n.nodeId)

/** The certificate chain in `dir/cert.pem`: the NodeId it verifies for, and the key it was renewed from. */
const chainOf = (dir: string) => {
  const chain = certChainFromPem(readFileSync(join(dir, "cert.pem"), "utf8"))
  const verified = verifyCertChain(chain, new Date())
  const from = renewedFrom(chain)
  return {
    length: chain.length,
    nodeId: Either.isRight(verified) ? NodeId.encode(verified.right) : `unverified: ${verified.left.message}`,
    renewedFrom: from === undefined ? undefined : NodeId.encode(from)
  }
}

describe("quicmesh identity renew", () => {
  it("on a running agent: it moves to the new NodeId, the network finds it, the old one is not found, and the chain verifies from new to old", {
    timeout: 120_000
  }, async () => {
    const seed = await startAgent()
    const [a, b] = await Promise.all([startAgent({ seeds: [seed.seed] }), startAgent({ seeds: [seed.seed] })])
    // Both have joined: the seed knows them.
    const joined = await until(
      () => known(seed),
      (ids) => ids.includes(a.ready.nodeId) && ids.includes(b.ready.nodeId)
    )
    expect(joined).toEqual(expect.arrayContaining([a.ready.nodeId, b.ready.nodeId]))
    const old = a.ready.nodeId

    const renewed = await cliJson<RenewalJson>(["identity", "renew", ...np(a)])
    expect(renewed.code).toBe(0)
    expect(renewed.json.previous).toBe(old)
    expect(renewed.json.nodeId).toMatch(/^v[0-9a-v]{52}$/)
    expect(renewed.json.nodeId).not.toBe(old)
    const next = renewed.json.nodeId

    // The agent reports its new NodeId, and is still the same process on the same port.
    const status = await cliJson<{ nodeId: string; pid: number; port: number }>(["agent", "status", ...np(a)])
    expect(status.json).toMatchObject({ nodeId: next, pid: a.child.pid, port: a.ready.port })

    // Another node finds the new NodeId, at A's address.
    const found = await until(
      () =>
        cliJson<{ success: boolean; address?: { port: number } }>([
          "nodes",
          "find",
          next,
          "--timeout",
          "5000",
          ...np(b)
        ]),
      (r) => r.code === 0
    )
    expect(found.json).toMatchObject({ success: true, nodeId: next, address: { port: a.ready.port } })

    // Once B's table has dropped the old NodeId (A's new chain, signed by the old key, proved
    // the renewal), the old NodeId is not found: A answers for it no more.
    const afterRefresh = await until(
      () => known(b),
      (ids) => !ids.includes(old)
    )
    expect(afterRefresh).not.toContain(old)
    expect(afterRefresh).toContain(next)
    const lost = await cliJson<{ success: boolean }>(["nodes", "find", old, "--timeout", "3000", ...np(b)])
    expect(lost.code).toBe(1)
    expect(lost.json.success).toBe(false)
    expect(await known(seed)).not.toContain(old)

    // The chain on disk: the new leaf, issued by the old key (whose own certificate follows).
    expect(chainOf(a.nodePath)).toEqual({ length: 2, nodeId: next, renewedFrom: old })
    const previousKey = keyPairFromPem(readFileSync(join(a.nodePath, "key.prev.pem")))
    expect(Either.isRight(previousKey) && NodeId.encode(previousKey.right.nodeId)).toBe(old)

    // Human output, once more: one line naming both NodeIds.
    const again = await cli(["identity", "renew", ...np(a)])
    expect(again.code).toBe(0)
    const m = /^renewed the node's key: (v[0-9a-v]{52}) -> (v[0-9a-v]{52})\n$/.exec(again.stdout)
    expect(m?.[1]).toBe(next)
    expect((await cliJson<{ nodeId: string }>(["agent", "status", ...np(a)])).json.nodeId).toBe(m?.[2])
    expect(chainOf(a.nodePath)).toEqual({ length: 2, nodeId: m?.[2], renewedFrom: next })
  })

  it("with no agent: renews the key files; `identity` then prints the new NodeId", {
    timeout: 60_000
  }, async () => {
    const dir = join(tmpDir(), "offline")
    const first = await cliJson<{ nodeId: string }>(["identity", "--node-path", dir])
    const renewed = await cliJson<RenewalJson>(["identity", "renew", "--node-path", dir])
    expect(renewed.code).toBe(0)
    expect(renewed.json.previous).toBe(first.json.nodeId)
    expect(renewed.json.nodeId).not.toBe(first.json.nodeId)
    const shown = await cli(["identity", "--node-path", dir])
    expect(shown.stdout).toBe(`${renewed.json.nodeId}\n`)
    expect(chainOf(dir)).toEqual({ length: 2, nodeId: renewed.json.nodeId, renewedFrom: first.json.nodeId })
  })

  it("bad options exit 2 with one line; a corrupt key file or no identity is one line naming it, exit 1", {
    timeout: 60_000
  }, async () => {
    const dir = join(tmpDir(), "bad")
    await cli(["identity", "--node-path", dir])
    const key = join(dir, "key.pem")
    const bad = await Promise.all([
      cli(["identity", "renew", "--node-path", dir, "--format", "xml"]),
      cli(["identity", "renew", "--node-path", dir, "--bogus"]),
      cli(["identity", "renew", "--node-path", dir, "extra"])
    ])
    for (const r of bad) {
      expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 2, stdout: "" })
      oneErrorLine(r.stderr)
    }
    expect(oneErrorLine(bad[0]!.stderr)).toBe('quicmesh: invalid format "xml": must be human or json')
    // Nothing was renewed by the refused commands.
    expect(chainOf(dir).length).toBe(1)

    writeFileSync(key, "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n", { mode: 0o600 })
    const corrupt = await cli(["identity", "renew", "--node-path", dir])
    expect({ code: corrupt.code, stdout: corrupt.stdout }).toEqual({ code: 1, stdout: "" })
    expect(oneErrorLine(corrupt.stderr)).toMatch(new RegExp(`^quicmesh: key ring at ${key}: corrupt: `))

    const empty = join(tmpDir(), "none")
    const none = await cli(["identity", "renew", "--node-path", empty])
    expect(none.code).toBe(1)
    expect(oneErrorLine(none.stderr)).toBe(`quicmesh: no identity at ${empty} to renew (no key.pem)`)
  })
})
