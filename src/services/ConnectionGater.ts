/**
 * ConnectionGater: which nodes may connect to us and which we may dial, by NodeId and by IP
 * range (CIDR, IPv4 and IPv6; an IPv4 peer seen as an IPv4-mapped IPv6 address falls in its
 * IPv4 ranges), changeable at run time.
 *
 * A connection is refused when its NodeId is denied or its address lies in a denied range; in
 * allow-only mode it is also refused unless its NodeId is allowed or its address lies in an
 * allowed range. Deny wins over allow. An entry is on one list at most: allowing a denied entry
 * moves it. With no rules (the default) everything is allowed.
 *
 * The node enforces it before a connection enters the manager's map: the QUIC transport refuses
 * a refused peer's inbound handshake (TLS alert access_denied for its NodeId, a close with the
 * same code for its address), the manager refuses dials before any packet is sent
 * (`NodeConnectionError` with reason "denied"), punches no hole toward a refused node, and
 * closes the connections a change refuses. `layer` keeps the rules in memory; the agent keeps
 * them in a file in its node path (`ConnectionGaterFile` in "quicmesh/node").
 */
import { Context, Data, Effect, type Either, Layer, type Scope } from "effect"
import type { Cidr } from "../internal/cidr.js"
import {
  allowing,
  CompiledRules,
  canonicalRules,
  denying,
  emptyRules,
  parseEntry as parseEntryText,
  removing,
  sameRules
} from "../internal/gateRules.js"
import type { NodeId, NodeIdEncoded } from "./NodeId.js"

/** The rules: deny and allow lists of entries (NodeIds and CIDRs as text), and allow-only mode. */
export interface GateRules {
  readonly allowOnly: boolean
  readonly deny: ReadonlyArray<string>
  readonly allow: ReadonlyArray<string>
}

/** One entry of a list: a NodeId, or an IP range (its canonical text, e.g. "10.0.0.0/8"). */
export type GateEntry =
  | { readonly _tag: "NodeId"; readonly text: NodeIdEncoded }
  | { readonly _tag: "Cidr"; readonly text: string; readonly cidr: Cidr }

/** Text that is neither a NodeId nor a CIDR. */
export class InvalidGateEntry extends Data.TaggedError("InvalidGateEntry")<{
  readonly input: string
  readonly detail: string
}> {
  override get message() {
    return `invalid entry "${this.input}": ${this.detail} (expected a NodeId, or a CIDR such as 203.0.113.0/24 or 2001:db8::/32)`
  }
}

/** The gate refuses a connection (a dial we would make, or a peer's). */
export class ConnectionDenied extends Data.TaggedError("ConnectionDenied")<{
  readonly nodeId: string
  readonly host: string | undefined
  readonly detail: string
}> {
  override get message() {
    return `refused by the connection gate: ${this.detail}`
  }
}

/** The gating file could not be read, decoded or written. */
export class GatesFileError extends Data.TaggedError("GatesFileError")<{
  readonly path: string
  readonly reason: "corrupt" | "read" | "write"
  readonly detail: string
  readonly cause?: unknown
}> {
  override get message() {
    return this.reason === "corrupt"
      ? `gating file ${this.path} is corrupt: ${this.detail} (fix or remove it)`
      : `cannot ${this.reason} gating file ${this.path}: ${this.detail}`
  }
}

/** The rules after a change, and whether the change changed them. */
export interface GateChange {
  readonly rules: GateRules
  readonly changed: boolean
}

export interface ConnectionGaterService {
  /**
   * Why a connection with `nodeId` at `host` is refused, or undefined when it is allowed.
   * Without `host`, only what the NodeId alone decides. Synchronous and allocation-free when
   * there are no rules: it runs on every dial and every inbound handshake.
   */
  readonly refusal: (nodeId: NodeId, host?: string) => ConnectionDenied | undefined
  readonly rules: Effect.Effect<GateRules>
  /** Puts `entry` on the deny list (taking it off the allow list). */
  readonly deny: (entry: GateEntry) => Effect.Effect<GateChange, GatesFileError>
  /** Puts `entry` on the allow list (taking it off the deny list). */
  readonly allow: (entry: GateEntry) => Effect.Effect<GateChange, GatesFileError>
  /** Takes `entry` off whichever list holds it. */
  readonly remove: (entry: GateEntry) => Effect.Effect<GateChange, GatesFileError>
  /** Switches allow-only mode on or off. */
  readonly setAllowOnly: (on: boolean) => Effect.Effect<GateChange, GatesFileError>
  /**
   * Runs `f` after every change (once it is saved and in force, before the change returns),
   * for as long as the scope is open: the manager closes the connections the new rules refuse.
   */
  readonly watch: (f: (rules: GateRules) => Effect.Effect<void>) => Effect.Effect<void, never, Scope.Scope>
}

export class ConnectionGater extends Context.Tag("quicmesh/ConnectionGater")<
  ConnectionGater,
  ConnectionGaterService
>() {}

/** A NodeId or a CIDR typed as text (a bare IP address is a range of one), as an entry. */
export const parseEntry = (text: string): Either.Either<GateEntry, InvalidGateEntry> => parseEntryText(text)

export interface MakeOptions {
  /** The rules to start with (none by default: everything is allowed). */
  readonly rules?: GateRules
  /** Keeps the rules of each change before they take effect; a failure leaves the change undone. */
  readonly save?: (rules: GateRules) => Effect.Effect<void, GatesFileError>
}

/**
 * A gater holding its rules in memory (and saving each change with `save`, if given). Its
 * `rules` must be canonical (as `make` checks them, or as a gating file decodes).
 */
export const unsafeMake = (options: MakeOptions = {}): ConnectionGaterService => {
  let compiled = new CompiledRules(options.rules ?? emptyRules)
  const lock = Effect.unsafeMakeSemaphore(1)
  const watchers = new Set<(rules: GateRules) => Effect.Effect<void>>()
  const save = options.save
  const change = (f: (rules: GateRules) => GateRules): Effect.Effect<GateChange, GatesFileError> =>
    lock.withPermits(1)(
      Effect.suspend((): Effect.Effect<GateChange, GatesFileError> => {
        const next = f(compiled.rules)
        if (sameRules(next, compiled.rules)) return Effect.succeed({ rules: next, changed: false })
        return (save === undefined ? Effect.void : save(next)).pipe(
          Effect.zipRight(
            Effect.suspend(() => {
              compiled = new CompiledRules(next)
              return Effect.forEach([...watchers], (w) => w(next), { discard: true })
            })
          ),
          Effect.as({ rules: next, changed: true })
        )
      })
    )
  return {
    refusal: (nodeId, host) => compiled.refusal(nodeId, host),
    rules: Effect.sync(() => compiled.rules),
    deny: (entry) => change((rules) => denying(rules, entry)),
    allow: (entry) => change((rules) => allowing(rules, entry)),
    remove: (entry) => change((rules) => removing(rules, entry)),
    setAllowOnly: (on) => change((rules) => ({ ...rules, allowOnly: on })),
    watch: (f) =>
      Effect.acquireRelease(
        Effect.sync(() => watchers.add(f)),
        () => Effect.sync(() => watchers.delete(f))
      )
  }
}

/** A gater from `options`; its rules' entries are checked (the first bad one fails). */
export const make = (options: MakeOptions = {}): Effect.Effect<ConnectionGaterService, InvalidGateEntry> =>
  options.rules === undefined
    ? Effect.sync(() => unsafeMake(options))
    : Effect.map(canonicalRules(options.rules), (rules) => unsafeMake({ ...options, rules }))

/** A gater in memory starting from `rules`. */
export const layer = (rules: GateRules): Layer.Layer<ConnectionGater, InvalidGateEntry> =>
  Layer.effect(ConnectionGater, make({ rules }))

/** The default: no rules, everything allowed (until changed through the service). */
export const layerAllowAll: Layer.Layer<ConnectionGater> = Layer.sync(ConnectionGater, () => unsafeMake())
