/**
 * Port mapping with a real miniupnpd (Debian's miniupnpd-nftables 2.3.1, NAT-PMP and PCP on, UPnP
 * off) on the restricted router nat1, and real agents (the built program). Agent a joins the
 * reachability world (test/nat/world.ts: two seeds, a helper a never contacts): without miniupnpd
 * it classifies itself cone and stays so (the helper's dial-back is filtered), with it public at
 * the mapped address (the helper's dial-back comes in through the mapping).
 *
 * miniupnpd refuses to forward ports when its external address is reserved or private, which
 * TEST-NET-3 (the lab's default public side) is. This lab gives its public side a public-looking
 * /24 instead (`publicPrefix`): it is only ever routed inside the lab's namespaces, and the first
 * test checks that no link of any of them leads anywhere else, so nothing leaves the machine.
 *
 * Root only: `npm run build && npm run test:nat`; miniupnpd must be installed (.ci/run does).
 */
import { execFile } from "node:child_process"
import { mkdtempSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { promisify } from "node:util"
import { expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import { makeNodePath } from "../fixtures/agentProcess.js"
import { type AgentInfo, cli, connections, control, poll, startAgent } from "./agents.js"
import { describeLab } from "./describeLab.js"
import { type Lab, NatLab } from "./lab.js"
import { joinWorld, status, WORLD_HOSTS, world } from "./world.js"

const execFileAsync = promisify(execFile)

/** A public-looking /24, routed only inside the lab (see above). */
const PREFIX = "45.77.113"
const ROUTER = `${PREFIX}.101`

/** The tables and chains miniupnpd's nftables backend adds its rules to (its defaults' names). */
const NFT_CHAINS = `table inet filter {
  chain forward { type filter hook forward priority 0; policy accept; jump miniupnpd; }
  chain miniupnpd { }
  chain prerouting { type nat hook prerouting priority -100; policy accept; jump prerouting_miniupnpd; }
  chain postrouting { type nat hook postrouting priority 100; policy accept; jump postrouting_miniupnpd; }
  chain prerouting_miniupnpd { }
  chain postrouting_miniupnpd { }
}
`

const miniupnpdConf = (leaseFile: string, upnp: boolean) =>
  [
    "ext_ifname=wan",
    "listening_ip=lan",
    "port=0",
    `enable_natpmp=${upnp ? "no" : "yes"}`,
    `enable_upnp=${upnp ? "yes" : "no"}`,
    "secure_mode=yes",
    "system_uptime=no",
    `lease_file=${leaseFile}`,
    "uuid=6d8b2b0e-5c1f-4a7e-9c55-2f1b3f0c9a11",
    "allow 1024-65535 10.77.0.0/16 1024-65535",
    "deny 0-65535 0.0.0.0/0 0-65535",
    ""
  ].join("\n")

/** The router's NAT rules that forward to a's port (miniupnpd's chain). */
const forwardsTo = (lab: Lab, port: number) =>
  lab
    .exec("nat1", "nft", ["list", "chain", "inet", "filter", "prerouting_miniupnpd"])
    .pipe(Effect.map(({ stdout }) => stdout.includes(`10.77.1.10:${port}`)))

/** Starts miniupnpd on nat1 for the life of the scope; resolves once it listens. */
const startMiniupnpd = (lab: Lab, options: { readonly upnp: boolean } = { upnp: false }) =>
  Effect.gen(function* () {
    yield* Effect.tryPromise(() => execFileAsync("miniupnpd", ["--version"])).pipe(
      Effect.orElseFail(() => "miniupnpd is not installed (apt-get install miniupnpd-nftables; .ci/run does)")
    )
    const dir = mkdtempSync(join(tmpdir(), "qm-miniupnpd-"))
    const conf = join(dir, "miniupnpd.conf")
    writeFileSync(conf, miniupnpdConf(join(dir, "leases"), options.upnp))
    writeFileSync(join(dir, "chains.nft"), NFT_CHAINS)
    yield* lab.exec("nat1", "nft", ["-f", join(dir, "chains.nft")])
    const daemon = yield* lab.spawn("nat1", "miniupnpd", ["-d", "-f", conf, "-P", join(dir, "pid")])
    yield* poll(
      Effect.sync(() => daemon.stderr()),
      (log) => log.includes(options.upnp ? "HTTP listening on port" : "Listening for NAT-PMP/PCP traffic"),
      40
    )
    return daemon
  })

const pingAt = (from: AgentInfo, to: AgentInfo, port: number, timeout: number) =>
  control(from, (c) => c.nodesPing({ nodeId: to.nodeId, address: { host: ROUTER, port }, timeout })).pipe(
    Effect.map((r) => r.success)
  )

describeLab("port mapping at the router (miniupnpd)", () => {
  layer(
    NatLab.layer({
      nats: [{ kind: "restricted", hosts: ["a"] }],
      publicHosts: ["seed", "c", ...WORLD_HOSTS],
      publicPrefix: PREFIX
    }),
    { timeout: "150 seconds", excludeTestServices: true }
  )((it) => {
    it.scoped("the lab is closed: every link of its namespaces leads to another of them", () =>
      Effect.gen(function* () {
        const lab = yield* NatLab
        const mine = (ns: string) => ns.startsWith(`qm-${lab.id}-`)
        const namespaces = [...[...lab.nodes.values()].map((n) => n.ns), `qm-${lab.id}-pub`]
        for (const ns of namespaces) {
          const links = JSON.parse(
            (yield* Effect.promise(() => execFileAsync("ip", ["-n", ns, "-d", "-j", "link"]))).stdout
          ) as Array<{ ifname: string; link_netnsid?: number; linkinfo?: { info_kind?: string } }>
          const ids = (yield* Effect.promise(() => execFileAsync("ip", ["-n", ns, "netns", "list-id"])))
            .stdout
          for (const link of links) {
            const kind = link.linkinfo?.info_kind
            expect(link.ifname === "lo" || kind === "bridge" || kind === "veth", `${ns} ${link.ifname}`).toBe(
              true
            )
            if (kind !== "veth") continue
            const peer = new RegExp(`nsid ${link.link_netnsid} \\(iproute2 netns name: (\\S+)\\)`).exec(
              ids
            )?.[1]
            expect(peer !== undefined && mine(peer), `${ns} ${link.ifname} -> ${peer}`).toBe(true)
          }
        }
        expect(lab.node("nat1").ip).toBe(ROUTER)
      })
    )

    it.scoped(
      "a gets a mapping from miniupnpd and is public, c reaches a there unsolicited, agent stop removes it; without miniupnpd none, and a is cone",
      () =>
        Effect.gen(function* () {
          const lab = yield* NatLab
          // A home router's forwarding: port-forwarded (DNAT) flows may come in from the WAN.
          yield* lab.exec("nat1", "iptables", [
            "-I",
            "FORWARD",
            "-i",
            "wan",
            "-o",
            "lan",
            "-m",
            "conntrack",
            "--ctstate",
            "DNAT",
            "-j",
            "ACCEPT"
          ])
          const c = yield* startAgent(lab, "c", { port: 7900 })
          const aDir = yield* makeNodePath("qm-nat-a-")
          // a (the same node path each time) joined to a fresh world of seeds and helper on `base`..
          const joinA = (base: number) =>
            world(lab, base).pipe(Effect.flatMap((w) => joinWorld(lab, "a", w, { port: 7901, dir: aDir })))

          // Without miniupnpd: the router answers 5351 with "port unreachable"; a gives up, unmapped.
          const bareId = yield* Effect.scoped(
            Effect.gen(function* () {
              const bare = yield* joinA(7920)
              const touched = Date.now()
              yield* poll(status(bare), (s) => s.reachability?.nat === "cone", 60)
              yield* poll(
                Effect.sync(() => bare.proc.stderr()),
                (log) => log.includes("not trying again"),
                120
              )
              expect((yield* status(bare)).portMapping).toBeUndefined()
              expect(yield* pingAt(c, bare, 7901, 3000)).toBe(false)
              // The helper's dial-back (5 s) is filtered at the router: a stays cone.
              yield* Effect.sleep(Math.max(0, touched + 12_000 - Date.now()))
              expect((yield* status(bare)).reachability).toMatchObject({
                nat: "cone",
                addresses: [{ host: ROUTER, port: 7901 }]
              })
              yield* cli(bare, ["agent", "stop"])
              return bare.nodeId
            })
          )

          // With miniupnpd: a PCP mapping of a's port at the router's address.
          const daemon = yield* startMiniupnpd(lab)
          const a = yield* joinA(7930)
          expect(a.nodeId).toBe(bareId) // the same node
          const mapped = yield* poll(status(a), (s) => s.portMapping !== undefined, 60)
          expect(mapped.portMapping).toMatchObject({ host: ROUTER, port: 7901, protocol: "pcp" })
          expect(yield* forwardsTo(lab, 7901)).toBe(true)
          // The helper, which a never contacted, dialled a at the mapping: a is public there.
          const reached = yield* poll(status(a), (s) => s.reachability?.nat === "public", 60)
          expect(reached.reachability!.addresses).toContainEqual({ host: ROUTER, port: 7901 })
          // c never sent a a packet, and knows no seed that could relay a hole punch: it connects directly.
          expect((yield* connections(a)).some((x) => x.nodeId === c.nodeId)).toBe(false)
          expect(yield* pingAt(c, a, 7901, 10_000)).toBe(true)
          expect((yield* connections(c)).find((x) => x.nodeId === a.nodeId)).toMatchObject({
            host: ROUTER,
            port: 7901,
            direction: "forward"
          })
          expect((yield* connections(a)).find((x) => x.nodeId === c.nodeId)).toMatchObject({
            host: lab.node("c").ip,
            direction: "reverse"
          })

          yield* cli(a, ["agent", "stop"])
          expect(yield* forwardsTo(lab, 7901)).toBe(false)
          expect(daemon.stderr()).toContain("PCP: UDP port 7901 mapping removed")
        }),
      150_000
    )

    it.scoped("UPnP IGD where the router speaks neither PCP nor NAT-PMP (miniupnpd with UPnP only)", () =>
      Effect.gen(function* () {
        const lab = yield* NatLab
        const daemon = yield* startMiniupnpd(lab, { upnp: true })
        const c = yield* startAgent(lab, "c", { port: 7910 })
        const a = yield* startAgent(lab, "a", { port: 7911 })
        const mapped = yield* poll(status(a), (s) => s.portMapping !== undefined, 60)
        expect(mapped.portMapping).toMatchObject({ host: ROUTER, port: 7911, protocol: "upnp" })
        expect(yield* forwardsTo(lab, 7911)).toBe(true)
        expect(yield* pingAt(c, a, 7911, 10_000)).toBe(true)
        yield* cli(a, ["agent", "stop"])
        expect(yield* forwardsTo(lab, 7911)).toBe(false)
        expect(daemon.stderr()).toContain("AddPortMapping")
      })
    )
  })
})
