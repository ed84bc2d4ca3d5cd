/**
 * The NAT lab proven with plain UDP sockets (test/nat/udpTool.mjs run inside the namespaces):
 * NAT mappings and the public source address, no unsolicited access to private addresses,
 * endpoint-dependent filtering, UDP hole punching through two "restricted" NATs, the per-destination
 * ports of a "symmetric" NAT defeating a punch to the seed-observed port, and conntrack idle expiry.
 *
 * Root only: run with `npm run test:nat`.
 */
import { execFile, spawn } from "node:child_process"
import { fileURLToPath } from "node:url"
import { promisify } from "node:util"
import { expect, it, layer } from "@effect/vitest"
import { Effect } from "effect"
import { describeLab } from "./describeLab.js"
import { type Lab, makeLab, NatLab } from "./lab.js"

const execFileAsync = promisify(execFile)

const TOOL = fileURLToPath(new URL("./udpTool.mjs", import.meta.url))
const RELAY_MAIN = fileURLToPath(new URL("../faults/udpRelayMain.ts", import.meta.url))

interface Recv {
  readonly from: string
  readonly port: number
  readonly data: string
}

const toRecv = ({ from, port, data }: Recv): Recv => ({ from, port, data })

/** A UDP socket in a lab node, driven through udpTool.mjs; lives as long as the test's scope. */
const udpEndpoint = (
  lab: Lab,
  name: string,
  options: { readonly port?: number; readonly echo?: boolean } = {}
) =>
  Effect.gen(function* () {
    const proc = yield* lab.spawn(name, process.execPath, [
      TOOL,
      String(options.port ?? 0),
      ...(options.echo ? ["--echo"] : [])
    ])
    const ready = JSON.parse(yield* proc.waitForLine((l) => l.includes('"ready"'))) as { port: number }
    const received = () =>
      proc
        .lines()
        .map((l) => JSON.parse(l) as Recv & { ev: string })
        .filter((e) => e.ev === "recv")
        .map(toRecv)
    return {
      port: ready.port,
      /** Sends and waits until the datagram has been handed to the kernel. */
      send: (host: string, port: number, data: string) =>
        proc
          .writeLine(JSON.stringify({ op: "send", host, port, data }))
          .pipe(
            Effect.zipRight(
              proc.waitForLine(
                (l) => l.includes('"sent"') && (JSON.parse(l) as { data: string }).data === data
              )
            ),
            Effect.asVoid
          ),
      /** The first datagram whose payload starts with `prefix` (waits up to 3 s). */
      recv: (prefix: string) =>
        proc
          .waitForLine(
            (l) => l.includes('"recv"') && (JSON.parse(l) as Recv).data.startsWith(prefix),
            "3 seconds"
          )
          .pipe(Effect.map((l) => toRecv(JSON.parse(l) as Recv))),
      received
    }
  })

type Endpoint = Effect.Effect.Success<ReturnType<typeof udpEndpoint>>

/** Parses the seed's echo "echo:<data>|<addr>:<port>" into the source the seed saw. */
const seenBySeed = (reply: Recv) => {
  const [, addr, port] = /\|([\d.]+):(\d+)$/.exec(reply.data) ?? []
  return { host: addr!, port: Number(port) }
}

/** Asks the seed's echo endpoint which public address/port `ep` maps to. */
const discover = (ep: Endpoint, seedIp: string, seedPort: number, tag: string) =>
  Effect.gen(function* () {
    yield* ep.send(seedIp, seedPort, tag)
    return seenBySeed(yield* ep.recv(`echo:${tag}`))
  })

describeLab("NAT lab", () => {
  layer(
    NatLab.layer({
      nats: [
        { kind: "restricted", hosts: ["a"] },
        { kind: "restricted", hosts: ["b"] },
        { kind: "symmetric", hosts: ["d"] },
        { kind: "restricted", hosts: ["e"] }
      ],
      publicHosts: ["seed", "c"]
    }),
    { timeout: "60 seconds", excludeTestServices: true }
  )((it) => {
    it.scoped("a LAN host reaches the seed; the seed sees the NAT's public address, port kept", () =>
      Effect.gen(function* () {
        const lab = yield* NatLab
        const seed = lab.node("seed")
        expect(lab.node("a")).toMatchObject({ role: "private", ip: "10.77.1.10", publicIp: "203.0.113.101" })
        const echo = yield* udpEndpoint(lab, "seed", { port: 4001, echo: true })
        const a = yield* udpEndpoint(lab, "a", { port: 5001 })
        yield* a.send(seed.ip, echo.port, "hello")
        const reply = yield* a.recv("echo:hello")
        expect(reply).toMatchObject({ from: seed.ip, port: 4001 })
        expect(seenBySeed(reply)).toEqual({ host: "203.0.113.101", port: 5001 })
        // The echo's own log line may come after its reply reached a: wait for it.
        yield* echo.recv("hello")
        expect(echo.received().find((r) => r.data === "hello")).toMatchObject({
          from: "203.0.113.101",
          port: 5001
        })
        // The mapping lives in nat1's conntrack table.
        const entries = yield* lab.conntrackUdp("nat1")
        expect(entries.some((l) => l.includes("src=10.77.1.10") && l.includes("sport=5001"))).toBe(true)
      })
    )

    it.scoped("the public side cannot reach private addresses or other peers' mappings unsolicited", () =>
      Effect.gen(function* () {
        const lab = yield* NatLab
        const seed = lab.node("seed")
        const c = lab.node("c")
        const echo = yield* udpEndpoint(lab, "seed", { port: 4002, echo: true })
        const a = yield* udpEndpoint(lab, "a", { port: 5002 })
        const cEp = yield* udpEndpoint(lab, "c", { port: 6002 })
        const mapping = yield* discover(a, seed.ip, echo.port, "map")
        // c routes the LAN through nat1 explicitly: the router still refuses new inbound flows.
        yield* lab.exec("c", "ip", ["route", "add", "10.77.1.0/24", "via", lab.node("nat1").ip])
        yield* cEp.send("10.77.1.10", a.port, "to-private-via-route")
        yield* echo.send("10.77.1.10", a.port, "to-private-from-seed")
        // c knows a's public mapping, but a only talked to the seed (endpoint-dependent filtering).
        yield* cEp.send(mapping.host, mapping.port, "to-mapping-from-c")
        // Control: the seed, which a talked to, does get through that mapping, after all the above.
        yield* echo.send(mapping.host, mapping.port, "control-from-seed")
        expect(yield* a.recv("control-from-seed")).toMatchObject({ from: seed.ip, port: 4002 })
        yield* Effect.sleep("200 millis")
        expect(a.received().map((r) => r.data)).toEqual(["echo:map|203.0.113.101:5002", "control-from-seed"])
        yield* lab.exec("c", "ip", ["route", "del", "10.77.1.0/24"])
        expect(c.role).toBe("public")
      })
    )

    it.scoped("restricted NATs: a UDP hole punch between a and b works with plain sockets", () =>
      Effect.gen(function* () {
        const lab = yield* NatLab
        const seed = lab.node("seed")
        const echo = yield* udpEndpoint(lab, "seed", { port: 4003, echo: true })
        const a = yield* udpEndpoint(lab, "a", { port: 5003 })
        const b = yield* udpEndpoint(lab, "b", { port: 5003 })
        const aPublic = yield* discover(a, seed.ip, echo.port, "who-a")
        const bPublic = yield* discover(b, seed.ip, echo.port, "who-b")
        expect(aPublic).toEqual({ host: "203.0.113.101", port: 5003 })
        expect(bPublic).toEqual({ host: "203.0.113.102", port: 5003 })
        // a's first packet opens a's NAT towards b but is dropped by b's NAT...
        yield* a.send(bPublic.host, bPublic.port, "punch-a1")
        yield* Effect.sleep("100 millis")
        // ...b's packet then matches the hole a opened, and a's next one the hole b opened.
        yield* b.send(aPublic.host, aPublic.port, "punch-b1")
        expect(yield* a.recv("punch-b1")).toEqual({ from: "203.0.113.102", port: 5003, data: "punch-b1" })
        yield* a.send(bPublic.host, bPublic.port, "punch-a2")
        expect(yield* b.recv("punch-a2")).toEqual({ from: "203.0.113.101", port: 5003, data: "punch-a2" })
        for (let i = 0; i < 3; i++) {
          yield* a.send(bPublic.host, bPublic.port, `a${i}`)
          yield* b.send(aPublic.host, aPublic.port, `b${i}`)
          yield* b.recv(`a${i}`)
          yield* a.recv(`b${i}`)
        }
        expect(b.received().some((r) => r.data === "punch-a1")).toBe(false)
      })
    )

    it.scoped("symmetric NAT: a new port per destination, so punching to the seed-observed port fails", () =>
      Effect.gen(function* () {
        const lab = yield* NatLab
        const seed = lab.node("seed")
        const echo = yield* udpEndpoint(lab, "seed", { port: 4004, echo: true })
        const cEcho = yield* udpEndpoint(lab, "c", { port: 4004, echo: true })
        const a = yield* udpEndpoint(lab, "a", { port: 5004 })
        const b = yield* udpEndpoint(lab, "b", { port: 5004 })
        const d = yield* udpEndpoint(lab, "d", { port: 5004 })
        // Restricted: one mapping whatever the destination. Symmetric: one per destination.
        const aToSeed = yield* discover(a, seed.ip, echo.port, "a-seed")
        const aToC = yield* discover(a, lab.node("c").ip, cEcho.port, "a-c")
        expect(aToC).toEqual(aToSeed)
        const dToSeed = yield* discover(d, seed.ip, echo.port, "d-seed")
        const dToC = yield* discover(d, lab.node("c").ip, cEcho.port, "d-c")
        expect(dToSeed.host).toBe("203.0.113.103")
        expect(dToC.host).toBe("203.0.113.103")
        expect(dToC.port).not.toBe(dToSeed.port)
        // b and d punch using the ports the seed observed: nothing gets through, in either direction.
        const bPublic = yield* discover(b, seed.ip, echo.port, "b-seed")
        for (let i = 0; i < 3; i++) {
          yield* d.send(bPublic.host, bPublic.port, `d-punch${i}`)
          yield* b.send(dToSeed.host, dToSeed.port, `b-punch${i}`)
          yield* Effect.sleep("50 millis")
        }
        // Control: the seed still reaches d through d's seed mapping, after all the punches.
        yield* echo.send(dToSeed.host, dToSeed.port, "control")
        yield* d.recv("control")
        yield* Effect.sleep("200 millis")
        expect(d.received().filter((r) => r.data.includes("punch"))).toEqual([])
        expect(b.received().filter((r) => r.data.includes("punch"))).toEqual([])
      })
    )

    it.scoped("idle expiry: a shortened conntrack UDP timeout (per NAT namespace) drops the mapping", () =>
      Effect.gen(function* () {
        const lab = yield* NatLab
        const seed = lab.node("seed")
        yield* lab.setUdpTimeout("nat4", 1)
        const sysctl = (name: string) =>
          lab
            .exec(name, "sysctl", ["-n", "net.netfilter.nf_conntrack_udp_timeout_stream"])
            .pipe(Effect.map((r) => Number(r.stdout.trim())))
        expect(yield* sysctl("nat4")).toBe(1)
        expect(yield* sysctl("nat1")).toBeGreaterThan(1) // other routers keep their own value
        const echo = yield* udpEndpoint(lab, "seed", { port: 4005, echo: true })
        const e = yield* udpEndpoint(lab, "e", { port: 5005 })
        const mapping = yield* discover(e, seed.ip, echo.port, "first")
        // Still fresh: the seed gets through.
        yield* echo.send(mapping.host, mapping.port, "fresh")
        yield* e.recv("fresh")
        const hasEntry = lab
          .conntrackUdp("nat4")
          .pipe(
            Effect.map((lines) => lines.some((l) => l.includes("src=10.77.4.10") && l.includes("sport=5005")))
          )
        expect(yield* hasEntry).toBe(true)
        yield* Effect.sleep("2500 millis")
        expect(yield* hasEntry).toBe(false)
        yield* echo.send(mapping.host, mapping.port, "after-expiry")
        yield* Effect.sleep("100 millis")
        // Control: a new outbound packet creates a new mapping that works again.
        const again = yield* discover(e, seed.ip, echo.port, "second")
        expect(again).toEqual(mapping)
        yield* Effect.sleep("100 millis")
        expect(e.received().some((r) => r.data === "after-expiry")).toBe(false)
      })
    )

    it.scoped("the UDP fault relay runs inside a namespace (public host c relaying to the seed)", () =>
      Effect.gen(function* () {
        const lab = yield* NatLab
        const seed = lab.node("seed")
        const c = lab.node("c")
        const echo = yield* udpEndpoint(lab, "seed", { port: 4006, echo: true })
        const relay = yield* lab.spawn("c", process.execPath, [
          "--import",
          "tsx",
          RELAY_MAIN,
          JSON.stringify({
            listenHost: "0.0.0.0",
            listenPort: 7000,
            targetHost: seed.ip,
            targetPort: echo.port,
            lossRate: 0,
            delayMs: 50,
            seed: 1
          })
        ])
        yield* relay.waitForLine((l) => l.includes('"ready"'), "20 seconds")
        const a = yield* udpEndpoint(lab, "a", { port: 5006 })
        const sentAt = performance.now()
        yield* a.send(c.ip, 7000, "via-relay")
        const reply = yield* a.recv("echo:via-relay")
        // Two delayed hops, the reply comes from the relay, and the seed saw the relay as the source.
        expect(performance.now() - sentAt).toBeGreaterThanOrEqual(99)
        expect(reply.from).toBe(c.ip)
        expect(seenBySeed(reply).host).toBe(c.ip)
        // Cut the link at runtime through the relay's stdin: nothing gets through any more.
        yield* relay.writeLine(JSON.stringify({ op: "update", lossRate: 1 }))
        yield* relay.waitForLine((l) => l.includes('"updated"'))
        yield* a.send(c.ip, 7000, "cut")
        yield* Effect.sleep("300 millis")
        expect(a.received().some((r) => r.data.startsWith("echo:cut"))).toBe(false)
        yield* relay.writeLine(JSON.stringify({ op: "stats" }))
        const stats = JSON.parse(yield* relay.waitForLine((l) => l.includes('"stats"'))) as {
          toTarget: { received: number; dropped: number }
        }
        expect(stats.toTarget).toMatchObject({ received: 2, dropped: 1 })
      })
    )
  })
})

describeLab("NAT lab cleanup", () => {
  const namespaces = Effect.promise(() =>
    execFileAsync("ip", ["netns", "list"]).then(({ stdout }) =>
      stdout
        .split("\n")
        .map((l) => l.split(" ")[0] ?? "")
        .filter((n) => n !== "")
    )
  )

  it.live("teardown on scope close, on SIGTERM, and stale namespaces of dead processes", () =>
    Effect.gen(function* () {
      // A process that builds a lab and is then terminated: its signal handler deletes the namespaces.
      const child = spawn(
        process.execPath,
        ["--import", "tsx", fileURLToPath(new URL("./labChild.ts", import.meta.url))],
        {
          stdio: ["ignore", "pipe", "inherit"]
        }
      )
      const first = yield* Effect.promise(
        () =>
          new Promise<string>((resolve) => {
            let out = ""
            child.stdout.on("data", (chunk) => {
              out += chunk
              if (out.includes("\n")) resolve(out.split("\n")[0]!)
            })
            child.on("exit", () => resolve(out))
          })
      )
      const childLab = JSON.parse(first) as { namespaces: Array<string>; id: string }
      expect(childLab.namespaces.length).toBe(3)
      expect(yield* namespaces).toEqual(expect.arrayContaining(childLab.namespaces))
      child.kill("SIGTERM")
      yield* Effect.promise(() => new Promise((resolve) => child.on("exit", resolve)))
      expect((yield* namespaces).filter((n) => n.startsWith(`qm-${childLab.id}-`))).toEqual([])

      // A leftover of a crashed run (its pid is gone) is removed when the next lab starts.
      const dead = spawn("true")
      yield* Effect.promise(() => new Promise((resolve) => dead.on("exit", resolve)))
      const stale = `qm-${dead.pid}-dead-x`
      yield* Effect.promise(() => execFileAsync("ip", ["netns", "add", stale]))
      const ours = yield* Effect.scoped(
        Effect.gen(function* () {
          const lab = yield* makeLab({ nats: [{}], publicHosts: ["seed"] })
          const listed = yield* namespaces
          expect(listed).not.toContain(stale)
          const mine = listed.filter((n) => n.startsWith(`qm-${lab.id}-`))
          expect(mine.sort()).toEqual(
            [...lab.nodes.values(), { ns: `qm-${lab.id}-pub` }].map((n) => n.ns).sort()
          )
          return lab.id
        })
      )
      // Scope closed: every namespace of that lab is gone.
      expect((yield* namespaces).filter((n) => n.startsWith(`qm-${ours}-`))).toEqual([])
    })
  )
})
