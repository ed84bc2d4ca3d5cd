/**
 * rpcClient: calls to a Polykey node's agent RPC on a `QuicConnection` (the wire: jsonRpc.ts).
 *
 * A call opens a stream, writes its header (the request, with the timeout as Polykey's
 * metadata) and ends its side at once (FIN): for a unary or a server-stream method Polykey
 * reads nothing after the header. It then reads answers until the server ends the stream: a
 * unary call takes the first result, a server stream every result (up to `limit`). Each call
 * is one effect whose scope owns the stream: however the call ends (answered, failed, timed
 * out, interrupted) the stream is closed with it, our side ended and reading stopped, never
 * reset by us and never left open.
 *
 * Failures are `PeerCallError`s:
 * - "timeout": no complete answer within `timeout` (the whole call: opening, writing, reading);
 * - "connection": no stream could be opened or written, or it broke under the call;
 * - "remote": the server answered an error message, or reset the stream without answering
 *   (what Polykey does for a method it does not serve);
 * - "invalid-response": bytes that are not JSON-RPC answers, a message over the size limit,
 *   or a unary call's stream ended without a result.
 */
import type { Socket } from "@effect/platform"
import { Duration, Effect, Either, Predicate } from "effect"
import { PeerCallError } from "../../services/PeerRpc.js"
import type { QuicConnection } from "../../services/QuicTransport.js"
import { describe } from "../errorText.js"
import { isChunkReader } from "../protocolWire.js"
import type { ChunkReader } from "../quicStreamSocket.js"
import * as JsonRpc from "./jsonRpc.js"

export interface CallOptions {
  /** The whole call's bound, sent to the server as its metadata timeout. */
  readonly timeout: Duration.DurationInput
  /** The longest message accepted from the server; 64 KiB (`MAX_MESSAGE_BYTES`) by default. */
  readonly maxMessageBytes?: number
}

export interface StreamCallOptions extends CallOptions {
  /** Stop after this many results (the stream is closed then); every one until the server ends by default. */
  readonly limit?: number
}

/** How long a unary call, once answered, waits for the server to end the stream before closing it. */
const END_GRACE = Duration.seconds(1)

const failure = (method: string, reason: PeerCallError["reason"], detail: string, cause?: unknown) =>
  new PeerCallError({ method, reason, detail, cause })

/**
 * The code of a reset by the peer, from the error a read fails with: js-quic errors the
 * readable with its `codeToReason("read", code)`, whose default (the one quicmesh's transport
 * keeps) is `Error("read <code>")`. A connection that closes errors it with its own error.
 */
const peerResetCode = (cause: unknown): number | undefined => {
  const match = cause instanceof Error ? /^read (\d+)$/.exec(cause.message) : null
  return match === null ? undefined : Number(match[1])
}

/** A read that failed: a reset by the peer is its refusal of the call; anything else the connection's. */
const readFailure = (method: string) => (e: Socket.SocketError) => {
  const cause = (e as { readonly cause?: unknown }).cause
  const code = peerResetCode(cause)
  return code !== undefined
    ? failure(
        method,
        "remote",
        `the peer reset the stream (code ${code}) without answering: Polykey does so for a method it does not serve`,
        e
      )
    : failure(method, "connection", `the call's stream failed: ${describe(cause ?? e)}`, e)
}

/**
 * Reads answers until the server ends the stream or `max` results are in. An error message
 * fails the call; so does anything that is not an answer.
 */
const readResults = (
  socket: ChunkReader,
  method: string,
  max: number,
  maxMessageBytes: number
): Effect.Effect<Array<unknown>, PeerCallError> =>
  Effect.gen(function* () {
    const parser = new JsonRpc.JsonValueParser(maxMessageBytes)
    const results: Array<unknown> = []
    while (results.length < max) {
      const chunk = yield* Effect.mapError(socket.readChunk, readFailure(method))
      const values = chunk === undefined ? parser.end() : parser.push(chunk)
      if (Either.isLeft(values)) return yield* failure(method, "invalid-response", values.left.message)
      for (const value of values.right) {
        const answer = JsonRpc.parseResponse(value)
        if (Either.isLeft(answer)) return yield* failure(method, "invalid-response", answer.left.message)
        if (Predicate.isTagged(answer.right, "Error"))
          return yield* failure(
            method,
            "remote",
            JsonRpc.describeError(answer.right.error),
            answer.right.error
          )
        results.push(answer.right.result)
        if (results.length === max) break
      }
      if (chunk === undefined) break
    }
    return results
  })

/** Reads until the server ends the stream (whatever it still sends is dropped). */
const awaitEnd = (socket: ChunkReader): Effect.Effect<void, Socket.SocketError> =>
  Effect.flatMap(socket.readChunk, (chunk) => (chunk === undefined ? Effect.void : awaitEnd(socket)))

/**
 * One call: the results read, at most `max`. Calls past the peer's stream limit wait for a
 * stream within their timeout (the transport's `openStream` waits for the peer's credit).
 */
const call = (
  connection: QuicConnection,
  method: string,
  params: Readonly<Record<string, unknown>>,
  options: CallOptions,
  max: number,
  isUnary: boolean
): Effect.Effect<Array<unknown>, PeerCallError> => {
  const timeout = Duration.decode(options.timeout)
  const exchange = Effect.gen(function* () {
    const socket = yield* Effect.mapError(connection.openStream, (e) =>
      failure(method, "connection", e.message, e)
    )
    if (!isChunkReader(socket))
      return yield* failure(method, "connection", "the transport's streams cannot be read chunk by chunk")
    // The writer's release ends our side (FIN) right after the header.
    yield* Effect.scoped(
      Effect.flatMap(socket.writer, (write) =>
        write(JsonRpc.encode(JsonRpc.request(method, params, timeout)))
      )
    ).pipe(
      Effect.mapError((e) =>
        failure(
          method,
          "connection",
          `could not write the call: ${describe((e as { readonly cause?: unknown }).cause ?? e)}`,
          e
        )
      )
    )
    const results = yield* readResults(
      socket,
      method,
      max,
      options.maxMessageBytes ?? JsonRpc.MAX_MESSAGE_BYTES
    )
    return { socket, results }
  }).pipe(
    Effect.timeoutFail({
      duration: timeout,
      onTimeout: () =>
        failure(
          method,
          "timeout",
          `no answer within ${Duration.format(timeout)} (the call's stream is closed)`
        )
    })
  )
  return Effect.scoped(
    Effect.gen(function* () {
      const { socket, results } = yield* exchange
      // A unary answer is complete; the server's FIN follows it at once. Waiting for it (briefly)
      // lets the stream end on both sides before it is closed.
      if (isUnary && results.length === 1)
        yield* awaitEnd(socket).pipe(Effect.timeoutOption(END_GRACE), Effect.ignore)
      return results
    })
  )
}

/**
 * Calls a unary `method` with `params` on `connection` (the metadata timeout added): its
 * result, as the server sent it (unchecked: the caller decodes it).
 */
export const unary = (
  connection: QuicConnection,
  method: string,
  params: Readonly<Record<string, unknown>>,
  options: CallOptions
): Effect.Effect<unknown, PeerCallError> =>
  Effect.flatMap(call(connection, method, params, options, 1, true), (results) =>
    results.length === 1
      ? Effect.succeed(results[0])
      : Effect.fail(failure(method, "invalid-response", "the stream ended without a result"))
  )

/**
 * Calls a server-stream `method` with `params` on `connection`: every result the server sends
 * before it ends the stream (or the first `limit`), in order and unchecked. One effect rather
 * than a `Stream`: the answers are short lists, the timeout bounds the whole call, and the
 * call's stream is closed when the effect ends, so no unread stream can be left behind.
 */
export const serverStream = (
  connection: QuicConnection,
  method: string,
  params: Readonly<Record<string, unknown>>,
  options: StreamCallOptions
): Effect.Effect<ReadonlyArray<unknown>, PeerCallError> =>
  call(connection, method, params, options, options.limit ?? Number.POSITIVE_INFINITY, false)
