/**
 * circuitShim: the local end of a relayed circuit, standing in for the peer. A UDP socket on
 * the transport's own host exchanges datagrams with the transport's QUIC socket as any peer
 * would (from any other sender it takes nothing), and carries them on the circuit:
 *
 * - on a datagram circuit (`Circuit.datagrams`), each packet from the transport goes to the
 *   relay as a circuit datagram (circuitDatagrams) from the transport's own socket, and each
 *   circuit datagram the relay sends goes to the transport, until the relay sends the
 *   circuit's END or the connection to the relay closes (`Circuit.until`); closing the shim
 *   sends our END to the relay;
 * - on a spliced circuit, each packet is a frame on the circuit's stream (circuitFrames),
 *   written one write at a time (the frames waiting joined into it); while the stream is
 *   slower than the datagrams come, up to `maxQueuedBytes` wait and later ones are dropped, as
 *   a full UDP buffer drops them (QUIC sends them again and slows down). Each frame read from
 *   the stream is sent to the transport: one chunk at a time through its pull reader
 *   (`readChunk`) where it has one, the next read only once the last chunk's packets are sent,
 *   so a slow side holds back the stream instead of filling a buffer.
 *
 * A spliced circuit ends (`ended`) when the stream ends, fails or carries a malformed frame, or a
 * write to it fails. Closing the shim's scope ends our side of the stream and closes the socket.
 */
import { createSocket, type RemoteInfo, type Socket as UdpSocket } from "node:dgram"
import { isIPv6 } from "node:net"
import { Socket } from "@effect/platform"
import { Chunk, Data, Deferred, Duration, Effect, Exit, Fiber, Queue, Scope } from "effect"
import type { Circuit, CircuitDatagrams as DatagramPath } from "../services/QuicTransport.js"
import type { CircuitDatagrams } from "./circuitDatagrams.js"
import { FrameReader, frameOf, joinFrames } from "./circuitFrames.js"
import { isChunkReader } from "./protocolWire.js"
import { describe } from "./quicErrors.js"

/** Datagrams from the transport waiting for their write to the stream, at most (the rest are dropped). */
const maxQueuedBytes = 256 * 1024

/** Frames joined into one write to the stream, at most. */
const maxFramesPerWrite = 64

/** How long ending our side of the stream may wait for writes the relay has not taken yet. */
const endTimeout = Duration.seconds(2)

/** The shim's UDP socket could not be opened. */
export class CircuitShimError extends Data.TaggedError("CircuitShimError")<{
  readonly detail: string
  readonly cause: unknown
}> {
  override get message() {
    return `relay circuit: ${this.detail}`
  }
}

export interface CircuitShim {
  /** The address the transport's socket reaches the circuit at. */
  readonly host: string
  readonly port: number
  /** Completes once the circuit has ended, with why ("the stream ended", …). */
  readonly ended: Effect.Effect<string>
  /** Why the circuit ended, once it has. */
  readonly endReason: () => string | undefined
}

const bindUdp = (host: string) =>
  Effect.async<UdpSocket, CircuitShimError>((resume) => {
    const udp = createSocket({ type: isIPv6(host) ? "udp6" : "udp4" })
    const onError = (cause: Error) =>
      resume(Effect.fail(new CircuitShimError({ detail: `cannot bind ${host}: ${describe(cause)}`, cause })))
    udp.once("error", onError)
    udp.bind(0, host, () => {
      udp.off("error", onError)
      resume(Effect.succeed(udp))
    })
    return closeUdp(udp)
  })

const closeUdp = (udp: UdpSocket) =>
  Effect.async<void>((resume) => {
    try {
      udp.close(() => resume(Effect.void))
    } catch {
      resume(Effect.void)
    }
  })

/** Datagram sends are not awaited: one that fails is lost, as UDP loses it. */
const ignore = () => {}

/**
 * Opens a shim for `circuit`, bound to `host` (port 0), exchanging datagrams with the
 * transport's socket at `host:port`; a datagram circuit's packets go through `datagrams` (the
 * transport's). Lasts until its scope closes.
 */
export const open = (
  circuit: Circuit,
  host: string,
  port: number,
  datagrams: CircuitDatagrams
): Effect.Effect<CircuitShim, CircuitShimError, Scope.Scope> =>
  Effect.gen(function* () {
    const stream = circuit.socket
    const ended = yield* Deferred.make<string>()
    let endReason: string | undefined
    const end = (why: string) => {
      endReason ??= why
      Deferred.unsafeDone(ended, Exit.succeed(endReason))
    }

    // Our side of the stream, ended last (after the fibers and the socket below): a close
    // event ends the writes and the reads; bounded, since the relay may take nothing more.
    const { write } = yield* Effect.acquireRelease(
      Effect.flatMap(Scope.make(), (writerScope) =>
        Effect.map(Scope.extend(stream.writer, writerScope), (write) => ({ write, writerScope }))
      ),
      ({ write, writerScope }) =>
        write(new Socket.CloseEvent(1000)).pipe(
          Effect.ignore,
          Effect.timeoutOption(endTimeout),
          Effect.zipRight(Scope.close(writerScope, Exit.void))
        )
    )

    const udp = yield* Effect.acquireRelease(bindUdp(host), closeUdp)
    const local = udp.address()
    udp.on("error", (cause: Error) => end(`local socket error: ${describe(cause)}`))
    const toTransport = (packet: Uint8Array) => udp.send(packet, port, host, ignore)
    const path = circuit.datagrams
    const carried =
      path === undefined
        ? spliced(stream, udp, host, port, write, toTransport)
        : overDatagrams(udp, host, port, path, circuit.until, datagrams, toTransport)
    yield* carried.pipe(
      Effect.match({
        onFailure: (error) => `the stream failed: ${describe(error)}`,
        onSuccess: (why) => why
      }),
      Effect.flatMap((why) => Effect.sync(() => end(why))),
      Effect.forkScoped
    )

    return {
      host,
      port: local.port,
      ended: Deferred.await(ended),
      endReason: () => endReason
    } satisfies CircuitShim
  })

/** Whether `from` is the transport's socket. */
const fromTransport = (from: RemoteInfo, host: string, port: number) =>
  from.port === port && from.address === host

/**
 * A datagram circuit: packets both ways as circuit datagrams, until the relay sends its END or
 * `until` completes (the stream is not read: the relay ends it once the circuit is set up).
 * Answers why it ended. Leaving sends our END to the relay.
 */
const overDatagrams = (
  udp: UdpSocket,
  host: string,
  port: number,
  path: DatagramPath,
  until: Effect.Effect<unknown> | undefined,
  datagrams: CircuitDatagrams,
  toTransport: (packet: Uint8Array) => void
): Effect.Effect<string, never, Scope.Scope> =>
  Effect.gen(function* () {
    const relay = { host: path.host, port: path.port }
    udp.on("message", (packet: Buffer, from: RemoteInfo) => {
      if (fromTransport(from, host, port)) datagrams.send(path.id, relay, packet)
    })
    const ended = yield* Deferred.make<string>()
    yield* Effect.acquireRelease(
      Effect.sync(() =>
        datagrams.addEnd(path.id, relay, toTransport, () =>
          Deferred.unsafeDone(ended, Exit.succeed("the relay ended the circuit"))
        )
      ),
      (remove) =>
        Effect.sync(() => {
          remove()
          datagrams.sendEnd(path.id, relay)
        })
    )
    const relayGone =
      until === undefined ? Effect.never : Effect.as(until, "the connection to the relay closed")
    return yield* Effect.raceFirst(Deferred.await(ended), relayGone)
  })

/** A spliced circuit: packets both ways as frames on the stream, until it ends. Answers why it ended. */
const spliced = (
  stream: Socket.Socket,
  udp: UdpSocket,
  host: string,
  port: number,
  write: (chunk: Uint8Array) => Effect.Effect<void, Socket.SocketError>,
  toTransport: (packet: Uint8Array) => void
): Effect.Effect<string, Socket.SocketError, Scope.Scope> =>
  Effect.gen(function* () {
    // Transport → stream.
    const queue = yield* Effect.acquireRelease(Queue.unbounded<Uint8Array>(), Queue.shutdown)
    let queuedBytes = 0
    udp.on("message", (datagram: Buffer, from: RemoteInfo) => {
      if (!fromTransport(from, host, port)) return
      if (queuedBytes + datagram.byteLength > maxQueuedBytes) return
      const frame = frameOf(datagram)
      if (frame === undefined) return
      queuedBytes += frame.byteLength
      Queue.unsafeOffer(queue, frame)
    })
    const writes = yield* Queue.takeBetween(queue, 1, maxFramesPerWrite).pipe(
      Effect.flatMap((frames) => {
        const joined = joinFrames(Chunk.toReadonlyArray(frames))
        queuedBytes -= joined.byteLength
        return write(joined)
      }),
      Effect.forever,
      Effect.forkScoped
    )
    // Stream → transport, until it ends or a write fails.
    return yield* Effect.raceFirst(readFrames(stream, new FrameReader(), toTransport), Fiber.join(writes))
  })

/** A malformed frame on the stream. */
class MalformedFrame extends Data.TaggedError("MalformedFrame") {}

const malformed = "malformed frame on the stream"

/**
 * Reads `stream` to its end, each packet to `send` (with no `reader`, its bytes are ignored);
 * answers why it stopped. Pulls one chunk at a time where the socket can (`readChunk`); any
 * other socket is `run`.
 */
const readFrames = (
  stream: Socket.Socket,
  reader: FrameReader | undefined,
  send: (packet: Uint8Array) => void
): Effect.Effect<string, Socket.SocketError> => {
  const push = (chunk: Uint8Array) => reader === undefined || reader.push(chunk, send)
  const atEnd = () => (reader?.midFrame ? "the stream ended inside a frame" : "the stream ended")
  if (isChunkReader(stream))
    return Effect.gen(function* () {
      while (true) {
        const chunk = yield* stream.readChunk
        if (chunk === undefined) return atEnd()
        if (!push(chunk)) return malformed
      }
    })
  return stream
    .run((chunk) => (push(chunk) ? undefined : Effect.fail(new MalformedFrame())))
    .pipe(
      Effect.map(atEnd),
      Effect.catchTag("MalformedFrame", () => Effect.succeed(malformed))
    )
}
