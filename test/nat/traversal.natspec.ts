/**
 * NAT traversal with real quicmesh agents (bin/quicmesh.js, built) in the NAT lab: joining
 * through a public seed from behind a NAT, seed-relayed hole punching between two NATed nodes
 * (and a NATed and a public one) giving a DIRECT connection, symmetric NATs failing within the
 * timeout, and a NAT mapping that expires while idle.
 *
 * Root only: `npm run build && npm run test:nat`.
 */
import { expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import {
  type AgentInfo,
  type ConnectionJson,
  cli,
  connections,
  find,
  getAll,
  ping,
  poll,
  startAgent
} from "./agents.js"
import { describeLab } from "./describeLab.js"
import { NatLab } from "./lab.js"

/** The public address (NAT WAN address or own address) another node should see for `agent`. */
const connectionTo = <C extends { readonly nodeId: string }>(list: ReadonlyArray<C>, agent: AgentInfo) =>
  list.find((c) => c.nodeId === agent.nodeId)

/** Waits until the agent logged that its join through the seeds finished. */
const joined = (agent: AgentInfo) =>
  poll(
    Effect.sync(() => agent.proc.stderr()),
    (log) => log.includes("joined the network"),
    120
  )

describeLab("NAT traversal (agents)", () => {
  layer(
    NatLab.layer({
      nats: [
        { kind: "restricted", hosts: ["a"] },
        { kind: "restricted", hosts: ["b"] },
        { kind: "symmetric", hosts: ["d"] },
        { kind: "symmetric", hosts: ["e"] },
        { kind: "restricted", hosts: ["f"] },
        { kind: "restricted", hosts: ["g"] }
      ],
      publicHosts: ["seed", "c"]
    }),
    { timeout: "120 seconds", excludeTestServices: true }
  )((it) => {
    it.scoped("a NATed node joins through the seed, which sees it at its NAT's public address", () =>
      Effect.gen(function* () {
        const lab = yield* NatLab
        const seed = yield* startAgent(lab, "seed", { port: 7100 })
        const a = yield* startAgent(lab, "a", { port: 7101, seeds: [seed] })
        expect(a.host).toBe("10.77.1.10")
        const seen = yield* poll(connections(seed), (list) => connectionTo(list, a) !== undefined)
        expect(connectionTo(seen, a)).toMatchObject({
          host: lab.node("a").publicIp,
          port: 7101, // restricted NAT: the source port is kept
          direction: "reverse"
        })
        const table = yield* poll(getAll(seed), (list) => list.some((n) => n.nodeId === a.nodeId))
        expect(table.find((n) => n.nodeId === a.nodeId)).toMatchObject({
          host: "203.0.113.101",
          port: 7101
        })
        // a knows the seed at the seed's own address, connected forward.
        // (through the real CLI once: the control socket is reachable from outside the namespace)
        const viaCli = yield* cli<ReadonlyArray<ConnectionJson>>(a, ["nodes", "connections"])
        expect(connectionTo(viaCli, seed)).toMatchObject({
          host: lab.node("seed").ip,
          port: 7100,
          direction: "forward"
        })
      })
    )

    it.scoped("two restricted NATs: find, then a DIRECT connection by seed-relayed hole punching", () =>
      Effect.gen(function* () {
        const lab = yield* NatLab
        const seed = yield* startAgent(lab, "seed", { port: 7200 })
        const a = yield* startAgent(lab, "a", { port: 7201, seeds: [seed] })
        const b = yield* startAgent(lab, "b", { port: 7202, seeds: [seed] })
        yield* poll(
          connections(seed),
          (l) => connectionTo(l, a) !== undefined && connectionTo(l, b) !== undefined
        )
        const found = yield* find(a, b, 10_000)
        expect(found).toMatchObject({ success: true, address: { host: "203.0.113.102", port: 7202 } })
        const started = performance.now()
        expect(yield* ping(a, b, 10_000)).toBe(true)
        console.log(`restricted↔restricted: ping after find in ${Math.round(performance.now() - started)} ms`)
        // Direct: a holds b at b's NAT address (not the seed's), and b holds a at a's.
        expect(connectionTo(yield* connections(a), b)).toMatchObject({ host: "203.0.113.102", port: 7202 })
        expect(connectionTo(yield* connections(b), a)).toMatchObject({ host: "203.0.113.101", port: 7201 })
        // Both routers hold a flow between the two public mappings: the packets go NAT to NAT.
        const nat1 = yield* lab.conntrackUdp("nat1")
        expect(nat1.some((l) => l.includes("dst=203.0.113.102") && l.includes("dport=7202"))).toBe(true)
        expect(yield* ping(b, a, 10_000)).toBe(true)
      })
    )

    it.scoped("one side public (c) and one NATed (a): connects both ways, directly", () =>
      Effect.gen(function* () {
        const lab = yield* NatLab
        const seed = yield* startAgent(lab, "seed", { port: 7300 })
        const a = yield* startAgent(lab, "a", { port: 7301, seeds: [seed] })
        const c = yield* startAgent(lab, "c", { port: 7302, seeds: [seed] })
        yield* poll(
          connections(seed),
          (l) => connectionTo(l, a) !== undefined && connectionTo(l, c) !== undefined
        )
        // The public node dials the NATed one: only the relayed punch can open a's NAT for it.
        expect(yield* find(c, a, 10_000)).toMatchObject({ success: true, address: { host: "203.0.113.101" } })
        expect(yield* ping(c, a, 10_000)).toBe(true)
        expect(connectionTo(yield* connections(c), a)).toMatchObject({ host: "203.0.113.101", port: 7301 })
        expect(connectionTo(yield* connections(a), c)).toMatchObject({ host: lab.node("c").ip, port: 7302 })
        expect(yield* ping(a, c, 10_000)).toBe(true)
      })
    )

    it.scoped("symmetric NATs on both sides: the connection fails within the connect timeout", () =>
      Effect.gen(function* () {
        const lab = yield* NatLab
        const seed = yield* startAgent(lab, "seed", { port: 7400 })
        const d = yield* startAgent(lab, "d", { port: 7401, seeds: [seed] })
        const e = yield* startAgent(lab, "e", { port: 7402, seeds: [seed] })
        const seen = yield* poll(
          connections(seed),
          (l) => connectionTo(l, d) !== undefined && connectionTo(l, e) !== undefined
        )
        // The seed saw e on a randomised port, which means nothing to anybody else.
        expect(connectionTo(seen, e)?.host).toBe("203.0.113.104")
        const started = performance.now()
        expect(yield* ping(d, e, 5_000)).toBe(false)
        const elapsed = performance.now() - started
        console.log(`symmetric↔symmetric: ping false after ${Math.round(elapsed)} ms`)
        expect(elapsed).toBeLessThan(5_000 + 3_000) // the timeout plus CLI start-up
        expect(connectionTo(yield* connections(d), e)).toBeUndefined()
        // find: the lookup reaches e's address through the seed but cannot connect to it.
        expect((yield* find(d, e, 4_000)).success).toBe(false)
        // Why: e got the relayed signal and punched toward the address the seed observed for d, but a
        // symmetric NAT maps every destination to a new port, so neither side's packets match a flow
        // the other's router holds. nat4 shows e's punches to d's seed-observed port, nat3 shows d's
        // dials to e's seed-observed port leaving from another port than the one the seed saw.
        const dSeen = connectionTo(seen, d)!
        const eSeen = connectionTo(seen, e)!
        const nat4 = yield* lab.conntrackUdp("nat4")
        const punches = nat4.filter((l) => l.includes("src=10.77.4.10") && l.includes("dst=203.0.113.103"))
        expect(punches.some((l) => l.includes(`dport=${dSeen.port}`))).toBe(true)
        const nat3 = yield* lab.conntrackUdp("nat3")
        const dials = nat3.filter((l) => l.includes("src=10.77.3.10") && l.includes("dst=203.0.113.104"))
        expect(dials.some((l) => l.includes(`dport=${eSeen.port}`))).toBe(true)
        // The reply half of d's flow names the public port d's packets left from: not the seed's.
        const dialOut = dials.find((l) => l.includes(`dport=${eSeen.port}`))!
        const replyDport = /src=203\.0\.113\.104 dst=203\.0\.113\.103 sport=\d+ dport=(\d+)/.exec(
          dialOut
        )?.[1]
        expect(Number(replyDport)).not.toBe(dSeen.port)
        console.log(
          `symmetric: seed saw d at :${dSeen.port}, e at :${eSeen.port}; d→e left nat3 from :${replyDport}`
        )
      })
    )

    it.scoped("an idle NAT mapping that expires: keep-alive keeps it, or a fresh punch restores it", () =>
      Effect.gen(function* () {
        const lab = yield* NatLab
        const seed = yield* startAgent(lab, "seed", { port: 7500 })
        // Keep-alive (1 s) shorter than the NAT's 3 s UDP timeout.
        const fast = { connectionKeepAliveIntervalTime: "1 second" }
        const f = yield* startAgent(lab, "f", { port: 7501, seeds: [seed], env: fast })
        const g = yield* startAgent(lab, "g", { port: 7502, seeds: [seed], env: fast })
        yield* poll(
          connections(seed),
          (l) => connectionTo(l, f) !== undefined && connectionTo(l, g) !== undefined
        )
        yield* joined(g)
        expect(yield* ping(f, g, 10_000)).toBe(true)
        const before = connectionTo(yield* connections(f), g)
        expect(before).toMatchObject({ host: "203.0.113.106", port: 7502 })
        // From now on both routers forget a UDP flow after 3 s without packets.
        yield* lab.setUdpTimeout("nat5", 3)
        yield* lab.setUdpTimeout("nat6", 3)
        yield* Effect.sleep("7 seconds")
        expect(yield* ping(f, g, 5_000)).toBe(true)
        expect(connectionTo(yield* connections(f), g)).toMatchObject({ host: "203.0.113.106", port: 7502 })
      })
    )

    it.scoped("an idle NAT mapping that expires with the default 10 s keep-alive: a re-dial recovers", () =>
      Effect.gen(function* () {
        const lab = yield* NatLab
        const seed = yield* startAgent(lab, "seed", { port: 7600 })
        const a = yield* startAgent(lab, "a", { port: 7601, seeds: [seed] })
        const b = yield* startAgent(lab, "b", { port: 7602, seeds: [seed] })
        yield* poll(
          connections(seed),
          (l) => connectionTo(l, a) !== undefined && connectionTo(l, b) !== undefined
        )
        yield* joined(b)
        expect(yield* ping(a, b, 10_000)).toBe(true)
        yield* lab.setUdpTimeout("nat1", 3)
        yield* lab.setUdpTimeout("nat2", 3)
        yield* Effect.sleep("7 seconds")
        const started = performance.now()
        const results: Array<boolean> = []
        for (let i = 0; i < 6 && results.at(-1) !== true; i++) results.push(yield* ping(a, b, 5_000))
        const elapsed = Math.round(performance.now() - started)
        console.log(
          `idle expiry, default keep-alive: ping results ${JSON.stringify(results)} in ${elapsed} ms`
        )
        expect(results.at(-1)).toBe(true)
        expect(connectionTo(yield* connections(a), b)).toMatchObject({ host: "203.0.113.102", port: 7602 })
        yield* lab.setUdpTimeout("nat1", 120)
        yield* lab.setUdpTimeout("nat2", 120)
      })
    )
  })
})
