/**
 * Connections over relay circuits in the simulated world (`QuicTransport.dialCircuit` and
 * `acceptCircuit`). A relay, whatever code runs it, splices a stream from the dialler with one
 * to the acceptor; each side of the connection uses its end of the splice (any `Socket`) through
 * a `CircuitSide`, and writes and reads the bytes of `circuitWire.ts` on it.
 *
 * The handshake is one round trip on the circuit: the dialler's hello names its NodeId, the
 * NodeIds it expects and its dial's token; the acceptor answers with its NodeId, or ends the
 * circuit (a hello that is not one, a token no dial holds, a NodeId that the dialler's own
 * endpoint does not have: what a TLS handshake would refuse). The dialler checks the answer as
 * `dial` does (a NodeId not expected: `mismatch`), and the world makes the pair of ends: their
 * `relay` set, no NAT or partition between the two hosts applying to them, everything an end
 * sends carried as a packet on the circuit (in order, with the latency of the two legs and the
 * relay). The acceptor's end arrives on its `incoming` with the dialler's Finished, as a direct
 * connection's does. When the circuit's stream ends (the relay closed it or died) an end closes
 * with Error "relay circuit closed"; an end that closes ends its side of the circuit.
 *
 * `remoteHost`/`remotePort` of a relayed end are the peer's address as the relay observed it
 * (`Circuit.peer`); without it, the relay's address on that end's leg (its direct connection to
 * the relay), or 0.0.0.0:0 when it has none.
 */
import { Socket } from "@effect/platform"
import { Effect, Exit, Scope } from "effect"
import type { Address } from "../../services/Address.js"
import * as NodeId from "../../services/NodeId.js"
import {
  type Circuit,
  type CloseReason,
  DialError,
  type QuicTransportService
} from "../../services/QuicTransport.js"
import * as Wire from "./circuitWire.js"
import { localReason, type SimConnection } from "./connection.js"
import {
  cancelDial,
  expectedPeer,
  failDial,
  finished,
  makePair,
  type PendingDial,
  registerDial,
  settleDial
} from "./dial.js"
import type { Endpoint } from "./endpoint.js"
import { millis } from "./scheduler.js"
import type { World } from "./world.js"

const CIRCUIT_CLOSED: CloseReason = { _tag: "Error", detail: "relay circuit closed" }
const closeEvent = new Socket.CloseEvent(1000)

/** A dial whose hello is on its way: the acceptor side joins it by its token. */
export interface CircuitDial {
  readonly token: number
  readonly pending: PendingDial
  readonly side: CircuitSide
  acceptor: CircuitSide | undefined
}

/** The two sides of a relayed connection: `a` the dialler's, `b` the acceptor's. */
export class CircuitPath {
  constructor(
    readonly a: CircuitSide,
    readonly b: CircuitSide
  ) {}
  sideOf(end: SimConnection): CircuitSide {
    return end === end.pair.a ? this.a : this.b
  }
}

/** What a side makes of the handshake bytes read so far. */
type Step = "more" | "stop" | { readonly rest: Uint8Array | undefined }

const concat = (a: Uint8Array, b: Uint8Array) => {
  const out = new Uint8Array(a.length + b.length)
  out.set(a)
  out.set(b, a.length)
  return out
}

/** One side's use of a circuit: a writer fiber for its bytes and a reader fiber for the other side's. */
export class CircuitSide {
  end: SimConnection | undefined = undefined
  peer: CircuitSide | undefined = undefined
  stopped = false
  /** Reads the handshake; undefined once it is done (packets follow). */
  handshake: ((bytes: Uint8Array) => Step) | undefined = undefined
  /** Called once, when the side stops. */
  onStop: (() => void) | undefined = undefined
  readonly legLabel: string
  private partial: Uint8Array | undefined = undefined
  private readonly header = new Uint8Array(Wire.PACKET_HEADER_BYTES)
  private headerBytes = 0
  private skip = 0
  private received = 0
  private sentCount = 0
  /** What this side sent and the other has not run yet, in order (from `sentHead`). */
  private sent: Array<(() => void) | undefined> = []
  private sentHead = 0
  private outbox: Array<Uint8Array> = []
  private wake: (() => void) | undefined = undefined

  constructor(
    readonly world: World,
    readonly ep: Endpoint,
    readonly circuit: Circuit,
    readonly leg: Address
  ) {
    this.legLabel = `${leg.host}:${leg.port}`
  }

  get relay() {
    return this.circuit.relay
  }

  /** Starts the writer (with `first` to write) and the reader. */
  start(first: Uint8Array | undefined) {
    if (first !== undefined) this.queue(first)
    this.ep.fork(writeOut(this))
    this.ep.fork(readIn(this))
  }

  attach(end: SimConnection, peer: CircuitSide) {
    this.end = end
    this.peer = peer
  }

  queue(bytes: Uint8Array) {
    this.outbox.push(bytes)
    const wake = this.wake
    this.wake = undefined
    wake?.()
  }

  /** The next bytes to write; undefined once the side has stopped and all were written. */
  readonly nextBatch: Effect.Effect<Array<Uint8Array> | undefined> = Effect.async((resume) => {
    if (this.outbox.length > 0 || this.stopped) return resume(Effect.succeed(this.takeOutbox()))
    this.wake = () => resume(Effect.succeed(this.takeOutbox()))
    return Effect.sync(() => {
      this.wake = undefined
    })
  })

  private takeOutbox() {
    const out = this.outbox
    if (out.length === 0) return undefined
    this.outbox = []
    return out
  }

  /** Something this side's end sends: a packet of `size` bytes; `run` runs when the other side reads it. */
  send(run: () => void, size: number) {
    if (this.stopped) return
    this.sent.push(run)
    this.queue(Wire.encodePacket(this.sentCount, size))
    this.sentCount = (this.sentCount + 1) >>> 0
  }

  private shiftSent(): (() => void) | undefined {
    const sent = this.sent
    if (this.sentHead >= sent.length) return undefined
    const run = sent[this.sentHead]
    sent[this.sentHead++] = undefined
    if (this.sentHead > 64 && this.sentHead * 2 > sent.length) {
      sent.splice(0, this.sentHead)
      this.sentHead = 0
    }
    return run
  }

  readonly receiver = (chunk: Uint8Array) => {
    this.receive(chunk)
  }

  private receive(chunk: Uint8Array) {
    if (this.stopped) return
    const handshake = this.handshake
    if (handshake === undefined) return this.receivePackets(chunk)
    const bytes = this.partial === undefined ? chunk : concat(this.partial, chunk)
    const step = handshake(bytes)
    this.partial = step === "more" ? bytes : undefined
    if (step === "more") return
    if (step === "stop") return this.stop()
    this.handshake = undefined
    if (step.rest !== undefined) this.receivePackets(step.rest)
  }

  private receivePackets(chunk: Uint8Array) {
    let i = 0
    while (i < chunk.length && !this.stopped) {
      if (this.skip > 0) {
        const n = Math.min(this.skip, chunk.length - i)
        this.skip -= n
        i += n
        if (this.skip === 0) this.deliver()
        continue
      }
      const n = Math.min(Wire.PACKET_HEADER_BYTES - this.headerBytes, chunk.length - i)
      this.header.set(chunk.subarray(i, i + n), this.headerBytes)
      this.headerBytes += n
      i += n
      if (this.headerBytes < Wire.PACKET_HEADER_BYTES) return
      this.headerBytes = 0
      if (Wire.readU32(this.header, 0) !== this.received) return this.corrupt("a packet out of sequence")
      this.skip = Wire.readU32(this.header, 4)
      if (this.skip === 0) this.deliver()
    }
  }

  private deliver() {
    const run = this.peer?.shiftSent()
    if (run === undefined) return this.corrupt("a packet the peer never sent")
    this.received = (this.received + 1) >>> 0
    run()
  }

  /** Bytes no end sent (a relay that alters what it forwards): the connection fails, as QUIC's would. */
  private corrupt(what: string) {
    this.world.log.add("circuit", this.ep.label, this.legLabel, `corrupt: ${what}`)
    this.finish({ _tag: "Error", detail: "relay circuit corrupted" })
  }

  /** Closes the end (if open; "idle": the peer finds out by its idle timeout unless told sooner) and stops. */
  finish(reason: CloseReason, notify: "peer" | "idle" = "idle") {
    const end = this.end
    if (end !== undefined && end.reason === undefined) this.world.closeConnection(end, reason, notify)
    this.stop()
  }

  /** No more reading or sending: what is queued is written, then the circuit's stream is closed. */
  stop() {
    if (this.stopped) return
    this.stopped = true
    this.world.log.add("circuit", this.ep.label, this.legLabel, `stop ${this.end?.id ?? "handshake"}`)
    const wake = this.wake
    this.wake = undefined
    wake?.()
    const onStop = this.onStop
    this.onStop = undefined
    onStop?.()
  }
}

/** Writes what the side queues until it stops, then closes the circuit's stream. */
const writeOut = (side: CircuitSide): Effect.Effect<void> =>
  Effect.scoped(
    Effect.gen(function* () {
      const write = yield* side.circuit.socket.writer
      while (true) {
        const batch = yield* side.nextBatch
        if (batch === undefined) return yield* write(closeEvent)
        for (const bytes of batch) yield* write(bytes)
      }
    })
  ).pipe(Effect.catchAll(() => Effect.sync(() => side.finish(CIRCUIT_CLOSED))))

/** Reads the circuit's stream until it ends: then the side's end closes. */
const readIn = (side: CircuitSide): Effect.Effect<void> =>
  Effect.zipRight(
    Effect.ignore(side.circuit.socket.run(side.receiver)),
    Effect.sync(() => side.finish(CIRCUIT_CLOSED))
  )

/** The peer's address as the relay observed it, else the relay's on the endpoint's leg (its direct connection to it). */
const legOf = (ep: Endpoint, circuit: Circuit): Address => {
  if (circuit.peer !== undefined) return { host: circuit.peer.host, port: circuit.peer.port }
  const relay = circuit.relay
  for (const end of ep.ends)
    if (end.pair.circuit === undefined && NodeId.equals(end.remoteNodeId, relay))
      return { host: end.remoteHost, port: end.remotePort }
  return { host: "0.0.0.0", port: 0 }
}

/** The dialler reads the acceptor's reply: the connection is made, or the dial fails. */
const dialReply = (world: World, dial: CircuitDial, bytes: Uint8Array): Step => {
  const { pending: p, side } = dial
  const parsed = Wire.parseReply(bytes)
  if (parsed._tag === "More") return "more"
  if (p.done) return "stop"
  if (parsed._tag === "Invalid") {
    failDial(world, p, "tls", `the circuit's first bytes are ${parsed.detail}`)
    return "stop"
  }
  const acceptor = dial.acceptor
  if (acceptor === undefined || !NodeId.equals(acceptor.ep.nodeId, parsed.value)) {
    failDial(world, p, "tls", `the reply claims ${NodeId.encode(parsed.value)}, which no certificate proves`)
    return "stop"
  }
  if (!expectedPeer(world, p, acceptor.ep)) return "stop"
  world.circuitDials.delete(dial.token)
  const pair = makePair(world, p, acceptor.ep, acceptor.leg, new CircuitPath(side, acceptor))
  side.attach(pair.a, acceptor)
  acceptor.attach(pair.b, side)
  p.end = pair.a
  world.log.add("circuit", p.ep.label, side.legLabel, `connect ${pair.a.id}`)
  settleDial(world, p, Exit.succeed(pair.a))
  finished(world, pair, acceptor.ep)
  return { rest: parsed.rest }
}

/** The acceptor reads the dialler's hello and answers it, or ends the circuit. */
const acceptHello = (world: World, side: CircuitSide, bytes: Uint8Array): Step => {
  const parsed = Wire.parseHello(bytes)
  if (parsed._tag === "More") return "more"
  const ep = side.ep
  const refuse = (why: string): Step => {
    world.log.add("circuit", ep.label, side.legLabel, `refused: ${why}`)
    return "stop"
  }
  if (parsed._tag === "Invalid") return refuse(parsed.detail)
  const hello = parsed.value
  const dial = world.circuitDials.get(hello.token)
  if (dial === undefined || dial.acceptor !== undefined)
    return refuse(`no dial waits with token #${hello.token}`)
  if (!NodeId.equals(dial.side.ep.nodeId, hello.dialler))
    return refuse(`the dialler's certificate does not prove ${NodeId.encode(hello.dialler)}`)
  const source = side.circuit.source
  if (source !== undefined && !NodeId.equals(source, hello.dialler))
    return refuse(`the relay named ${NodeId.encode(source)} as this circuit's source`)
  dial.acceptor = side
  side.queue(Wire.encodeReply(ep.nodeId))
  world.log.add("circuit", ep.label, side.legLabel, `hello #${hello.token}`)
  // The dialler rejects our certificate (and finds out from our reply).
  if (!hello.expected.some((id) => NodeId.equals(id, ep.nodeId)))
    return refuse("the dialler expects another NodeId")
  return { rest: parsed.rest }
}

/** `QuicTransportService.dialCircuit` of an endpoint. */
export const dialCircuit =
  (world: World, ep: Endpoint): NonNullable<QuicTransportService["dialCircuit"]> =>
  (circuit, options) =>
    Effect.suspend(() => {
      const leg = legOf(ep, circuit)
      const refused = (reason: DialError["reason"], detail: string) =>
        Effect.fail(new DialError({ host: leg.host, port: leg.port, reason, detail }))
      if (ep.stopped) return refused("stopped", "the transport is stopped")
      if (options.expectedNodeIds.length > Wire.MAX_EXPECTED)
        return refused("invalid-address", `a circuit dial expects at most ${Wire.MAX_EXPECTED} NodeIds`)
      const timeoutMs = options.timeout === undefined ? ep.connectMs : millis(options.timeout)
      return Effect.flatMap(Effect.scope, (scope) => {
        world.circuitCounter = (world.circuitCounter + 1) >>> 0
        const token = world.circuitCounter
        const p: PendingDial = {
          ep,
          host: leg.host,
          port: leg.port,
          expected: options.expectedNodeIds,
          resume: undefined,
          done: false,
          end: undefined
        }
        const side = new CircuitSide(world, ep, circuit, leg)
        const dial: CircuitDial = { token, pending: p, side, acceptor: undefined }
        const handshake = Effect.async<SimConnection, DialError>((resume) => {
          p.resume = resume
          world.circuitDials.set(token, dial)
          registerDial(world, p, timeoutMs, `circuit #${token}`)
          side.handshake = (bytes) => dialReply(world, dial, bytes)
          side.onStop = () => {
            world.circuitDials.delete(token)
            if (!p.done) failDial(world, p, "unreachable", "the relay circuit ended before the handshake")
          }
          side.start(Wire.encodeHello({ dialler: ep.nodeId, token, expected: options.expectedNodeIds }))
        })
        return Effect.uninterruptibleMask((restore) =>
          restore(handshake).pipe(
            Effect.onError(() =>
              Effect.sync(() => {
                cancelDial(world, p)
                side.finish(localReason("dial cancelled"), "peer")
              })
            ),
            Effect.tap((connection) => Scope.addFinalizer(scope, connection.close("released")))
          )
        )
      })
    })

/** `QuicTransportService.acceptCircuit` of an endpoint. */
export const acceptCircuit =
  (world: World, ep: Endpoint) =>
  (circuit: Circuit): Effect.Effect<void> =>
    Effect.async<void>((resume) => {
      if (ep.stopped) return resume(Effect.void)
      const side = new CircuitSide(world, ep, circuit, legOf(ep, circuit))
      side.handshake = (bytes) => acceptHello(world, side, bytes)
      side.onStop = () => resume(Effect.void)
      world.scheduler.schedule(ep.connectMs, () => {
        if (side.stopped || side.end?.registered === true) return
        world.log.add("timeout", ep.label, side.legLabel, "circuit")
        side.finish({ _tag: "Error", detail: `no circuit handshake within ${ep.connectMs} ms` })
      })
      side.start(undefined)
      return Effect.sync(() => side.finish(localReason("circuit released"), "peer"))
    })
