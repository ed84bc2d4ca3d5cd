/**
 * Getting connections: an existing one, else one dial per NodeId (later callers join it), on
 * the caller's address, a seed's, the graph's, or one a lookup finds. Handles count as use of
 * the connection while they are held; work that fails because of the connection destroys it.
 */
import {
  Cause,
  Chunk,
  Deferred,
  Duration,
  Effect,
  Exit,
  FiberId,
  Option,
  Predicate,
  type Scope,
  Stream
} from "effect"
import type * as Address from "../../services/Address.js"
import type {
  ConnectionManagerService,
  LookupResult,
  NodeConnectionError,
  NodeConnectionHandle,
  OperationOptions
} from "../../services/ConnectionManager.js"
import type { Contact } from "../../services/Contact.js"
import type { NodeGraphService } from "../../services/NodeGraph.js"
import * as NodeId from "../../services/NodeId.js"
import * as Protocols from "../../services/Protocols.js"
import type { DialError } from "../../services/QuicTransport.js"
import * as Deadline from "./deadline.js"
import type { Gating } from "./gating.js"
import type { GraphUpkeep } from "./graphUpkeep.js"
import type { DialSignal } from "./holePunch.js"
import type { Records } from "./records.js"
import type { ConnRecord, Entry, ManagerState, PendingDial } from "./state.js"

/** True when the work on a connection failed because of the connection itself. */
const isConnectionFailure = (exit: Exit.Exit<unknown, unknown>): boolean =>
  Exit.isFailure(exit) &&
  Chunk.some(
    Cause.failures(exit.cause),
    (e) =>
      Predicate.isTagged(e, "ConnectionError") ||
      (Predicate.isTagged(e, "PeerCallError") && (e as { reason?: string }).reason === "connection")
  )

const dialReason = (e: DialError): NodeConnectionError["reason"] => {
  switch (e.reason) {
    case "mismatch":
      return "mismatch"
    case "timeout":
      return "timeout"
    case "stopped":
      return "stopped"
    case "invalid-address":
      return "invalid-address"
    default:
      return "unreachable"
  }
}

type GetOptions = OperationOptions & { readonly address?: Address.Address }

/** What a dial needs of the relays (`relaying.ts`). */
export interface RelayFallback {
  /** A connection to `nodeId` through one of `relays` (in turn), within `timeout`; in the map. */
  readonly dialVia: (
    nodeId: NodeId.NodeId,
    relays: ReadonlyArray<Contact>,
    timeout: Duration.Duration
  ) => Effect.Effect<Entry, NodeConnectionError>
  /** True when our own address is reachable from anywhere (a relay-only peer may dial us back). */
  readonly selfReachable: () => boolean
}

const punchedIfSignalled = (signal: DialSignal) => (): "punched" | "direct" =>
  signal.signalled() ? "punched" : "direct"

/** How long a relay-only target gets to dial us back (when it can) before its relay is used. */
const DIAL_BACK_HEAD_START = Duration.seconds(3)

export interface Dialing {
  /** A handle on `record` (by default the entry's current one). */
  readonly handleOf: (entry: Entry, record?: ConnRecord) => NodeConnectionHandle
  /** Existing connection, else find the node's address, else dial. */
  readonly getEntry: (
    nodeId: NodeId.NodeId,
    options?: GetOptions
  ) => Effect.Effect<Entry, NodeConnectionError>
  readonly getConnection: (
    nodeId: NodeId.NodeId,
    options?: GetOptions
  ) => Effect.Effect<NodeConnectionHandle, NodeConnectionError>
  readonly getConnectionWithAddress: (
    nodeId: NodeId.NodeId,
    address: Address.Address,
    options?: OperationOptions
  ) => Effect.Effect<NodeConnectionHandle, NodeConnectionError>
  readonly acquireConnection: (
    nodeId: NodeId.NodeId,
    options?: OperationOptions
  ) => Effect.Effect<NodeConnectionHandle, NodeConnectionError, Scope.Scope>
  readonly withConnection: <A, E, R>(
    nodeId: NodeId.NodeId,
    f: (handle: NodeConnectionHandle) => Effect.Effect<A, E, R>,
    options?: OperationOptions
  ) => Effect.Effect<A, E | NodeConnectionError, R>
  readonly withConnectionStream: <A, E, R>(
    nodeId: NodeId.NodeId,
    f: (handle: NodeConnectionHandle) => Stream.Stream<A, E, R>,
    options?: OperationOptions
  ) => Stream.Stream<A, E | NodeConnectionError, R>
  /** `withConnection` whose work gets what is left of the timeout once the connection is had. */
  readonly withConnectionWithin: Deadline.WithConnectionWithin
  readonly openStream: ConnectionManagerService["openStream"]
  readonly destroyConnection: (nodeId: NodeId.NodeId, reason?: string) => Effect.Effect<void>
}

export const make = (
  state: ManagerState,
  deps: {
    readonly graph: NodeGraphService
    readonly records: Records
    readonly gating: Gating
    readonly addToGraph: GraphUpkeep["addToGraph"]
    readonly slowDialSignal: (target: NodeId.NodeId, timeout: Duration.Duration) => DialSignal
    readonly getClosestGlobalNodes: (
      target: NodeId.NodeId,
      options?: OperationOptions
    ) => Effect.Effect<LookupResult>
    /** The relay fallback (`relaying.ts`); without it a dial tries direct paths only. */
    readonly relaying?: () => RelayFallback
  }
): Dialing => {
  const { seeds, isSeedNode, map, pending, timeoutOf, fail } = state
  const { graph, addToGraph, slowDialSignal, getClosestGlobalNodes } = deps
  const { dialRecord, ensureCapacity } = deps.records

  /**
   * Joins the dial already running for `nodeId`, or runs `start` in this fiber. One dial per
   * NodeId: later callers wait for the first one's result, and if the first caller is
   * interrupted (which stops its dial) the next one starts again.
   */
  const joinDial = (
    nodeId: NodeId.NodeId,
    timeout: Duration.Duration,
    start: Effect.Effect<Entry, NodeConnectionError>
  ): Effect.Effect<Entry, NodeConnectionError> => {
    const timedOut = () => fail(nodeId, "timeout", `no connection within ${Duration.format(timeout)}`)
    // The first caller's dial is bounded by the transport's own connect timeout (no race
    // fiber on the path of every new connection); later callers wait at most `timeout`.
    const attempt: Effect.Effect<Entry, NodeConnectionError> = Effect.suspend(() => {
      const existing = map.get(nodeId)
      if (existing) return Effect.succeed(existing)
      const key = NodeId.encode(nodeId) as string
      const running = pending.get(key)
      if (running) {
        running.deferred ??= Deferred.unsafeMake(FiberId.none)
        return Deferred.await(running.deferred).pipe(
          // The first caller was interrupted: its dial stopped; try again.
          Effect.catchAllCause((cause) =>
            Cause.isInterruptedOnly(cause) ? attempt : Effect.failCause(cause)
          ),
          Effect.timeoutFail({ duration: timeout, onTimeout: timedOut })
        )
      }
      const dial: PendingDial = { deferred: undefined }
      pending.set(key, dial)
      return Effect.interruptible(start).pipe(
        Effect.onExit((exit) =>
          Effect.suspend(() => {
            if (pending.get(key) === dial) pending.delete(key)
            return dial.deferred === undefined ? Effect.void : Deferred.done(dial.deferred, exit)
          })
        )
      )
    })
    return attempt
  }

  /** Dial `nodeId` on each address at once; the first that proves to be it wins. */
  const dialEntry = (
    nodeId: NodeId.NodeId,
    addresses: ReadonlyArray<Address.Address>,
    timeout: Duration.Duration
  ): Effect.Effect<Entry, NodeConnectionError> => {
    const punching = !isSeedNode(nodeId) && seeds.length > 0
    // One signalling for all addresses: started by the first slow dial, stopped after the last.
    const signal = punching ? slowDialSignal(nodeId, timeout) : undefined
    const attempt = (address: Address.Address) =>
      dialRecord(
        [nodeId],
        address,
        timeout,
        undefined,
        signal?.whenSlow,
        signal && punchedIfSignalled(signal)
      ).pipe(
        Effect.catchTag("DialError", (e) =>
          Effect.fail(
            fail(
              nodeId,
              dialReason(e),
              e.reason === "timeout" && punching
                ? `${e.message}; hole punching through ${seeds.length} seed(s) did not open a path either (both behind NATs that map each destination to a new port, e.g. symmetric NATs, cannot be traversed)`
                : e.message,
              e
            )
          )
        ),
        Effect.flatMap(map.adopt),
        Effect.tap(() => addToGraph(nodeId, address.host, address.port))
      )
    const dialled =
      addresses.length === 0
        ? Effect.fail(fail(nodeId, "not-found", "no address known"))
        : addresses.length === 1
          ? attempt(addresses[0]!)
          : Effect.raceAll(addresses.map(attempt))
    // A signalled target may dial us back (it cannot be reached, we can): its connection ends the
    // dial. Looked up when the dial runs: joinDial registers it only after this effect is built.
    const direct = !punching
      ? dialled
      : Effect.suspend(() => {
          const dial = pending.get(NodeId.encode(nodeId))
          if (dial === undefined) return dialled
          dial.arrived ??= Deferred.unsafeMake<Entry>(FiberId.none)
          return Effect.raceFirst(dialled, Deferred.await(dial.arrived))
        })
    const directPhase = signal ? Effect.ensuring(direct, signal.stop) : direct
    return ensureCapacity(nodeId).pipe(Effect.zipRight(withRelayFallback(nodeId, timeout, directPhase)))
  }

  /**
   * The direct attempt, then the node's relays (if it named any): a node reachable only through
   * relays goes to them at once (after a short head start for its dial-back when we are
   * reachable ourselves); one with addresses of its own gets half the timeout to connect directly.
   */
  const withRelayFallback = (
    nodeId: NodeId.NodeId,
    timeout: Duration.Duration,
    directPhase: Effect.Effect<Entry, NodeConnectionError>
  ): Effect.Effect<Entry, NodeConnectionError> => {
    const hint = state.relayHints.of(nodeId)
    const relaying = deps.relaying?.()
    if (hint === undefined || relaying === undefined) return directPhase
    const viaRelay = (left: Duration.Duration, directError?: NodeConnectionError) =>
      relaying
        .dialVia(nodeId, hint.relays, left)
        .pipe(
          Effect.mapError((e) =>
            directError === undefined
              ? e
              : fail(nodeId, e.reason, `${directError.detail}; then through its relays: ${e.detail}`, e)
          )
        )
    if (hint.relayOnly && !relaying.selfReachable()) return viaRelay(timeout)
    const budget = hint.relayOnly
      ? Duration.min(DIAL_BACK_HEAD_START, timeout)
      : Duration.divide(timeout, 2).pipe(Option.getOrElse(() => timeout))
    return Effect.flatMap(Deadline.after(timeout), (deadline) =>
      directPhase.pipe(
        Effect.timeoutFail({
          duration: budget,
          onTimeout: () => fail(nodeId, "timeout", `no direct path within ${Duration.format(budget)}`)
        }),
        Effect.catchAll((e) =>
          e.reason === "denied" || e.reason === "limit" || e.reason === "stopped"
            ? Effect.fail(e)
            : Deadline.withLeft(
                deadline,
                (left) => viaRelay(left, e),
                () => e
              )
        )
      )
    )
  }

  const handleOf = (entry: Entry, record: ConnRecord = entry.record): NodeConnectionHandle => ({
    nodeId: entry.nodeId,
    connection: record.connection,
    client: record.client
  })

  /** Gives back one use of `record`; work that failed with a connection error destroys it. */
  const releaseUse = (entry: Entry) => (record: ConnRecord, exit: Exit.Exit<unknown, unknown>) =>
    map.release(entry, record, isConnectionFailure(exit))

  const getConnectionWithAddress = (
    nodeId: NodeId.NodeId,
    address: Address.Address,
    options?: OperationOptions
  ) =>
    Effect.suspend(() => {
      if (NodeId.equals(nodeId, state.self))
        return Effect.fail(fail(nodeId, "invalid-address", "that is our own NodeId"))
      const denied = deps.gating.refuseNode(nodeId)
      if (denied) return Effect.fail(denied)
      const timeout = timeoutOf(options)
      return joinDial(nodeId, timeout, dialEntry(nodeId, [address], timeout)).pipe(Effect.map(handleOf))
    })

  /** The addresses of `nodeId`: the graph's, else a lookup's, within `timeout`. */
  const findAddresses = (
    nodeId: NodeId.NodeId,
    timeout: Duration.Duration
  ): Effect.Effect<ReadonlyArray<Address.Address>, NodeConnectionError> => {
    const notFound = () => fail(nodeId, "not-found", "the node could not be found in the network")
    return Deadline.andThen(
      timeout,
      graph.getNode(nodeId),
      (contact, left): Effect.Effect<ReadonlyArray<Address.Address>, NodeConnectionError> =>
        Option.isSome(contact) && contact.value.addresses.length > 0
          ? Effect.succeed(contact.value.addresses)
          : getClosestGlobalNodes(nodeId, { timeout: left }).pipe(
              Effect.flatMap((r) =>
                Option.isSome(r.address) ? Effect.succeed([r.address.value]) : Effect.fail(notFound())
              )
            ),
      notFound
    )
  }

  const getEntry = (nodeId: NodeId.NodeId, options?: GetOptions): Effect.Effect<Entry, NodeConnectionError> =>
    Effect.suspend(() => {
      if (NodeId.equals(nodeId, state.self))
        return Effect.fail(fail(nodeId, "invalid-address", "that is our own NodeId"))
      const denied = deps.gating.refuseNode(nodeId)
      if (denied) return Effect.fail(denied)
      const existing = map.get(nodeId)
      if (existing) return Effect.succeed(existing)
      const timeout = timeoutOf(options)
      // Where to dial: the caller's address, else a seed's configured one, else the graph, else a lookup.
      const seed = seeds.find((s) => NodeId.equals(s.nodeId, nodeId))
      const known = options?.address ?? (seed ? { host: seed.host, port: seed.port } : undefined)
      if (known) return joinDial(nodeId, timeout, dialEntry(nodeId, [known], timeout))
      // Resolve outside the joined dial: a lookup dials the target itself (joining that dial
      // from inside would wait on itself). The lookup usually leaves the connection made. The
      // dial gets what the search left of the timeout.
      // A node the search could not connect to but heard relays for: those are tried (and say why not).
      const found = findAddresses(nodeId, timeout).pipe(
        Effect.catchAll((e) =>
          e.reason === "not-found" && deps.relaying !== undefined && state.relayHints.of(nodeId) !== undefined
            ? Effect.succeed<ReadonlyArray<Address.Address>>([])
            : Effect.fail(e)
        )
      )
      return Deadline.andThen(
        timeout,
        found,
        (addresses, left) => {
          const now = map.get(nodeId)
          return now ? Effect.succeed(now) : joinDial(nodeId, left, dialEntry(nodeId, addresses, left))
        },
        () => fail(nodeId, "timeout", `no connection within ${Duration.format(timeout)}`)
      )
    })

  const getConnection = (nodeId: NodeId.NodeId, options?: GetOptions) =>
    Effect.map(getEntry(nodeId, options), handleOf)

  // Getting the entry stays interruptible; only taking the usage is protected with its release.
  const acquireConnection = (nodeId: NodeId.NodeId, options?: OperationOptions) =>
    Effect.flatMap(getEntry(nodeId, options), (entry) =>
      Effect.map(Effect.acquireRelease(map.acquire(entry), releaseUse(entry)), (record) =>
        handleOf(entry, record)
      )
    )

  // The same as acquireConnection in a scope of its own, without building a Scope.
  const withConnection = <A, E, R>(
    nodeId: NodeId.NodeId,
    f: (handle: NodeConnectionHandle) => Effect.Effect<A, E, R>,
    options?: OperationOptions
  ): Effect.Effect<A, E | NodeConnectionError, R> =>
    Effect.flatMap(getEntry(nodeId, options), (entry) =>
      Effect.acquireUseRelease(map.acquire(entry), (record) => f(handleOf(entry, record)), releaseUse(entry))
    )

  const withConnectionStream = <A, E, R>(
    nodeId: NodeId.NodeId,
    f: (handle: NodeConnectionHandle) => Stream.Stream<A, E, R>,
    options?: OperationOptions
  ): Stream.Stream<A, E | NodeConnectionError, R> =>
    Stream.unwrapScoped(Effect.map(acquireConnection(nodeId, options), f))

  const withConnectionWithin = Deadline.withConnectionWithin(state, withConnection)

  // The connection's use is taken first, in the caller's scope: the stream holds it. The
  // peer's answer (its first byte included) gets what getting the connection left of the timeout.
  const openStream: Dialing["openStream"] = (nodeId, protocol, options) =>
    Effect.suspend(() => {
      const timeout = timeoutOf(options)
      const expired = () =>
        fail(nodeId, "timeout", `the peer did not answer within ${Duration.format(timeout)}`)
      const open = (handle: NodeConnectionHandle, left: Duration.Duration) =>
        Protocols.open(handle.connection, protocol, { timeout: left }).pipe(
          Effect.timeoutFail({ duration: left, onTimeout: expired })
        )
      if (map.get(nodeId)) return Effect.flatMap(acquireConnection(nodeId, options), (h) => open(h, timeout))
      return Deadline.andThen(timeout, acquireConnection(nodeId, options), open, expired)
    })

  const destroyConnection = (nodeId: NodeId.NodeId, reason = "destroyed") =>
    Effect.suspend(() => {
      const entry = map.get(nodeId)
      return entry ? map.remove(entry, reason) : Effect.void
    })

  return {
    handleOf,
    getEntry,
    getConnection,
    getConnectionWithAddress,
    acquireConnection,
    withConnection,
    withConnectionStream,
    withConnectionWithin,
    openStream,
    destroyConnection
  }
}
