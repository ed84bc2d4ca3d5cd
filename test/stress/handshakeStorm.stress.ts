/**
 * 500 simultaneous inbound QUIC handshakes against one agent (a `quicmesh agent` child process;
 * run `npm run build` first). A few source processes (handshakeStormChild.ts) hold raw
 * `@matrixai/quic` clients, each with an Ed25519 certificate of its own — most well-formed, some
 * garbage (expired, broken signature) — and dial all at once; a client the agent refuses at its
 * handshake cap (CONNECTION_REFUSED, "busy") asks again after a short back-off, as an honest
 * client does. Meanwhile the agent's control API is asked for its status and connections again
 * and again. The targets (issue #18):
 * - every valid client gets in (and the agent idles them all away), none is refused for its
 *   certificate; the p99 handshake time (from "go", refusals included) is under HANDSHAKE_P99_MS;
 * - every garbage client is refused (a TLS error);
 * - the control API stays responsive: no error, p99 answer under CONTROL_P99_MS;
 * - the handshake cap holds (the high water from `status.transport` never passes
 *   `maxInboundHandshakes`) and was reached (the agent refused some attempts explicitly);
 * - once the agent's idle timeout has closed every connection, its RSS (/proc/<pid>/status,
 *   read after a full GC the test asks for) is back within RSS_BOUND_MIB of the baseline taken
 *   after a warm-up storm of the same size (the check: a storm leaves nothing behind). The RSS
 *   before the warm-up, and the RSS after the storm before any forced GC, are printed beside it.
 * Size: QUICMESH_STORM_VALID (default 450) + QUICMESH_STORM_GARBAGE (default 50). The bounds
 * are printed with the figures.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { readFileSync } from "node:fs"
import { createInterface } from "node:readline"
import { fileURLToPath } from "node:url"
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Fiber, Queue, type Scope } from "effect"
import { type AgentProcess, control, makeNodePath, spawnAgent } from "../fixtures/agentProcess.js"
import type { Plan, StormResult } from "./handshakeStormChild.js"

const VALID = Number(process.env.QUICMESH_STORM_VALID ?? 450)
const GARBAGE = Number(process.env.QUICMESH_STORM_GARBAGE ?? 50)
const SOURCES = 2
const IDLE_TIMEOUT = "4 seconds"
/**
 * The bounds: the targets unless QUICMESH_STORM_P99_MS, QUICMESH_STORM_CONTROL_P99_MS or
 * QUICMESH_STORM_RSS_MIB say otherwise (bench/results/stress.md: what this machine meets).
 */
const HANDSHAKE_P99_MS = Number(process.env.QUICMESH_STORM_P99_MS ?? 5_000)
const CONTROL_P99_MS = Number(process.env.QUICMESH_STORM_CONTROL_P99_MS ?? 500)
const RSS_BOUND_MIB = Number(process.env.QUICMESH_STORM_RSS_MIB ?? 10)
const CHILD = fileURLToPath(new URL("./handshakeStormChild.ts", import.meta.url))

/** The `q` quantile (0..1) of `xs` (nearest rank); NaN for none. */
const quantile = (xs: ReadonlyArray<number>, q: number) => {
  const sorted = [...xs].sort((a, b) => a - b)
  return sorted.length === 0
    ? Number.NaN
    : sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)]!
}

/** The agent's resident set in MiB. */
const rssMiB = (pid: number) => {
  const kb = /VmRSS:\s+(\d+)\s+kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))
  return kb ? Math.round((Number(kb[1]) / 1024) * 10) / 10 : Number.NaN
}

/**
 * The agent's node options for the test: a full garbage collection on SIGUSR2, so that its RSS
 * is read after one (V8 collects an idle process's old generation only when it allocates more,
 * so without it a quiet agent's RSS says more about GC timing than about what it keeps).
 */
const GC_ON_SIGUSR2 = [
  "--expose-gc",
  "--import",
  "data:text/javascript,process.on('SIGUSR2',()=>globalThis.gc())"
]

/** The agent's RSS in MiB after a full garbage collection. */
const rssAfterGc = (pid: number) =>
  Effect.sync(() => process.kill(pid, "SIGUSR2")).pipe(
    Effect.zipRight(Effect.sleep("1 second")),
    Effect.map(() => rssMiB(pid))
  )

/** CPU seconds (user + system) the process has used. */
const cpuSeconds = (pid: number) => {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8")
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
  return (Number(fields[11]) + Number(fields[12])) / 100 // utime, stime in clock ticks (USER_HZ 100)
}

/** The machine's count of UDP datagrams dropped for a full receive buffer (all processes). */
const udpRcvbufErrors = () => {
  const udp = readFileSync("/proc/net/snmp", "utf8")
    .split("\n")
    .filter((l) => l.startsWith("Udp:"))
  const names = udp[0]?.split(/\s+/) ?? []
  const values = udp[1]?.split(/\s+/) ?? []
  return Number(values[names.indexOf("RcvbufErrors")] ?? Number.NaN)
}

/** Datagrams the kernel dropped for the UDP socket bound to `port` (its receive buffer full). */
const socketDrops = (port: number) => {
  const hex = `:${port.toString(16).toUpperCase().padStart(4, "0")}`
  for (const table of ["/proc/net/udp", "/proc/net/udp6"]) {
    const row = readFileSync(table, "utf8")
      .split("\n")
      .map((l) => l.trim().split(/\s+/))
      .find((cols) => cols[1]?.endsWith(hex))
    if (row) return Number(row[row.length - 1])
  }
  return Number.NaN
}

interface Source {
  readonly proc: ChildProcess
  /** The next JSON line it prints that has `key`. */
  readonly next: <A>(key: string) => Effect.Effect<A>
  readonly go: Effect.Effect<void>
}

/** A storm source process, ready to dial; killed with the scope. */
const startSource = (plan: Plan): Effect.Effect<Source, Error, Scope.Scope> =>
  Effect.gen(function* () {
    const lines = yield* Queue.unbounded<Record<string, unknown>>()
    const proc = yield* Effect.acquireRelease(
      Effect.sync(() =>
        spawn(process.execPath, ["--import", "tsx", CHILD, JSON.stringify(plan)], {
          stdio: ["pipe", "pipe", "inherit"]
        })
      ),
      (p) => Effect.sync(() => p.exitCode === null && p.signalCode === null && p.kill("SIGKILL"))
    )
    createInterface({ input: proc.stdout! }).on("line", (l) => {
      if (l.startsWith("{")) Queue.unsafeOffer(lines, JSON.parse(l) as Record<string, unknown>)
    })
    const next = <A>(key: string): Effect.Effect<A> =>
      Queue.take(lines).pipe(
        Effect.repeat({ until: (o) => key in o }),
        Effect.map((o) => o[key] as A)
      )
    yield* next("ready").pipe(
      Effect.timeoutFail({ duration: "60 seconds", onTimeout: () => new Error("storm source not ready") })
    )
    return { proc, next, go: Effect.sync(() => void proc.stdin!.write("go\n")) }
  })

/** Storms the agent from `sources` processes at once; the results once the server closed all. */
const storm = (agent: AgentProcess, valid: number, garbage: number, sources: number) =>
  Effect.scoped(
    Effect.gen(function* () {
      const share = (n: number, i: number) => Math.floor(n / sources) + (i < n % sources ? 1 : 0)
      const all = yield* Effect.forEach(
        Array.from({ length: sources }, (_, i) => i),
        (i) =>
          startSource({
            host: "127.0.0.1",
            port: agent.port,
            valid: share(valid, i),
            garbage: share(garbage, i),
            sockets: 4,
            handshakeTimeoutMs: 60_000,
            aliveAfterMs: 1_500,
            holdMs: 60_000
          }),
        { concurrency: "unbounded" }
      )
      yield* Effect.forEach(all, (s) => s.go, { discard: true })
      const results = yield* Effect.forEach(all, (s) => s.next<StormResult>("result"), {
        concurrency: "unbounded"
      })
      const sum = (f: (r: StormResult) => number) => results.reduce((n, r) => n + f(r), 0)
      const merge = (f: (r: StormResult) => Record<string, number>) => {
        const out: Record<string, number> = {}
        for (const r of results) for (const [k, v] of Object.entries(f(r))) out[k] = (out[k] ?? 0) + v
        return out
      }
      return {
        validAccepted: sum((r) => r.validAccepted),
        sourcesCpuSeconds: Math.round(sum((r) => r.cpuSeconds) * 10) / 10,
        validFailed: sum((r) => r.validFailed),
        validRefused: sum((r) => r.validRefused),
        validClosedEarly: sum((r) => r.validClosedEarly),
        garbageRejected: sum((r) => r.garbageRejected),
        garbageAccepted: sum((r) => r.garbageAccepted),
        stillOpen: sum((r) => r.stillOpen),
        validHandshakeMs: results.flatMap((r) => r.validHandshakeMs),
        refusals: sum((r) => r.refusals),
        clientsRefused: sum((r) => r.clientsRefused),
        failures: merge((r) => r.failures),
        validCloseReasons: merge((r) => r.closeReasons.valid),
        garbageCloseReasons: merge((r) => r.closeReasons.garbage)
      }
    })
  )

const status = (agent: AgentProcess) => control(agent, (c) => c.status())

/** Waits until the agent holds no connection and no handshake; its status then. */
const quiet = (agent: AgentProcess) =>
  Effect.gen(function* () {
    const deadline = performance.now() + 60_000
    while (true) {
      const s = yield* status(agent)
      const t = s.transport
      if (s.connections === 0 && t?.quicConnections === 0 && t.handshakesInProgress === 0) return s
      if (performance.now() > deadline)
        return yield* Effect.fail(new Error(`not quiet: ${JSON.stringify(s)}`))
      yield* Effect.sleep("250 millis")
    }
  })

describe("a handshake storm against one agent", () => {
  it.scopedLive(
    `${VALID + GARBAGE} simultaneous inbound handshakes: responsive, capped, memory back to baseline`,
    () =>
      Effect.gen(function* () {
        const dir = yield* makeNodePath("qm-storm-")
        const agent = yield* spawnAgent({
          dir,
          host: "127.0.0.1",
          env: { QUICMESH_CONNECTION_IDLE_TIMEOUT_TIME: IDLE_TIMEOUT },
          nodeArgs: GC_ON_SIGUSR2
        })
        const pid = (yield* status(agent)).pid

        // Warm-up: a small storm, then one of the full size, each followed by quiet; the
        // baseline is taken after them.
        const warm = yield* storm(agent, 40, 8, 1)
        expect(warm.validAccepted).toBe(40)
        yield* quiet(agent)
        yield* Effect.sleep("2 seconds")
        const beforeWarmStorm = yield* rssAfterGc(pid)
        const warmStorm = yield* storm(agent, VALID, GARBAGE, SOURCES)
        yield* quiet(agent)
        yield* Effect.sleep("2 seconds")
        const baseline = yield* rssAfterGc(pid)

        // The control API, asked again and again while the storm is on.
        const latencies: Array<number> = []
        let peakRss = baseline
        let peakConnections = 0
        let controlErrors = 0
        const monitor = yield* Effect.fork(
          Effect.forever(
            Effect.gen(function* () {
              const t = performance.now()
              const answer = yield* (
                latencies.length % 2 === 0
                  ? status(agent).pipe(Effect.map((s) => s.connections))
                  : control(agent, (c) => c.nodesConnections()).pipe(Effect.map((l) => l.length))
              ).pipe(Effect.either)
              latencies.push(performance.now() - t)
              if (answer._tag === "Left") controlErrors++
              else peakConnections = Math.max(peakConnections, answer.right)
              peakRss = Math.max(peakRss, rssMiB(pid))
              yield* Effect.sleep("200 millis")
            })
          )
        )
        const t0 = performance.now()
        const drops0 = udpRcvbufErrors()
        const agentDrops0 = socketDrops(agent.port)
        const cpu0 = cpuSeconds(pid)
        const result = yield* storm(agent, VALID, GARBAGE, SOURCES)
        const stormMs = performance.now() - t0
        const udpDrops = udpRcvbufErrors() - drops0
        const agentDrops = socketDrops(agent.port) - agentDrops0
        const agentCpu = Math.round((cpuSeconds(pid) - cpu0) * 10) / 10
        yield* Fiber.interrupt(monitor)

        // Quiet again; then RSS back near the baseline (given time to return memory).
        const end = yield* quiet(agent)
        const transport = end.transport!
        const rssDeadline = performance.now() + 60_000
        const afterNoGc = rssMiB(pid)
        let after = yield* rssAfterGc(pid)
        while (after > baseline + RSS_BOUND_MIB && performance.now() < rssDeadline) {
          yield* Effect.sleep(Duration.seconds(2))
          after = yield* rssAfterGc(pid)
        }
        const maxLatency = Math.round(Math.max(...latencies))
        const controlP99 = Math.round(quantile(latencies, 0.99))
        const { validHandshakeMs, ...counts } = result
        const handshakeP99 = quantile(validHandshakeMs, 0.99)
        const figures = {
          handshakes: VALID + GARBAGE,
          stormSeconds: Math.round(stormMs / 100) / 10,
          ...counts,
          handshakeMsP50: quantile(validHandshakeMs, 0.5),
          handshakeMsP99: handshakeP99,
          handshakeMsMax: quantile(validHandshakeMs, 1),
          peakConnections,
          handshakesHighWater: transport.handshakesHighWater,
          handshakesRefused: transport.handshakesRefused,
          maxInboundHandshakes: transport.maxInboundHandshakes,
          udpRcvbufDrops: udpDrops,
          agentSocketDrops: agentDrops,
          agentCpuSeconds: agentCpu,
          controlAnswers: latencies.length,
          controlErrors,
          controlP99Ms: controlP99,
          boundHandshakeP99Ms: HANDSHAKE_P99_MS,
          boundControlP99Ms: CONTROL_P99_MS,
          boundRssMiB: RSS_BOUND_MIB,
          controlMaxMs: maxLatency,
          receiveBufferRequested: transport.receiveBufferRequested,
          receiveBufferGranted: transport.receiveBufferGranted,
          rssBeforeWarmStormMiB: beforeWarmStorm,
          warmStormValidAccepted: warmStorm.validAccepted,
          rssBaselineMiB: baseline,
          rssPeakMiB: peakRss,
          rssAfterNoGcMiB: afterNoGc,
          rssAfterMiB: after
        }
        console.log(`handshake storm ${JSON.stringify(figures)}`)

        // Every valid client in, quickly; no valid client refused for its certificate; all idled away.
        expect(result.validAccepted).toBe(VALID)
        expect(result.validRefused).toBe(0)
        expect(handshakeP99).toBeLessThan(HANDSHAKE_P99_MS)
        expect(result.stillOpen).toBe(0)
        expect(end.connections).toBe(0)
        // Every garbage client refused.
        expect(result.garbageAccepted).toBe(0)
        expect(result.garbageRejected).toBe(GARBAGE)
        // Responsive: every control answer came, the p99 within the bound.
        expect(latencies.length).toBeGreaterThanOrEqual(5)
        expect(controlErrors).toBe(0)
        expect(controlP99).toBeLessThan(CONTROL_P99_MS)
        // The cap held, and was reached (the storm was one): attempts over it were refused
        // explicitly, and the clients saw the refusals.
        expect(transport.handshakesHighWater).toBeLessThanOrEqual(transport.maxInboundHandshakes)
        expect(transport.handshakesRefused).toBeGreaterThan(0)
        expect(result.refusals).toBeGreaterThan(0)
        // Memory back to the baseline.
        expect(after).toBeLessThanOrEqual(baseline + RSS_BOUND_MIB)
      }),
    600_000
  )
})
