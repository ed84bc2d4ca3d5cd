/**
 * circuitShim: the local end of a relayed circuit, standing in for the peer. A UDP socket on
 * the transport's own host exchanges datagrams with the transport's QUIC socket as any peer
 * would, and carries them on the circuit's byte stream, one frame per packet (circuitFrames):
 *
 * - a datagram from the transport's address (any other sender is ignored) becomes a frame
 *   written to the stream, one write at a time (the frames waiting joined into it); while the
 *   stream is slower than the datagrams come, up to `maxQueuedBytes` wait and later ones are
 *   dropped, as a full UDP buffer drops them (QUIC sends them again and slows down);
 * - each frame read from the stream is sent to the transport's address as a datagram. The
 *   stream is read one chunk at a time through its pull reader (`readChunk`) where it has one,
 *   the next read only once the last chunk's packets are sent, so a slow side holds back the
 *   stream instead of filling a buffer.
 *
 * The circuit ends (`ended`) when the stream ends, fails or carries a malformed frame, or a
 * write to it fails. Closing the shim's scope ends our side of the stream and closes the socket.
 */
import { createSocket, type RemoteInfo, type Socket as UdpSocket } from "node:dgram"
import { isIPv6 } from "node:net"
import { Socket } from "@effect/platform"
import { Chunk, Data, Deferred, Duration, Effect, Exit, Queue, Scope } from "effect"
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
 * Opens a shim for the circuit on `stream`, bound to `host` (port 0), exchanging datagrams
 * with the transport's socket at `host:port`. Lasts until its scope closes.
 */
export const open = (
  stream: Socket.Socket,
  host: string,
  port: number
): Effect.Effect<CircuitShim, CircuitShimError, Scope.Scope> =>
  Effect.gen(function* () {
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

    // Transport → stream.
    const queue = yield* Effect.acquireRelease(Queue.unbounded<Uint8Array>(), Queue.shutdown)
    let queuedBytes = 0
    udp.on("message", (datagram: Buffer, from: RemoteInfo) => {
      if (from.port !== port || from.address !== host) return
      if (queuedBytes + datagram.byteLength > maxQueuedBytes) return
      const frame = frameOf(datagram)
      if (frame === undefined) return
      queuedBytes += frame.byteLength
      Queue.unsafeOffer(queue, frame)
    })
    udp.on("error", (cause: Error) => end(`local socket error: ${describe(cause)}`))
    yield* Queue.takeBetween(queue, 1, maxFramesPerWrite).pipe(
      Effect.flatMap((frames) => {
        const joined = joinFrames(Chunk.toReadonlyArray(frames))
        queuedBytes -= joined.byteLength
        return write(joined)
      }),
      Effect.forever,
      Effect.catchAll((error) => Effect.sync(() => end(`the stream failed: ${describe(error)}`))),
      Effect.forkScoped
    )

    // Stream → transport.
    const reader = new FrameReader()
    const send = (packet: Uint8Array) => udp.send(packet, port, host, ignore)
    yield* readFrames(stream, reader, send).pipe(
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

/** A malformed frame on the stream. */
class MalformedFrame extends Data.TaggedError("MalformedFrame") {}

const malformed = "malformed frame on the stream"

/**
 * Reads `stream` to its end, each packet to `send`; answers why it stopped. Pulls one chunk at
 * a time where the socket can (`readChunk`); any other socket is `run`.
 */
const readFrames = (
  stream: Socket.Socket,
  reader: FrameReader,
  send: (packet: Uint8Array) => void
): Effect.Effect<string, Socket.SocketError> => {
  const atEnd = () => (reader.midFrame ? "the stream ended inside a frame" : "the stream ended")
  if (isChunkReader(stream))
    return Effect.gen(function* () {
      while (true) {
        const chunk = yield* stream.readChunk
        if (chunk === undefined) return atEnd()
        if (!reader.push(chunk, send)) return malformed
      }
    })
  return stream
    .run((chunk) => (reader.push(chunk, send) ? undefined : Effect.fail(new MalformedFrame())))
    .pipe(
      Effect.map(atEnd),
      Effect.catchTag("MalformedFrame", () => Effect.succeed(malformed))
    )
}
