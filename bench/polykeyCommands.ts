/**
 * Commands to a Polykey bench agent (`startPolykeyAgent({ bench: true })`: test/polykey/benchMain.mjs,
 * which says what each command does): one JSON line on its stdin, its answer the next
 * `{"bench":id,…}` line on its stdout.
 */
import { createInterface } from "node:readline"
import { Data, Effect } from "effect"
import type { PolykeyAgent } from "../test/polykey/agents.js"

export class PolykeyCommandError extends Data.TaggedError("PolykeyCommandError")<{
  readonly op: string
  readonly detail: string
}> {
  override get message() {
    return `polykey bench agent, ${this.op}: ${this.detail}`
  }
}

export type Send = <A>(op: string, params: Record<string, unknown>) => Effect.Effect<A, PolykeyCommandError>

interface Answer {
  readonly bench: number
  readonly ok?: unknown
  readonly error?: string
}

/** A sender of commands to `agent` (started with `bench: true`). */
export const commandsOf = (agent: PolykeyAgent): Send => {
  const waiting = new Map<number, (answer: Answer) => void>()
  let next = 0
  const lines = createInterface({ input: agent.proc.stdout! })
  lines.on("line", (line) => {
    if (!line.startsWith('{"bench":')) return
    const answer = JSON.parse(line) as Answer
    const resume = waiting.get(answer.bench)
    waiting.delete(answer.bench)
    resume?.(answer)
  })
  return <A>(op: string, params: Record<string, unknown>) =>
    Effect.async<A, PolykeyCommandError>((resume) => {
      const id = next++
      const exited = (code: number | null, signal: string | null) =>
        resume(
          Effect.fail(
            new PolykeyCommandError({
              op,
              detail: `the agent exited (${code ?? signal}); the end of its stderr: ${agent.stderr().trim().split("\n").slice(-6).join(" | ")}`
            })
          )
        )
      agent.proc.once("exit", exited)
      waiting.set(id, (answer) => {
        agent.proc.off("exit", exited)
        resume(
          answer.error === undefined
            ? Effect.succeed(answer.ok as A)
            : Effect.fail(new PolykeyCommandError({ op, detail: answer.error }))
        )
      })
      agent.proc.stdin!.write(`${JSON.stringify({ id, op, ...params })}\n`)
      return Effect.sync(() => {
        waiting.delete(id)
        agent.proc.off("exit", exited)
      })
    })
}
