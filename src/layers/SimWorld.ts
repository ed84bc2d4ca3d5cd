/**
 * SimNetwork: the simulated world and the in-memory `QuicTransport` each node runs in it.
 *
 * One discrete-event scheduler per world: packets, stream bytes and closes are callbacks in a
 * heap ordered by (virtual time, sequence number); a single timer fiber sleeps on the Effect
 * Clock until the earliest one is due, so the whole world costs one pending sleep, whatever
 * the number of nodes, and runs under TestClock.
 *
 * Model:
 * - A dial is a handshake of one round trip: the Initial goes out through the dialer's NAT
 *   (creating its mapping), is filtered by the target's NAT on arrival, and needs a listener;
 *   the reply carries the listener's NodeId, which the dialer checks against `expectedNodeIds`.
 *   The listener learns of the connection half a round trip later (the client's Finished).
 *   An unanswered Initial (lost, filtered, partitioned) is sent again after 1 s, 2 s, 4 s, …
 *   (QUIC's probe timeout) until the dial's timeout: a NAT opened meanwhile lets it through.
 * - On a connection, everything one side sends (stream opens, bytes, FIN, close) reaches the
 *   other in order after the link latency. Bytes are never lost; across a partition they are
 *   held until it heals, and a connection that stays cut for its max idle timeout closes with
 *   IdleTimeout on each side.
 * - Loss applies to handshake packets and datagrams.
 */
import { createHash } from "node:crypto"
import { Socket } from "@effect/platform"
import {
  type Clock,
  Deferred,
  Duration,
  Effect,
  Exit,
  type Fiber,
  FiberSet,
  Layer,
  Mailbox,
  Runtime,
  Scope,
  type Stream
} from "effect"
import { Dispatch } from "../internal/connectionDispatch.js"
import * as QuicStreamSocket from "../internal/quicStreamSocket.js"
import { TimedHeap } from "../internal/timedHeap.js"
import { KeyRing } from "../services/KeyRing.js"
import * as NodeId from "../services/NodeId.js"
import {
  type CloseReason,
  ConnectionError,
  DialError,
  type DialOptions,
  type QuicConnection,
  QuicTransport,
  type QuicTransportService,
  TransportError
} from "../services/QuicTransport.js"
import {
  type LinkOptions,
  type NatType,
  type SimChannel,
  type SimHost,
  SimNetwork,
  type SimNetworkOptions,
  type SimNetworkService,
  type SimNetworkStats,
  type SimTransportOptions,
  type TraceEvent,
  type TraceKind
} from "../services/SimNetwork.js"

// ---- Deterministic PRNG ------------------------------------------------------------------

/** A seeded source of uniform numbers in [0, 1). */
export interface Prng {
  readonly next: () => number
}

/** The 32-bit seed for a number or a string (FNV-1a). */
export const seedOf = (seed: number | string): number => {
  if (typeof seed === "number") return Math.trunc(seed) >>> 0
  let h = 0x811c9dc5
  for (let i = 0; i < seed.length; i++) h = Math.imul(h ^ seed.charCodeAt(i), 0x01000193)
  return h >>> 0
}

/** sfc32 seeded through splitmix32: small, fast and the same on every platform. */
export const makePrng = (seed: number | string): Prng => {
  let s = seedOf(seed)
  const splitmix = () => {
    s = (s + 0x9e3779b9) | 0
    let z = s
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b)
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35)
    return (z ^ (z >>> 16)) >>> 0
  }
  let a = splitmix()
  let b = splitmix()
  let c = splitmix()
  let d = splitmix()
  const next = () => {
    const t = (((a + b) | 0) + d) | 0
    d = (d + 1) | 0
    a = b ^ (b >>> 9)
    b = (c + (c << 3)) | 0
    c = (c << 21) | (c >>> 11)
    c = (c + t) | 0
    return (t >>> 0) / 4294967296
  }
  for (let i = 0; i < 12; i++) next()
  return { next }
}

// ---- Scheduler -----------------------------------------------------------------------------

/**
 * A Clock that can call back at a time of its own without a fiber (SimRuntime's virtual
 * clock). The world's scheduler then wakes through it; on any other Clock (TestClock, the
 * live one) it wakes by a sleeping fiber.
 */
export interface TimerClock extends Clock.Clock {
  /** Calls `run` (outside any fiber) once the clock reaches `at` (ms since 1970). */
  readonly scheduleAt: (at: number, run: () => void) => void
}

export const hasTimers = (clock: Clock.Clock): clock is TimerClock =>
  typeof (clock as Partial<TimerClock>).scheduleAt === "function"

interface Scheduled {
  readonly at: number
  readonly seq: number
  readonly run: () => void
}

// ---- World state ---------------------------------------------------------------------------

interface Addr {
  readonly host: string
  readonly port: number
}

interface Mapping {
  readonly internalPort: number
  readonly extPort: number
  /** Destinations `host:port` this mapping has sent to (the filter of restricted NATs). */
  readonly permits: Set<string>
}

interface HostState {
  readonly index: number
  readonly host: string
  readonly publicHost: string
  readonly nat: NatType
  readonly bindings: Map<number, Endpoint>
  nextPort: number
  readonly mappings: Map<string, Mapping>
  readonly byExtPort: Map<number, Mapping>
  nextExtPort: number
}

interface Endpoint {
  readonly host: HostState
  readonly port: number
  readonly label: string
  readonly nodeId: NodeId.NodeId
  readonly nodeKey: string
  /** Starts the fibers of its connections' events (streams, closes): the transport's runtime. */
  readonly fork: (effect: Effect.Effect<void>) => Fiber.RuntimeFiber<void>
  readonly connectMs: number
  readonly idleMs: number
  stopped: boolean
  readonly incoming: Mailbox.Mailbox<QuicConnection>
  readonly failure: Deferred.Deferred<never, TransportError>
  readonly ends: Set<SimConnection>
  readonly pending: Set<PendingDial>
  nextConnection: number
}

interface PendingDial {
  readonly ep: Endpoint
  readonly host: string
  readonly port: number
  readonly expected: ReadonlyArray<NodeId.NodeId>
  /** Resumes the dialling fiber; dropped once the dial is done (events may outlive it). */
  resume: ((exit: Exit.Exit<SimConnection, DialError>) => void) | undefined
  done: boolean
  end: SimConnection | undefined
}

interface Pair {
  readonly id: number
  a: SimConnection
  b: SimConnection
  /** Set while the two hosts are partitioned: the time the cut started. */
  blockedSince: number | undefined
}

interface Partition {
  readonly a: Set<HostState>
  readonly b: Set<HostState>
}

const IPV4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/
const isIpv4 = (host: string) => {
  const m = IPV4.exec(host)
  return m?.slice(1).every((part) => Number(part) <= 255) === true
}
const isPort = (port: number) => Number.isInteger(port) && port > 0 && port < 65536

/** First probe timeout of a dial: QUIC's initial RTT estimate (333 ms) times three. */
const INITIAL_PTO_MS = 1000

const millis = (input: Duration.DurationInput) =>
  Math.max(0, Math.round(Duration.toMillis(Duration.decode(input))))

const localReason = (detail?: string): CloseReason =>
  detail === undefined ? { _tag: "Local" } : { _tag: "Local", detail }
const peerReason = (reason: CloseReason): CloseReason =>
  reason._tag === "Local" && reason.detail !== undefined
    ? { _tag: "Peer", detail: reason.detail }
    : { _tag: "Peer" }

const describeReason = (reason: CloseReason) =>
  "detail" in reason && reason.detail !== undefined ? `${reason._tag}: ${reason.detail}` : reason._tag

// ---- Streams -------------------------------------------------------------------------------

/** One direction of a stream, as its reader sees it. */
class Pipe {
  chunks: Array<Uint8Array> = []
  fin = false
  error: Socket.SocketError | undefined = undefined
  /** The reader stopped reading: later bytes are discarded. */
  stopped = false
  wake: (() => void) | undefined = undefined

  get done() {
    return this.fin || this.error !== undefined
  }
  get ready() {
    return this.chunks.length > 0 || this.fin || this.error !== undefined || this.stopped
  }
  notify() {
    const wake = this.wake
    this.wake = undefined
    wake?.()
  }
}

const encoder = new TextEncoder()
const inspect = Symbol.for("nodejs.util.inspect.custom")
const cleanClose = new Socket.SocketCloseError({ reason: "Close", code: 1000 })

class SimStream {
  readonly toAcceptor = new Pipe()
  readonly toOpener = new Pipe()
  readonly openerSocket: SimSocket
  readonly acceptorSocket: SimSocket
  constructor(
    readonly world: World,
    readonly opener: SimConnection
  ) {
    this.openerSocket = new SimSocket(world, this, opener, this.toOpener, this.toAcceptor)
    this.acceptorSocket = new SimSocket(world, this, opener.peer, this.toAcceptor, this.toOpener)
  }
  socketOf(end: SimConnection) {
    return end === this.opener ? this.openerSocket : this.acceptorSocket
  }
  /** Forgets the stream once both directions are finished. */
  check() {
    if (this.toAcceptor.done && this.toOpener.done) {
      this.opener.streams?.delete(this)
      this.opener.peer.streams?.delete(this)
    }
  }
}

/** One side of a stream: an `@effect/platform` Socket over two pipes. */
class SimSocket implements Socket.Socket {
  readonly [Socket.TypeId]: Socket.TypeId = Socket.TypeId
  writeEnded = false
  current: FiberSet.FiberSet<unknown, unknown> | undefined = undefined

  constructor(
    readonly world: World,
    readonly stream: SimStream,
    readonly end: SimConnection,
    readonly readPipe: Pipe,
    readonly writePipe: Pipe
  ) {}

  toJSON() {
    return { _id: "SimSocket", connection: this.end.id, writeEnded: this.writeEnded }
  }
  [inspect]() {
    return this.toJSON()
  }

  /** Our side is done: FIN after what was written, and no more reading. */
  shutdown() {
    this.endWrite()
    this.stopReading()
  }

  stopReading() {
    const pipe = this.readPipe
    pipe.stopped = true
    pipe.chunks = []
    pipe.notify()
  }

  endWrite() {
    this.finishWrite((pipe) => {
      pipe.fin = true
    })
  }

  resetWrite(code: number) {
    this.finishWrite((pipe) => {
      pipe.error = new Socket.SocketGenericError({
        reason: "Read",
        cause: `stream reset by the peer (${code})`
      })
    })
  }

  /** Ends our writing once; the peer's read side gets `mark` after the link's delay. */
  private finishWrite(mark: (pipe: Pipe) => void) {
    if (this.writeEnded) return
    this.writeEnded = true
    if (this.end.reason !== undefined) return
    const pipe = this.writePipe
    const stream = this.stream
    this.world.sendOnConnection(this.end, () => {
      if (pipe.done) return
      mark(pipe)
      pipe.notify()
      stream.check()
    })
  }

  readonly write = (
    chunk: Uint8Array | string | Socket.CloseEvent
  ): Effect.Effect<void, Socket.SocketError> =>
    Effect.suspend(() => {
      if (Socket.isCloseEvent(chunk)) {
        const error = QuicStreamSocket.closeErrorOf(chunk)
        if (chunk.code === 1000) this.endWrite()
        else this.resetWrite(chunk.code)
        const running = this.current
        if (running) Deferred.unsafeDone(running.deferred, Exit.fail(error))
        else this.stopReading()
        return Effect.void
      }
      if (this.end.reason !== undefined)
        return Effect.fail(
          new Socket.SocketGenericError({ reason: "Write", cause: "the connection is closed" })
        )
      if (this.writeEnded) return Effect.fail(QuicStreamSocket.writeSideClosed())
      const bytes = typeof chunk === "string" ? encoder.encode(chunk) : Uint8Array.from(chunk)
      const pipe = this.writePipe
      this.world.sendOnConnection(this.end, () => {
        if (pipe.done || pipe.stopped) return
        pipe.chunks.push(bytes)
        pipe.notify()
      })
      return Effect.void
    })

  readonly writer: Effect.Effect<
    (chunk: Uint8Array | string | Socket.CloseEvent) => Effect.Effect<void, Socket.SocketError>,
    never,
    Scope.Scope
  > = Effect.acquireRelease(Effect.succeed(this.write), () => Effect.sync(() => this.endWrite()))

  private waitReady = Effect.async<void>((resume) => {
    const pipe = this.readPipe
    if (pipe.ready) return resume(Effect.void)
    pipe.wake = () => resume(Effect.void)
    return Effect.sync(() => {
      pipe.wake = undefined
    })
  })

  readonly runRaw = <_, E = never, R = never>(
    // biome-ignore lint/suspicious/noConfusingVoidType: the signature of Socket.runRaw
    handler: (_: string | Uint8Array) => Effect.Effect<_, E, R> | void,
    options?: { readonly onOpen?: Effect.Effect<void> | undefined }
  ): Effect.Effect<void, Socket.SocketError | E, R> => {
    const self = this
    return Effect.scopedWith((scope) =>
      Effect.gen(function* () {
        if (self.current !== undefined)
          return yield* new Socket.SocketGenericError({
            reason: "Open",
            cause: "the socket is already running"
          })
        const fiberSet = yield* FiberSet.make<unknown, E | Socket.SocketError>().pipe(Scope.extend(scope))
        const runFork = yield* FiberSet.runtime(fiberSet)<R>()
        const pipe = self.readPipe
        const step = Effect.suspend((): Effect.Effect<void, Socket.SocketError> => {
          if (pipe.chunks.length > 0) {
            const batch = pipe.chunks
            pipe.chunks = []
            for (const chunk of batch) {
              const result = handler(chunk)
              if (Effect.isEffect(result)) runFork(result)
            }
          }
          if (pipe.error !== undefined) return Effect.fail(pipe.error)
          if (pipe.fin || pipe.stopped) return Effect.fail(cleanClose)
          return Effect.void
        })
        yield* FiberSet.run(fiberSet, Effect.forever(Effect.zipRight(self.waitReady, step)))
        self.current = fiberSet
        yield* Scope.addFinalizer(
          scope,
          Effect.sync(() => {
            self.current = undefined
            self.stopReading()
          })
        )
        if (options?.onOpen) yield* options.onOpen
        return yield* FiberSet.join(fiberSet).pipe(
          Effect.catchIf(
            Socket.SocketCloseError.isClean((code) => !Socket.defaultCloseCodeIsError(code)),
            () => Effect.void
          )
        )
      })
    ).pipe(Effect.interruptible)
  }

  readonly run = <_, E = never, R = never>(
    // biome-ignore lint/suspicious/noConfusingVoidType: the signature of Socket.run
    handler: (_: Uint8Array) => Effect.Effect<_, E, R> | void,
    options?: { readonly onOpen?: Effect.Effect<void> | undefined }
  ): Effect.Effect<void, Socket.SocketError | E, R> =>
    this.runRaw((data) => (typeof data === "string" ? handler(encoder.encode(data)) : handler(data)), options)
}

// ---- Connections -----------------------------------------------------------------------------

/** One end of a simulated connection. */
class SimConnection implements QuicConnection, SimChannel {
  reason: CloseReason | undefined = undefined
  /** SimChannel: the slot of the layer using this end as a channel. */
  state: unknown = undefined
  /** Counted in its endpoint's `ends` (the listener's end only once accepted). */
  registered = false
  /** Its open streams (made on the first one: most ends of a simulated world never open any). */
  streams: Set<SimStream> | undefined = undefined
  /** Delivery time of the last thing sent to the peer (keeps the connection in order). */
  lastAt = 0
  /** What was sent while the link is cut, in order. */
  held: Array<() => void> | undefined = undefined
  peer!: SimConnection

  constructor(
    readonly world: World,
    readonly pair: Pair,
    readonly ep: Endpoint,
    readonly id: string,
    readonly direction: "forward" | "reverse",
    readonly remoteNodeId: NodeId.NodeId,
    readonly remoteHost: string,
    readonly remotePort: number
  ) {
    this.dispatch = new Dispatch(ep.fork)
  }
  /** Streams the peer opens and the close, handed to whoever serves this end (no fiber waits). */
  readonly dispatch: Dispatch

  get localHost() {
    return this.ep.host.host
  }
  /** A compact form for logs and test output (the object graph behind is the whole world). */
  toJSON() {
    return {
      _id: "SimConnection",
      id: this.id,
      direction: this.direction,
      local: `${this.localHost}:${this.localPort}`,
      remote: `${this.remoteHost}:${this.remotePort}`,
      remoteNodeId: NodeId.encode(this.remoteNodeId),
      closed: this.reason === undefined ? false : describeReason(this.reason)
    }
  }
  [inspect]() {
    return this.toJSON()
  }
  get localPort() {
    return this.ep.port
  }
  get openStream(): Effect.Effect<Socket.Socket, ConnectionError, Scope.Scope> {
    return Effect.acquireRelease(
      Effect.suspend(() => {
        if (this.reason !== undefined)
          return Effect.fail(
            new ConnectionError({
              connectionId: this.id,
              reason: "closed",
              detail: `connection is closed (${describeReason(this.reason)})`
            })
          )
        return Effect.succeed(this.world.openStream(this))
      }),
      (socket) => Effect.sync(() => socket.shutdown())
    )
  }
  get acceptedStreams(): Stream.Stream<Socket.Socket> {
    return this.dispatch.acceptedStreams
  }
  // Methods, not arrow-function fields: a world holds hundreds of thousands of ends, and a
  // field would be a closure per end.
  handleStreams(onStream: Parameters<QuicConnection["handleStreams"]>[0]) {
    return this.dispatch.handleStreams(onStream)
  }
  whenClosed(f: Parameters<QuicConnection["whenClosed"]>[0]) {
    return this.dispatch.whenClosed(f)
  }
  get closed(): Effect.Effect<CloseReason> {
    return this.dispatch.closed
  }
  close(reason?: string): Effect.Effect<void> {
    return Effect.sync(() => this.world.closeConnection(this, localReason(reason), "peer"))
  }

  // -- SimChannel --

  get isOpen() {
    return this.reason === undefined
  }
  send(run: () => void): boolean {
    if (this.reason !== undefined) return false
    const peer = this.peer
    this.world.sendOnConnection(this, () => {
      if (peer.reason === undefined) run()
    })
    return true
  }
  onClose(f: (reason: CloseReason) => void): () => void {
    return this.dispatch.listenClose(f)
  }
}

// ---- The world -------------------------------------------------------------------------------

interface LinkState {
  latency: number | undefined
  jitter: number | undefined
  loss: number | undefined
}

class World {
  readonly prng: Prng
  readonly heap = new TimedHeap<Scheduled>()
  private seq = 0
  /**
   * The times of the clock timers set for `tick` and not yet fired. A timer is only set for a
   * time earlier than all of these, and they fire in time order: a stack, the earliest on top.
   */
  private readonly armed: Array<number> = []
  /** Halted, or the world's scope closed: nothing is scheduled any more, and timers still due do nothing. */
  closed = false
  private ticking = false
  private tickNow = 0
  readonly start: number

  readonly addresses = new Map<string, HostState>()
  hostCount = 0
  private publicCounter = 0
  private privateCounter = 0
  endpointCount = 0
  openEnds = 0
  pendingDials = 0
  private pairCounter = 0
  readonly pairs = new Set<Pair>()
  private readonly stalled = new Set<SimConnection>()

  defaults: { latency: number; jitter: number; loss: number }
  private readonly links = new Map<string, LinkState>()
  private readonly partitions = new Map<number, Partition>()
  private partitionCounter = 0

  private readonly hash = createHash("sha256")
  readonly events: Array<TraceEvent> = []
  traceCount = 0

  constructor(
    readonly seed: number,
    readonly clock: Clock.Clock,
    private readonly runFork: (effect: Effect.Effect<void>) => unknown,
    /** The clock's own timers when it has them (SimRuntime's virtual clock): no fiber per wake-up. */
    private readonly timers: TimerClock | undefined,
    options: SimNetworkOptions,
    readonly traceLimit: number
  ) {
    this.prng = makePrng(seed)
    this.start = clock.unsafeCurrentTimeMillis()
    this.defaults = {
      latency: options.latency === undefined ? 10 : millis(options.latency),
      jitter: options.jitter === undefined ? 0 : millis(options.jitter),
      loss: options.loss ?? 0
    }
  }

  now() {
    return this.clock.unsafeCurrentTimeMillis()
  }

  // -- scheduling --

  scheduleAt(at: number, run: () => void) {
    if (this.closed) return
    this.heap.push({ at, seq: this.seq++, run })
    if (this.ticking && at <= this.tickNow) return
    this.arm(at)
  }

  schedule(delay: number, run: () => void) {
    this.scheduleAt(this.now() + delay, run)
  }

  private arm(at: number) {
    const armed = this.armed
    if (armed.length > 0 && armed[armed.length - 1]! <= at) return
    armed.push(at)
    const timers = this.timers
    if (timers !== undefined) {
      timers.scheduleAt(at, () => this.tick(at))
      return
    }
    const delay = Math.max(0, at - this.now())
    this.runFork(
      Effect.zipRight(
        Effect.sleep(Duration.millis(delay)),
        Effect.sync(() => this.tick(at))
      )
    )
  }

  private tick(armedAt: number) {
    // Halted, or the world's scope closed: timers still due do nothing.
    if (this.closed) return
    const armed = this.armed
    while (armed.length > 0 && armed[armed.length - 1]! <= armedAt) armed.pop()
    const now = this.now()
    this.ticking = true
    this.tickNow = now
    try {
      while (true) {
        const next = this.heap.peek()
        if (next === undefined || next.at > now) break
        this.heap.pop()
        next.run()
      }
    } finally {
      this.ticking = false
    }
    const next = this.heap.peek()
    if (next !== undefined) this.arm(next.at)
  }

  // -- trace --

  trace(kind: TraceKind, from: string, to: string, detail = "") {
    const at = this.now() - this.start
    this.hash.update(`${at}|${kind}|${from}|${to}|${detail}\n`)
    this.traceCount++
    if (this.events.length < this.traceLimit) this.events.push({ at, kind, from, to, detail })
  }

  traceHash() {
    return this.hash.copy().digest("hex")
  }

  // -- hosts --

  private nextPublic(): string {
    while (true) {
      const i = ++this.publicCounter
      const host = `1.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`
      if (!this.addresses.has(host)) return host
    }
  }

  private nextPrivate(): string {
    while (true) {
      const i = ++this.privateCounter
      const host = `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`
      if (!this.addresses.has(host)) return host
    }
  }

  addHost(nat: NatType, host?: string): HostState {
    if (host !== undefined) {
      const existing = this.addresses.get(host)
      if (existing) return existing
    }
    const bindHost = host ?? (nat === "none" ? this.nextPublic() : this.nextPrivate())
    const state: HostState = {
      index: this.hostCount++,
      host: bindHost,
      publicHost: nat === "none" ? bindHost : this.nextPublic(),
      nat,
      bindings: new Map(),
      nextPort: 1314,
      mappings: new Map(),
      byExtPort: new Map(),
      nextExtPort: 40000
    }
    this.addresses.set(state.host, state)
    this.addresses.set(state.publicHost, state)
    return state
  }

  info(state: HostState): SimHost {
    return { host: state.host, publicHost: state.publicHost, nat: state.nat }
  }

  // -- links --

  private linkKey(a: HostState, b: HostState) {
    return a.index < b.index ? `${a.index}:${b.index}` : `${b.index}:${a.index}`
  }

  setLink(a: HostState, b: HostState, options: LinkOptions) {
    const key = this.linkKey(a, b)
    const link = this.links.get(key) ?? { latency: undefined, jitter: undefined, loss: undefined }
    if (options.latency !== undefined) link.latency = millis(options.latency)
    if (options.jitter !== undefined) link.jitter = millis(options.jitter)
    if (options.loss !== undefined) link.loss = options.loss
    this.links.set(key, link)
    this.trace("link", a.host, b.host, `${link.latency ?? "-"}/${link.jitter ?? "-"}/${link.loss ?? "-"}`)
  }

  delay(a: HostState, b: HostState): number {
    const link = this.links.size > 0 ? this.links.get(this.linkKey(a, b)) : undefined
    const base = link?.latency ?? this.defaults.latency
    const jitter = link?.jitter ?? this.defaults.jitter
    return jitter > 0 ? base + Math.floor(this.prng.next() * (jitter + 1)) : base
  }

  lost(a: HostState, b: HostState): boolean {
    const link = this.links.size > 0 ? this.links.get(this.linkKey(a, b)) : undefined
    const loss = link?.loss ?? this.defaults.loss
    return loss > 0 && this.prng.next() < loss
  }

  blocked(a: HostState, b: HostState): boolean {
    if (a === b) return false
    for (const p of this.partitions.values())
      if ((p.a.has(a) && p.b.has(b)) || (p.a.has(b) && p.b.has(a))) return true
    return false
  }

  partition(a: Set<HostState>, b: Set<HostState>): number {
    const id = ++this.partitionCounter
    this.partitions.set(id, { a, b })
    this.trace(
      "partition",
      [...a].map((h) => h.host).join(","),
      [...b].map((h) => h.host).join(","),
      `#${id}`
    )
    const now = this.now()
    for (const pair of this.pairs) {
      if (pair.blockedSince !== undefined || !this.blocked(pair.a.ep.host, pair.b.ep.host)) continue
      pair.blockedSince = now
      for (const end of [pair.a, pair.b]) {
        if (end.reason !== undefined) continue
        this.schedule(end.ep.idleMs, () => {
          if (end.reason === undefined && pair.blockedSince === now)
            this.closeConnection(end, { _tag: "IdleTimeout" }, "none")
        })
      }
    }
    return id
  }

  heal(id: number | undefined) {
    if (id === undefined) this.partitions.clear()
    else this.partitions.delete(id)
    this.trace("heal", "", "", id === undefined ? "all" : `#${id}`)
    for (const pair of this.pairs)
      if (pair.blockedSince !== undefined && !this.blocked(pair.a.ep.host, pair.b.ep.host))
        pair.blockedSince = undefined
    for (const end of [...this.stalled]) {
      if (this.blocked(end.ep.host, end.peer.ep.host)) continue
      this.stalled.delete(end)
      const held = end.held ?? []
      end.held = undefined
      for (const run of held) this.sendOnConnection(end, run)
    }
  }

  // -- packets --

  /** NAT on the way out: the source address the rest of the world sees (creates mappings). */
  private outbound(from: HostState, fromPort: number, toHost: string, toPort: number): Addr {
    if (from.nat === "none") return { host: from.host, port: fromPort }
    const dest = `${toHost}:${toPort}`
    const key = from.nat === "symmetric" ? `${fromPort}>${dest}` : `${fromPort}`
    let mapping = from.mappings.get(key)
    if (mapping === undefined) {
      mapping = { internalPort: fromPort, extPort: from.nextExtPort++, permits: new Set() }
      from.mappings.set(key, mapping)
      from.byExtPort.set(mapping.extPort, mapping)
    }
    mapping.permits.add(dest)
    return { host: from.publicHost, port: mapping.extPort }
  }

  /** NAT on the way in: the internal port, or why the packet is dropped. */
  private inbound(dst: HostState, toHost: string, toPort: number, src: Addr): number | string {
    if (dst.nat === "none" || toHost === dst.host) return toPort
    const mapping = dst.byExtPort.get(toPort)
    if (mapping === undefined) return "no NAT mapping"
    if (dst.nat !== "full-cone" && !mapping.permits.has(`${src.host}:${src.port}`)) return "filtered by NAT"
    return mapping.internalPort
  }

  /**
   * Sends one packet; on arrival, `arrive` gets the destination host, the internal port and
   * the source as observed there. Drops are traced.
   */
  packet(
    kind: string,
    ep: Endpoint,
    toHost: string,
    toPort: number,
    arrive: (dst: HostState, port: number, src: Addr) => void
  ) {
    const from = ep.host
    const to = `${toHost}:${toPort}`
    const dst = this.addresses.get(toHost)
    if (dst === undefined || (dst !== from && dst.nat !== "none" && toHost === dst.host)) {
      this.trace("drop", ep.label, to, `${kind}: unroutable`)
      return
    }
    const local = dst === from
    const src = local ? { host: from.host, port: ep.port } : this.outbound(from, ep.port, toHost, toPort)
    if (this.blocked(from, dst)) return this.trace("drop", ep.label, to, `${kind}: partitioned`)
    if (this.lost(from, dst)) return this.trace("drop", ep.label, to, `${kind}: lost`)
    this.schedule(this.delay(from, dst), () => {
      const port = local ? toPort : this.inbound(dst, toHost, toPort, src)
      if (typeof port === "string") return this.trace("drop", ep.label, to, `${kind}: ${port}`)
      arrive(dst, port, src)
    })
  }

  datagram(ep: Endpoint, toHost: string, toPort: number, size: number) {
    this.packet("datagram", ep, toHost, toPort, (dst, port, src) => {
      const target = dst.bindings.get(port)
      if (target === undefined)
        return this.trace("drop", ep.label, `${toHost}:${toPort}`, "datagram: no listener")
      this.trace("datagram", `${src.host}:${src.port}`, target.label, `${size} bytes`)
    })
  }

  // -- dialling --

  startDial(p: PendingDial, timeoutMs: number) {
    const ep = p.ep
    const to = `${p.host}:${p.port}`
    this.pendingDials++
    ep.pending.add(p)
    this.trace("dial", ep.label, to)
    this.schedule(timeoutMs, () => {
      if (p.done) return
      this.trace("timeout", ep.label, to)
      this.settleDial(
        p,
        Exit.fail(
          new DialError({
            host: p.host,
            port: p.port,
            reason: "timeout",
            detail: `no handshake within ${timeoutMs} ms`
          })
        )
      )
    })
    const send = (pto: number) => {
      this.packet("handshake", ep, p.host, p.port, (dst, port, src) => {
        const listener = dst.bindings.get(port)
        if (listener === undefined || listener.stopped)
          return this.trace("drop", ep.label, to, "handshake: no listener")
        if (p.done) return
        // The reply goes back along the flow the Initial opened.
        if (this.blocked(dst, ep.host))
          return this.trace("drop", listener.label, ep.label, "handshake reply: partitioned")
        if (this.lost(dst, ep.host))
          return this.trace("drop", listener.label, ep.label, "handshake reply: lost")
        this.schedule(this.delay(dst, ep.host), () => {
          if (p.done || ep.stopped) return
          if (!p.expected.some((id) => NodeId.equals(id, listener.nodeId))) {
            const expected = p.expected.map(NodeId.encode).join(", ")
            this.trace("mismatch", ep.label, to, listener.nodeKey)
            this.settleDial(
              p,
              Exit.fail(
                new DialError({
                  host: p.host,
                  port: p.port,
                  reason: "mismatch",
                  detail: `expected ${expected === "" ? "(none)" : expected}, the peer is ${listener.nodeKey}`
                })
              )
            )
            return
          }
          const pair = this.makePair(p, listener, src)
          p.end = pair.a
          this.trace("connect", ep.label, to, pair.a.id)
          this.settleDial(p, Exit.succeed(pair.a))
          // The client's Finished: the listener now has the connection.
          this.sendOnConnection(pair.a, () => {
            const b = pair.b
            if (b.reason !== undefined) return
            if (listener.stopped) {
              // Nobody answers any more: the dialer finds out by its idle timeout.
              this.closeConnection(b, { _tag: "Error", detail: "listener gone" }, "idle")
              return
            }
            b.registered = true
            listener.ends.add(b)
            listener.incoming.unsafeOffer(b)
            this.trace("accept", listener.label, `${src.host}:${src.port}`, b.id)
          })
        })
      })
      // No answer yet: QUIC retransmits the Initial on its probe timeout, doubling each time.
      this.schedule(pto, () => {
        if (p.done || ep.stopped) return
        this.trace("dial", ep.label, to, "retransmit")
        send(pto * 2)
      })
    }
    send(INITIAL_PTO_MS)
  }

  private finishDial(p: PendingDial) {
    if (p.done) return
    p.done = true
    p.resume = undefined
    p.ep.pending.delete(p)
    this.pendingDials--
  }

  /** The dial ends with `exit`: the dialling fiber resumes with it. */
  private settleDial(p: PendingDial, exit: Exit.Exit<SimConnection, DialError>) {
    const resume = p.resume
    this.finishDial(p)
    resume?.(exit)
  }

  /** The dialling fiber gave up (interrupted, timed out): nothing of the dial may remain. */
  cancelDial(p: PendingDial) {
    this.finishDial(p)
    if (p.end !== undefined) this.closeConnection(p.end, localReason("dial cancelled"), "peer")
  }

  private makePair(p: PendingDial, listener: Endpoint, observed: Addr): Pair {
    const ep = p.ep
    const id = ++this.pairCounter
    const pair: Pair = { id, a: undefined as never, b: undefined as never, blockedSince: undefined }
    const a = new SimConnection(this, pair, ep, `sim${id}f`, "forward", listener.nodeId, p.host, p.port)
    const b = new SimConnection(
      this,
      pair,
      listener,
      `sim${id}r`,
      "reverse",
      ep.nodeId,
      observed.host,
      observed.port
    )
    a.peer = b
    b.peer = a
    pair.a = a
    pair.b = b
    a.registered = true
    ep.ends.add(a)
    this.pairs.add(pair)
    this.openEnds += 2
    if (this.blocked(ep.host, listener.host)) pair.blockedSince = this.now()
    return pair
  }

  // -- connections --

  /** Sends something to the peer end: in order, after the latency, held while the link is cut. */
  sendOnConnection(from: SimConnection, run: () => void) {
    if (from.held !== undefined) {
      from.held.push(run)
      return
    }
    const a = from.ep.host
    const b = from.peer.ep.host
    if (this.blocked(a, b)) {
      from.held = [run]
      this.stalled.add(from)
      return
    }
    const at = Math.max(from.lastAt, this.now() + this.delay(a, b))
    from.lastAt = at
    this.scheduleAt(at, run)
  }

  openStream(end: SimConnection): SimSocket {
    const stream = new SimStream(this, end)
    end.streams ??= new Set()
    end.streams.add(stream)
    this.trace("stream", end.ep.label, `${end.remoteHost}:${end.remotePort}`, end.id)
    this.sendOnConnection(end, () => {
      const peer = end.peer
      if (peer.reason !== undefined) return
      peer.streams ??= new Set()
      peer.streams.add(stream)
      peer.dispatch.offer(stream.acceptorSocket)
    })
    return stream.openerSocket
  }

  /**
   * Closes one end. `notify`: "peer" tells the peer (it closes with Peer after the latency),
   * "idle" lets the peer find out by its idle timeout, "none" is for an end closed by news
   * from the peer.
   */
  closeConnection(end: SimConnection, reason: CloseReason, notify: "peer" | "idle" | "none") {
    if (end.reason !== undefined) return
    end.reason = reason
    this.openEnds--
    if (end.registered) end.ep.ends.delete(end)
    let closedError: Socket.SocketError | undefined
    for (const stream of end.streams ?? []) {
      const socket = stream.socketOf(end)
      socket.writeEnded = true
      const pipe = socket.readPipe
      if (!pipe.done) {
        closedError ??= new Socket.SocketGenericError({
          reason: "Read",
          cause: `connection closed (${describeReason(reason)})`
        })
        pipe.error = closedError
        pipe.notify()
      }
    }
    end.streams = undefined
    end.dispatch.close(reason)
    this.trace(
      "close",
      end.ep.label,
      `${end.remoteHost}:${end.remotePort}`,
      `${end.id} ${describeReason(reason)}`
    )
    const peer = end.peer
    if (notify === "peer")
      this.sendOnConnection(end, () => this.closeConnection(peer, peerReason(reason), "none"))
    else if (notify === "idle" && peer.reason === undefined)
      this.schedule(peer.ep.idleMs, () => this.closeConnection(peer, { _tag: "IdleTimeout" }, "none"))
    if (end.held !== undefined && notify !== "peer") {
      end.held = undefined
      this.stalled.delete(end)
    }
    if (peer.reason !== undefined) {
      this.pairs.delete(end.pair)
    }
  }

  // -- endpoints --

  /** Stops an endpoint: gracefully (its scope closed) or by a crash. */
  stopEndpoint(ep: Endpoint, crashed: boolean) {
    if (ep.stopped) return
    ep.stopped = true
    this.endpointCount--
    if (ep.host.bindings.get(ep.port) === ep) ep.host.bindings.delete(ep.port)
    this.trace(crashed ? "crash" : "unbind", ep.label, "")
    for (const end of [...ep.ends])
      this.closeConnection(
        end,
        crashed ? { _tag: "Error", detail: "crashed" } : localReason("transport stopped"),
        crashed ? "idle" : "peer"
      )
    for (const p of [...ep.pending]) {
      this.settleDial(
        p,
        Exit.fail(
          new DialError({ host: p.host, port: p.port, reason: "stopped", detail: "the transport stopped" })
        )
      )
    }
    ep.incoming.unsafeDone(Exit.void)
    if (crashed)
      Deferred.unsafeDone(
        ep.failure,
        Exit.fail(new TransportError({ reason: "stopped", detail: `${ep.label} crashed (simulated)` }))
      )
  }

  stats(): SimNetworkStats {
    const streams = new Set<SimStream>()
    for (const pair of this.pairs) {
      for (const s of pair.a.streams ?? []) streams.add(s)
      for (const s of pair.b.streams ?? []) streams.add(s)
    }
    return {
      hosts: this.hostCount,
      endpoints: this.endpointCount,
      openConnectionEnds: this.openEnds,
      pendingDials: this.pendingDials,
      openStreams: streams.size,
      scheduledEvents: this.heap.size,
      traceEvents: this.traceCount
    }
  }
}

// ---- Transport endpoint --------------------------------------------------------------------

const bind = (
  world: World,
  options: SimTransportOptions,
  nodeId: NodeId.NodeId
): Effect.Effect<QuicTransportService, TransportError, Scope.Scope> =>
  Effect.gen(function* () {
    if (options.host !== undefined && !isIpv4(options.host))
      return yield* new TransportError({ reason: "bind", detail: `not an IPv4 address: ${options.host}` })
    if (options.port !== undefined && options.port !== 0 && !isPort(options.port))
      return yield* new TransportError({ reason: "bind", detail: `not a port: ${options.port}` })
    const fork = Runtime.runFork(yield* Effect.runtime<never>())
    const incoming = yield* Mailbox.make<QuicConnection>()
    const failure = yield* Deferred.make<never, TransportError>()
    const bound = yield* Effect.suspend(() => {
      const host = world.addHost(options.nat ?? "none", options.host)
      if (options.host !== undefined && host.host !== options.host)
        return Effect.fail(
          new TransportError({ reason: "bind", detail: `${options.host} is a NAT's external address` })
        )
      let port = options.port ?? 0
      if (port === 0) {
        while (host.bindings.has(host.nextPort)) host.nextPort++
        port = host.nextPort++
      }
      if (host.bindings.has(port))
        return Effect.fail(new TransportError({ reason: "bind", detail: `${host.host}:${port} is in use` }))
      const ep: Endpoint = {
        host,
        port,
        label: `${host.host}:${port}`,
        nodeId,
        nodeKey: NodeId.encode(nodeId),
        fork: (effect) => fork(effect),
        connectMs: options.connectTimeout === undefined ? 15_000 : millis(options.connectTimeout),
        idleMs: options.maxIdleTimeout === undefined ? 30_000 : millis(options.maxIdleTimeout),
        stopped: false,
        incoming,
        failure,
        ends: new Set(),
        pending: new Set(),
        nextConnection: 0
      }
      host.bindings.set(port, ep)
      world.endpointCount++
      world.trace("bind", ep.label, host.publicHost, ep.nodeKey)
      return Effect.succeed(ep)
    })
    const ep = bound
    yield* Effect.addFinalizer(() => Effect.sync(() => world.stopEndpoint(ep, false)))

    const dialError = (options: DialOptions, reason: DialError["reason"], detail: string) =>
      new DialError({ host: options.host, port: options.port, reason, detail })

    const dial = (options: DialOptions): Effect.Effect<QuicConnection, DialError, Scope.Scope> =>
      Effect.suspend(() => {
        if (ep.stopped) return Effect.fail(dialError(options, "stopped", "the transport is stopped"))
        if (!isIpv4(options.host) || !isPort(options.port))
          return Effect.fail(dialError(options, "invalid-address", "not an IPv4 address and port"))
        const timeoutMs = options.timeout === undefined ? ep.connectMs : millis(options.timeout)
        return Effect.flatMap(Effect.scope, (scope) => {
          const pending: PendingDial = {
            ep,
            host: options.host,
            port: options.port,
            expected: options.expectedNodeIds,
            resume: undefined,
            done: false,
            end: undefined
          }
          // The handshake and its timeout are events of the world's scheduler (on the same
          // Clock), which resume this fiber: no sleep, no racing fiber and no Deferred per dial.
          const handshake = Effect.async<SimConnection, DialError>((resume) => {
            pending.resume = resume
            world.startDial(pending, timeoutMs)
            const slow = options.whenSlow
            if (slow !== undefined)
              world.schedule(millis(slow.after), () => {
                if (!pending.done) slow.run()
              })
          })
          // Whatever stops the dial short (interruption, even just after it succeeded) leaves
          // nothing of it. The close finalizer holds only the connection: not the dial, nor
          // this fiber's FiberRefs (as `Effect.addFinalizer` would).
          return Effect.uninterruptibleMask((restore) =>
            restore(handshake).pipe(
              Effect.onError(() => Effect.sync(() => world.cancelDial(pending))),
              Effect.tap((connection) => Scope.addFinalizer(scope, connection.close("released")))
            )
          )
        })
      })

    const sendDatagram = (
      host: string,
      port: number,
      data: Uint8Array
    ): Effect.Effect<void, TransportError> =>
      Effect.suspend(() => {
        if (ep.stopped)
          return Effect.fail(new TransportError({ reason: "stopped", detail: "the transport is stopped" }))
        if (!isIpv4(host) || !isPort(port))
          return Effect.fail(
            new TransportError({ reason: "send", detail: `not an address: ${host}:${port}` })
          )
        world.datagram(ep, host, port, data.length)
        return Effect.void
      })

    const service: QuicTransportService = {
      host: ep.host.host,
      port: ep.port,
      dial,
      incoming: Mailbox.toStream(incoming),
      sendDatagram,
      failure: Deferred.await(failure)
    }
    return service
  })

// ---- Layers --------------------------------------------------------------------------------

/** Builds a world; its scheduler stops with the scope. */
export const make = (options: SimNetworkOptions): Effect.Effect<SimNetworkService, never, Scope.Scope> =>
  Effect.gen(function* () {
    const clock = yield* Effect.clock
    const timers = yield* FiberSet.make<unknown, unknown>()
    const runFork = yield* FiberSet.runtime(timers)<never>()
    const seed = seedOf(options.seed)
    const world = new World(
      seed,
      clock,
      runFork,
      hasTimers(clock) ? clock : undefined,
      options,
      options.traceLimit ?? 100_000
    )
    const halt = Effect.sync(() => {
      world.closed = true
    })
    yield* Effect.addFinalizer(() => halt)

    const resolve = (address: string) => world.addresses.get(address)
    const resolveOrAdd = (address: string) => resolve(address) ?? world.addHost("none", address)
    const hostSet = (addresses: Iterable<string>) => {
      const set = new Set<HostState>()
      for (const address of addresses) set.add(resolveOrAdd(address))
      return set
    }

    const service: SimNetworkService = {
      seed,
      halt,
      addHost: (hostOptions) =>
        Effect.sync(() => world.info(world.addHost(hostOptions?.nat ?? "none", hostOptions?.host))),
      hostInfo: (address) =>
        Effect.sync(() => {
          const state = resolve(address)
          return state === undefined ? undefined : world.info(state)
        }),
      setDefaults: (link) =>
        Effect.sync(() => {
          if (link.latency !== undefined) world.defaults.latency = millis(link.latency)
          if (link.jitter !== undefined) world.defaults.jitter = millis(link.jitter)
          if (link.loss !== undefined) world.defaults.loss = link.loss
          world.trace(
            "link",
            "*",
            "*",
            `${world.defaults.latency}/${world.defaults.jitter}/${world.defaults.loss}`
          )
        }),
      setLink: (a, b, link) => Effect.sync(() => world.setLink(resolveOrAdd(a), resolveOrAdd(b), link)),
      partition: (a, b) => Effect.sync(() => world.partition(hostSet(a), hostSet(b))),
      heal: (id) => Effect.sync(() => world.heal(id)),
      crash: (address, port) =>
        Effect.sync(() => {
          const state = resolve(address)
          if (state === undefined) return
          for (const ep of [...state.bindings.values()])
            if (port === undefined || ep.port === port) world.stopEndpoint(ep, true)
        }),
      isBound: (address, port) =>
        Effect.sync(() => {
          const state = resolve(address)
          return state !== undefined && state.host === address && state.bindings.has(port)
        }),
      bind: (transportOptions, nodeId) => bind(world, transportOptions, nodeId),
      channel: (connection) =>
        connection instanceof SimConnection && connection.world === world ? connection : undefined,
      schedule: (ms, run) => world.schedule(Math.max(0, ms), run),
      trace: Effect.sync(() => world.events.slice()),
      traceHash: Effect.sync(() => world.traceHash()),
      stats: Effect.sync(() => world.stats())
    }
    return service
  })

/** The world: `SimNetwork.layer({ seed })`. */
export const layer = (options: SimNetworkOptions): Layer.Layer<SimNetwork> =>
  Layer.scoped(SimNetwork, make(options))

/** One node's transport in the world, identified by its KeyRing's NodeId. */
export const transport = (
  options: SimTransportOptions = {}
): Layer.Layer<QuicTransport, TransportError, SimNetwork | KeyRing> =>
  Layer.scoped(
    QuicTransport,
    Effect.gen(function* () {
      const sim = yield* SimNetwork
      const keyRing = yield* KeyRing
      const nodeId = yield* keyRing.nodeId
      return yield* sim.bind(options, nodeId)
    })
  )
