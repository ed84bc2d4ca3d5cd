/**
 * Child process for the lab cleanup spec: builds a small lab, prints its namespaces as one JSON
 * line, then waits to be killed (SIGTERM must tear the lab down through lab.ts's signal handler).
 */
import { Effect } from "effect"
import { makeLab } from "./lab.js"

const program = Effect.gen(function* () {
  const lab = yield* makeLab({ nats: [{ kind: "restricted" }], publicHosts: ["seed"] })
  process.stdout.write(
    `${JSON.stringify({ namespaces: [...lab.nodes.values()].map((n) => n.ns), id: lab.id })}\n`
  )
  return yield* Effect.never
})

Effect.runFork(Effect.scoped(program))
