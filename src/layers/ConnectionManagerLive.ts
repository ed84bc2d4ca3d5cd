/**
 * The connection manager over any QuicTransport (live QUIC or the simulated network),
 * the NodeGraph and the agent RPC (PeerRpc).
 */
import { lookup as dnsLookup } from "node:dns/promises"
import { isIP } from "node:net"
import {
  Cause,
  Chunk,
  Clock,
  Deferred,
  Duration,
  Effect,
  Either,
  Exit,
  Fiber,
  FiberId,
  FiberSet,
  Layer,
  Option,
  PubSub,
  Random,
  Runtime,
  Scope,
  Stream
} from "effect"
import * as ConnectionMap from "../internal/connectionMap.js"
import * as Address from "../services/Address.js"
import {
  type ConnectionEvent,
  ConnectionManager,
  type ConnectionManagerService,
  ConnectionManagerStopped,
  type LookupResult,
  MultiConnectionError,
  NodeConnectionError,
  type NodeConnectionHandle,
  type OperationOptions,
  RemoteQueryError
} from "../services/ConnectionManager.js"
import { ConnectionManagerConfig } from "../services/ConnectionManagerConfig.js"
import type { Contact, WireContact } from "../services/Contact.js"
import { KeyRing } from "../services/KeyRing.js"
import { type NodeAddress, NodeGraph } from "../services/NodeGraph.js"
import * as NodeId from "../services/NodeId.js"
import {
  type AgentHandlers,
  type HolePunchMessage,
  HolePunchRefused,
  type PeerClient,
  PeerRpc
} from "../services/PeerRpc.js"
import {
  type DialError,
  type DialOptions,
  type QuicConnection,
  QuicTransport
} from "../services/QuicTransport.js"

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

type Entry = ConnectionMap.Entry<PeerClient>
type ConnRecord = ConnectionMap.ConnectionRecord<PeerClient>

interface PendingDial {
  /** Made by the first caller that joins the dial (most dials have none). */
  deferred: Deferred.Deferred<Entry, NodeConnectionError> | undefined
}

const sameAddress = (connection: QuicConnection, address: Address.Address) =>
  connection.remotePort === address.port &&
  Address.normalizeHost(connection.remoteHost) === Address.normalizeHost(address.host)

const addressOf = (host: string, port: number): NodeAddress => ({
  host: Address.normalizeHost(host),
  port,
  scope: Address.isLocalHost(host) ? "local" : "global"
})

/** True when the work on a connection failed because of the connection itself. */
const isConnectionFailure = (exit: Exit.Exit<unknown, unknown>): boolean =>
  Exit.isFailure(exit) &&
  Chunk.some(Cause.failures(exit.cause), (e) => {
    const tag = (e as { _tag?: string } | null)?._tag
    if (tag === "ConnectionError") return true
    return tag === "PeerCallError" && (e as { reason?: string }).reason === "connection"
  })

const NO_COMMIT_WAIT = { awaitCommit: false } as const

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

export const make = Effect.gen(function* () {
  const config = yield* ConnectionManagerConfig
  const keyRing = yield* KeyRing
  const graph = yield* NodeGraph
  const transport = yield* QuicTransport
  const rpc = yield* PeerRpc
  const self = yield* keyRing.nodeId
  const selfKey = NodeId.encode(self) as string
  const managerScope = yield* Effect.scope
  const k = graph.k
  const alpha = Math.max(1, config.connectionFindConcurrencyLimit)
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
  /** Starts `effect` from outside any fiber (a transport callback), in `set` (default: the background set). */
  const runInBackground = (effect: Effect.Effect<void>, set = background) => {
    const fiber = Runtime.runFork(runtime)(effect)
    FiberSet.unsafeAdd(set, fiber)
    return fiber
  }
  const stopped = yield* Deferred.make<never, ConnectionManagerStopped>()
  const pending = new Map<string, PendingDial>()
  let inboundInProgress = 0

  const timeoutOf = (options?: OperationOptions) =>
    options?.timeout === undefined ? connectTimeout : Duration.decode(options.timeout)

  const fail = (nodeId: NodeId.NodeId, reason: NodeConnectionError["reason"], detail: string) =>
    new NodeConnectionError({ nodeId: NodeId.encode(nodeId), reason, detail })

  const probe = (record: ConnectionMap.ConnectionRecord<unknown>) =>
    (record.client as PeerClient).ping.pipe(
      Effect.timeout(Duration.min(connectTimeout, Duration.seconds(2))),
      Effect.as(true),
      Effect.orElseSucceed(() => false)
    )

  const map = ConnectionMap.make<PeerClient>({
    self,
    idleTimeout: config.connectionIdleTimeoutTime,
    isSeed: isSeedNode,
    publish,
    scope: managerScope,
    probe
  })
  yield* map.useClock
  yield* map.reaper.pipe(Effect.interruptible, Effect.forkIn(managerScope))

  // Closing the manager: every connection goes first (the transport, built before us, stops after).
  yield* Effect.addFinalizer(() =>
    map.removeAll("connection manager stopped").pipe(Effect.zipRight(PubSub.shutdown(events)))
  )

  // ---- NodeGraph upkeep ---------------------------------------------------------------

  const evicting = new Set<number>()

  /** Adds a live node; on a full bucket pings the least recently seen node and evicts it only if dead. */
  const addToGraph = (nodeId: NodeId.NodeId, host: string, port: number): Effect.Effect<void> =>
    Effect.suspend(() => {
      if (NodeId.equals(nodeId, self)) return Effect.void
      const address = addressOf(host, port)
      // The disk commit is not waited for: it is not on the path of a new connection.
      return graph.setNode(nodeId, address, NO_COMMIT_WAIT).pipe(
        Effect.flatMap((result) => {
          if (result._tag !== "BucketFull" || evicting.has(result.bucketIndex)) return Effect.void
          evicting.add(result.bucketIndex)
          const lrs = result.leastRecentlySeen
          const lrsAddress = lrs.addresses[0]
          return pingNode(lrs.nodeId, lrsAddress).pipe(
            Effect.flatMap((alive) =>
              alive && lrsAddress
                ? graph.setNode(lrs.nodeId, lrsAddress)
                : graph.unsetNode(lrs.nodeId).pipe(Effect.zipRight(graph.setNode(nodeId, address)))
            ),
            Effect.ensuring(Effect.sync(() => evicting.delete(result.bucketIndex))),
            Effect.interruptible,
            FiberSet.run(background),
            Effect.asVoid
          )
        }),
        Effect.catchAllCause((cause) => Effect.logDebug("node graph update failed", cause))
      )
    })

  // ---- Records and the map -------------------------------------------------------------

  const handlers: AgentHandlers = {
    touch: (caller) => map.touch(caller.nodeId),
    closestNodes: (caller, target) =>
      graph.getClosestNodes(target, k + 1).pipe(
        Effect.map((contacts) =>
          contacts
            .filter((c) => !NodeId.equals(c.nodeId, caller.nodeId) && c.addresses.length > 0)
            .slice(0, k)
            .map(
              (c): WireContact => ({
                nodeIdEncoded: NodeId.encode(c.nodeId),
                host: c.addresses[0]!.host,
                port: c.addresses[0]!.port
              })
            )
        ),
        Effect.orElseSucceed(() => [])
      ),
    holePunchSignal: (caller, message) => handleHolePunchSignal(caller, message)
  }

  // The functions a held record keeps (its close finalizer, its close handler) are made by
  // these, so that each holds only what it names, not the set-up's other variables.
  const closeOnRelease = (connection: QuicConnection) => () => connection.close("connection released")
  const closedHandler = (record: ConnRecord) => () => map.closedEffect(record)

  /**
   * Sets up what runs on a connection, in `scope` (which the caller provides as the Scope
   * service, once for the whole set-up: each provision copies the fiber's context).
   */
  const setupRecord = (connection: QuicConnection, scope: Scope.CloseableScope, hostname?: string) =>
    Effect.gen(function* () {
      // A dialled connection is already closed with this scope (the dial's contract).
      if (connection.direction === "reverse") yield* Scope.addFinalizerExit(scope, closeOnRelease(connection))
      const client = yield* rpc.client(connection)
      const record: ConnRecord = {
        connection,
        client,
        scope,
        hostname,
        users: 0,
        retired: false,
        closing: false
      }
      // No fiber waits on an idle connection: calls and the close each start one when they come.
      yield* rpc.serve(connection, handlers)
      yield* connection.whenClosed(closedHandler(record))
      return record
    })

  const dialRecord = (
    expected: ReadonlyArray<NodeId.NodeId>,
    address: Address.Address,
    timeout: Duration.Duration,
    hostname?: string,
    whenSlow?: DialOptions["whenSlow"]
  ): Effect.Effect<ConnRecord, DialError> =>
    Effect.gen(function* () {
      const scope = yield* Scope.make()
      const who = expected.length === 1 ? NodeId.encode(expected[0]!) : `one of ${expected.length} nodes`
      yield* Effect.logDebug(`dialling ${who} at ${address.host}:${address.port}`)
      return yield* transport
        .dial({ host: address.host, port: address.port, expectedNodeIds: expected, timeout, whenSlow })
        .pipe(
          Effect.tapError((e) =>
            Effect.logDebug(`dial ${who} at ${address.host}:${address.port} failed: ${e.message}`)
          ),
          Effect.flatMap((connection) => setupRecord(connection, scope, hostname)),
          Scope.extend(scope),
          Effect.onError(() => Scope.close(scope, Exit.void))
        )
    })

  /** Room for one more connection: prune idle non-seed connections (LRU) if at the limit. */
  const ensureCapacity = (nodeId: NodeId.NodeId): Effect.Effect<void, NodeConnectionError> =>
    Effect.suspend(() => {
      if (map.get(nodeId)) return Effect.void
      // Dials in progress count, except the one asking for room.
      const dialling = pending.size - (pending.has(NodeId.encode(nodeId)) ? 1 : 0)
      if (map.entries.size + dialling < config.maxConnections) return Effect.void
      return map.pruneOne.pipe(
        Effect.flatMap((pruned) =>
          pruned
            ? Effect.void
            : Effect.fail(
                fail(nodeId, "limit", `connection limit of ${config.maxConnections} reached and none is idle`)
              )
        )
      )
    })

  // ---- Hole-punch signalling -----------------------------------------------------------

  const holePunchReverse = (host: string, port: number, options?: OperationOptions): Effect.Effect<void> =>
    Effect.gen(function* () {
      let delay = config.connectionHolePunchIntervalTime
      while (true) {
        const bytes = new Uint8Array(32)
        for (let i = 0; i < 32; i++) bytes[i] = yield* Random.nextIntBetween(0, 256)
        yield* transport.sendDatagram(host, port, bytes).pipe(Effect.ignore)
        yield* Effect.sleep(delay)
        delay = Duration.times(delay, 2)
      }
    }).pipe(Effect.timeout(timeoutOf(options)), Effect.ignore)

  const sendSignalingMessage = (
    relay: NodeId.NodeId,
    source: NodeId.NodeId,
    target: NodeId.NodeId,
    address?: Address.Address,
    options?: OperationOptions
  ): Effect.Effect<void> =>
    Effect.suspend(() => {
      if (NodeId.equals(relay, self) || NodeId.equals(target, self)) return Effect.void
      const message: HolePunchMessage = {
        sourceNodeIdEncoded: NodeId.encode(source),
        targetNodeIdEncoded: NodeId.encode(target),
        address
      }
      return withConnection(relay, (h) => h.client.holePunchSignal(message), options).pipe(
        Effect.timeout(timeoutOf(options)),
        Effect.ignore
      )
    })

  const relaySignalingMessage = (
    message: { readonly source: NodeId.NodeId; readonly target: NodeId.NodeId },
    sourceAddress: Address.Address
  ): Effect.Effect<void> =>
    Effect.suspend(() => {
      if (NodeId.equals(message.target, self)) return Effect.void
      // Relay only over a connection we already hold: a request never makes us dial anybody.
      if (!map.get(message.target)) return Effect.logDebug("hole-punch relay: no connection to the target")
      return withConnection(message.target, (h) =>
        h.client.holePunchSignal({
          sourceNodeIdEncoded: NodeId.encode(message.source),
          targetNodeIdEncoded: NodeId.encode(message.target),
          address: { host: sourceAddress.host, port: sourceAddress.port }
        })
      ).pipe(Effect.timeout(connectTimeout), Effect.ignore)
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
      if (NodeId.equals(target.right, self)) {
        if (NodeId.equals(source.right, self)) return
        // For us: punch toward the source. Directly from the source, its own observed address;
        // through a relay, the address the relay observed.
        const direct = NodeId.equals(caller.nodeId, source.right)
        const address = direct ? { host: caller.host, port: caller.port } : message.address
        if (!address)
          return yield* new HolePunchRefused({
            reason: "no-address",
            detail: "relayed message without the source address"
          })
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
      )
    })

  /**
   * Ask every seed to relay a hole-punch request to `target`. The direct dial gets a short
   * head start (as happy eyeballs does): a reachable peer answers well within it and no seed
   * is bothered; a peer behind a NAT is signalled long before QUIC's first retransmission.
   */
  const signalThroughSeeds = (target: NodeId.NodeId, timeout: Duration.Duration) =>
    Effect.forEach(seeds, (seed) => sendSignalingMessage(seed.nodeId, self, target, undefined, { timeout }), {
      concurrency: "unbounded",
      discard: true
    })

  /**
   * Signalling for one dial of a node behind a NAT, perhaps: the transport starts it if the
   * dial is still going after the head start, and the dial's end stops it. Nothing waits
   * beside a dial that is quick (a fiber only runs once signalling starts).
   */
  const slowDialSignal = (target: NodeId.NodeId, timeout: Duration.Duration) => {
    const signal = new SlowDialSignal(runInBackground, signalThroughSeeds(target, timeout))
    const whenSlow = {
      after: Duration.min(
        SIGNAL_HEAD_START,
        Duration.divide(timeout, 4).pipe(Option.getOrElse(() => timeout))
      ),
      run: () => signal.start()
    }
    return { whenSlow, stop: signal.stop }
  }

  // ---- Getting connections -------------------------------------------------------------

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
      dialRecord([nodeId], address, timeout, undefined, signal?.whenSlow).pipe(
        Effect.mapError((e) =>
          fail(
            nodeId,
            dialReason(e),
            e.reason === "timeout" && punching
              ? `${e.message}; hole punching through ${seeds.length} seed(s) did not open a path either (both behind NATs that map each destination to a new port, e.g. symmetric NATs, cannot be traversed)`
              : e.message
          )
        ),
        Effect.flatMap(map.adopt),
        Effect.tap(() => addToGraph(nodeId, address.host, address.port))
      )
    const direct =
      addresses.length === 0
        ? Effect.fail(fail(nodeId, "not-found", "no address known"))
        : addresses.length === 1
          ? attempt(addresses[0]!)
          : Effect.raceAll(addresses.map(attempt))
    return ensureCapacity(nodeId).pipe(
      Effect.zipRight(signal ? Effect.ensuring(direct, signal.stop) : direct)
    )
  }

  /** A handle on `record` (by default the entry's current one). */
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
      if (NodeId.equals(nodeId, self))
        return Effect.fail(fail(nodeId, "invalid-address", "that is our own NodeId"))
      const timeout = timeoutOf(options)
      return joinDial(nodeId, timeout, dialEntry(nodeId, [address], timeout)).pipe(Effect.map(handleOf))
    })

  const getEntry = (
    nodeId: NodeId.NodeId,
    options?: OperationOptions & { readonly address?: Address.Address }
  ): Effect.Effect<Entry, NodeConnectionError> =>
    Effect.suspend(() => {
      if (NodeId.equals(nodeId, self))
        return Effect.fail(fail(nodeId, "invalid-address", "that is our own NodeId"))
      const existing = map.get(nodeId)
      if (existing) return Effect.succeed(existing)
      const timeout = timeoutOf(options)
      // Where to dial: the caller's address, else a seed's configured one, else the graph, else a lookup.
      const seed = seeds.find((s) => NodeId.equals(s.nodeId, nodeId))
      const known = options?.address ?? (seed ? { host: seed.host, port: seed.port } : undefined)
      const resolve: Effect.Effect<ReadonlyArray<Address.Address>, NodeConnectionError> = known
        ? Effect.succeed([known])
        : graph
            .getNode(nodeId)
            .pipe(
              Effect.flatMap((contact) =>
                Option.isSome(contact) && contact.value.addresses.length > 0
                  ? Effect.succeed(contact.value.addresses)
                  : getClosestGlobalNodes(nodeId, { timeout }).pipe(
                      Effect.flatMap((r) =>
                        Option.isSome(r.address)
                          ? Effect.succeed([r.address.value])
                          : Effect.fail(
                              fail(nodeId, "not-found", "the node could not be found in the network")
                            )
                      )
                    )
              )
            )
      // Resolve outside the joined dial: a lookup dials the target itself (joining that dial
      // from inside would wait on itself). The lookup usually leaves the connection made.
      return resolve.pipe(
        Effect.flatMap((addresses) => {
          const now = map.get(nodeId)
          return now ? Effect.succeed(now) : joinDial(nodeId, timeout, dialEntry(nodeId, addresses, timeout))
        })
      )
    })

  const getConnection = (
    nodeId: NodeId.NodeId,
    options?: OperationOptions & { readonly address?: Address.Address }
  ) => Effect.map(getEntry(nodeId, options), handleOf)

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

  const resolveAddresses = (addresses: ReadonlyArray<Address.Address>) =>
    Effect.forEach(addresses, (address) =>
      isIP(Address.normalizeHost(address.host)) !== 0
        ? Effect.succeed([
            { host: Address.normalizeHost(address.host), port: address.port, hostname: undefined }
          ])
        : Effect.tryPromise(() => dnsLookup(address.host, { all: true })).pipe(
            Effect.map((found) =>
              found.map((f) => ({
                host: f.address,
                port: address.port,
                hostname: address.host as string | undefined
              }))
            ),
            Effect.orElseSucceed(() => [])
          )
    ).pipe(Effect.map((xs) => xs.flat()))

  const getMultiConnection = (
    nodeIds: ReadonlyArray<NodeId.NodeId>,
    addresses: ReadonlyArray<Address.Address>,
    options?: OperationOptions
  ): Effect.Effect<ReadonlyArray<NodeId.NodeId>, MultiConnectionError> =>
    Effect.gen(function* () {
      const timeout = timeoutOf(options)
      const wanted = new Map(
        nodeIds.filter((id) => !NodeId.equals(id, self)).map((id) => [NodeId.encode(id) as string, id])
      )
      const connected = new Map<string, NodeId.NodeId>()
      for (const [key, id] of wanted) if (map.get(id)) connected.set(key, id)
      const allDone = yield* Deferred.make<void>()
      const errors: string[] = []
      const resolved = yield* resolveAddresses(addresses)
      const attempt = (address: { host: string; port: number; hostname: string | undefined }) =>
        Effect.suspend(() => {
          const expected = [...wanted].filter(([key]) => !connected.has(key)).map(([, id]) => id)
          if (expected.length === 0) return Effect.void
          return dialRecord(expected, address, timeout, address.hostname).pipe(
            Effect.flatMap(map.adopt),
            Effect.flatMap((entry) =>
              Effect.suspend(() => {
                connected.set(entry.key, entry.nodeId)
                return addToGraph(entry.nodeId, address.host, address.port).pipe(
                  Effect.zipRight(
                    connected.size >= wanted.size ? Deferred.succeed(allDone, undefined) : Effect.void
                  )
                )
              })
            ),
            Effect.catchAll((e) => Effect.sync(() => errors.push(e.message)))
          )
        })
      if (connected.size < wanted.size) {
        yield* Effect.raceFirst(
          Effect.forEach(resolved, attempt, { concurrency: "unbounded", discard: true }),
          Deferred.await(allDone)
        ).pipe(Effect.timeout(timeout), Effect.ignore)
      }
      if (connected.size === 0)
        return yield* Effect.fail(
          new MultiConnectionError({
            nodeIds: [...wanted.keys()] as Array<NodeId.NodeIdEncoded>,
            addresses: addresses.map((a) => `${a.host}:${a.port}`),
            detail: errors.length > 0 ? errors.slice(0, 3).join("; ") : "no connection within the timeout"
          })
        )
      return [...connected.values()]
    })

  const destroyConnection = (nodeId: NodeId.NodeId, reason = "destroyed") =>
    Effect.suspend(() => {
      const entry = map.get(nodeId)
      return entry ? map.remove(entry, reason) : Effect.void
    })

  // ---- Ping ----------------------------------------------------------------------------

  const pingNode = (nodeId: NodeId.NodeId, address?: Address.Address, options?: OperationOptions) =>
    Effect.suspend((): Effect.Effect<boolean> => {
      if (NodeId.equals(nodeId, self)) return Effect.succeed(false)
      const timeout = timeoutOf(options)
      const existing = map.get(nodeId)
      const roundTrip = (entry: Entry) =>
        entry.record.client.ping.pipe(
          Effect.timeout(timeout),
          Effect.as(true),
          Effect.catchAll(() => map.remove(entry, "ping failed").pipe(Effect.as(false)))
        )
      if (address === undefined) {
        if (existing) return roundTrip(existing)
        return getEntry(nodeId, { timeout }).pipe(
          Effect.as(true),
          Effect.orElseSucceed(() => false)
        )
      }
      if (existing && sameAddress(existing.record.connection, address)) return roundTrip(existing)
      // Exactly that address: a fresh authenticated connection proves it.
      return dialRecord([nodeId], address, timeout).pipe(
        Effect.flatMap((record) =>
          map.get(nodeId) ? map.closeRecord(record, "ping") : Effect.asVoid(map.adopt(record))
        ),
        Effect.as(true),
        Effect.orElseSucceed(() => false)
      )
    }).pipe(
      Effect.timeout(timeoutOf(options)),
      Effect.orElseSucceed(() => false)
    )

  // ---- Kademlia ------------------------------------------------------------------------

  /** The well-formed contacts of a node's answer, as it sent them (NodeIds still encoded). */
  const askClosest = (
    nodeId: NodeId.NodeId,
    target: NodeId.NodeId,
    options?: OperationOptions
  ): Effect.Effect<ReadonlyArray<WireContact>, NodeConnectionError | RemoteQueryError> =>
    withConnection(
      nodeId,
      (h) =>
        h.client.closestNodesUpTo(target, k, timeoutOf(options)).pipe(
          Effect.mapError(
            (e) =>
              new RemoteQueryError({
                nodeId: NodeId.encode(nodeId),
                detail: e.reason === "timeout" ? "no answer within the timeout" : e.message
              })
          )
        ),
      options
    ).pipe(
      Effect.map((chunk) =>
        chunk.filter(
          (c) =>
            typeof c.nodeIdEncoded === "string" &&
            c.nodeIdEncoded !== selfKey &&
            Number.isInteger(c.port) &&
            c.port >= 1 &&
            c.port <= 65535 &&
            typeof c.host === "string" &&
            c.host.length > 0 &&
            c.host.length <= 255
        )
      )
    )

  const getRemoteNodeClosestNodes = (
    nodeId: NodeId.NodeId,
    target: NodeId.NodeId,
    options?: OperationOptions
  ): Effect.Effect<ReadonlyArray<Contact>, NodeConnectionError | RemoteQueryError> =>
    Effect.map(askClosest(nodeId, target, options), (contacts) => {
      const out: Contact[] = []
      const seen = new Set<string>()
      for (const c of contacts) {
        if (seen.has(c.nodeIdEncoded)) continue
        const id = NodeId.decode(c.nodeIdEncoded)
        if (Either.isLeft(id)) continue
        seen.add(c.nodeIdEncoded)
        out.push({ nodeId: id.right, host: c.host, port: c.port })
      }
      return out
    })

  interface Candidate {
    readonly nodeId: NodeId.NodeId
    readonly key: string
    readonly distance: Uint8Array
    readonly address: Address.Address
    readonly depth: number
    state: "new" | "inflight" | "answered" | "failed"
  }

  /** One query of a lookup (or a join's bucket fill) gets a third of the operation's timeout. */
  const queryTimeoutOf = (options?: OperationOptions) => {
    const timeout = timeoutOf(options)
    return Duration.max(Duration.millis(1), Duration.divide(timeout, 3).pipe(Option.getOrElse(() => timeout)))
  }

  const getClosestGlobalNodes = (target: NodeId.NodeId, options?: OperationOptions) =>
    Effect.map(lookup(target, options), ({ address, stats }): LookupResult => ({ address, stats }))

  /**
   * The iterative lookup. With `fillBucket`, it also ends as soon as a node in that bucket of
   * ours has answered (a join fills its empty buckets this way: one live entry in each part of
   * the id space, not the k closest to a random id).
   */
  const lookup = (
    target: NodeId.NodeId,
    options?: OperationOptions,
    fillBucket?: number
  ): Effect.Effect<LookupResult & { readonly shortlist: ReadonlyArray<Candidate> }> =>
    Effect.gen(function* () {
      const timeout = timeoutOf(options)
      const queryTimeout = queryTimeoutOf(options)
      const targetKey = NodeId.encode(target) as string
      const seen = new Set<string>([selfKey])
      const shortlist: Candidate[] = []
      const insert = (nodeId: NodeId.NodeId, address: Address.Address, depth: number) => {
        const key = NodeId.encode(nodeId) as string
        if (seen.has(key)) return
        seen.add(key)
        add(key, nodeId, address, depth)
      }
      // A contact of an answer is decoded only the first time the lookup hears of it.
      const insertEncoded = (contact: WireContact, depth: number) => {
        if (seen.has(contact.nodeIdEncoded)) return
        seen.add(contact.nodeIdEncoded)
        const id = NodeId.decode(contact.nodeIdEncoded)
        if (Either.isRight(id))
          add(contact.nodeIdEncoded, id.right, { host: contact.host, port: contact.port }, depth)
      }
      const add = (key: string, nodeId: NodeId.NodeId, address: Address.Address, depth: number) => {
        const c: Candidate = {
          nodeId,
          key,
          distance: NodeId.distanceBytes(nodeId, target),
          address,
          depth,
          state: "new"
        }
        let i = shortlist.length
        while (i > 0 && NodeId.compare(shortlist[i - 1]!.distance, c.distance) > 0) i--
        shortlist.splice(i, 0, c)
      }
      const known = yield* graph.getClosestNodes(target, k).pipe(Effect.orElseSucceed(() => []))
      for (const c of known) if (c.addresses[0]) insert(c.nodeId, c.addresses[0], 0)
      if (shortlist.length === 0) for (const s of seeds) insert(s.nodeId, { host: s.host, port: s.port }, 0)

      let found: Option.Option<NodeAddress> = Option.none()
      let inflight = 0
      let queries = 0
      let rounds = 0
      let finished = false
      const done = yield* Deferred.make<void>()
      const fibers = yield* FiberSet.make<void, never>()

      // The next candidate: the nearest not yet asked among the k nearest that have not failed.
      const pickNext = (): Candidate | undefined => {
        let live = 0
        for (const c of shortlist) {
          if (c.state === "failed") continue
          if (live++ >= k) return undefined
          if (c.state === "new") return c
        }
        return undefined
      }

      const query = (c: Candidate): Effect.Effect<void> => {
        rounds = Math.max(rounds, c.depth + 1)
        if (c.key === targetKey)
          return getConnectionWithAddress(c.nodeId, c.address, { timeout: queryTimeout }).pipe(
            Effect.matchEffect({
              onFailure: () =>
                Effect.sync(() => {
                  c.state = "failed"
                }),
              onSuccess: () =>
                Effect.suspend(() => {
                  c.state = "answered"
                  found = Option.some(addressOf(c.address.host, c.address.port))
                  finished = true
                  return Deferred.succeed(done, undefined)
                })
            })
          )
        return getConnectionWithAddress(c.nodeId, c.address, { timeout: queryTimeout }).pipe(
          Effect.zipRight(askClosest(c.nodeId, target, { timeout: queryTimeout })),
          Effect.matchEffect({
            onFailure: () =>
              Effect.sync(() => {
                c.state = "failed"
              }),
            onSuccess: (contacts) =>
              Effect.suspend(() => {
                c.state = "answered"
                for (const r of contacts) insertEncoded(r, c.depth + 1)
                const added = addToGraph(c.nodeId, c.address.host, c.address.port)
                if (fillBucket === undefined || NodeId.bucketIndex(self, c.nodeId) !== fillBucket)
                  return added
                finished = true
                return Effect.zipRight(added, Deferred.succeed(done, undefined))
              })
          })
        )
      }

      const launch: Effect.Effect<void> = Effect.suspend(() => {
        if (finished) return Effect.void
        const batch: Candidate[] = []
        while (inflight < alpha) {
          const c = pickNext()
          if (!c) break
          c.state = "inflight"
          inflight++
          queries++
          batch.push(c)
        }
        if (batch.length === 0 && inflight === 0) {
          finished = true
          return Deferred.succeed(done, undefined)
        }
        return Effect.forEach(
          batch,
          (c) =>
            FiberSet.run(
              fibers,
              // `launch` starts a query only while fewer than alpha are in flight.
              Effect.interruptible(query(c)).pipe(
                Effect.ensuring(
                  Effect.suspend(() => {
                    inflight--
                    return launch
                  })
                )
              )
            ),
          { discard: true }
        )
      })

      yield* launch
      yield* Deferred.await(done).pipe(Effect.timeout(timeout), Effect.ignore)
      finished = true
      if (Option.isNone(found)) {
        const bucket = NodeId.bucketIndex(self, target)
        if (bucket >= 0) yield* graph.markBucketRefreshed(bucket).pipe(Effect.ignore)
      }
      return {
        address: found,
        stats: { rounds, queries, contacted: shortlist.filter((c) => c.state === "answered").length },
        shortlist
      }
    }).pipe(Effect.scoped)

  const findNode = (
    nodeId: NodeId.NodeId,
    options?: OperationOptions
  ): Effect.Effect<Option.Option<NodeAddress>> =>
    graph
      .getNode(nodeId)
      .pipe(
        Effect.flatMap((contact) =>
          Option.isSome(contact) && contact.value.addresses[0]
            ? Effect.succeed(Option.some(contact.value.addresses[0]))
            : Effect.map(getClosestGlobalNodes(nodeId, options), (r) => r.address)
        )
      )

  const syncNodeGraph = (options?: OperationOptions) =>
    Effect.gen(function* () {
      if (seeds.length > 0) {
        yield* getMultiConnection(
          seeds.map((s) => s.nodeId),
          seeds.map((s) => ({ host: s.host, port: s.port })),
          options
        )
      }
      const own = yield* lookup(self, options)
      // Kademlia's join: the lookup of our own id fills the buckets near us; the buckets
      // farther than our nearest neighbour that it left empty are filled, so that every part
      // of the id space has an entry in our table (see `fillBucket`).
      // A bucket nearer than the farthest of the k closest nodes the lookup found is empty
      // because no such node exists (it would be among the k closest): it is not looked up.
      const filled = new Set((yield* graph.getBuckets).map(([index]) => index))
      if (filled.size > 0) {
        const closest = yield* graph.getClosestNodes(self, k).pipe(Effect.orElseSucceed(() => []))
        const last = NodeId.NODE_ID_BYTES * 8 - 1
        const covered =
          closest.length < k ? last : Math.max(...closest.map((c) => NodeId.bucketIndex(self, c.nodeId)))
        const empty: Array<number> = []
        for (let i = Math.max(Math.min(...filled), covered) + 1; i <= last; i++)
          if (!filled.has(i)) empty.push(i)
        // Nodes of those buckets that the lookup heard of but did not ask.
        const heard = new Map<number, Candidate[]>()
        for (const c of own.shortlist) {
          if (c.state !== "new") continue
          const index = NodeId.bucketIndex(self, c.nodeId)
          if (!empty.includes(index)) continue
          const list = heard.get(index)
          if (list) list.push(c)
          else heard.set(index, [c])
        }
        yield* Effect.forEach(empty, (index) => fillBucket(index, heard.get(index) ?? [], options), {
          concurrency: 1,
          discard: true
        })
      }
    })

  /**
   * Puts one live node of the empty bucket `index` in our table. A connection to a node of it
   * that a lookup heard of does (the dial proves it and adds it): one handshake, where a
   * lookup of a random id in the bucket asks several nodes first. Only if none of up to alpha
   * such nodes answers, or none was heard of, is the bucket refreshed by that lookup.
   */
  const fillBucket = (index: number, heard: ReadonlyArray<Candidate>, options?: OperationOptions) =>
    Effect.gen(function* () {
      const timeout = queryTimeoutOf(options)
      for (const c of heard.slice(0, alpha)) {
        const live = yield* getConnectionWithAddress(c.nodeId, c.address, { timeout }).pipe(
          Effect.as(true),
          Effect.orElseSucceed(() => false)
        )
        if (live) return yield* graph.markBucketRefreshed(index).pipe(Effect.ignore)
      }
      yield* Effect.ignore(refreshBucket(index, options, true))
    })

  const randomIdInBucket = (index: number) =>
    Effect.gen(function* () {
      const noise = new Uint8Array(NodeId.NODE_ID_BYTES)
      for (let i = NodeId.NODE_ID_BYTES - 1 - (index >> 3); i < NodeId.NODE_ID_BYTES; i++)
        noise[i] = yield* Random.nextIntBetween(0, 256)
      return NodeId.inBucket(self, index, noise)
    })

  /**
   * A lookup of a random id in bucket `index`, then the bucket counts as refreshed. `fill`:
   * stop once one node of the bucket has answered (the join's refresh of its empty buckets).
   */
  const refreshBucket = (index: number, options?: OperationOptions, fill = false) =>
    randomIdInBucket(index).pipe(
      Effect.flatMap((id) => lookup(id, options, fill ? index : undefined)),
      Effect.zipRight(graph.markBucketRefreshed(index).pipe(Effect.ignore))
    )

  const refreshBuckets = (options?: OperationOptions) =>
    Effect.gen(function* () {
      const now = yield* Effect.clockWith((c) => c.currentTimeMillis)
      const buckets = yield* graph.getBuckets
      const stale: number[] = []
      for (const [index] of buckets) {
        const at = yield* graph
          .getBucketRefreshedAt(index)
          .pipe(Effect.orElseSucceed(() => Option.none<number>()))
        if (Option.isNone(at) || now - at.value >= Duration.toMillis(config.bucketRefreshInterval))
          stale.push(index)
      }
      yield* Effect.forEach(stale, (index) => refreshBucket(index, options), {
        concurrency: 1,
        discard: true
      })
      return stale.length
    })

  // ---- Inbound connections and failures ------------------------------------------------

  const acceptInbound = (connection: QuicConnection): Effect.Effect<void> =>
    Effect.suspend(() => {
      if (inboundInProgress >= config.maxInboundPending)
        return connection.close("too many inbound handshakes")
      inboundInProgress++
      return Effect.gen(function* () {
        const room = yield* ensureCapacity(connection.remoteNodeId).pipe(Effect.either)
        if (Either.isLeft(room) && !map.get(connection.remoteNodeId)) {
          yield* connection.close("connection limit reached")
          return
        }
        const scope = yield* Scope.make()
        const record = yield* setupRecord(connection, scope).pipe(
          Scope.extend(scope),
          Effect.onError(() => Scope.close(scope, Exit.void))
        )
        yield* map.adopt(record)
        yield* addToGraph(connection.remoteNodeId, connection.remoteHost, connection.remotePort)
      }).pipe(
        Effect.catchAllCause((cause) => Effect.logDebug("inbound connection setup failed", cause)),
        Effect.ensuring(Effect.sync(() => inboundInProgress--))
      )
    })

  yield* transport.incoming.pipe(
    Stream.runForEach((connection) =>
      FiberSet.run(background, Effect.interruptible(acceptInbound(connection)))
    ),
    Effect.forkScoped
  )

  // Our seed connections are never idle-collected here, but the seed would collect them on its
  // side (QUIC keep-alives are not calls): a call every half idle period keeps the seed's timer
  // from firing, so it can still relay hole-punch signals to us. A connection used either way
  // within the last quarter of the idle period needs none this round: the use restarted the
  // seed's timer, and the next round's ping still comes at least a quarter period before it
  // runs out. Each ping runs in a fiber of its own, bounded by the RPC layer
  // (rpcCallTimeoutTime): a silent seed holds up no other ping and no later round. Their set
  // is not the background set, whose size the diagnostics report as work in progress.
  if (seeds.length > 0) {
    const pings = yield* FiberSet.make<unknown, unknown>()
    const halfMs = Math.max(1, Duration.toMillis(config.connectionIdleTimeoutTime) / 2)
    const pingRound = Effect.flatMap(Clock.currentTimeMillis, (now) =>
      Effect.sync(() => {
        for (const seed of seeds) {
          const entry = map.get(seed.nodeId)
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
  }

  yield* transport.failure.pipe(
    Effect.catchAll((error) =>
      Effect.gen(function* () {
        const stop = new ConnectionManagerStopped({ detail: error.message, cause: error })
        yield* Effect.logError(`connection manager stopping: ${error.message}`)
        yield* PubSub.publish(events, { _tag: "ManagerError", error: stop })
        yield* map.removeAll("transport failed")
        yield* Deferred.fail(stopped, stop)
      })
    ),
    Effect.forkScoped
  )

  const service: ConnectionManagerService = {
    host: transport.host,
    port: transport.port,
    nodeId: self,
    acquireConnection,
    withConnection,
    withConnectionStream,
    getConnection,
    getConnectionWithAddress,
    getMultiConnection,
    destroyConnection,
    listConnections: Effect.sync(() => [...map.entries.values()].map(map.info)),
    hasConnection: (nodeId) => Effect.sync(() => map.get(nodeId) !== undefined),
    getSeedNodes: seeds,
    isSeedNode,
    pingNode,
    findNode,
    getClosestGlobalNodes,
    getRemoteNodeClosestNodes,
    syncNodeGraph,
    refreshBuckets,
    holePunchReverse,
    sendSignalingMessage,
    relaySignalingMessage,
    events: Effect.acquireRelease(
      Effect.sync(() => subscribers++),
      () => Effect.sync(() => subscribers--)
    ).pipe(
      Effect.zipRight(PubSub.subscribe(events)),
      Effect.map((queue) => Stream.fromQueue(queue))
    ),
    diagnostics: Effect.gen(function* () {
      const entries = [...map.entries.values()]
      return {
        connections: entries.length,
        standbyConnections: entries.reduce((n, e) => n + (e.standby?.size ?? 0), 0),
        pendingDials: pending.size,
        inboundInProgress,
        backgroundFibers: yield* FiberSet.size(background),
        idleTimers: map.idleCount()
      }
    }),
    failure: Deferred.await(stopped)
  }
  return service
})

export const layer: Layer.Layer<
  ConnectionManager,
  never,
  ConnectionManagerConfig | KeyRing | NodeGraph | QuicTransport | PeerRpc
> = Layer.scoped(ConnectionManager, make)
