/**
 * SimNetwork at scale: N nodes in one world (most public, the rest behind NATs), each dials
 * `degree` random public nodes, opens a stream and gets an echo back; all under TestClock.
 * Standalone: `npx tsx bench/simNetwork.ts [nodes] [degree]`.
 */
import { Effect, Fiber, Stream, TestClock, TestContext } from "effect"
import * as SimNet from "../src/layers/SimWorld.js"
import type * as NodeId from "../src/services/NodeId.js"
import type { QuicTransportService } from "../src/services/QuicTransport.js"
import { type NatType, SimNetwork } from "../src/services/SimNetwork.js"
import type { BenchResult, BenchSuite } from "./types.js"

const idOf = (n: number): NodeId.NodeId => {
  const bytes = new Uint8Array(32)
  new DataView(bytes.buffer).setUint32(0, n)
  bytes[31] = 1
  return bytes as NodeId.NodeId
}

const natOf = (i: number): NatType => {
  const r = i % 10
  return r === 7 ? "full-cone" : r === 8 ? "restricted" : r === 9 ? "symmetric" : "none"
}

const scenario = (nodes: number, degree: number) =>
  Effect.gen(function* () {
    const sim = yield* SimNetwork
    const scope = yield* Effect.scope
    const prng = SimNet.makePrng(99)
    const transports: Array<QuicTransportService> = []
    const t0 = performance.now()
    for (let i = 0; i < nodes; i++) {
      const transport = yield* sim.bind({ nat: natOf(i) }, idOf(i))
      transports.push(transport)
      // Echo every stream of every inbound connection.
      yield* Stream.runForEach(transport.incoming, (connection) =>
        Stream.runForEach(connection.acceptedStreams, (socket) =>
          Effect.scoped(
            Effect.gen(function* () {
              const write = yield* socket.writer
              yield* socket.run((bytes) => write(bytes))
            })
          ).pipe(Effect.ignore, Effect.forkIn(scope))
        ).pipe(Effect.forkIn(scope))
      ).pipe(Effect.forkIn(scope))
    }
    const tBuilt = performance.now()
    const publics = transports.map((_, i) => i).filter((i) => natOf(i) === "none")
    const payload = new Uint8Array(100)
    let echoed = 0
    const fibers: Array<Fiber.RuntimeFiber<void>> = []
    for (let i = 0; i < nodes; i++) {
      for (let d = 0; d < degree; d++) {
        let j = publics[Math.floor(prng.next() * publics.length)]!
        if (j === i) j = publics[(publics.indexOf(j) + 1) % publics.length]!
        const target = transports[j]!
        fibers.push(
          yield* Effect.gen(function* () {
            const connection = yield* transports[i]!.dial({
              host: target.host,
              port: target.port,
              expectedNodeIds: [idOf(j)],
              timeout: "5 seconds"
            })
            const socket = yield* connection.openStream
            // Request, FIN, then read the echo until the server's FIN.
            yield* Effect.scoped(Effect.flatMap(socket.writer, (write) => write(payload)))
            yield* socket.run(() => {
              echoed++
            })
          }).pipe(Effect.scoped, Effect.ignore, Effect.fork)
        )
      }
    }
    // Connections are released as each dial's scope closes; keep the clock moving until all echoed.
    let rounds = 0
    let peak = process.memoryUsage().heapUsed
    while (echoed < nodes * degree && rounds < 100) {
      yield* TestClock.adjust("100 millis")
      peak = Math.max(peak, process.memoryUsage().heapUsed)
      rounds++
    }
    const tDone = performance.now()
    const stats = yield* sim.stats
    const heap = Math.max(peak, process.memoryUsage().heapUsed)
    for (const f of fibers) yield* Fiber.interrupt(f)
    return {
      buildMs: tBuilt - t0,
      runMs: tDone - tBuilt,
      echoed,
      expected: nodes * degree,
      heapMiB: heap / 2 ** 20,
      traceEvents: stats.traceEvents,
      hash: yield* sim.traceHash
    }
  }).pipe(
    Effect.scoped,
    Effect.provide(SimNet.layer({ seed: 1, latency: "20 millis", jitter: "10 millis" })),
    Effect.provide(TestContext.TestContext)
  )

const measure = async (nodes: number, degree: number): Promise<ReadonlyArray<BenchResult>> => {
  const r = await Effect.runPromise(scenario(nodes, degree))
  const suite = "simNetwork"
  const notes = `${nodes} nodes × ${degree} dials + echo; ${r.echoed}/${r.expected} echoed; ${r.traceEvents} trace events; hash ${r.hash.slice(0, 12)}`
  return [
    { suite, name: `build ${nodes} transports`, value: r.buildMs, unit: "ms", notes },
    {
      suite,
      name: `${nodes * degree} dials + stream echo`,
      value: r.runMs,
      unit: "ms",
      target: "< 60 000 ms",
      met: r.runMs < 60_000 && r.echoed === r.expected,
      notes
    },
    {
      suite,
      name: "peak heap used",
      value: r.heapMiB,
      unit: "MiB",
      target: "< 4096 MiB",
      met: r.heapMiB < 4096
    }
  ]
}

export const suite: BenchSuite = {
  name: "simNetwork",
  // 10 000 nodes take minutes on a shared 2-core machine: run that standalone.
  run: () => measure(2_000, 3)
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const nodes = Number(process.argv[2] ?? 10_000)
  const degree = Number(process.argv[3] ?? 3)
  for (const r of await measure(nodes, degree))
    process.stdout.write(`${r.name}: ${r.value.toFixed(1)} ${r.unit}${r.notes ? ` (${r.notes})` : ""}\n`)
}
