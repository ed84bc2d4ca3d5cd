/**
 * Dialling in the simulated world: a handshake of one round trip. The Initial goes out
 * through the dialler's NAT (creating its mapping), is filtered by the target's NAT on
 * arrival, and needs a listener; the reply carries the listener's NodeId, which the dialler
 * checks against the expected ones. The listener learns of the connection half a round trip
 * later (the client's Finished). An unanswered Initial (lost, filtered, partitioned) is sent
 * again after 1 s, 2 s, 4 s, … (QUIC's probe timeout) until the dial's timeout: a NAT opened
 * meanwhile lets it through.
 */
import { Exit } from "effect"
import type { Address } from "../../services/Address.js"
import * as NodeId from "../../services/NodeId.js"
import { DialError } from "../../services/QuicTransport.js"
import type { CircuitPath } from "./circuit.js"
import { localReason, type Pair, SimConnection } from "./connection.js"
import type { Endpoint } from "./endpoint.js"
import { sendPacket } from "./packets.js"
import type { World } from "./world.js"

/** One dial in progress (or done, while events of it are still scheduled). */
export interface PendingDial {
  readonly ep: Endpoint
  readonly host: string
  readonly port: number
  readonly expected: ReadonlyArray<NodeId.NodeId>
  /** Resumes the dialling fiber; dropped once the dial is done (events may outlive it). */
  resume: ((exit: Exit.Exit<SimConnection, DialError>) => void) | undefined
  done: boolean
  end: SimConnection | undefined
}

/** First probe timeout of a dial: QUIC's initial RTT estimate (333 ms) times three. */
const INITIAL_PTO_MS = 1000

/**
 * Starts a dial: its timeout, and the Initial sent (and retransmitted on QUIC's probe timeout)
 * until the dial is done. The dialling fiber resumes through `p.resume`.
 */
export const startDial = (world: World, p: PendingDial, timeoutMs: number) => {
  const ep = p.ep
  const to = `${p.host}:${p.port}`
  registerDial(world, p, timeoutMs)
  const send = (pto: number) => {
    sendPacket(world, "handshake", ep, p.host, p.port, (dst, port, src) => {
      const listener = dst.bindings.get(port)
      if (listener === undefined || listener.stopped)
        return world.log.add("drop", ep.label, to, "handshake: no listener")
      if (p.done) return
      // The reply goes back along the flow the Initial opened.
      if (world.links.blocked(dst, ep.host))
        return world.log.add("drop", listener.label, ep.label, "handshake reply: partitioned")
      if (world.links.lost(dst, ep.host))
        return world.log.add("drop", listener.label, ep.label, "handshake reply: lost")
      world.scheduler.schedule(world.links.delay(dst, ep.host), () => {
        if (p.done || ep.stopped || !expectedPeer(world, p, listener)) return
        const pair = makePair(world, p, listener, src, undefined)
        p.end = pair.a
        world.log.add("connect", ep.label, to, pair.a.id)
        settleDial(world, p, Exit.succeed(pair.a))
        finished(world, pair, listener)
      })
    })
    // No answer yet: QUIC retransmits the Initial on its probe timeout, doubling each time.
    world.scheduler.schedule(pto, () => {
      if (p.done || ep.stopped) return
      world.log.add("dial", ep.label, to, "retransmit")
      send(pto * 2)
    })
  }
  send(INITIAL_PTO_MS)
}

/** Counts the dial as pending at its endpoint and fails it at its timeout (`detail`: the trace's). */
export const registerDial = (world: World, p: PendingDial, timeoutMs: number, detail = "") => {
  const ep = p.ep
  const to = `${p.host}:${p.port}`
  world.pendingDials++
  ep.pending.add(p)
  world.log.add("dial", ep.label, to, detail)
  world.scheduler.schedule(timeoutMs, () => {
    if (p.done) return
    world.log.add("timeout", ep.label, to)
    failDial(world, p, "timeout", `no handshake within ${timeoutMs} ms`)
  })
}

/** Whether the peer is one the dial expects; if not, the dial fails with `mismatch` naming both. */
export const expectedPeer = (world: World, p: PendingDial, peer: Endpoint): boolean => {
  if (p.expected.some((id) => NodeId.equals(id, peer.nodeId))) return true
  const expected = p.expected.map(NodeId.encode).join(", ")
  world.log.add("mismatch", p.ep.label, `${p.host}:${p.port}`, peer.nodeKey)
  failDial(
    world,
    p,
    "mismatch",
    `expected ${expected === "" ? "(none)" : expected}, the peer is ${peer.nodeKey}`
  )
  return false
}

/** The client's Finished, sent on the new connection: on arrival the listener has its end. */
export const finished = (world: World, pair: Pair, listener: Endpoint) =>
  world.sendOnConnection(pair.a, () => {
    const b = pair.b
    if (b.reason !== undefined) return
    if (listener.stopped) {
      // Nobody answers any more: the dialer finds out by its idle timeout.
      world.closeConnection(b, { _tag: "Error", detail: "listener gone" }, "idle")
      return
    }
    b.registered = true
    listener.ends.add(b)
    listener.incoming.unsafeOffer(b)
    world.log.add("accept", listener.label, `${b.remoteHost}:${b.remotePort}`, b.id)
  })

const finishDial = (world: World, p: PendingDial) => {
  if (p.done) return
  p.done = true
  p.resume = undefined
  p.ep.pending.delete(p)
  world.pendingDials--
}

/** The dial ends with `exit`: the dialling fiber resumes with it. */
export const settleDial = (world: World, p: PendingDial, exit: Exit.Exit<SimConnection, DialError>) => {
  const resume = p.resume
  finishDial(world, p)
  resume?.(exit)
}

/** The dial fails with a `DialError` of this reason. */
export const failDial = (world: World, p: PendingDial, reason: DialError["reason"], detail: string) =>
  settleDial(world, p, Exit.fail(new DialError({ host: p.host, port: p.port, reason, detail })))

/** The dialling fiber gave up (interrupted, timed out): nothing of the dial may remain. */
export const cancelDial = (world: World, p: PendingDial) => {
  finishDial(world, p)
  if (p.end !== undefined) world.closeConnection(p.end, localReason("dial cancelled"), "peer")
}

/**
 * The connection a dial made: the dialler's end registered at once, the listener's once
 * accepted. `observed`: the dialler's address as the listener sees it; `circuit`: the relay
 * circuit carrying it, if any.
 */
export const makePair = (
  world: World,
  p: PendingDial,
  listener: Endpoint,
  observed: Address,
  circuit: CircuitPath | undefined
): Pair => {
  const ep = p.ep
  const id = ++world.pairCounter
  const pair: Pair = { id, a: undefined as never, b: undefined as never, blockedSince: undefined, circuit }
  const a = new SimConnection(world, pair, ep, `sim${id}f`, "forward", listener.nodeId, p.host, p.port)
  const b = new SimConnection(
    world,
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
  world.pairs.add(pair)
  world.openEnds += 2
  if (circuit === undefined && world.links.blocked(ep.host, listener.host))
    pair.blockedSince = world.scheduler.now()
  return pair
}
