/**
 * RpcWire: how agent RPC messages travel on a QUIC stream.
 *
 * A frame is a 4-byte big-endian length followed by that many bytes of MessagePack holding
 * one `@effect/rpc` encoded message (`FromClientEncoded` / `FromServerEncoded`). The length
 * comes first so that an oversized message is refused as soon as its header arrives, before
 * its body is buffered, whatever way the bytes are split into reads.
 */
import { Socket } from "@effect/platform"
import { RpcSerialization } from "@effect/rpc"
import type { FromServerEncoded } from "@effect/rpc/RpcMessage"
import { Cause, Effect, Exit, Fiber, Mailbox, Option, Predicate, Schema } from "effect"
import { RpcMalformedMessageError, RpcMessageTooLargeError, RpcWireError } from "../services/AgentRpc.js"

export const HEADER_BYTES = 4

const makeCodec = () =>
  RpcSerialization.makeMsgPack({ useRecords: false, maxBufferSize: "unbounded" }).unsafeMake()
const codec = makeCodec()

/** Encodes one message as a frame; `size` is the body length, checked by the caller. */
export const encodeFrame = (message: unknown): { readonly frame: Uint8Array; readonly size: number } => {
  const body = codec.encode(message) as Uint8Array
  const frame = new Uint8Array(HEADER_BYTES + body.length)
  new DataView(frame.buffer, frame.byteOffset, HEADER_BYTES).setUint32(0, body.length)
  frame.set(body, HEADER_BYTES)
  return { frame, size: body.length }
}

/** A decoded message as it came from the peer: an object with a string `_tag`, nothing checked besides. */
export type TaggedMessage = { readonly _tag: string }

const isTaggedMessage = (value: unknown): value is TaggedMessage =>
  Predicate.hasProperty(value, "_tag") && Predicate.isString(value._tag)

/** The body of one frame as a tagged object, or a malformed-message error. */
export const decodeBody = (body: Uint8Array): TaggedMessage | RpcMalformedMessageError => {
  let values: ReadonlyArray<unknown>
  try {
    // A fresh parser per frame: the msgpack parser buffers an incomplete value for the next
    // call, so a shared one would let one peer's garbage corrupt every later frame.
    values = makeCodec().decode(body)
  } catch (e) {
    return new RpcMalformedMessageError({ detail: `not MessagePack: ${String((e as Error)?.message ?? e)}` })
  }
  const value = values.length === 1 ? values[0] : undefined
  return isTaggedMessage(value)
    ? value
    : new RpcMalformedMessageError({ detail: "expected one tagged message per frame" })
}

export type FramePush =
  | { readonly _tag: "Frames"; readonly frames: ReadonlyArray<Uint8Array> }
  | { readonly _tag: "TooLarge"; readonly size: number }

/** Splits a byte stream into frame bodies, refusing any body longer than `limit`. */
export class FrameDecoder {
  private buffer: Uint8Array = new Uint8Array(0)
  constructor(readonly limit: number) {}

  push(chunk: Uint8Array): FramePush {
    let data = chunk
    if (this.buffer.length > 0) {
      data = new Uint8Array(this.buffer.length + chunk.length)
      data.set(this.buffer)
      data.set(chunk, this.buffer.length)
    }
    const frames: Uint8Array[] = []
    let offset = 0
    while (data.length - offset >= HEADER_BYTES) {
      const size = new DataView(data.buffer, data.byteOffset + offset, HEADER_BYTES).getUint32(0)
      if (size > this.limit) {
        this.buffer = new Uint8Array(0)
        return { _tag: "TooLarge", size }
      }
      if (data.length - offset - HEADER_BYTES < size) break
      frames.push(data.subarray(offset + HEADER_BYTES, offset + HEADER_BYTES + size))
      offset += HEADER_BYTES + size
    }
    // Copy the remainder: `chunk` may be a view the reader reuses.
    this.buffer = offset === data.length ? new Uint8Array(0) : data.slice(offset)
    return { _tag: "Frames", frames }
  }
}

const encodeWireError = Schema.encodeSync(RpcWireError)
const decodeWireError = Schema.decodeUnknownOption(RpcWireError)

/** An `Exit` that fails request `requestId` with a typed wire error. */
export const failureExit = (requestId: string, error: RpcWireError): FromServerEncoded => ({
  _tag: "Exit",
  requestId,
  exit: { _tag: "Failure", cause: { _tag: "Fail", error: encodeWireError(error) } }
})

/** A stream-level failure (no request to pin it on): every call on the stream fails with it. */
export const streamDefect = (error: RpcWireError): FromServerEncoded => ({
  _tag: "Defect",
  defect: encodeWireError(error)
})

/** The wire error carried by a stream-level `Defect`, if it is one. */
export const wireErrorOfDefect = decodeWireError

/** Request ids are decimal bigint text; anything else is malformed. */
export const parseRequestId = (id: unknown): bigint | undefined => {
  if (typeof id !== "string" || id.length === 0 || id.length > 40 || !/^[0-9]+$/.test(id)) return undefined
  return BigInt(id)
}

/** An `Exit` for `requestId` from a stream-level `Defect`: its wire error, or a defect. */
export const exitOfDefect = (requestId: string, defect: unknown): FromServerEncoded => {
  const error = wireErrorOfDefect(defect)
  return Option.isSome(error)
    ? failureExit(requestId, error.value)
    : { _tag: "Exit", requestId, exit: { _tag: "Failure", cause: { _tag: "Die", defect } } }
}

/** How reading a stream ended. */
export type ReadEnd =
  /** The peer ended its side (FIN). */
  | { readonly _tag: "Eof" }
  /** The stream failed (reset, connection closed). */
  | { readonly _tag: "Reset"; readonly detail: string }
  /** We refused what came (too large, malformed); the stream must be closed. */
  | { readonly _tag: "Refused"; readonly error: RpcMessageTooLargeError | RpcMalformedMessageError }
  /** `onMessage` asked to stop. */
  | { readonly _tag: "Stopped" }

type Inbound = TaggedMessage | RpcMessageTooLargeError | RpcMalformedMessageError

const isRefusal = (m: Inbound): m is RpcMessageTooLargeError | RpcMalformedMessageError =>
  m instanceof RpcMessageTooLargeError || m instanceof RpcMalformedMessageError

const stopRun = new Socket.SocketCloseError({ reason: "Close", code: 1000 })
const textEncoder = new TextEncoder()

/**
 * Reads `socket` frame by frame and hands each message to `onMessage`, one at a time and in
 * order (`true` to go on, `false` to stop, a malformed-message failure to refuse the
 * stream). Returns how reading ended; closing the socket is the caller's business.
 */
export const readMessages = <R>(
  socket: Socket.Socket,
  limit: number,
  onMessage: (message: TaggedMessage) => Effect.Effect<boolean, RpcMalformedMessageError, R>
): Effect.Effect<ReadEnd, never, R> =>
  Effect.gen(function* () {
    const inbox = yield* Mailbox.make<Inbound>()
    const decoder = new FrameDecoder(limit)
    const reader = yield* socket
      .runRaw((chunk) => {
        const pushed = decoder.push(typeof chunk === "string" ? textEncoder.encode(chunk) : chunk)
        if (Predicate.isTagged(pushed, "TooLarge")) {
          inbox.unsafeOffer(new RpcMessageTooLargeError({ size: pushed.size, limit }))
          return Effect.fail(stopRun)
        }
        for (const body of pushed.frames) {
          const message = decodeBody(body)
          inbox.unsafeOffer(message)
          if (isRefusal(message)) return Effect.fail(stopRun)
        }
      })
      .pipe(Effect.exit, Effect.zipLeft(inbox.end), Effect.fork)
    const loop: Effect.Effect<ReadEnd | undefined, never, R> = inbox.take.pipe(
      Effect.matchEffect({
        onFailure: () => Effect.succeed(undefined),
        onSuccess: (message) =>
          isRefusal(message)
            ? Effect.succeed<ReadEnd>({ _tag: "Refused", error: message })
            : onMessage(message).pipe(
                Effect.matchEffect({
                  onFailure: (error) => Effect.succeed<ReadEnd>({ _tag: "Refused", error }),
                  onSuccess: (goOn) => (goOn ? loop : Effect.succeed<ReadEnd>({ _tag: "Stopped" }))
                })
              )
      })
    )
    const handled = yield* loop
    if (handled !== undefined) {
      yield* Fiber.interrupt(reader)
      return handled
    }
    const exit = yield* Fiber.join(reader)
    return Exit.isSuccess(exit)
      ? ({ _tag: "Eof" } as const)
      : ({ _tag: "Reset", detail: Cause.pretty(exit.cause).split("\n")[0] ?? "stream failed" } as const)
  })
