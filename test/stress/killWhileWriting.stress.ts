/**
 * An agent process SIGKILLed while its NodeGraph is being written (control-API `nodesAdd` in a
 * loop), again and again on the same node path: every restart comes up with a loadable table
 * (`status` answers, `nodesGetAll` works, same NodeId) holding every acknowledged write (each
 * write adds a new node). Rounds: QUICMESH_KILL_ROUNDS (default 100), stopping early after
 * QUICMESH_KILL_SECONDS (default 180); the count run is printed.
 * Run `npm run build` first.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import * as NodeId from "../../src/services/NodeId.js"
import { control, makeNodePath, spawnAgent } from "../fixtures/agentProcess.js"

const ROUNDS = Number(process.env.QUICMESH_KILL_ROUNDS ?? 100)
const SECONDS = Number(process.env.QUICMESH_KILL_SECONDS ?? 180)

/**
 * A new random NodeId in a random bucket of `own`'s table, uniform over buckets 16 to 255 (so
 * the table does not fill after a few dozen writes the way uniformly random ids fill the top
 * buckets, and no low bucket's few ids repeat).
 */
const randomIdFor = (own: NodeId.NodeId): string => {
  const bucket = 16 + Math.floor(Math.random() * (NodeId.NODE_ID_BYTES * 8 - 16))
  const distance = crypto.getRandomValues(new Uint8Array(NodeId.NODE_ID_BYTES))
  const top = NodeId.NODE_ID_BYTES - 1 - (bucket >> 3)
  for (let i = 0; i < top; i++) distance[i] = 0
  const bit = 1 << (bucket & 7)
  distance[top] = (distance[top]! & (bit - 1)) | bit
  return NodeId.encode(own.map((b, i) => b ^ distance[i]!) as NodeId.NodeId)
}

describe("an agent SIGKILLed while writing its NodeGraph", () => {
  it.scopedLive(
    "always restarts with a loadable table",
    () =>
      Effect.gen(function* () {
        const dir = yield* makeNodePath("qm-killw-")
        const t0 = performance.now()
        let rounds = 0
        let nodeId: string | undefined
        const sizes: Array<number> = []
        let writes = 0
        while (rounds < ROUNDS && performance.now() - t0 < SECONDS * 1000) {
          // Each round's agent is SIGKILLed (and awaited) at the latest when its scope closes.
          yield* Effect.scoped(
            Effect.gen(function* () {
              const agent = yield* spawnAgent({ dir, host: "127.0.0.1" })
              if (nodeId === undefined) nodeId = agent.nodeId
              expect(agent.nodeId).toBe(nodeId)
              // The table written before the previous kill loads.
              const status = yield* control(agent, (c) => c.status())
              expect(status).toBeDefined()
              const all = yield* control(agent, (c) => c.nodesGetAll())
              sizes.push(all.length)
              // No acknowledged write was lost (each write adds a new node).
              expect(all.length).toBeGreaterThanOrEqual(writes)
              // Write in a loop (a full bucket refuses one write, not the loop); kill mid-loop
              // after a random moment.
              const own = yield* Effect.orDie(NodeId.decode(agent.nodeId))
              const writer = yield* Effect.fork(
                control(agent, (c) =>
                  // A new node each time round (suspended: not one payload repeated).
                  Effect.forever(
                    Effect.suspend(() =>
                      c.nodesAdd({
                        nodeId: randomIdFor(own),
                        host: "127.0.0.2",
                        port: 1 + Math.floor(Math.random() * 60_000)
                      })
                    ).pipe(
                      Effect.tap(() => {
                        writes++
                      }),
                      Effect.catchTag("ControlError", () => Effect.void)
                    )
                  )
                ).pipe(Effect.ignore)
              )
              yield* Effect.sleep(`${50 + Math.floor(Math.random() * 250)} millis`)
              yield* agent.kill
              yield* Fiber.interrupt(writer)
            })
          )
          rounds++
        }
        // A final restart loads too.
        const last = yield* spawnAgent({ dir, host: "127.0.0.1" })
        const finalAll = yield* control(last, (c) => c.nodesGetAll())
        yield* last.kill
        console.log(
          `kill while writing: ${rounds} kills in ${Math.round((performance.now() - t0) / 1000)} s; table sizes on restart: min ${Math.min(
            ...sizes
          )}, max ${Math.max(...sizes)}, final ${finalAll.length}; ${writes} acknowledged writes`
        )
        expect(rounds).toBeGreaterThan(0)
        expect(writes).toBeGreaterThan(0)
        // Entries that loaded once are never lost by a later kill, nor any acknowledged write.
        expect(finalAll.length).toBeGreaterThanOrEqual(Math.max(writes, ...sizes))
        for (let i = 1; i < sizes.length; i++) expect(sizes[i]!).toBeGreaterThanOrEqual(sizes[i - 1]!)
      }),
    (SECONDS + 120) * 1000
  )
})
