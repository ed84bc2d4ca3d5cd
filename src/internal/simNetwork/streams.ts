/**
 * Streams of simulated connections. A stream is two pipes, one per direction; each side is
 * an `@effect/platform` Socket reading one pipe and writing the other. What a side writes
 * (bytes, FIN, reset) reaches the other side's pipe through the world's connection delivery
 * (`World.sendOnConnection`): in order, after the link's delay, held while the link is cut.
 */
import { Socket } from "@effect/platform"
import { Deferred, Effect, Exit, FiberSet, Scope } from "effect"
import * as QuicStreamSocket from "../quicStreamSocket.js"
import type { SimConnection } from "./connection.js"
import type { World } from "./world.js"

/** One direction of a stream, as its reader sees it. */
export class Pipe {
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
/** Node's hook for `util.inspect`: simulated objects show a compact form. */
export const inspect = Symbol.for("nodejs.util.inspect.custom")
const cleanClose = new Socket.SocketCloseError({ reason: "Close", code: 1000 })

/** Both sides of one stream. */
export class SimStream {
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
export class SimSocket implements Socket.Socket, QuicStreamSocket.ChunkReader {
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
      this.world.sendOnConnection(
        this.end,
        () => {
          if (pipe.done || pipe.stopped) return
          pipe.chunks.push(bytes)
          pipe.notify()
        },
        bytes.length
      )
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

  /** See `ChunkReader.readChunk`. */
  get readChunk(): Effect.Effect<Uint8Array | undefined, Socket.SocketError> {
    return Effect.suspend(() => {
      const pipe = this.readPipe
      if (pipe.chunks.length > 0) return Effect.succeed(pipe.chunks.shift())
      if (pipe.error !== undefined) return Effect.fail(pipe.error)
      if (pipe.fin || pipe.stopped) return Effect.succeed(undefined)
      return Effect.zipRight(this.waitReady, this.readChunk)
    })
  }

  /** See `ChunkReader.unread`. */
  unread(chunk: Uint8Array) {
    this.readPipe.chunks.unshift(chunk)
  }

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
