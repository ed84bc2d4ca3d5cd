/**
 * A relay that attacks the circuits it carries, for the NAT lab's relay spec: a quicmesh node
 * (the test fixture's, real QUIC) that serves the relay's HOP protocol itself. Run in a lab
 * namespace:
 *   node --import tsx test/nat/circuitRelay.ts HOST MODE
 * Prints {"ev":"ready","nodeId":…,"port":…}. RESERVE is granted as an honest relay grants it
 * (OK, the stream kept open, the node's connection held). On CONNECT:
 *
 * - MODE "mitm": answers the source OK and runs its own transport's `acceptCircuit` on the
 *   source's circuit (the source's QUIC handshake meets this node's certificate); at the same
 *   time it brings the target a circuit naming the source (CONNECT-FROM) and dials the target
 *   over it with its own `dialCircuit`. Prints {"ev":"impersonated","ok":…,"peer"?,"error"?}
 *   (what its dial to the target gave) and, when the source's circuit is over,
 *   {"ev":"accept-ended","fromSource":N}: how many relayed connections from the source this
 *   node holds (its direct one, which carries the HOP stream, is not counted).
 * - MODE "flip": splices the two circuit streams as an honest relay does where it cannot forward
 *   datagrams (each PATH it sends says "spliced"), reading the frames
 *   (2-byte length, QUIC packet) on each; once armed (a stdin line "arm") it flips the last
 *   byte of every packet it forwards. Prints {"ev":"spliced"} when a circuit starts and
 *   {"ev":"splice-ended","flipped":N} when it ends.
 */
import { createInterface } from "node:readline"
import { Socket } from "@effect/platform"
import { Context, Duration, Effect, Either, Exit, Fiber, Predicate, Scope } from "effect"
import type { ChunkReader } from "../../src/internal/quicStreamSocket.js"
import * as Wire from "../../src/internal/relay/wire.js"
import type { Contact } from "../../src/services/Contact.js"
import * as NodeId from "../../src/services/NodeId.js"
import * as Protocols from "../../src/services/Protocols.js"
import { makeNode } from "../fixtures/cmNode.js"

const print = (value: unknown) => process.stdout.write(`${JSON.stringify(value)}\n`)
const messageTimeout = Duration.seconds(10)
/** PATH: this relay splices the circuit's streams (it never forwards datagrams). */
const spliced = Wire.encodePath(undefined)
const detailOf = (e: unknown) => (Predicate.hasProperty(e, "message") ? String(e.message) : String(e))

const host = process.argv[2]!
const mode = process.argv[3]
if (mode !== "mitm" && mode !== "flip") throw new Error(`mode must be mitm or flip, not ${mode}`)

let armed = false
createInterface({ input: process.stdin }).on("line", (line) => {
  if (line.trim() === "arm") armed = true
})

type Write = (chunk: Uint8Array | Socket.CloseEvent) => Effect.Effect<void, Socket.SocketError>

/** Reads frames from `from`, writes them to `to`; flips each packet's last byte while armed. */
const pump = (from: ChunkReader, to: Write, flipped: { n: number }) =>
  Effect.gen(function* () {
    // Where we are in the frame stream: the header bytes still wanted, or the packet bytes left.
    let header: Array<number> = []
    let left = 0
    for (;;) {
      const chunk = yield* from.readChunk
      if (chunk === undefined) return
      let i = 0
      while (i < chunk.length) {
        if (left === 0) {
          header.push(chunk[i]!)
          i++
          if (header.length === 2) {
            left = (header[0]! << 8) | header[1]!
            header = []
          }
          continue
        }
        const take = Math.min(left, chunk.length - i)
        left -= take
        i += take
        if (left === 0 && armed) {
          chunk[i - 1] = chunk[i - 1]! ^ 0xff
          flipped.n++
        }
      }
      yield* to(chunk)
    }
  })

const program = Effect.gen(function* () {
  const relay = yield* makeNode(`lab/${mode}-relay`, {
    host,
    config: { relay: false, relayReservationsKept: 0 }
  })
  const { cm } = relay
  const transport = yield* relay.innerTransport
  const protocols = Context.get(relay.ctx, Protocols.Protocols)
  const self = relay.nodeId

  /** The target's STOP stream, accepted for `source`. */
  const openStop = (target: NodeId.NodeId, source: Contact) =>
    Effect.gen(function* () {
      const handle = yield* cm.acquireConnection(target)
      const socket = yield* Protocols.open(handle.connection, Wire.STOP_PROTOCOL)
      const reader = yield* Wire.chunkReader(socket)
      const write = yield* socket.writer
      yield* write(Wire.encodeConnectFrom(source.nodeId, { host: source.host, port: source.port }))
      yield* write(spliced)
      const status = yield* Wire.readMessage(reader, Wire.parseStatus, messageTimeout)
      if (Predicate.isTagged(status, "Refused")) return yield* Effect.fail(`target refused: ${status.detail}`)
      return {
        socket,
        reader,
        write,
        peer: { host: handle.connection.remoteHost, port: handle.connection.remotePort }
      }
    })

  /** MODE mitm: terminate the source's circuit here, and dial the target as ourselves. */
  const mitm = (socket: Socket.Socket, write: Write, source: Contact, target: NodeId.NodeId) =>
    Effect.gen(function* () {
      yield* write(Wire.encodeStatus({ _tag: "Ok", until: 0, observed: { host, port: relay.address.port } }))
      yield* write(spliced)
      const impersonate = yield* Effect.gen(function* () {
        const stop = yield* openStop(target, source)
        const connection = yield* transport.dialCircuit!(
          { socket: stop.socket, relay: self, peer: stop.peer },
          { expectedNodeIds: [target], timeout: "10 seconds" }
        )
        print({ ev: "impersonated", ok: true, peer: NodeId.encode(connection.remoteNodeId) })
        yield* Effect.never
      }).pipe(
        Effect.catchAll((e) =>
          Effect.sync(() => print({ ev: "impersonated", ok: false, error: detailOf(e) }))
        ),
        Effect.scoped,
        Effect.forkScoped
      )
      yield* transport.acceptCircuit!({ socket, relay: self, peer: { host: source.host, port: source.port } })
      const sourceKey = NodeId.encode(source.nodeId)
      const held = (yield* cm.listConnections).filter(
        (c) => c.nodeId === sourceKey && c.relay !== undefined
      ).length
      print({ ev: "accept-ended", fromSource: held })
      yield* Fiber.join(impersonate)
    })

  /** MODE flip: an honest circuit, whose packets are flipped once armed. */
  const flip = (reader: ChunkReader, write: Write, source: Contact, target: NodeId.NodeId) =>
    Effect.gen(function* () {
      const stop = yield* Effect.either(openStop(target, source))
      if (Either.isLeft(stop)) {
        yield* write(
          Wire.encodeStatus({ _tag: "Refused", reason: "target-unreachable", detail: detailOf(stop.left) })
        )
        return
      }
      yield* write(Wire.encodeStatus({ _tag: "Ok", until: 0, observed: stop.right.peer }))
      yield* write(spliced)
      print({ ev: "spliced" })
      const flipped = { n: 0 }
      yield* pump(reader, stop.right.write, flipped).pipe(
        Effect.raceFirst(pump(stop.right.reader, write, flipped)),
        Effect.ignore
      )
      yield* Effect.ignore(write(new Socket.CloseEvent(1000)))
      yield* Effect.ignore(stop.right.write(new Socket.CloseEvent(1000)))
      print({ ev: "splice-ended", flipped: flipped.n })
    })

  yield* protocols.handle(Wire.HOP_PROTOCOL, (socket, caller) =>
    Effect.gen(function* () {
      const reader = yield* Wire.chunkReader(socket)
      const write = yield* socket.writer
      const request = yield* Wire.readMessage(reader, Wire.parseHopRequest, messageTimeout)
      if (Predicate.isTagged(request, "Connect")) {
        const target = request.target
        print({ ev: "connect", source: NodeId.encode(caller.nodeId), target: NodeId.encode(target) })
        return yield* mode === "mitm"
          ? mitm(socket, write, caller, target)
          : flip(reader, write, caller, target)
      }
      yield* cm.acquireConnection(caller.nodeId)
      yield* write(Wire.encodeStatus({ _tag: "Ok", until: Date.now() + 3_600_000 }))
      print({ ev: "reserved", node: NodeId.encode(caller.nodeId) })
      while ((yield* reader.readChunk) !== undefined) {}
    }).pipe(
      Effect.catchAll((e) => Effect.sync(() => print({ ev: "hop-failed", error: detailOf(e) }))),
      Effect.scoped
    )
  )
  print({ ev: "ready", nodeId: NodeId.encode(self), port: relay.address.port })
  return yield* Effect.never
})

const scope = Effect.runSync(Scope.make())
Effect.runPromise(Scope.extend(program, scope)).then(
  () => process.exit(0),
  (e) => {
    process.stderr.write(`${String(e)}\n`)
    Effect.runPromise(Scope.close(scope, Exit.void)).finally(() => process.exit(1))
  }
)
