/**
 * One deadline per operation. An operation of several steps (find an address, dial, then ask
 * the peer) fixes, as it starts, the instant on the Effect clock by which it must end, and
 * each step gets what is left of its timeout: the steps together never take longer than the
 * operation's one timeout. An operation that does not wait before its last step (the
 * connection is already held) reads no clock: its step gets the whole timeout.
 */
import { Clock, Duration, Effect } from "effect"
import type { NodeConnectionError, NodeConnectionHandle } from "../../services/ConnectionManager.js"
import type * as NodeId from "../../services/NodeId.js"
import type { Dialing } from "./dialing.js"
import type { ManagerState } from "./state.js"

/** The instant (milliseconds on the Effect clock) `timeout` from now. */
export const after = (timeout: Duration.Duration): Effect.Effect<number> =>
  Effect.map(Clock.currentTimeMillis, (now) => now + Duration.toMillis(timeout))

/** What is left until `deadline`: zero once it has passed. */
export const remaining = (deadline: number): Effect.Effect<Duration.Duration> =>
  Effect.map(Clock.currentTimeMillis, (now) => Duration.millis(Math.max(0, deadline - now)))

/** `next` with what is left until `deadline`; `expired` once nothing is. */
export const withLeft = <A, E, R, E2>(
  deadline: number,
  next: (left: Duration.Duration) => Effect.Effect<A, E, R>,
  expired: () => E2
): Effect.Effect<A, E | E2, R> =>
  Effect.flatMap(
    Clock.currentTimeMillis,
    (now): Effect.Effect<A, E | E2, R> =>
      now >= deadline ? Effect.fail(expired()) : next(Duration.millis(deadline - now))
  )

/** `first` (which honours `timeout` itself), then `next` with what is left of `timeout`. */
export const andThen = <A, E, R, B, E2, R2, E3>(
  timeout: Duration.Duration,
  first: Effect.Effect<A, E, R>,
  next: (a: A, left: Duration.Duration) => Effect.Effect<B, E2, R2>,
  expired: () => E3
): Effect.Effect<B, E | E2 | E3, R | R2> =>
  Effect.flatMap(after(timeout), (deadline) =>
    Effect.flatMap(first, (a) => withLeft(deadline, (left) => next(a, left), expired))
  )

/** Work on a connection that shares the operation's deadline with getting the connection. */
export type WithConnectionWithin = <A, E, R>(
  nodeId: NodeId.NodeId,
  f: (handle: NodeConnectionHandle, timeout: Duration.Duration) => Effect.Effect<A, E, R>,
  timeout: Duration.Duration
) => Effect.Effect<A, E | NodeConnectionError, R>

/**
 * `withConnection` whose work `f` gets what is left of `timeout` once the connection is had
 * (all of it on a connection already held).
 */
export const withConnectionWithin =
  (state: ManagerState, withConnection: Dialing["withConnection"]): WithConnectionWithin =>
  (nodeId, f, timeout) =>
    Effect.suspend(() => {
      const options = { timeout }
      if (state.map.get(nodeId)) return withConnection(nodeId, (h) => f(h, timeout), options)
      const expired = () => state.fail(nodeId, "timeout", `no answer within ${Duration.format(timeout)}`)
      return Effect.flatMap(after(timeout), (deadline) =>
        withConnection(nodeId, (h) => withLeft(deadline, (left) => f(h, left), expired), options)
      )
    })
