/**
 * ConnectionGater on its own: entries (NodeIds, IPv4 and IPv6 CIDRs, IPv4-mapped IPv6), the
 * verdict (deny wins, allow-only, what is decided without an address), changes (saved before
 * they take effect, watchers told), and the gating file (atomic writes, a corrupt file is an
 * error naming it).
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Exit, Ref } from "effect"
import * as ConnectionGaterFile from "../src/layers/ConnectionGaterFile.js"
import * as ConnectionGater from "../src/services/ConnectionGater.js"
import * as NodeId from "../src/services/NodeId.js"

const idOf = (n: number): NodeId.NodeId => {
  const bytes = new Uint8Array(32)
  bytes[0] = n
  bytes[31] = n ^ 0x5a
  return bytes as NodeId.NodeId
}
const A = idOf(1)
const B = idOf(2)

const entry = (text: string): ConnectionGater.GateEntry => Either.getOrThrow(ConnectionGater.parseEntry(text))
const canonical = (text: string) =>
  Either.match(ConnectionGater.parseEntry(text), {
    onLeft: (e) => `error: ${e.message}`,
    onRight: (e) => e.text
  })

const gaterWith = (rules: Partial<ConnectionGater.GateRules>) =>
  ConnectionGater.make({ rules: { allowOnly: false, deny: [], allow: [], ...rules } })

/** The refusal's detail, or "allowed". */
const verdict = (gater: ConnectionGater.ConnectionGaterService, nodeId: NodeId.NodeId, host?: string) =>
  gater.refusal(nodeId, host)?.detail ?? "allowed"

describe("ConnectionGater entries", () => {
  it("NodeIds and CIDRs in their canonical text; a bare IP is a range of one; host bits are cleared", () => {
    expect(canonical(NodeId.encode(A))).toBe(NodeId.encode(A))
    expect(canonical(" 10.1.2.3/8 ")).toBe("10.0.0.0/8")
    expect(canonical("203.0.113.7")).toBe("203.0.113.7/32")
    expect(canonical("2001:DB8:0:0:1::/32")).toBe("2001:db8::/32")
    expect(canonical("::1")).toBe("::1/128")
    expect(canonical("::/0")).toBe("::/0")
    expect(canonical("fe80::1%eth0/64")).toBe("fe80::/64")
    // IPv4-mapped IPv6 ranges are IPv4 ranges.
    expect(canonical("::ffff:10.0.0.0/104")).toBe("10.0.0.0/8")
    expect(canonical("::ffff:192.0.2.1")).toBe("192.0.2.1/32")
    expect(canonical("::ffff:0:0/96")).toBe("0.0.0.0/0")
    // A range wider than the mapped block stays IPv6 (host bits cleared: 0xffff/95 is 0xfffe).
    expect(canonical("::ffff:0:0/95")).toBe("::fffe:0:0/95")
  })

  it("anything else is an InvalidGateEntry with a one-line message", () => {
    expect(canonical("bogus")).toMatch(/^error: invalid entry "bogus": not a NodeId \(.*\) nor an IP range/)
    expect(canonical("10.0.0.0/33")).toBe(
      'error: invalid entry "10.0.0.0/33": not a CIDR: the prefix length must be a whole number from 0 to 32 (expected a NodeId, or a CIDR such as 203.0.113.0/24 or 2001:db8::/32)'
    )
    expect(canonical("2001:db8::/129")).toMatch(/from 0 to 128/)
    expect(canonical("300.1.1.1/8")).toMatch(/"300\.1\.1\.1" is not an IP address/)
    expect(canonical("10.0.0.0/")).toMatch(/prefix length/)
    expect(canonical("")).toMatch(/empty/)
    for (const bad of ["bogus", "10.0.0.0/33", "1:2:3", ""]) expect(canonical(bad)).not.toContain("\n")
  })
})

describe("ConnectionGater verdict", () => {
  it.effect("no rules: everything allowed", () =>
    Effect.gen(function* () {
      const gater = yield* ConnectionGater.make()
      expect(verdict(gater, A, "10.0.0.1")).toBe("allowed")
      expect(verdict(gater, A)).toBe("allowed")
    })
  )

  it.effect("a denied NodeId is refused at any address and without one; others are not", () =>
    Effect.gen(function* () {
      const gater = yield* gaterWith({ deny: [NodeId.encode(A)] })
      expect(verdict(gater, A)).toBe(`NodeId ${NodeId.encode(A)} is denied`)
      expect(verdict(gater, A, "192.0.2.1")).toBe(`NodeId ${NodeId.encode(A)} is denied`)
      expect(verdict(gater, B, "192.0.2.1")).toBe("allowed")
    })
  )

  it.effect("denied ranges match IPv4, IPv4-mapped IPv6 and IPv6 addresses; only with an address", () =>
    Effect.gen(function* () {
      const gater = yield* gaterWith({ deny: ["10.0.0.0/8", "2001:db8::/32"] })
      expect(verdict(gater, A, "10.200.3.4")).toBe("address 10.200.3.4 is in the denied range 10.0.0.0/8")
      expect(verdict(gater, A, "::ffff:10.200.3.4")).toBe(
        "address ::ffff:10.200.3.4 is in the denied range 10.0.0.0/8"
      )
      expect(verdict(gater, A, "2001:db8:ffff::1")).toMatch(/denied range 2001:db8::\/32/)
      expect(verdict(gater, A, "11.0.0.1")).toBe("allowed")
      expect(verdict(gater, A, "2001:db9::1")).toBe("allowed")
      expect(verdict(gater, A)).toBe("allowed")
    })
  )

  it.effect("prefixes that end inside a byte", () =>
    Effect.gen(function* () {
      const gater = yield* gaterWith({ deny: ["172.16.0.0/12"] })
      expect(verdict(gater, A, "172.31.255.255")).not.toBe("allowed")
      expect(verdict(gater, A, "172.32.0.0")).toBe("allowed")
      expect(verdict(gater, A, "172.15.255.255")).toBe("allowed")
    })
  )

  it.effect("allow-only: only allowed NodeIds and ranges; deny wins over allow", () =>
    Effect.gen(function* () {
      const gater = yield* gaterWith({
        allowOnly: true,
        allow: [NodeId.encode(A), "192.168.0.0/16"],
        deny: ["192.168.9.0/24"]
      })
      expect(verdict(gater, A, "203.0.113.1")).toBe("allowed")
      expect(verdict(gater, B, "192.168.1.1")).toBe("allowed")
      expect(verdict(gater, B, "203.0.113.1")).toBe(
        `allow-only mode, and neither NodeId ${NodeId.encode(B)} nor address 203.0.113.1 is allowed`
      )
      expect(verdict(gater, A, "192.168.9.9")).toMatch(/denied range 192\.168\.9\.0\/24/)
      // Without an address an allowed range may still let B in: not refused yet.
      expect(verdict(gater, B)).toBe("allowed")
    })
  )

  it.effect("allow-only with NodeIds only refuses other NodeIds without an address", () =>
    Effect.gen(function* () {
      const gater = yield* gaterWith({ allowOnly: true, allow: [NodeId.encode(A)] })
      expect(verdict(gater, B)).toBe(`allow-only mode, and NodeId ${NodeId.encode(B)} is not allowed`)
      expect(verdict(gater, A)).toBe("allowed")
    })
  )
})

describe("ConnectionGater changes", () => {
  it.effect("deny, allow and remove move an entry between the lists; unchanged changes say so", () =>
    Effect.gen(function* () {
      const gater = yield* ConnectionGater.make()
      const a = entry(NodeId.encode(A))
      expect((yield* gater.deny(a)).changed).toBe(true)
      expect(verdict(gater, A)).not.toBe("allowed")
      expect((yield* gater.deny(a)).changed).toBe(false)
      const allowed = yield* gater.allow(a)
      expect(allowed.rules).toEqual({ allowOnly: false, deny: [], allow: [NodeId.encode(A)] })
      expect(verdict(gater, A)).toBe("allowed")
      yield* gater.setAllowOnly(true)
      expect(verdict(gater, B)).not.toBe("allowed")
      const removed = yield* gater.remove(a)
      expect(removed.rules).toEqual({ allowOnly: true, deny: [], allow: [] })
      expect((yield* gater.remove(a)).changed).toBe(false)
      expect(verdict(gater, A)).not.toBe("allowed")
    })
  )

  it.scoped("a change is saved before it takes effect; a failed save leaves the rules as they were", () =>
    Effect.gen(function* () {
      const saved = yield* Ref.make<ReadonlyArray<ConnectionGater.GateRules>>([])
      let failSave = false
      const gater = yield* ConnectionGater.make({
        save: (rules) =>
          failSave
            ? Effect.fail(
                new ConnectionGater.GatesFileError({ path: "x", reason: "write", detail: "disk full" })
              )
            : Ref.update(saved, (xs) => [...xs, rules])
      })
      const seen: Array<ConnectionGater.GateRules> = []
      yield* gater.watch((rules) => Effect.sync(() => seen.push(rules)))
      yield* gater.deny(entry("10.0.0.0/8"))
      expect(yield* Ref.get(saved)).toEqual([{ allowOnly: false, deny: ["10.0.0.0/8"], allow: [] }])
      expect(seen).toEqual([{ allowOnly: false, deny: ["10.0.0.0/8"], allow: [] }])
      failSave = true
      const failed = yield* Effect.exit(gater.deny(entry(NodeId.encode(A))))
      expect(Exit.isFailure(failed)).toBe(true)
      expect(verdict(gater, A)).toBe("allowed")
      expect(yield* gater.rules).toEqual({ allowOnly: false, deny: ["10.0.0.0/8"], allow: [] })
      expect(seen.length).toBe(1)
    })
  )

  it.effect("rules given to make are checked", () =>
    Effect.gen(function* () {
      const bad = yield* Effect.flip(gaterWith({ deny: ["10.0.0.0/8", "nonsense"] }))
      expect(bad.message).toMatch(/^invalid entry "nonsense"/)
    })
  )
})

describe("ConnectionGaterFile", () => {
  const withDir = <A, E>(f: (dir: string) => Effect.Effect<A, E>) =>
    Effect.acquireUseRelease(
      Effect.sync(() => mkdtempSync(join(tmpdir(), "quicmesh-gates-"))),
      f,
      (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
    )

  it.effect("no file: no rules; each change is written atomically (0600) and loaded again", () =>
    withDir((dir) =>
      Effect.gen(function* () {
        const path = join(dir, "gates.json")
        const gater = yield* ConnectionGaterFile.make(path)
        expect(yield* gater.rules).toEqual({ allowOnly: false, deny: [], allow: [] })
        yield* gater.deny(entry(NodeId.encode(A)))
        yield* gater.deny(entry("::ffff:10.0.0.0/104"))
        yield* gater.allow(entry("2001:db8::/32"))
        yield* gater.setAllowOnly(true)
        expect(statSync(path).mode & 0o777).toBe(0o600)
        expect(readdirSync(dir)).toEqual(["gates.json"])
        expect(JSON.parse(readFileSync(path, "utf8"))).toEqual({
          version: 1,
          allowOnly: true,
          deny: [NodeId.encode(A), "10.0.0.0/8"],
          allow: ["2001:db8::/32"]
        })
        const again = yield* ConnectionGaterFile.make(path)
        expect(yield* again.rules).toEqual(yield* gater.rules)
        expect(verdict(again, A)).toBe(`NodeId ${NodeId.encode(A)} is denied`)
        expect(verdict(again, B, "::ffff:10.1.1.1")).toMatch(/denied range 10\.0\.0\.0\/8/)
      })
    )
  )

  it.effect("a corrupt file is an error naming it, never an empty list", () =>
    withDir((dir) =>
      Effect.gen(function* () {
        const path = join(dir, "gates.json")
        const cases: ReadonlyArray<readonly [string, RegExp]> = [
          ["{ not json", /not JSON/],
          ['{"version":1,"allowOnly":false,"deny":"10.0.0.0/8","allow":[]}', /expected \{ "version": 1/],
          [
            '{"version":1,"allowOnly":false,"deny":["10.0.0.0/40"],"allow":[]}',
            /invalid entry "10\.0\.0\.0\/40"/
          ],
          ["", /not JSON/]
        ]
        for (const [text, reason] of cases) {
          writeFileSync(path, text)
          const e = yield* Effect.flip(ConnectionGaterFile.make(path))
          expect(e.reason).toBe("corrupt")
          expect(e.message).toMatch(new RegExp(`^gating file ${path} is corrupt: `))
          expect(e.message).toMatch(reason)
          expect(e.message).not.toContain("\n")
        }
      })
    )
  )
})
