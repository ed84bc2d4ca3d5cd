/**
 * The routing table's upkeep over time: `refresh` (the manager's `refreshBuckets`, which looks
 * up every bucket not refreshed within `bucketRefreshInterval`) runs after each wait of
 * `every`, the first one included, every wait drawn anew between 0.8 and 1.2 times `every`
 * (Schedule.jittered), so that nodes started together do not refresh in step. It runs until
 * interrupted.
 */
import { type Duration, Effect, Schedule } from "effect"

export const refreshPeriodically = <A>(
  refresh: Effect.Effect<A>,
  every: Duration.DurationInput
): Effect.Effect<unknown> => refresh.pipe(Effect.schedule(Schedule.spaced(every).pipe(Schedule.jittered)))
