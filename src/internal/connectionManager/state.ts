/**
 * What every part of the connection manager shares, made once per manager: its options and
 * identity, the seeds, the connection map, the dials in progress, the fibers it runs in the
 * background, its event hub, and the manager's own failure. Closing the manager's scope
 * removes every connection, then shuts the event hub.
 */

import { Deferred, Duration, Effect, type Fiber, FiberSet, PubSub, Runtime, type Scope, Stream } from "effect"
import {
  type ConnectionEvent,
  type ConnectionManagerStopped,
  NodeConnectionError,
  type OperationOptions
} from "../../services/ConnectionManager.js"
import type { ConnectionManagerOptions } from "../../services/ConnectionManagerConfig.js"
import type { Contact } from "../../services/Contact.js"
import * as NodeId from "../../services/NodeId.js"
import type { PeerClient } from "../../services/PeerRpc.js"
import * as ConnectionMap from "../connectionMap.js"
import { RelayHints } from "./relayHints.js"
import { type SelfAddresses, unknown as unknownSelfAddresses } from "./selfAddresses.js"

export type Entry = ConnectionMap.Entry<PeerClient>
export type ConnRecord = ConnectionMap.ConnectionRecord<PeerClient>

export interface PendingDial {
  /** Made by the first caller that joins the dial (most dials have none). */
  deferred: Deferred.Deferred<Entry, NodeConnectionError> | undefined
  /**
   * Made by a dial that signals the target (hole punching): completed when the target's own
   * connection to us arrives first (it dialled us back), which ends the dial with it.
   */
  arrived?: Deferred.Deferred<Entry> | undefined
}

export interface ManagerState {
  readonly config: ConnectionManagerOptions
  /**
   * Our own NodeId, the KeyRing's current one: a key renewal changes it (`renewal.ts`), so
   * the parts read it where they use it and never keep a copy.
   */
  self: NodeId.NodeId
  /** `self`, encoded. */
  selfKey: string
  /** Our addresses as peers see them (`selfAddresses.ts`); knows nothing until something keeps them. */
  selfAddresses: SelfAddresses
  /** The relays other nodes said they are reachable through (`relayHints.ts`). */
  readonly relayHints: RelayHints
  /** The relays we hold reservations with, announced (`relaying.ts` keeps them). */
  ownRelays: () => ReadonlyArray<Contact>
  /** The routing table's bucket size: how many contacts a lookup keeps and asks for. */
  readonly k: number
  /** Queries a lookup keeps in flight (`connectionFindConcurrencyLimit`, at least 1). */
  readonly alpha: number
  readonly connectTimeout: Duration.Duration
  /** The configured seeds, ourselves left out. */
  readonly seeds: ReadonlyArray<Contact>
  readonly isSeedNode: (nodeId: NodeId.NodeId) => boolean
  readonly map: ConnectionMap.ConnectionMap<PeerClient>
  /** One dial per NodeId (encoded) in progress. */
  readonly pending: Map<string, PendingDial>
  /** Fibers the manager runs in the background (dials' signalling, evictions, punches, inbound set-ups). */
  readonly background: FiberSet.FiberSet<unknown, unknown>
  /** Starts `effect` from outside any fiber (a transport callback), in `set` (default: the background set). */
  readonly runInBackground: (
    effect: Effect.Effect<void>,
    set?: FiberSet.FiberSet<unknown, unknown>
  ) => Fiber.RuntimeFiber<void>
  /** Tells the event subscribers, if there are any (else the event is not even made). */
  readonly publish: (event: ConnectionEvent) => Effect.Effect<void>
  readonly events: PubSub.PubSub<ConnectionEvent>
  /** A stream of the events from now on, while the scope is open. */
  readonly subscribe: Effect.Effect<Stream.Stream<ConnectionEvent>, never, Scope.Scope>
  /** Fails once the transport has failed and the manager stopped with it. */
  readonly stopped: Deferred.Deferred<never, ConnectionManagerStopped>
  /** An operation's timeout: its own, else `connectionConnectTimeoutTime`. */
  readonly timeoutOf: (options?: OperationOptions) => Duration.Duration
  readonly fail: (
    nodeId: NodeId.NodeId,
    reason: NodeConnectionError["reason"],
    detail: string,
    cause?: unknown
  ) => NodeConnectionError
}

export const make = (
  config: ConnectionManagerOptions,
  self: NodeId.NodeId,
  k: number
): Effect.Effect<ManagerState, never, Scope.Scope> =>
  Effect.gen(function* () {
    const managerScope = yield* Effect.scope
    const connectTimeout = config.connectionConnectTimeoutTime

    const seeds = config.seedNodes.filter((s) => !NodeId.equals(s.nodeId, self))
    const seedKeys = new Set(seeds.map((s) => NodeId.encode(s.nodeId) as string))
    const isSeedNode = (nodeId: NodeId.NodeId) => seedKeys.has(NodeId.encode(nodeId))

    const events = yield* PubSub.unbounded<ConnectionEvent>()
    // Nobody listening: the connection events are not even made (a network of thousands of
    // managers, as in a simulation, publishes one per connection change).
    let subscribers = 0
    const publish = (event: ConnectionEvent): Effect.Effect<void> =>
      subscribers === 0 ? Effect.void : Effect.asVoid(PubSub.publish(events, event))
    const background = yield* FiberSet.make<unknown, unknown>()
    const runtime = yield* Effect.runtime<never>()
    const runInBackground = (effect: Effect.Effect<void>, set = background) => {
      const fiber = Runtime.runFork(runtime)(effect)
      FiberSet.unsafeAdd(set, fiber)
      return fiber
    }
    const stopped = yield* Deferred.make<never, ConnectionManagerStopped>()

    const map = ConnectionMap.make<PeerClient>({
      // Read at each use: the tie-break between duplicate connections follows a renewal.
      get self() {
        return state.self
      },
      idleTimeout: config.connectionIdleTimeoutTime,
      isSeed: isSeedNode,
      publish,
      scope: managerScope,
      // A duplicate connection's liveness: any failure of the round trip means "not alive".
      probe: (record) =>
        (record.client as PeerClient).ping.pipe(
          Effect.timeout(Duration.min(connectTimeout, Duration.seconds(2))),
          Effect.as(true),
          Effect.orElseSucceed(() => false)
        )
    })
    yield* map.useClock
    yield* map.reaper.pipe(Effect.interruptible, Effect.forkIn(managerScope))

    // Closing the manager: every connection goes first (the transport, built before us, stops after).
    yield* Effect.addFinalizer(() =>
      map.removeAll("connection manager stopped").pipe(Effect.zipRight(PubSub.shutdown(events)))
    )

    const state: ManagerState = {
      config,
      self,
      selfKey: NodeId.encode(self) as string,
      selfAddresses: unknownSelfAddresses,
      relayHints: new RelayHints(),
      ownRelays: () => [],
      k,
      alpha: Math.max(1, config.connectionFindConcurrencyLimit),
      connectTimeout,
      seeds,
      isSeedNode,
      map,
      pending: new Map(),
      background,
      runInBackground,
      publish,
      events,
      subscribe: Effect.acquireRelease(
        Effect.sync(() => subscribers++),
        () => Effect.sync(() => subscribers--)
      ).pipe(
        Effect.zipRight(PubSub.subscribe(events)),
        Effect.map((queue) => Stream.fromQueue(queue))
      ),
      stopped,
      timeoutOf: (options) =>
        options?.timeout === undefined ? connectTimeout : Duration.decode(options.timeout),
      fail: (nodeId, reason, detail, cause) =>
        new NodeConnectionError(
          cause === undefined
            ? { nodeId: NodeId.encode(nodeId), reason, detail }
            : { nodeId: NodeId.encode(nodeId), reason, detail, cause }
        )
    }
    return state
  })
