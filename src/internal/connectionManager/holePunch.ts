/**
 * Hole-punch signalling. A node dialling a peer that may be behind a NAT asks the seeds to
 * relay a request to it, signed with its node key (`holePunchSignature.ts`): who asks, whom,
 * the addresses it vouches for (what the relay observed for it, if it knows, and its
 * confirmed external addresses), a timestamp and a nonce. A relay passes the request on (over
 * a connection it already holds, rate-limited per caller) with the source address it observed,
 * once it has checked the signature and that the source signed that address. The target checks
 * again (signature, at most 30 s old and 5 s ahead, nonce never seen) and punches, sending
 * packets toward the source so that its NAT lets the source's handshake in, only toward the
 * address the relay observed, and only if the source signed it. A source that did not sign
 * the address its relay sees is told which it is, signs it, and asks once more. Every refusal
 * is a typed `HolePunchRefused` back to the caller and a debug log line, never a punch.
 */
import { Clock, Duration, Effect, Either, Fiber, FiberSet, Option, Predicate, Random } from "effect"
import * as Address from "../../services/Address.js"
import {
  HOLE_PUNCH_MAX_ADDRESSES,
  HolePunchRefused,
  type SignedHolePunchRequest
} from "../../services/AgentRpc.js"
import type {
  NodeConnectionError,
  NodeConnectionHandle,
  OperationOptions
} from "../../services/ConnectionManager.js"
import type { Contact } from "../../services/Contact.js"
import * as NodeId from "../../services/NodeId.js"
import type { HolePunchMessage, PeerCallError } from "../../services/PeerRpc.js"
import type { DialOptions, QuicTransportService } from "../../services/QuicTransport.js"
import * as Signature from "../holePunchSignature.js"
import { RateWindows } from "../rateWindows.js"
import { ReplayCache } from "../replayCache.js"
import type { Gating } from "./gating.js"
import type { ManagerState } from "./state.js"

/** Callers whose rate windows a node keeps at most (the oldest window goes first). */
export const RATE_WINDOWS_CAPACITY = 10_000
/** Nonces a target remembers at most (see `ReplayCache` for what a full cache refuses). */
export const REPLAY_CACHE_CAPACITY = 16_384

/**
 * How long a direct dial runs alone before the seeds are asked to signal the target. Below
 * QUIC's first retransmission (~1 s), so that a target behind a NAT has punched before our
 * Initial is sent again; long enough that a loaded machine's slow dials to reachable peers
 * do not send every seed a relay request (measured on the 200-node loopback bench: 250 ms
 * left 4 of 200 nodes unjoined in the budget, 1 s joined all, 20% faster at the p95).
 */
const SIGNAL_HEAD_START = Duration.millis(500)

/** A dial's hole-punch signalling: `start` runs it at most once, never after `stop`. */
class SlowDialSignal {
  private fiber: Fiber.RuntimeFiber<void> | undefined = undefined
  private ended = false
  constructor(
    private readonly run: (effect: Effect.Effect<void>) => Fiber.RuntimeFiber<void>,
    private readonly signal: Effect.Effect<void>
  ) {}
  /** True once the signalling started (the dial was slow: the target was asked to punch). */
  started = false
  start() {
    if (!this.ended && this.fiber === undefined) {
      this.started = true
      this.fiber = this.run(this.signal)
    }
  }
  get stop(): Effect.Effect<void> {
    return Effect.suspend(() => {
      this.ended = true
      const fiber = this.fiber
      this.fiber = undefined
      return fiber === undefined ? Effect.void : Fiber.interrupt(fiber)
    })
  }
}

/** One dial's signalling: the transport calls `whenSlow.run` after the head start; `stop` ends it. */
export interface DialSignal {
  readonly whenSlow: NonNullable<DialOptions["whenSlow"]>
  readonly stop: Effect.Effect<void>
  /** True once the target was signalled (a connection made then is a punched one). */
  readonly signalled: () => boolean
}

export interface HolePunch {
  /** True while we punch toward host:port (a connection from there is a punched one). */
  readonly isPunching: (host: string, port: number) => boolean
  /** 32 random bytes to host:port, waiting the punch interval, doubling, until timeout/interruption. */
  readonly holePunchReverse: (host: string, port: number, options?: OperationOptions) => Effect.Effect<void>
  /** Asks `relay` to pass our signed request for `target` on (`source` must be us; `address` is signed too). */
  readonly sendSignalingMessage: (
    relay: NodeId.NodeId,
    source: NodeId.NodeId,
    target: NodeId.NodeId,
    address?: Address.Address,
    options?: OperationOptions
  ) => Effect.Effect<void, NodeConnectionError | PeerCallError>
  /** Passes a signed request on to its target (over a connection we hold) with the source's observed address. */
  readonly relaySignalingMessage: (
    request: SignedHolePunchRequest,
    sourceAddress: Address.Address,
    options?: OperationOptions
  ) => Effect.Effect<void, NodeConnectionError | PeerCallError>
  /** What we answer a peer's hole-punch signal: punch (it is for us) or relay it. */
  readonly handleHolePunchSignal: (
    caller: Contact,
    message: HolePunchMessage
  ) => Effect.Effect<void, HolePunchRefused>
  /**
   * Signalling for one dial of a node behind a NAT, perhaps: the transport starts it if the
   * dial is still going after the head start, and the dial's end stops it. Nothing waits
   * beside a dial that is quick (a fiber only runs once signalling starts).
   */
  readonly slowDialSignal: (target: NodeId.NodeId, timeout: Duration.Duration) => DialSignal
}

export const make = (
  state: ManagerState,
  deps: {
    readonly transport: QuicTransportService
    readonly gating: Gating
    /** Signs with our node key (the KeyRing's `sign`). */
    readonly sign: (data: Uint8Array) => Effect.Effect<Uint8Array>
    readonly withConnection: <A, E>(
      nodeId: NodeId.NodeId,
      f: (handle: NodeConnectionHandle) => Effect.Effect<A, E>,
      options?: OperationOptions
    ) => Effect.Effect<A, E | NodeConnectionError>
    /**
     * Connection reversal: when our own address may be unreachable (a NAT that maps each
     * destination to a new port defeats the source's punch), we also dial the source at the
     * address it signed, and the source's dial ends with our connection. Absent: punch only.
     */
    readonly dialBack?: {
      readonly wanted: () => boolean
      readonly dial: (source: NodeId.NodeId, address: Address.Address) => Effect.Effect<void>
    }
  }
): HolePunch => {
  const { config, seeds, map, background, timeoutOf, fail } = state
  const { transport, withConnection } = deps
  const relayWindows = new RateWindows(
    config.relayRateLimit,
    Duration.toMillis(config.relayRateWindow),
    RATE_WINDOWS_CAPACITY
  )
  // A record is kept while its request could still be fresh: signed up to the skew ahead, accepted until 30 s old.
  const replays = new ReplayCache(REPLAY_CACHE_CAPACITY, Signature.MAX_AGE_MS)

  const refuse = (
    caller: Contact,
    reason: HolePunchRefused["reason"],
    detail: string,
    observed?: Address.Address
  ): Effect.Effect<never, HolePunchRefused> => {
    const error = new HolePunchRefused(
      observed === undefined ? { reason, detail } : { reason, detail, observed }
    )
    return Effect.zipRight(
      Effect.logDebug(
        `hole-punch request from ${NodeId.encode(caller.nodeId)} refused: ${reason}: ${detail}`
      ),
      Effect.fail(error)
    )
  }

  // Where we punch now ("host port" → punches running): a connection coming in from there was punched.
  const punching = new Map<string, number>()
  const punchKey = (host: string, port: number) => `${Address.normalizeHost(host)} ${port}`
  const isPunching = (host: string, port: number) => punching.has(punchKey(host, port))
  const punchingTo = (host: string, port: number) =>
    Effect.acquireRelease(
      Effect.sync(() => {
        const key = punchKey(host, port)
        punching.set(key, (punching.get(key) ?? 0) + 1)
        return key
      }),
      (key) =>
        Effect.sync(() => {
          const n = (punching.get(key) ?? 1) - 1
          if (n <= 0) punching.delete(key)
          else punching.set(key, n)
        })
    )

  const holePunchReverse = (host: string, port: number, options?: OperationOptions): Effect.Effect<void> =>
    Effect.gen(function* () {
      yield* punchingTo(host, port)
      let delay = config.connectionHolePunchIntervalTime
      while (true) {
        const bytes = new Uint8Array(32)
        for (let i = 0; i < 32; i++) bytes[i] = yield* Random.nextIntBetween(0, 256)
        // Fire and forget: what a packet does is open our NAT's mapping; a lost one has the next.
        yield* transport.sendDatagram(host, port, bytes).pipe(Effect.ignore)
        yield* Effect.sleep(delay)
        delay = Duration.times(delay, 2)
      }
      // Punching ends with its timeout: that is its normal end, not a failure.
    }).pipe(Effect.timeout(timeoutOf(options)), Effect.ignore, Effect.scoped)

  /** A request for `target`, signed by us, vouching for `addresses` (at most the first eight). */
  const signedRequest = (target: NodeId.NodeId, addresses: ReadonlyArray<Address.Address>) =>
    Effect.gen(function* () {
      const nonce = new Uint8Array(Signature.NONCE_BYTES)
      for (let i = 0; i < nonce.length; i++) nonce[i] = yield* Random.nextIntBetween(0, 256)
      const fields: Signature.HolePunchRequestFields = {
        source: state.self,
        target,
        addresses: addresses.slice(0, HOLE_PUNCH_MAX_ADDRESSES),
        timestamp: yield* Clock.currentTimeMillis,
        nonce
      }
      const bytes = Signature.canonicalBytes(fields)
      return bytes === undefined ? undefined : Signature.assemble(fields, yield* deps.sign(bytes))
    })

  /** Our addresses as peers confirmed them, what `peer` observed for us, and `extra`: each once. */
  const vouchedFor = (peer: NodeId.NodeId, extra: ReadonlyArray<Address.Address>) => {
    const out: Array<Address.Address> = []
    const observed = state.selfAddresses.observedBy(peer)
    for (const a of [...(observed ? [observed] : []), ...extra, ...state.selfAddresses.confirmed()])
      if (!out.some((b) => Address.equals(a, b))) out.push({ host: a.host, port: a.port })
    return out
  }

  /** The observed address a refusal names when it is one we did not sign (we may sign it and ask again). */
  const unsignedObservation = (
    e: NodeConnectionError | PeerCallError,
    signed: ReadonlyArray<Address.Address>
  ) =>
    Predicate.isTagged(e, "PeerCallError") &&
    Predicate.isTagged(e.cause, "HolePunchRefused") &&
    (e.cause as HolePunchRefused).reason === "address-unsigned"
      ? Option.fromNullable((e.cause as HolePunchRefused).observed).pipe(
          Option.filter((o) => !signed.some((a) => Address.equals(a, o)))
        )
      : Option.none()

  const sendSignalingMessage = (
    relay: NodeId.NodeId,
    source: NodeId.NodeId,
    target: NodeId.NodeId,
    address?: Address.Address,
    options?: OperationOptions
  ): Effect.Effect<void, NodeConnectionError | PeerCallError> =>
    Effect.suspend(() => {
      if (NodeId.equals(relay, state.self) || NodeId.equals(target, state.self)) return Effect.void
      if (!NodeId.equals(source, state.self))
        return Effect.fail(
          fail(source, "mismatch", "a hole-punch request is signed by its source: only our own")
        )
      const timeout = timeoutOf(options)
      const ask = (addresses: ReadonlyArray<Address.Address>) =>
        Effect.flatMap(signedRequest(target, addresses), (request) =>
          request === undefined
            ? Effect.fail(fail(target, "invalid-address", "an address we would sign is out of range"))
            : withConnection(relay, (h) => h.client.holePunchSignal({ request }), options)
        )
      const signed = vouchedFor(relay, address ? [address] : [])
      // A relay that saw us at an address we did not sign says which: we sign it and ask once more
      // (what it saw is what the target will punch toward, and only if we signed it).
      return ask(signed).pipe(
        Effect.catchAll((e) =>
          Option.match(unsignedObservation(e, signed), {
            onNone: () => Effect.fail(e),
            onSome: (observed) => ask([observed, ...signed])
          })
        ),
        Effect.timeoutFail({
          duration: timeout,
          onTimeout: () =>
            fail(relay, "timeout", `the relay did not answer within ${Duration.format(timeout)}`)
        })
      )
    })

  const relaySignalingMessage = (
    request: SignedHolePunchRequest,
    sourceAddress: Address.Address,
    options?: OperationOptions
  ): Effect.Effect<void, NodeConnectionError | PeerCallError> =>
    Effect.suspend(() => {
      const target = NodeId.decode(request.target)
      if (Either.isLeft(target)) return Effect.fail(fail(state.self, "invalid-address", target.left.message))
      if (NodeId.equals(target.right, state.self)) return Effect.void
      // Relay only over a connection we already hold: a request never makes us dial anybody.
      if (!map.get(target.right))
        return Effect.fail(fail(target.right, "not-found", "no connection to the target to relay on"))
      const timeout = timeoutOf(options)
      return withConnection(target.right, (h) =>
        h.client.holePunchSignal({
          request,
          observed: { host: sourceAddress.host, port: sourceAddress.port }
        })
      ).pipe(
        Effect.timeoutFail({
          duration: timeout,
          onTimeout: () =>
            fail(target.right, "timeout", `the target did not answer within ${Duration.format(timeout)}`)
        })
      )
    })

  const handleHolePunchSignal = (
    caller: Contact,
    message: HolePunchMessage
  ): Effect.Effect<void, HolePunchRefused> =>
    Effect.flatMap(Clock.currentTimeMillis, (now) => {
      const callerAddress = { host: caller.host, port: caller.port }
      if (relayWindows.exceeded(NodeId.encode(caller.nodeId), now))
        return refuse(caller, "rate-limited", "rate limited: too many hole-punch requests")
      const checked = Signature.verify(message.request, now)
      if (Either.isLeft(checked)) return refuse(caller, checked.left.reason, checked.left.detail)
      const request = checked.right
      const fromSource = NodeId.equals(caller.nodeId, request.source)
      if (NodeId.equals(request.target, state.self)) {
        if (NodeId.equals(request.source, state.self)) return Effect.void
        // Directly from the source: what we observe is its address; through a relay, what the relay observed.
        if (!fromSource && message.observed === undefined)
          return refuse(caller, "not-the-source", "a direct request must come from its source's connection")
        const observation = fromSource ? callerAddress : message.observed!
        if (!replays.admit(Signature.replayKey(message.request), request.timestamp, now))
          return refuse(caller, "replayed", "a request with this nonce was seen already")
        return punchToward(caller, request, observation)
      }
      if (!fromSource)
        return refuse(caller, "not-the-source", "the source of a relay request must be the calling node")
      if (!request.addresses.some((a) => Address.equals(a, callerAddress)))
        return refuse(
          caller,
          "address-unsigned",
          "the source did not sign the address we observe",
          callerAddress
        )
      return relaySignalingMessage(message.request, callerAddress).pipe(
        // The source is not told how the relay went: it dials the target anyway, and a punch
        // that never comes looks the same to it as a relay that could not pass the request on.
        Effect.catchAll((e) => Effect.logDebug(`hole-punch relay: ${e.message}`))
      )
    })

  /** Punches toward `observation` if the source signed it (else refuses), and the gate lets us. */
  const punchToward = (
    caller: Contact,
    request: Signature.VerifiedRequest,
    observation: Address.Address
  ): Effect.Effect<void, HolePunchRefused> => {
    if (!request.addresses.some((a) => Address.equals(a, observation)))
      return refuse(
        caller,
        "address-unsigned",
        `the source did not sign the address it was observed at (${Address.format(observation)})`,
        { host: observation.host, port: observation.port }
      )
    const refused = deps.gating.refusal(request.source, observation.host)
    if (refused) return Effect.logDebug(`no hole punching toward ${observation.host}: ${refused.message}`)
    const dialBack = deps.dialBack?.wanted() ? deps.dialBack : undefined
    return Effect.zipRight(
      Effect.logDebug(
        `hole punching toward ${NodeId.encode(request.source)} at ${Address.format(observation)} (signal from ${NodeId.encode(caller.nodeId)})${dialBack ? ", dialling it back" : ""}`
      ),
      Effect.asVoid(
        (dialBack === undefined
          ? holePunchReverse(observation.host, observation.port)
          : Effect.zip(
              holePunchReverse(observation.host, observation.port),
              dialBack.dial(request.source, observation),
              { concurrent: true }
            )
        ).pipe(Effect.interruptible, FiberSet.run(background))
      )
    )
  }

  /**
   * Ask every seed to relay a hole-punch request to `target`. The direct dial gets a short
   * head start (as happy eyeballs does): a reachable peer answers well within it and no seed
   * is bothered; a peer behind a NAT is signalled long before QUIC's first retransmission.
   */
  const signalThroughSeeds = (target: NodeId.NodeId, timeout: Duration.Duration) =>
    Effect.forEach(
      seeds,
      // Each seed is one chance of several: a seed that cannot relay leaves the others, and
      // the dial's own outcome is what its caller learns.
      (seed) => Effect.ignore(sendSignalingMessage(seed.nodeId, state.self, target, undefined, { timeout })),
      { concurrency: "unbounded", discard: true }
    )

  const slowDialSignal = (target: NodeId.NodeId, timeout: Duration.Duration): DialSignal => {
    const signal = new SlowDialSignal(state.runInBackground, signalThroughSeeds(target, timeout))
    const whenSlow = {
      after: Duration.min(
        SIGNAL_HEAD_START,
        Duration.divide(timeout, 4).pipe(Option.getOrElse(() => timeout))
      ),
      run: () => signal.start()
    }
    return { whenSlow, stop: signal.stop, signalled: () => signal.started }
  }

  return {
    isPunching,
    holePunchReverse,
    sendSignalingMessage,
    relaySignalingMessage,
    handleHolePunchSignal,
    slowDialSignal
  }
}
