/**
 * The three roles of Polykey 1.x's signalled hole punching, each taking what it needs as
 * parameters (the calls over Polykey's wire, the node's connections, its key), so that any
 * wire and any connection manager can run them.
 *
 * How Polykey 1.15.1 plays them:
 * - Source: a lookup (`findNode`) runs a direct search, a signalled one and MDNS at once. The
 *   signalled search asks each node it reaches for its active connections near the target
 *   (`nodesClosestActiveConnectionsGet`); a node that reports one becomes the relay for it. The
 *   source needs a connection to the relay already; it sends the Initial and dials the address
 *   the relay answers (15 s), without punching itself.
 * - Relay: checks the source's signature (from the connection's NodeId), that it holds a
 *   connection to the target (else `ErrorNodeConnectionManagerConnectionNotFound`), and a
 *   token bucket per source NodeId (20 requests, 10 more each second, else
 *   `ErrorNodeConnectionManagerRequestRateExceeded`); signs, sends the Final in the background
 *   and answers the target's address at once. The Final's outcome is not awaited; if it ends
 *   with anything but `{}` (or a connection error), the relay's promise rejects unhandled and
 *   the Polykey process exits.
 * - Target: checks both signatures (it does not check that the Final names it as target),
 *   starts punching and answers `{}` at once. The punch: 32 random bytes from its QUIC socket
 *   toward the address, then again after 1 s, 2 s, 4 s … until 15 s have passed (4 packets);
 *   one punch per host:port at a time, at most 3 ports per host.
 *
 * quicmesh plays them the same way, with these differences: as target it never answers a Final
 * with an error (any refusal is `{}` and no punch: a Polykey relay must never see an error), it
 * refuses a Final that names another target, and it punches only toward an IP address; as
 * relay it waits for the Final's answer before answering the source (so the target's punch has
 * started when the source dials), and a failed Final changes nothing in its answer.
 */
import { Data, Effect, Either, Option } from "effect"
import * as Address from "../../services/Address.js"
import type { Contact } from "../../services/Contact.js"
import * as NodeId from "../../services/NodeId.js"
import {
  makeFinal,
  makeInitial,
  type Sign,
  SignalDecodeError,
  type SignalFinalParams,
  type SignalFinalResult,
  type SignalInitialParams,
  type SignalInitialResult,
  type SignalSignatureError,
  verifyFinal,
  verifyInitial
} from "./signallingMessages.js"

/** Polykey's per-source limit on Initials at a relay: a token bucket this deep… */
export const POLYKEY_RELAY_BURST = 20
/** …refilled with this many tokens each second. */
export const POLYKEY_RELAY_REFILL_PER_SECOND = 10

/** A relay asked to signal a node it holds no connection to. */
export class SignalTargetNotConnected extends Data.TaggedError("SignalTargetNotConnected")<{
  readonly target: NodeId.NodeId
}> {
  override get message() {
    return `no connection to ${NodeId.encode(this.target)} to signal it over`
  }
  get polykeyType() {
    return "ErrorNodeConnectionManagerConnectionNotFound"
  }
}

/** A relay refusing a source that asked too often. */
export class SignalRateLimited extends Data.TaggedError("SignalRateLimited")<{
  readonly source: NodeId.NodeId
}> {
  override get message() {
    return `${NodeId.encode(this.source)} asked for too many hole punches`
  }
  get polykeyType() {
    return "ErrorNodeConnectionManagerRequestRateExceeded"
  }
}

/** A Final naming another node as its target (a target refuses it: it answers `{}` and does not punch). */
export class SignalNotForUs extends Data.TaggedError("SignalNotForUs")<{
  readonly target: NodeId.NodeId
}> {
  override get message() {
    return `the signal is for ${NodeId.encode(this.target)}, not for this node`
  }
}

/** No relay signalled the target; `attempts` holds each relay tried and how its call failed. */
export class SignalFailed extends Data.TaggedError("SignalFailed")<{
  readonly target: NodeId.NodeId
  readonly attempts: ReadonlyArray<{ readonly relay: NodeId.NodeId; readonly error: unknown }>
}> {
  override get message() {
    const tried = this.attempts.map(
      ({ relay, error }) =>
        `${NodeId.encode(relay)}: ${error instanceof Error ? error.message : String(error)}`
    )
    return `no relay signalled ${NodeId.encode(this.target)}${tried.length === 0 ? ": no relay to ask" : ` (${tried.join("; ")})`}`
  }
}

/** What a relay refuses an Initial with (its answer to the source is a JSON-RPC error). */
export type RelayRefusal =
  | SignalDecodeError
  | SignalSignatureError
  | SignalTargetNotConnected
  | SignalRateLimited

/** Why a target did not punch (it answered `{}` all the same). */
export type TargetRefusal = SignalDecodeError | SignalSignatureError | SignalNotForUs

export interface RelayDeps {
  readonly sign: Sign
  /** The address of our connection to `target`, if we hold one (a relay never dials for a source). */
  readonly connectedAddress: (target: NodeId.NodeId) => Effect.Effect<Option.Option<Address.Address>>
  /** Counts one request of `source`: false when it is over its limit. */
  readonly admit: (source: NodeId.NodeId) => Effect.Effect<boolean>
  /** Calls the target's `nodesConnectionSignalFinal`, within a timeout of its own. */
  readonly callFinal: (target: NodeId.NodeId, params: SignalFinalParams) => Effect.Effect<unknown, unknown>
}

/**
 * A relay's answer to `caller`'s Initial (`caller`: the NodeId its connection proved, and where
 * we see that connection come from). Checks in Polykey's order: the message and the source's
 * signature, our connection to the target, the source's rate. Then sends the target a Final
 * naming `caller`'s address and answers the target's address; the Final's failure is logged.
 */
export const asRelay = (
  caller: Contact,
  params: unknown,
  deps: RelayDeps
): Effect.Effect<SignalInitialResult, RelayRefusal> =>
  Effect.gen(function* () {
    const request = yield* verifyInitial(caller.nodeId, params)
    const target = yield* deps.connectedAddress(request.target)
    if (Option.isNone(target)) return yield* new SignalTargetNotConnected({ target: request.target })
    if (!(yield* deps.admit(caller.nodeId))) return yield* new SignalRateLimited({ source: caller.nodeId })
    const final = yield* makeFinal(request, caller, deps.sign)
    yield* deps
      .callFinal(request.target, final)
      .pipe(
        Effect.catchAll((error) =>
          Effect.logDebug(
            `signalling ${NodeId.encode(request.target)} for ${NodeId.encode(caller.nodeId)}: the Final failed: ${error instanceof Error ? error.message : String(error)}`
          )
        )
      )
    return { host: target.value.host, port: target.value.port }
  })

export interface TargetDeps {
  /** Our NodeId: a Final naming another target is refused. */
  readonly self: NodeId.NodeId
  /**
   * Starts punching toward host:port in the background and returns at once (the answer must
   * not wait for the punch, as Polykey's does not).
   */
  readonly punch: (host: string, port: number) => Effect.Effect<void>
  /** Told of each refusal (default: a debug log line). */
  readonly refused?: (relay: NodeId.NodeId, refusal: TargetRefusal) => Effect.Effect<void>
}

const logRefusal = (relay: NodeId.NodeId, refusal: TargetRefusal) =>
  Effect.logDebug(`hole-punch signal from ${NodeId.encode(relay)} refused: ${refusal.message}`)

/**
 * A target's answer to `relay`'s Final (`relay`: the NodeId its connection proved; `params`:
 * the message as parsed from the wire). Punches toward the address the relay signed, if both
 * signatures hold and the Final names us. Always answers `{}`: a Polykey relay exits on
 * anything else, so a refusal is told only to `deps.refused`.
 */
export const asTarget = (
  relay: NodeId.NodeId,
  params: unknown,
  deps: TargetDeps
): Effect.Effect<SignalFinalResult> => {
  const checked = Either.flatMap(verifyFinal(relay, params), (final) =>
    NodeId.equals(final.target, deps.self)
      ? Either.right(final)
      : Either.left<TargetRefusal>(new SignalNotForUs({ target: final.target }))
  )
  const answer: SignalFinalResult = {}
  return Either.match(checked, {
    onLeft: (refusal) => Effect.as((deps.refused ?? logRefusal)(relay, refusal), answer),
    onRight: (final) => Effect.as(deps.punch(final.address.host, final.address.port), answer)
  })
}

export interface SourceDeps {
  /** Our NodeId (the source). */
  readonly self: NodeId.NodeId
  readonly sign: Sign
  /** Calls `relay`'s `nodesConnectionSignalInitial` over a connection we hold, within a timeout. */
  readonly callInitial: (
    relay: NodeId.NodeId,
    params: SignalInitialParams
  ) => Effect.Effect<SignalInitialResult, unknown>
}

/** What a relay answered: the address to dial the target at. */
export interface Signalled {
  readonly relay: NodeId.NodeId
  readonly address: Address.Address
}

/**
 * A source's signalling: asks `relays` in order (skipping ourselves and the target) to signal
 * `target`, until one answers with an address; the caller dials it. `SignalFailed` when none did.
 */
export const asSource = (
  target: NodeId.NodeId,
  relays: ReadonlyArray<NodeId.NodeId>,
  deps: SourceDeps
): Effect.Effect<Signalled, SignalFailed> =>
  Effect.gen(function* () {
    const params = yield* makeInitial(deps.self, target, deps.sign)
    const attempts: Array<{ readonly relay: NodeId.NodeId; readonly error: unknown }> = []
    for (const relay of relays) {
      if (NodeId.equals(relay, deps.self) || NodeId.equals(relay, target)) continue
      const answer = yield* Effect.either(deps.callInitial(relay, params))
      if (Either.isLeft(answer)) attempts.push({ relay, error: answer.left })
      else if (Address.isHost(answer.right.host) && Address.isPort(answer.right.port))
        return { relay, address: { host: answer.right.host, port: answer.right.port } }
      else
        attempts.push({
          relay,
          error: new SignalDecodeError({ field: "result", detail: `not an address: ${answer.right.host}` })
        })
    }
    return yield* new SignalFailed({ target, attempts })
  })
