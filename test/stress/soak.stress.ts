/**
 * Bounded soak: in-process nodes on real QUIC keep opening connections to one server node and
 * letting them idle away (idle timeout 500 ms), for QUICMESH_SOAK_SECONDS (default 120, up to
 * 600). Every few seconds the manager's diagnostics, the transports' QUIC connection counts and
 * the heap are sampled; the last third of the run must not hold more than the first third plus a
 * small bound (no growth trend), and the figures are printed.
 */
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Fiber } from "effect"
import { makeNode, type TestNode } from "../fixtures/cmNode.js"

const seconds = Math.min(600, Math.max(10, Number(process.env.QUICMESH_SOAK_SECONDS ?? 120)))
const CLIENTS = 4
const SAMPLE_EVERY_MS = 3_000

interface Sample {
  readonly t: number
  readonly connections: number
  readonly pendingDials: number
  readonly backgroundFibers: number
  readonly quicConnections: number
  readonly heapMB: number
}

const sample = (nodes: ReadonlyArray<TestNode>, t0: number) =>
  Effect.gen(function* () {
    let connections = 0
    let pendingDials = 0
    let backgroundFibers = 0
    let quicConnections = 0
    for (const n of nodes) {
      const d = yield* n.diagnostics
      connections += d.connections
      pendingDials += d.pendingDials
      backgroundFibers += d.backgroundFibers
      quicConnections += yield* n.quicConnections
    }
    global.gc?.()
    return {
      t: Math.round((performance.now() - t0) / 1000),
      connections,
      pendingDials,
      backgroundFibers,
      quicConnections,
      heapMB: Math.round((process.memoryUsage().heapUsed / 1048576) * 10) / 10
    } satisfies Sample
  })

const maxOf = (xs: ReadonlyArray<Sample>, k: keyof Sample) => Math.max(...xs.map((x) => x[k]))

describe("soak: connections opened and idled away continuously", () => {
  it.scopedLive(
    `stays flat over ${seconds} s`,
    () =>
      Effect.gen(function* () {
        const config = {
          seedNodes: [],
          connectionIdleTimeoutTime: Duration.millis(500)
        }
        const server = yield* makeNode("soak-server", { config })
        const clients: Array<TestNode> = []
        for (let i = 0; i < CLIENTS; i++) clients.push(yield* makeNode(`soak-client-${i}`, { config }))
        const all = [server, ...clients]
        let rounds = 0
        let failures = 0
        // Each client: connect, ping, let the connection idle out, again.
        const churn = (c: TestNode) =>
          Effect.forever(
            Effect.gen(function* () {
              const r = yield* c.cm
                .getConnectionWithAddress(server.nodeId, server.address, { timeout: "5 seconds" })
                .pipe(
                  Effect.zipRight(c.cm.pingNode(server.nodeId, undefined, { timeout: "5 seconds" })),
                  Effect.either
                )
              if (r._tag === "Right" && r.right) rounds++
              else failures++
              yield* Effect.sleep(Duration.millis(600 + Math.floor(Math.random() * 300)))
            })
          )
        const t0 = performance.now()
        const fibers = yield* Effect.forEach(clients, (c) => Effect.fork(churn(c)))
        const samples: Array<Sample> = []
        while (performance.now() - t0 < seconds * 1000) {
          yield* Effect.sleep(Duration.millis(SAMPLE_EVERY_MS))
          const s = yield* sample(all, t0)
          samples.push(s)
          console.log(`soak ${JSON.stringify(s)}`)
        }
        yield* Effect.forEach(fibers, Fiber.interrupt, { discard: true })
        // After the churn stops, everything idles away.
        yield* Effect.sleep("2 seconds")
        const end = yield* sample(all, t0)
        console.log(`soak end ${JSON.stringify(end)}; ${rounds} connect+ping rounds, ${failures} failures`)
        const third = Math.max(1, Math.floor(samples.length / 3))
        const first = samples.slice(0, third)
        const last = samples.slice(-third)
        expect(rounds).toBeGreaterThan(seconds) // ~4 clients x 1 round/s
        expect(failures).toBeLessThanOrEqual(Math.ceil(rounds / 100))
        // Bounded at every sample: at most one connection per client pair each side, plus standby.
        expect(maxOf(samples, "connections")).toBeLessThanOrEqual(4 * CLIENTS)
        expect(maxOf(samples, "pendingDials")).toBeLessThanOrEqual(CLIENTS)
        // No growth trend: the last third holds no more than the first third plus a small bound.
        expect(maxOf(last, "backgroundFibers")).toBeLessThanOrEqual(
          maxOf(first, "backgroundFibers") + 8 * CLIENTS
        )
        expect(maxOf(last, "quicConnections")).toBeLessThanOrEqual(
          maxOf(first, "quicConnections") + 4 * CLIENTS
        )
        expect(maxOf(last, "heapMB")).toBeLessThanOrEqual(maxOf(first, "heapMB") * 1.5 + 20)
        // Quiet again at the end.
        expect(end.connections).toBe(0)
        expect(end.pendingDials).toBe(0)
      }),
    (seconds + 60) * 1000
  )
})
