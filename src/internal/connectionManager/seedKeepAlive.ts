/**
 * Keeping our seed connections alive on the seed's side.
 *
 * Our seed connections are never idle-collected here, but the seed would collect them on its
 * side (QUIC keep-alives are not calls): a call every half idle period keeps the seed's timer
 * from firing, so it can still relay hole-punch signals to us. A connection used either way
 * within the last quarter of the idle period needs none this round: the use restarted the
 * seed's timer, and the next round's ping still comes at least a quarter period before it
 * runs out. Each ping runs in a fiber of its own, bounded by the RPC layer
 * (rpcCallTimeoutTime): a silent seed holds up no other ping and no later round. Their set
 * is not the background set, whose size the diagnostics report as work in progress.
 */
import { Clock, Duration, Effect, FiberSet, type Scope } from "effect"
import type { ManagerState } from "./state.js"

/** Starts the pings in the manager's scope (nothing when there are no seeds). */
export const start = (state: ManagerState): Effect.Effect<void, never, Scope.Scope> =>
  Effect.gen(function* () {
    const { config, seeds, map, runInBackground } = state
    if (seeds.length === 0) return
    const pings = yield* FiberSet.make<unknown, unknown>()
    const halfMs = Math.max(1, Duration.toMillis(config.connectionIdleTimeoutTime) / 2)
    const pingRound = Effect.flatMap(Clock.currentTimeMillis, (now) =>
      Effect.sync(() => {
        for (const seed of seeds) {
          const entry = map.get(seed.nodeId)
          // A ping that fails changes nothing here: a dead connection goes by its keep-alive.
          if (entry !== undefined && now - entry.lastUsed >= halfMs / 2)
            runInBackground(Effect.ignore(entry.record.client.ping), pings)
        }
      })
    )
    yield* pingRound.pipe(
      Effect.delay(Duration.millis(halfMs)),
      Effect.forever,
      Effect.interruptible,
      Effect.forkScoped
    )
  })
