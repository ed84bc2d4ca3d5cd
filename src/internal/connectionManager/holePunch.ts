/**
 * Hole-punch signalling. A node dialling a peer that may be behind a NAT asks the seeds to
 * relay a request to it; a relay passes the request on (over a connection it already holds,
 * rate-limited per caller) with the source's observed address; the target then sends packets
 * toward the source so that its NAT lets the source's handshake in.
 */
import { Duration, Effect, Either, Fiber, FiberSet, Option, Random } from "effect"
import type * as Address from "../../services/Address.js"
import type {
  NodeConnectionError,
  NodeConnectionHandle,
  OperationOptions
} from "../../services/ConnectionManager.js"
import type { Contact } from "../../services/Contact.js"
import * as NodeId from "../../services/NodeId.js"
import { type HolePunchMessage, HolePunchRefused, type PeerCallError } from "../../services/PeerRpc.js"
import type { DialOptions, QuicTransportService } from "../../services/QuicTransport.js"
import type { Gating } from "./gating.js"
import type { ManagerState } from "./state.js"

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
  start() {
    if (!this.ended && this.fiber === undefined) this.fiber = this.run(this.signal)
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
}

export interface HolePunch {
  /** 32 random bytes to host:port, waiting the punch interval, doubling, until timeout/interruption. */
  readonly holePunchReverse: (host: string, port: number, options?: OperationOptions) => Effect.Effect<void>
  readonly sendSignalingMessage: (
    relay: NodeId.NodeId,
    source: NodeId.NodeId,
    target: NodeId.NodeId,
    address?: Address.Address,
    options?: OperationOptions
  ) => Effect.Effect<void, NodeConnectionError | PeerCallError>
  readonly relaySignalingMessage: (
    message: { readonly source: NodeId.NodeId; readonly target: NodeId.NodeId },
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
    readonly withConnection: <A, E>(
      nodeId: NodeId.NodeId,
      f: (handle: NodeConnectionHandle) => Effect.Effect<A, E>,
      options?: OperationOptions
    ) => Effect.Effect<A, E | NodeConnectionError>
  }
): HolePunch => {
  const { config, seeds, map, background, timeoutOf, fail } = state
  const { transport, withConnection } = deps

  const holePunchReverse = (host: string, port: number, options?: OperationOptions): Effect.Effect<void> =>
    Effect.gen(function* () {
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
    }).pipe(Effect.timeout(timeoutOf(options)), Effect.ignore)

  const sendSignalingMessage = (
    relay: NodeId.NodeId,
    source: NodeId.NodeId,
    target: NodeId.NodeId,
    address?: Address.Address,
    options?: OperationOptions
  ): Effect.Effect<void, NodeConnectionError | PeerCallError> =>
    Effect.suspend(() => {
      if (NodeId.equals(relay, state.self) || NodeId.equals(target, state.self)) return Effect.void
      const message: HolePunchMessage = {
        sourceNodeIdEncoded: NodeId.encode(source),
        targetNodeIdEncoded: NodeId.encode(target),
        address
      }
      const timeout = timeoutOf(options)
      return withConnection(relay, (h) => h.client.holePunchSignal(message), options).pipe(
        Effect.timeoutFail({
          duration: timeout,
          onTimeout: () =>
            fail(relay, "timeout", `the relay did not answer within ${Duration.format(timeout)}`)
        })
      )
    })

  const relaySignalingMessage = (
    message: { readonly source: NodeId.NodeId; readonly target: NodeId.NodeId },
    sourceAddress: Address.Address,
    options?: OperationOptions
  ): Effect.Effect<void, NodeConnectionError | PeerCallError> =>
    Effect.suspend(() => {
      if (NodeId.equals(message.target, state.self)) return Effect.void
      // Relay only over a connection we already hold: a request never makes us dial anybody.
      if (!map.get(message.target))
        return Effect.fail(fail(message.target, "not-found", "no connection to the target to relay on"))
      const timeout = timeoutOf(options)
      return withConnection(message.target, (h) =>
        h.client.holePunchSignal({
          sourceNodeIdEncoded: NodeId.encode(message.source),
          targetNodeIdEncoded: NodeId.encode(message.target),
          address: { host: sourceAddress.host, port: sourceAddress.port }
        })
      ).pipe(
        Effect.timeoutFail({
          duration: timeout,
          onTimeout: () =>
            fail(message.target, "timeout", `the target did not answer within ${Duration.format(timeout)}`)
        })
      )
    })

  const relayWindows = new Map<string, { start: number; count: number }>()
  const rateLimited = (key: string) =>
    Effect.map(
      Effect.clockWith((c) => c.currentTimeMillis),
      (now) => {
        const window = relayWindows.get(key)
        if (!window || now - window.start >= Duration.toMillis(config.relayRateWindow)) {
          relayWindows.set(key, { start: now, count: 1 })
          if (relayWindows.size > 10_000) relayWindows.clear()
          return false
        }
        window.count++
        return window.count > config.relayRateLimit
      }
    )

  const handleHolePunchSignal = (
    caller: Contact,
    message: HolePunchMessage
  ): Effect.Effect<void, HolePunchRefused> =>
    Effect.gen(function* () {
      const source = NodeId.decode(message.sourceNodeIdEncoded)
      const target = NodeId.decode(message.targetNodeIdEncoded)
      if (Either.isLeft(source))
        return yield* new HolePunchRefused({
          reason: "bad-source",
          detail: `bad source: ${source.left.message}`
        })
      if (Either.isLeft(target))
        return yield* new HolePunchRefused({
          reason: "bad-target",
          detail: `bad target: ${target.left.message}`
        })
      const callerKey = NodeId.encode(caller.nodeId) as string
      if (yield* rateLimited(callerKey))
        return yield* new HolePunchRefused({
          reason: "rate-limited",
          detail: "rate limited: too many hole-punch requests"
        })
      if (NodeId.equals(target.right, state.self)) {
        if (NodeId.equals(source.right, state.self)) return
        // For us: punch toward the source. Directly from the source, its own observed address;
        // through a relay, the address the relay observed.
        const direct = NodeId.equals(caller.nodeId, source.right)
        const address = direct ? { host: caller.host, port: caller.port } : message.address
        if (!address)
          return yield* new HolePunchRefused({
            reason: "no-address",
            detail: "relayed message without the source address"
          })
        const refused = deps.gating.refusal(source.right, address.host)
        if (refused)
          return yield* Effect.logDebug(`no hole punching toward ${address.host}: ${refused.message}`)
        yield* Effect.logDebug(
          `hole punching toward ${NodeId.encode(source.right)} at ${address.host}:${address.port} (signal from ${NodeId.encode(caller.nodeId)})`
        )
        yield* holePunchReverse(address.host, address.port).pipe(
          Effect.interruptible,
          FiberSet.run(background)
        )
        return
      }
      if (!NodeId.equals(source.right, caller.nodeId))
        return yield* new HolePunchRefused({
          reason: "not-the-source",
          detail: "the source of a relay request must be the calling node"
        })
      yield* relaySignalingMessage(
        { source: source.right, target: target.right },
        { host: caller.host, port: caller.port }
      ).pipe(
        // The source is not told how the relay went: it dials the target anyway, and a punch
        // that never comes looks the same to it as a relay that could not pass the request on.
        Effect.catchAll((e) => Effect.logDebug(`hole-punch relay: ${e.message}`))
      )
    })

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
    return { whenSlow, stop: signal.stop }
  }

  return {
    holePunchReverse,
    sendSignalingMessage,
    relaySignalingMessage,
    handleHolePunchSignal,
    slowDialSignal
  }
}
