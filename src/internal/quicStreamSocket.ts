/**
 * QuicStreamSocket: one bidirectional QUIC stream as an `@effect/platform` `Socket`.
 *
 * - `run` / `runRaw` read the stream until the peer ends it (FIN), then return cleanly;
 *   a reset by the peer or a closed connection fails with `SocketGenericError("Read")`.
 * - writes need no running `run` (unlike `Socket.fromTransformStream`): each write resolves
 *   once the bytes are handed to the QUIC connection, which sends them at once.
 * - releasing a `writer` ends our side of the stream (FIN) after all pending writes;
 *   writing a `CloseEvent` ends the socket (the running `run` returns, clean for 1000).
 * - `close` (used by the owner's scope) ends our side and stops reading.
 *
 * Only the web-stream half of js-quic's `QUICStream` is used, so the adapter also works
 * over any `{ readable, writable }` pair.
 */
import { Socket } from "@effect/platform"
import { Deferred, Duration, Effect, FiberSet, Option, Scope } from "effect"

/** The part of js-quic's `QUICStream` the adapter needs. */
export interface QuicStreamLike {
  readonly readable: ReadableStream<Uint8Array>
  readonly writable: WritableStream<Uint8Array>
  /** Resets both directions (RESET_STREAM + STOP_SENDING). */
  readonly cancel?: (reason?: unknown) => void
}

/**
 * A socket read one chunk at a time before its `run` starts: the stream router reads a
 * stream's first bytes so, and puts back what is not its own for the `run` to deliver first.
 */
export interface ChunkReader {
  /** The next chunk (what was put back first); undefined once the peer ended its side. */
  readonly readChunk: Effect.Effect<Uint8Array | undefined, Socket.SocketError>
  /** Puts `chunk` back: the next `readChunk` or `run` delivers it first. */
  readonly unread: (chunk: Uint8Array) => void
}

export interface QuicStreamSocket extends Socket.Socket, ChunkReader {
  /**
   * Ends our side gracefully (FIN after pending writes, bounded by `timeout`, default 5 s;
   * reset after that) and stops reading. Idempotent.
   */
  readonly close: (options?: { readonly timeout?: Duration.DurationInput }) => Effect.Effect<void>
}

const encoder = new TextEncoder()

/** How a Socket's run ends when its own side writes a close event (both socket kinds). */
export const closeErrorOf = (event: Socket.CloseEvent): Socket.SocketCloseError =>
  new Socket.SocketCloseError({ reason: "Close", code: event.code, closeReason: event.reason })

/** A write after our side of the stream was ended. */
export const writeSideClosed = (): Socket.SocketGenericError =>
  new Socket.SocketGenericError({ reason: "Write", cause: "the stream's write side is closed" })

/** Builds the socket; the stream is not touched until it is used. */
export const make = (
  stream: QuicStreamLike,
  options?: { readonly closeCodeIsError?: (code: number) => boolean }
): QuicStreamSocket => {
  const closeCodeIsError = options?.closeCodeIsError ?? Socket.defaultCloseCodeIsError
  let reader: ReadableStreamDefaultReader<Uint8Array> | undefined
  let streamWriter: WritableStreamDefaultWriter<Uint8Array> | undefined
  let readDone = false
  /** Bytes put back by `unread`, delivered before the stream's next ones. */
  let pending: Uint8Array | undefined
  let writeEnded = false
  /** The running `run`'s fibers; failing its deferred ends the run. */
  let current: FiberSet.FiberSet<unknown, unknown> | undefined

  const getReader = () => {
    reader ??= stream.readable.getReader()
    return reader
  }
  const getWriter = () => {
    streamWriter ??= stream.writable.getWriter()
    return streamWriter
  }

  const stopReading = (reason?: unknown): Promise<void> => {
    if (readDone) return Promise.resolve()
    readDone = true
    return getReader()
      .cancel(reason)
      .catch(() => undefined)
  }

  /** Ends our side of the stream once: `close` sends FIN, `abort` resets it. */
  const finishWrite = (how: "close" | "abort", reason?: unknown): Promise<void> => {
    if (writeEnded) return Promise.resolve()
    writeEnded = true
    const writer = getWriter()
    return (how === "close" ? writer.close() : writer.abort(reason)).catch(() => undefined)
  }
  const endWrite = (): Promise<void> => finishWrite("close")
  const abortWrite = (reason?: unknown): Promise<void> => finishWrite("abort", reason)

  const runRaw = <_, E = never, R = never>(
    // biome-ignore lint/suspicious/noConfusingVoidType: the signature of `Socket.runRaw`
    handler: (_: string | Uint8Array) => Effect.Effect<_, E, R> | void,
    opts?: { readonly onOpen?: Effect.Effect<void> | undefined }
  ): Effect.Effect<void, Socket.SocketError | E, R> =>
    Effect.scopedWith((scope) =>
      Effect.gen(function* () {
        if (current !== undefined)
          return yield* new Socket.SocketGenericError({
            reason: "Open",
            cause: "the socket is already running"
          })
        const r = getReader()
        const fiberSet = yield* FiberSet.make<unknown, E | Socket.SocketError>().pipe(Scope.extend(scope))
        const runFork = yield* FiberSet.runtime(fiberSet)<R>()
        yield* Effect.tryPromise({
          try: async () => {
            while (true) {
              if (pending !== undefined) {
                const result = handler(pending)
                pending = undefined
                if (Effect.isEffect(result)) runFork(result)
                continue
              }
              const { done, value } = await r.read()
              if (done) {
                readDone = true
                throw new Socket.SocketCloseError({ reason: "Close", code: 1000 })
              }
              const result = handler(value)
              if (Effect.isEffect(result)) runFork(result)
            }
          },
          catch: (cause) =>
            Socket.isSocketError(cause) ? cause : new Socket.SocketGenericError({ reason: "Read", cause })
        }).pipe(FiberSet.run(fiberSet))
        current = fiberSet
        yield* Scope.addFinalizer(
          scope,
          Effect.promise(() => stopReading()).pipe(
            Effect.ensuring(
              Effect.sync(() => {
                current = undefined
              })
            )
          )
        )
        if (opts?.onOpen) yield* opts.onOpen
        return yield* FiberSet.join(fiberSet).pipe(
          Effect.catchIf(
            Socket.SocketCloseError.isClean((code) => !closeCodeIsError(code)),
            () => Effect.void
          )
        )
      })
    ).pipe(Effect.interruptible)

  const run = <_, E = never, R = never>(
    // biome-ignore lint/suspicious/noConfusingVoidType: the signature of `Socket.run`
    handler: (_: Uint8Array) => Effect.Effect<_, E, R> | void,
    opts?: { readonly onOpen?: Effect.Effect<void> | undefined }
  ) => runRaw((data) => (typeof data === "string" ? handler(encoder.encode(data)) : handler(data)), opts)

  const write = (chunk: Uint8Array | string | Socket.CloseEvent): Effect.Effect<void, Socket.SocketError> =>
    Effect.suspend(() => {
      if (Socket.isCloseEvent(chunk)) {
        const error = closeErrorOf(chunk)
        const fiberSet = current
        return Effect.promise(() =>
          Promise.all([
            chunk.code === 1000 ? endWrite() : abortWrite(error),
            fiberSet ? undefined : stopReading()
          ])
        ).pipe(
          Effect.zipRight(fiberSet ? Deferred.fail(fiberSet.deferred, error) : Effect.void),
          Effect.asVoid
        )
      }
      if (writeEnded) return Effect.fail(writeSideClosed())
      const bytes = typeof chunk === "string" ? encoder.encode(chunk) : chunk
      return Effect.tryPromise({
        try: () => getWriter().write(bytes),
        catch: (cause) => new Socket.SocketGenericError({ reason: "Write", cause })
      })
    })

  const writer: Effect.Effect<
    (chunk: Uint8Array | string | Socket.CloseEvent) => Effect.Effect<void, Socket.SocketError>,
    never,
    Scope.Scope
  > = Effect.acquireRelease(Effect.succeed(write), () => Effect.promise(endWrite))

  const close = (closeOptions?: { readonly timeout?: Duration.DurationInput }) =>
    Effect.promise(endWrite).pipe(
      Effect.timeoutOption(closeOptions?.timeout ?? Duration.seconds(5)),
      Effect.flatMap((ended) =>
        Option.isNone(ended)
          ? Effect.sync(() => stream.cancel?.(new Error("stream close timed out")))
          : Effect.void
      ),
      Effect.zipRight(Effect.promise(() => stopReading())),
      Effect.uninterruptible
    )

  const readChunk: Effect.Effect<Uint8Array | undefined, Socket.SocketError> = Effect.suspend(() => {
    const chunk = pending
    if (chunk !== undefined) {
      pending = undefined
      return Effect.succeed(chunk)
    }
    return Effect.tryPromise({
      try: () => getReader().read(),
      catch: (cause) => new Socket.SocketGenericError({ reason: "Read", cause })
    }).pipe(Effect.map((result) => (result.done ? undefined : result.value)))
  })

  const unread = (chunk: Uint8Array) => {
    if (pending === undefined) pending = chunk
    else {
      const joined = new Uint8Array(chunk.length + pending.length)
      joined.set(chunk)
      joined.set(pending, chunk.length)
      pending = joined
    }
  }

  const socket: QuicStreamSocket = {
    [Socket.TypeId]: Socket.TypeId,
    run,
    runRaw,
    writer,
    close,
    readChunk,
    unread
  }
  return socket
}
