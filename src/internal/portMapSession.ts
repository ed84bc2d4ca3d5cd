/**
 * One port-mapping session: get a mapping from the first protocol that grants one, hold it by
 * renewing it at half its lifetime, delete it when the session's scope closes.
 *
 * Getting a mapping asks each protocol in order; a round in which none grants one is followed by
 * a wait (`backoff`, doubling) and another round, up to `rounds`; then the session logs once why
 * and ends. A renewal that fails is tried again at half the time the mapping has left, until it
 * runs out: then the mapping is gone (the ref holds none) and the session starts over. A failed
 * request of any kind (no answer, an answer that does not parse, a refusal) leaves the ref as it
 * was. Every wait runs on the Effect clock.
 */
import { Clock, Duration, Effect, Either, Option, type Scope, SubscriptionRef } from "effect"
import type { PortMapError, PortMapping } from "../services/PortMapper.js"
import type { RetryPolicy } from "./gatewayChannel.js"
import type { Granted, MapProtocol } from "./portMapProtocol.js"

export interface SessionOptions {
  readonly internalPort: number
  readonly lifetimeSeconds: number
  readonly rounds: number
  readonly backoff: Duration.Duration
  /** Retransmissions of the delete sent when the session closes. */
  readonly unmapRetry: RetryPolicy
  /** The gateway, for log lines. */
  readonly gateway: string
}

/** A renewal is not retried when the mapping has less than this left. */
const LAST_RETRY = Duration.seconds(2)

type Held = { readonly protocol: MapProtocol; readonly granted: Granted; readonly expiresAt: number }

export const runSession = (
  protocols: ReadonlyArray<MapProtocol>,
  ref: SubscriptionRef.SubscriptionRef<Option.Option<PortMapping>>,
  options: SessionOptions
): Effect.Effect<void, never, Scope.Scope> =>
  Effect.gen(function* () {
    const label = `port mapping via ${options.gateway}`
    // The protocol that holds (or is being asked for) the mapping: deleted through it on close.
    let holder: MapProtocol | undefined
    yield* Effect.addFinalizer(() =>
      holder === undefined
        ? Effect.void
        : holder.unmap(options.internalPort, options.unmapRetry).pipe(
            Effect.tap(() => Effect.logDebug(`${label}: deleted`)),
            Effect.catchAll((e) => Effect.logDebug(`${label}: delete failed: ${e.message}`)),
            Effect.zipRight(SubscriptionRef.set(ref, Option.none()))
          )
    )

    const ask = (protocol: MapProtocol, suggestedPort: number) =>
      Effect.gen(function* () {
        holder = protocol
        const granted = yield* protocol.map({
          internalPort: options.internalPort,
          suggestedPort,
          lifetimeSeconds: options.lifetimeSeconds
        })
        const expiresAt = (yield* Clock.currentTimeMillis) + granted.lifetimeSeconds * 1000
        const mapping: PortMapping = {
          host: granted.host,
          port: granted.port,
          protocol: protocol.protocol,
          expiresAt
        }
        yield* SubscriptionRef.set(ref, Option.some(mapping))
        return { protocol, granted, expiresAt } satisfies Held
      })

    /** One round: the first protocol that grants a mapping, or every protocol's error. */
    const round = Effect.gen(function* () {
      const errors: Array<PortMapError> = []
      for (const protocol of protocols) {
        const result = yield* Effect.either(ask(protocol, 0))
        if (Either.isRight(result)) return Either.right(result.right)
        errors.push(result.left)
        yield* Effect.logDebug(`${label}: ${result.left.message}`)
      }
      holder = undefined
      return Either.left(errors)
    })

    const acquire = Effect.gen(function* () {
      let errors: ReadonlyArray<PortMapError> = []
      for (let r = 0; r < options.rounds; r++) {
        if (r > 0) yield* Effect.sleep(Duration.times(options.backoff, 2 ** (r - 1)))
        const result = yield* round
        if (Either.isRight(result)) return Option.some(result.right)
        errors = result.left
      }
      yield* Effect.logInfo(
        `${label}: no mapping after ${options.rounds} round(s), not trying again (${errors.map((e) => e.message).join("; ")})`
      )
      return Option.none<Held>()
    })

    /** Renews until a renewal fails for good (the mapping ran out). */
    const hold = (first: Held) =>
      Effect.gen(function* () {
        yield* Effect.logInfo(
          `${label}: ${first.protocol.protocol} mapped ${first.granted.host}:${first.granted.port} to port ${options.internalPort} for ${first.granted.lifetimeSeconds} s`
        )
        let held = first
        let wait = Duration.seconds(Math.max(1, held.granted.lifetimeSeconds / 2))
        while (true) {
          yield* Effect.sleep(wait)
          const result = yield* Effect.either(ask(held.protocol, held.granted.port))
          if (Either.isRight(result)) {
            if (
              result.right.granted.host !== held.granted.host ||
              result.right.granted.port !== held.granted.port
            )
              yield* Effect.logInfo(
                `${label}: the mapping moved to ${result.right.granted.host}:${result.right.granted.port}`
              )
            held = result.right
            wait = Duration.seconds(Math.max(1, held.granted.lifetimeSeconds / 2))
            continue
          }
          yield* Effect.logDebug(`${label}: renewal failed: ${result.left.message}`)
          const left = Duration.millis(held.expiresAt - (yield* Clock.currentTimeMillis))
          if (Duration.lessThan(left, LAST_RETRY)) {
            holder = undefined
            yield* SubscriptionRef.set(ref, Option.none())
            return yield* Effect.logInfo(`${label}: the mapping expired without a renewal`)
          }
          wait = Duration.times(left, 0.5)
        }
      })

    while (true) {
      const held = yield* acquire
      if (Option.isNone(held)) return
      yield* hold(held.value)
    }
  })
