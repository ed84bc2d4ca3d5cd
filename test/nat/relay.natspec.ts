/**
 * Relay fallback with real quicmesh agents (bin/quicmesh.js, built) in the NAT lab, driven
 * through their control API and CLI. Seeds started with `--relay` forward circuits' datagrams
 * for nodes behind symmetric NATs, which reserve with them and announce them; the nodes' own
 * QUIC connection runs end to end over the circuit. Two hostile relays (test/nat/circuitRelay.ts)
 * present their own certificate on the circuit or flip bytes of the packets they carry.
 *
 * Each test prints what it measured. Root only: `npm run build && npm run test:nat`.
 */
import { execFile } from "node:child_process"
import { randomBytes } from "node:crypto"
import { existsSync, readFileSync } from "node:fs"
import { join } from "node:path"
import { expect, layer } from "@effect/vitest"
import { Effect, Either, Exit, Fiber } from "effect"
import * as NodeId from "../../src/services/NodeId.js"
import { BIN, makeNodePath } from "../fixtures/agentProcess.js"
import {
  type AgentInfo,
  cli,
  connections,
  control,
  find,
  ping,
  poll,
  type StartAgentOptions,
  startAgent
} from "./agents.js"
import { describeLab } from "./describeLab.js"
import { type Lab, type LabProcess, NatLab } from "./lab.js"

/** `agent status`'s `relay` field (every agent here has one). */
const relayOf = (agent: AgentInfo) =>
  control(agent, (c) => c.status()).pipe(
    Effect.flatMap((s) =>
      s.relay === undefined ? Effect.fail("no relay field in the status") : Effect.succeed(s.relay)
    )
  )

/** Polls until `agent` holds at least `n` reservations (classification plus the keeper's round). */
const reserved = (agent: AgentInfo, n: number) => poll(relayOf(agent), (r) => r.reservations.length >= n, 160)

const connectionTo = (agent: AgentInfo, target: { readonly nodeId: string }) =>
  Effect.map(connections(agent), (list) => list.find((c) => c.nodeId === target.nodeId))

/** Seeds s1 and s2 on `base`, `base + 1`, serving as relays. */
const seeds = (lab: Lab, base: number) =>
  Effect.gen(function* () {
    const s1 = yield* agent(lab, "s1", { port: base, relay: true })
    const s2 = yield* agent(lab, "s2", { port: base + 1, relay: true })
    return [s1, s2] as const
  })

/** The agent's log lines (stderr) that include every one of `parts`. */
const logLines = (agent: AgentInfo, ...parts: ReadonlyArray<string>) =>
  agent.proc
    .stderr()
    .split("\n")
    .filter((line) => parts.every((p) => line.includes(p)))

/** `quicmesh <args> --node-path dir` with the human output: its stdout. */
const cliText = (agent: AgentInfo, args: ReadonlyArray<string>) =>
  Effect.async<string, string>((resume) => {
    const child = execFile(
      process.execPath,
      [BIN, ...args, "--node-path", agent.dir],
      { encoding: "utf8", timeout: 60_000 },
      (error, stdout, stderr) =>
        resume(error ? Effect.fail(`${error.message}: ${stderr}`) : Effect.succeed(stdout))
    )
    return Effect.sync(() => child.kill("SIGKILL"))
  })

/** A hostile relay (test/nat/circuitRelay.ts) on lab host `name`, as a seed others can name. */
const circuitRelay = (lab: Lab, name: string, mode: "mitm" | "flip") =>
  Effect.gen(function* () {
    const proc = yield* lab.spawn(name, process.execPath, [
      "--import",
      "tsx",
      "test/nat/circuitRelay.ts",
      lab.node(name).ip,
      mode
    ])
    const ready = JSON.parse(yield* proc.waitForLine((l) => l.includes('"ready"'), "60 seconds"))
    const info = { name, nodeId: ready.nodeId, port: ready.port } as AgentInfo
    return { proc, info }
  })

/**
 * A hostile relay x on `base`'s range, a plain seed s1 (no relay), e behind a symmetric NAT
 * with its reservation at x, and d behind another with s1 as its seed: d can reach e only
 * through x.
 */
const hostileWorld = (lab: Lab, base: number, mode: "mitm" | "flip") =>
  Effect.gen(function* () {
    const x = yield* circuitRelay(lab, "x", mode)
    const s1 = yield* agent(lab, "s1", { port: base })
    const e = yield* agent(lab, "e", { port: base + 3, seeds: [x.info, s1] })
    yield* x.proc.waitForLine((l) => l.includes('"reserved"') && l.includes(e.nodeId), "40 seconds")
    const d = yield* agent(lab, "d", { port: base + 2, seeds: [s1] })
    yield* poll(connectionTo(s1, d), (c) => c !== undefined)
    return { x, d, e }
  })

const events = (proc: LabProcess, ev: string) =>
  proc
    .lines()
    .filter((l) => l.includes(`"ev":"${ev}"`))
    .map((l) => JSON.parse(l) as Record<string, unknown>)

/** Whether `needle` occurs in `hay`. */
const contains = (hay: Uint8Array, needle: Uint8Array) => Buffer.from(hay).indexOf(Buffer.from(needle)) >= 0

/** QUIC long-header packets of version 1 in `bytes`: a first byte with both high bits set, then 00 00 00 01. */
const longHeaders = (bytes: Uint8Array) => {
  let n = 0
  for (let i = 0; i + 4 < bytes.length; i++)
    if (
      bytes[i]! >= 0xc0 &&
      bytes[i + 1] === 0 &&
      bytes[i + 2] === 0 &&
      bytes[i + 3] === 0 &&
      bytes[i + 4] === 1
    )
      n++
  return n
}

/** The agents started by the running test, whose logs a failure prints. */
const running: Array<AgentInfo> = []
const NOISE = /Fiber terminated with an unhandled error|SocketError: Close: 1000|^\s+at |port mapping/

/**
 * Every public address of the lab is in one /24, so the routing tables' IP-diversity limit
 * would keep most nodes out of them (and out of lookups' answers): it is off here.
 */
const NO_IP_DIVERSITY = { QUICMESH_IP_DIVERSITY_MAX_PER_GROUP: "0" }

/** `startAgent` (without the IP-diversity limit), its log printed if the test fails. */
const agent = (lab: Lab, name: string, options: StartAgentOptions = {}) =>
  Effect.tap(startAgent(lab, name, { ...options, env: { ...NO_IP_DIVERSITY, ...options.env } }), (a) =>
    Effect.sync(() => running.push(a))
  )

/** Runs a test's body; on failure prints its agents' logs (without the noise). */
const withLogs = <A, E, R>(body: Effect.Effect<A, E, R>) =>
  Effect.sync(() => running.splice(0)).pipe(
    Effect.zipRight(body),
    Effect.onExit((exit) =>
      Effect.sync(() => {
        if (Exit.isSuccess(exit)) return
        for (const a of running) {
          const log = a.proc
            .stderr()
            .split("\n")
            .filter((l) => !NOISE.test(l))
          console.log(`--- ${a.name} ${a.nodeId}\n${log.slice(-60).join("\n")}`)
        }
      })
    )
  )

const ms = (since: number) => Math.round(performance.now() - since)

describeLab("Relays (agents)", () => {
  layer(
    NatLab.layer({
      nats: [
        { kind: "symmetric", hosts: ["d"] },
        { kind: "symmetric", hosts: ["e"] },
        { kind: "symmetric", hosts: ["f"] },
        { kind: "restricted", hosts: ["a"] },
        { kind: "restricted", hosts: ["b"] }
      ],
      publicHosts: ["s1", "s2", "c", "p", "x"]
    }),
    { timeout: "90 seconds", excludeTestServices: true }
  )((it) => {
    it.scoped(
      "symmetric↔symmetric: ping and find 10 of 10 through a seed acting as relay, shown as relayed via it",
      () =>
        withLogs(
          Effect.gen(function* () {
            const lab = yield* NatLab
            const [s1, s2] = yield* seeds(lab, 8100)
            const d = yield* agent(lab, "d", { port: 8102, seeds: [s1, s2] })
            const e = yield* agent(lab, "e", { port: 8103, seeds: [s1, s2] })
            yield* reserved(e, 2)
            yield* reserved(d, 2)
            // A public node that contacts nobody: the seeds know of it, d learns of it by a lookup.
            const c = yield* agent(lab, "c", { port: 8104 })
            for (const seed of [s1, s2])
              yield* control(seed, (x) =>
                x.nodesAdd({ nodeId: c.nodeId, host: lab.node("c").ip, port: c.port })
              )
            // Cold: d holds no connection to either yet.
            expect(yield* connectionTo(d, e)).toBeUndefined()
            expect(yield* connectionTo(d, c)).toBeUndefined()
            let started = performance.now()
            const pings = [yield* ping(d, e, 10_000)]
            const relayedCold = ms(started)
            started = performance.now()
            expect(yield* ping(d, c, 10_000)).toBe(true)
            const directCold = ms(started)
            console.log(
              `cold ping: through the relay ${relayedCold} ms, direct to a public node ${directCold} ms (${(relayedCold / directCold).toFixed(1)}×)`
            )
            for (let i = 1; i < 10; i++) pings.push(yield* ping(d, e, 10_000))
            const finds: Array<boolean> = []
            for (let i = 0; i < 10; i++) finds.push((yield* find(d, e, 10_000)).success)
            expect(pings).toEqual(Array(10).fill(true))
            expect(finds).toEqual(Array(10).fill(true))

            const toE = yield* connectionTo(d, e)
            const relay = [s1, s2].find((s) => s.nodeId === toE?.relay)
            expect(toE).toMatchObject({ path: "relayed" })
            expect(relay).toBeDefined()
            expect(yield* connectionTo(e, d)).toMatchObject({ path: "relayed", relay: relay!.nodeId })
            const server = (yield* relayOf(relay!)).server!
            expect(server.circuits).toBe(1)
            expect(server.bytesForwarded).toBeGreaterThan(0)
            expect((yield* relayOf(d)).relayedConnections).toBe(1)
            // The human table says it too.
            const table = yield* cliText(d, ["nodes", "connections"])
            const row = table.split("\n").find((l) => l.includes(e.nodeId))
            expect(row).toContain(`relayed via ${relay!.nodeId}`)
          })
        )
    )

    it.scoped("restricted↔restricted and public↔symmetric stay direct: the seeds relay nothing", () =>
      withLogs(
        Effect.gen(function* () {
          const lab = yield* NatLab
          const relays = yield* seeds(lab, 8200)
          const a = yield* agent(lab, "a", { port: 8202, seeds: relays })
          const b = yield* agent(lab, "b", { port: 8203, seeds: relays })
          // c and d close idle connections after 4 s, so that c's dial to d below is a fresh one;
          // d's router forgets a flow 3 s after its last packet (d's keep-alive holds its seeds'),
          // so d's earlier packets to c (its join asked c) leave no opening for c in its NAT.
          const idle = { QUICMESH_CONNECTION_IDLE_TIMEOUT_TIME: "4 seconds" }
          const c = yield* agent(lab, "c", { port: 8204, seeds: relays, env: idle })
          const nat = (x: AgentInfo) =>
            control(x, (api) => api.status()).pipe(Effect.map((s) => s.reachability?.nat))
          // c knows its address is reachable (classified) before d exists.
          for (const x of [a, b, c]) yield* poll(nat(x), (n) => n === "cone" || n === "public", 80)
          yield* Effect.acquireRelease(lab.setUdpTimeout("nat1", 3), () =>
            Effect.ignore(lab.setUdpTimeout("nat1", 120))
          )
          const d = yield* agent(lab, "d", {
            port: 8205,
            seeds: relays,
            env: { ...idle, QUICMESH_CONNECTION_KEEP_ALIVE_INTERVAL_TIME: "1 second" }
          })
          // d is reachable only through the relays, and says so.
          yield* reserved(d, 1)
          yield* poll(connectionTo(c, d), (x) => x === undefined, 80)
          // (Flows of the first test's agent on nat1, from another port, open nothing for d.)
          yield* poll(
            lab.conntrackUdp("nat1"),
            (flows) => !flows.some((l) => l.includes(`dst=${lab.node("c").ip} sport=${d.port} `)),
            80
          )

          expect(yield* ping(a, b, 10_000)).toBe(true)
          expect(yield* ping(b, a, 10_000)).toBe(true)
          // c's dial cannot pass d's router: d, signalled through the seeds, dials c back.
          const started = performance.now()
          expect(yield* ping(c, d, 10_000)).toBe(true)
          console.log(`public→symmetric cold ping (connection reversal): ${ms(started)} ms`)
          expect(yield* ping(d, c, 10_000)).toBe(true)
          const paths = {
            ab: yield* connectionTo(a, b),
            ba: yield* connectionTo(b, a),
            cd: yield* connectionTo(c, d),
            dc: yield* connectionTo(d, c)
          }
          console.log(
            `paths: ${Object.entries(paths)
              .map(([k, v]) => `${k} ${v?.path} ${v?.direction}`)
              .join(", ")}`
          )
          for (const conn of Object.values(paths)) {
            expect(conn).toBeDefined()
            expect(conn!.path).not.toBe("relayed")
            expect(conn!.relay).toBeNull()
          }
          expect(logLines(c, "relayed connection")).toEqual([])
          for (const seed of relays)
            expect((yield* relayOf(seed)).server).toMatchObject({ circuits: 0, bytesForwarded: 0 })
        })
      )
    )

    it.scoped(
      "a relay that presents its own certificate on the circuit: the source's dial fails (mismatch), nobody connects to a wrong NodeId",
      () =>
        withLogs(
          Effect.gen(function* () {
            const lab = yield* NatLab
            const { x, d, e } = yield* hostileWorld(lab, 8300, "mitm")

            expect(yield* ping(d, e, 5_000)).toBe(false)
            // The relay did attack: it answered the CONNECT and ran a handshake of its own on the circuit.
            expect(
              events(x.proc, "connect").some((ev) => ev.source === d.nodeId && ev.target === e.nodeId)
            ).toBe(true)
            // The source's typed failure: the certificate on the circuit is not e's.
            const failed = logLines(
              d,
              "relayed dial failed",
              `node ${e.nodeId}: mismatch: through relay ${x.info.nodeId}`
            )
            console.log(`source: ${failed[0]?.replace(/^.*relayed dial failed: /, "")}`)
            expect(failed.length).toBeGreaterThan(0)
            // Nobody holds a connection to the wrong NodeId, and none through the relay.
            const fromD = yield* connections(d)
            expect(fromD.find((c) => c.nodeId === e.nodeId)).toBeUndefined()
            expect(fromD.filter((c) => c.path === "relayed")).toEqual([])
            // The relay's own end never completed a handshake with the source.
            yield* x.proc.waitForLine((l) => l.includes('"accept-ended"'), "20 seconds")
            expect(events(x.proc, "accept-ended").every((ev) => ev.fromSource === 0)).toBe(true)
            // It dialled the target naming d as the source: what the target holds is the relay's
            // own, authenticated NodeId, never d's.
            const impersonated = events(x.proc, "impersonated")
            console.log(`relay's dial to the target posing as the source: ${JSON.stringify(impersonated[0])}`)
            expect(yield* connectionTo(e, d)).toBeUndefined()
            expect(
              (yield* connections(e)).every((c) => c.path !== "relayed" || c.nodeId === x.info.nodeId)
            ).toBe(true)
          })
        )
    )

    it.scoped(
      "a relay that flips bytes of the packets it carries: the connection over it fails on both ends, typed",
      () =>
        withLogs(
          Effect.gen(function* () {
            const lab = yield* NatLab
            const { x, d, e } = yield* hostileWorld(lab, 8400, "flip")

            // Honest at first: the connection runs over it.
            expect(yield* ping(d, e, 10_000)).toBe(true)
            expect(yield* connectionTo(d, e)).toMatchObject({ path: "relayed", relay: x.info.nodeId })
            expect(yield* connectionTo(e, d)).toMatchObject({ path: "relayed", relay: x.info.nodeId })
            yield* x.proc.writeLine("arm")

            // Altered packets of the established connection fail their authentication: no answer.
            let started = performance.now()
            expect(yield* ping(d, e, 5_000)).toBe(false)
            console.log(`established connection, packets flipped: ping false after ${ms(started)} ms`)
            expect(yield* connectionTo(d, e)).toBeUndefined()
            // The source closed its end, so the circuit ended and the target's connection with it.
            yield* poll(connectionTo(e, d), (c) => c === undefined, 80)
            // A new connection over it cannot complete its handshake: a typed timeout.
            started = performance.now()
            expect(yield* ping(d, e, 5_000)).toBe(false)
            console.log(`new connection, packets flipped: ping false after ${ms(started)} ms`)
            const failed = logLines(
              d,
              "relayed dial failed",
              `node ${e.nodeId}: timeout: through relay ${x.info.nodeId}`
            )
            expect(failed.length).toBeGreaterThan(0)
            expect(yield* connectionTo(d, e)).toBeUndefined()
            expect(yield* connectionTo(e, d)).toBeUndefined()
            yield* x.proc.waitForLine((l) => l.includes('"splice-ended"'), "20 seconds")
            const flipped = events(x.proc, "splice-ended").reduce((n, ev) => n + Number(ev.flipped), 0)
            console.log(`the relay flipped ${flipped} packets`)
            expect(flipped).toBeGreaterThan(0)
          })
        )
    )

    it.scoped(
      "the relay never sees plaintext: a marker sent in a query over a relayed connection is not in what it forwarded",
      () =>
        withLogs(
          Effect.gen(function* () {
            const lab = yield* NatLab
            const tapDir = yield* makeNodePath("qm-nat-tap-")
            const tap = join(tapDir, "s1.tap")
            // Only s1 relays (s2 is a plain seed): every circuit goes through s1's tap.
            const s1 = yield* agent(lab, "s1", {
              port: 8500,
              relay: true,
              env: { QUICMESH_TEST_RELAY_TAP: tap }
            })
            const s2 = yield* agent(lab, "s2", { port: 8501 })
            const d = yield* agent(lab, "d", { port: 8502, seeds: [s1, s2] })
            const e = yield* agent(lab, "e", { port: 8503, seeds: [s1, s2] })
            yield* reserved(e, 1)
            expect(yield* ping(d, e, 10_000)).toBe(true)
            expect(yield* connectionTo(d, e)).toMatchObject({ path: "relayed", relay: s1.nodeId })

            // A lookup of the marker asks e too (over the relayed connection: the seeds name e as one
            // of the closest nodes they know), so the marker is in a query's payload e receives.
            const marker = NodeId.encode(
              NodeId.unsafeFromBytes(Buffer.concat([Buffer.from("QMRELAYPLAINTEXT"), randomBytes(16)]))
            )
            const before = existsSync(tap) ? readFileSync(tap).length : 0
            const found = yield* control(d, (c) => c.nodesFind({ nodeId: marker, timeout: 5_000 }))
            expect(found.success).toBe(false)
            const bytes = readFileSync(tap)
            console.log(
              `relay tap: ${bytes.length} bytes, ${bytes.length - before} during the marker's lookup`
            )
            expect(bytes.length - before).toBeGreaterThan(0)
            // What the tap holds is the circuit's QUIC packets (long headers of version 1 among them).
            expect(longHeaders(bytes)).toBeGreaterThan(0)
            // The marker, as text or raw bytes or either half of it (a chunk boundary may split it),
            // is not there; nor the two nodes' NodeIds (their certificates travel encrypted).
            const text = Buffer.from(marker)
            const raw = Buffer.from(Either.getOrThrow(NodeId.decode(marker)))
            for (const needle of [text, text.subarray(0, 26), text.subarray(26), raw, raw.subarray(0, 16)])
              expect(contains(bytes, needle)).toBe(false)
            for (const agent of [d, e]) {
              expect(contains(bytes, Buffer.from(agent.nodeId))).toBe(false)
              expect(contains(bytes, Either.getOrThrow(NodeId.decode(agent.nodeId)))).toBe(false)
            }
          })
        )
    )

    it.scoped(
      "the relay is killed during a relayed call: the call fails within its timeout, the next ping goes through the other seed",
      () =>
        withLogs(
          Effect.gen(function* () {
            const lab = yield* NatLab
            const [s1, s2] = yield* seeds(lab, 8600)
            const d = yield* agent(lab, "d", { port: 8602, seeds: [s1, s2] })
            const e = yield* agent(lab, "e", { port: 8603, seeds: [s1, s2] })
            yield* reserved(e, 2)
            expect(yield* ping(d, e, 10_000)).toBe(true)
            const first = yield* connectionTo(d, e)
            const [dead, other] = first?.relay === s1.nodeId ? [s1, s2] : [s2, s1]
            expect(first).toMatchObject({ path: "relayed", relay: dead.nodeId })

            // The relay stalls, a call goes out through it, and then the relay dies.
            yield* dead.proc.kill("SIGSTOP")
            const started = performance.now()
            const call = yield* Effect.fork(
              Effect.either(cli(d, ["nodes", "ping", e.nodeId, "--timeout", "6000"]))
            )
            yield* Effect.sleep("1 second")
            yield* dead.proc.kill("SIGKILL")
            const result = yield* Fiber.join(call)
            const elapsed = ms(started)
            expect(Either.isLeft(result)).toBe(true)
            const failure = Either.isLeft(result) ? result.left : undefined
            console.log(
              `call during the kill: exit ${failure?.code} after ${elapsed} ms: ${failure?.stderr.trim()}`
            )
            expect(failure).toMatchObject({ _tag: "CliError", code: 1 })
            expect(failure!.stderr).toContain(`ping ${e.nodeId} failed`)
            // The timeout plus the CLI's start-up.
            expect(elapsed).toBeLessThan(6_000 + 4_000)

            const next = performance.now()
            expect(yield* ping(d, e, 10_000)).toBe(true)
            console.log(`next ping through the other seed: ${ms(next)} ms`)
            expect(yield* connectionTo(d, e)).toMatchObject({ path: "relayed", relay: other.nodeId })
          })
        )
    )

    it.scoped(
      "upgrade: a public node that reaches a symmetric one through the relay before it knows its own mapping ends up direct",
      () =>
        withLogs(
          Effect.gen(function* () {
            const lab = yield* NatLab
            const [s1, s2] = yield* seeds(lab, 8700)
            const d = yield* agent(lab, "d", { port: 8702, seeds: [s1, s2] })
            yield* reserved(d, 2)
            // p has one seed: one observer cannot confirm its address, so it cannot count on being
            // reachable, and dials the relay-only d through a relay at once.
            const p = yield* agent(lab, "p", { port: 8704, seeds: [s1] })
            // Pings every 50 ms for a second from p's start: the first makes the relayed
            // connection, later ones are in flight while it moves to a direct one.
            const started = performance.now()
            const results = yield* Effect.forEach(
              Array.from({ length: 21 }, (_, i) => i),
              (i) => Effect.delay(ping(p, d, 10_000), `${i * 50} millis`),
              { concurrency: "unbounded" }
            )
            const direct = yield* poll(connectionTo(p, d), (c) => c !== undefined && c.path !== "relayed", 40)
            console.log(
              `p→d: ${results.filter((r) => r).length}/21 pings answered; ${direct?.path} (${direct?.direction}) ${ms(started)} ms after p's start`
            )
            expect(results).toEqual(Array(21).fill(true))
            // It started relayed (its log says so), and is direct now.
            expect(logLines(p, "relayed connection to", d.nodeId).length).toBeGreaterThan(0)
            // d dialled p back (p's address is open to it): d's side is direct too.
            expect((yield* connectionTo(d, p))?.path).not.toBe("relayed")
            // The relayed connection was closed: no circuit left on either seed.
            for (const seed of [s1, s2]) yield* poll(relayOf(seed), (r) => r.server!.circuits === 0, 40)
            expect(yield* ping(p, d, 5_000)).toBe(true)
          })
        )
    )

    it.scoped(
      "reservation and circuit limits: over them a typed refusal (relay-refused), the relay's other circuit unharmed",
      () =>
        withLogs(
          Effect.gen(function* () {
            const lab = yield* NatLab
            const limits = { QUICMESH_RELAY_MAX_CIRCUITS: "1", QUICMESH_RELAY_MAX_RESERVATIONS: "2" }
            const s1 = yield* agent(lab, "s1", { port: 8800, relay: true, env: limits })
            // s2 is a plain seed that never talks to s1: it would reserve with it (s2 is not public
            // here) and take one of the two places meant for d and e.
            const s2 = yield* agent(lab, "s2", { port: 8801 })
            yield* control(s2, (api) => api.gatesDeny({ entry: s1.nodeId }))
            const d = yield* agent(lab, "d", { port: 8802, seeds: [s1, s2] })
            const e = yield* agent(lab, "e", { port: 8803, seeds: [s1, s2] })
            yield* reserved(d, 1)
            yield* reserved(e, 1)
            // The one circuit: d to e.
            expect(yield* ping(d, e, 10_000)).toBe(true)
            expect(yield* connectionTo(d, e)).toMatchObject({ path: "relayed", relay: s1.nodeId })
            expect((yield* relayOf(s1)).server).toMatchObject({ circuits: 1, reservations: 2 })

            // f comes: its reservation is over the limit, and so is every circuit it asks for (its
            // join's lookup asks for some already: d and e are among the nodes the seeds name).
            const f = yield* agent(lab, "f", { port: 8804, seeds: [s1, s2] })
            yield* poll(
              Effect.sync(() => logLines(f, "no reservation with relay", "reservation-limit")),
              (lines) => lines.length > 0,
              120
            )
            expect((yield* relayOf(f)).reservations).toEqual([])
            expect(yield* ping(f, e, 5_000)).toBe(false)
            const refused = logLines(f, "relayed dial failed", `node ${e.nodeId}: relay-refused`)
            console.log(`over the circuit limit: ${refused[0]?.replace(/^.*relayed dial failed: /, "")}`)
            expect(
              refused.some((l) => l.includes("circuit-limit") && l.includes("maximum of 1 circuits"))
            ).toBe(true)
            const server = (yield* relayOf(s1)).server!
            expect(server).toMatchObject({ circuits: 1, reservations: 2 })
            expect(server.refused["circuit-limit"]).toBeGreaterThanOrEqual(1)
            expect(server.refused["reservation-limit"]).toBeGreaterThanOrEqual(1)
            // d's circuit is unharmed: still the same relayed connection, and it answers.
            expect(yield* ping(d, e, 5_000)).toBe(true)
            expect(yield* connectionTo(d, e)).toMatchObject({ path: "relayed", relay: s1.nodeId })
            expect(yield* connectionTo(e, d)).toMatchObject({ path: "relayed", relay: s1.nodeId })
          })
        )
    )
  })
})
