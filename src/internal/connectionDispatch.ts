/**
 * How a connection hands its events (streams the peer opens, its close) to whoever serves
 * it, without a fiber waiting for them: a transport may hold thousands of idle connections,
 * and a suspended fiber per connection (its stack, its FiberRefs) would cost more than the
 * QUIC connection itself. The fiber is started when the event happens, with the `fork` the
 * transport gives (its own runtime, captured once).
 *
 * One `Dispatch` per connection end: in the live transport, the simulated network and the
 * in-memory test connections alike.
 */
import type { Socket } from "@effect/platform"
import { Effect, Fiber, Queue, Scope, Stream } from "effect"
import type { CloseReason } from "../services/QuicTransport.js"

type CloseEffect = (reason: CloseReason) => Effect.Effect<void>

export class Dispatch {
  private pending: Array<Socket.Socket> | undefined
  /** Takes each stream synchronously (`acceptedStreams`). */
  private onStream: ((socket: Socket.Socket) => void) | undefined
  /** Serves each stream in a fiber of its own (`handleStreams`). */
  private serve: ((socket: Socket.Socket) => Effect.Effect<void>) | undefined
  /** The fibers `serve` runs now. */
  private running: Set<Fiber.RuntimeFiber<void>> | undefined
  private onClose: Array<(reason: CloseReason) => void> | undefined
  /**
   * `whenClosed` effects, each run in a fiber of its own at the close: one held alone (the
   * usual case), more in an array.
   */
  private closeEffects: CloseEffect | Array<CloseEffect> | undefined
  private closedWith: CloseReason | undefined

  /** `fork` starts a fiber for an event (the transport's runtime). */
  constructor(private readonly fork: (effect: Effect.Effect<void>) => Fiber.RuntimeFiber<void>) {}

  /** A stream the peer opened. Held until someone handles streams. */
  offer(socket: Socket.Socket): void {
    if (this.closedWith !== undefined) return
    if (this.serve) this.serveOne(this.serve, socket)
    else if (this.onStream) this.onStream(socket)
    else if (this.pending) this.pending.push(socket)
    else this.pending = [socket]
  }

  private serveOne(serve: (socket: Socket.Socket) => Effect.Effect<void>, socket: Socket.Socket): void {
    const fiber = this.fork(serve(socket))
    const running = this.running ?? new Set<Fiber.RuntimeFiber<void>>()
    this.running = running
    running.add(fiber)
    fiber.addObserver(() => running.delete(fiber))
  }

  /** The connection closed: no more streams; the close handlers run. */
  close(reason: CloseReason): void {
    if (this.closedWith !== undefined) return
    this.closedWith = reason
    this.pending = undefined
    this.onStream = undefined
    this.serve = undefined
    const handlers = this.onClose
    this.onClose = undefined
    if (handlers) for (const f of handlers) f(reason)
    const effects = this.closeEffects
    this.closeEffects = undefined
    if (typeof effects === "function") this.runClose(effects(reason))
    else if (effects) for (const f of effects) this.runClose(f(reason))
  }

  /** A close effect in a fiber of its own; none for one with nothing to do. */
  private runClose(effect: Effect.Effect<void>) {
    if (effect !== Effect.void) this.fork(effect)
  }

  /** Streams go to `handler` (or, with `serve`, each to a fiber of its own) from now on. */
  private setStreamHandler(
    handler: ((socket: Socket.Socket) => void) | undefined,
    serve?: (socket: Socket.Socket) => Effect.Effect<void>
  ): void {
    this.onStream = handler
    this.serve = serve
    const waiting = this.pending
    this.pending = undefined
    if (waiting)
      for (const socket of waiting) {
        if (serve) this.serveOne(serve, socket)
        else if (handler) handler(socket)
      }
  }

  /** The end of a `handleStreams` scope: no more streams to `serve`, and its fibers stop. */
  private stopServing(serve: (socket: Socket.Socket) => Effect.Effect<void>): Effect.Effect<void> {
    return Effect.suspend(() => {
      if (this.serve === serve) this.serve = undefined
      // Another handleStreams took over: the fibers running now are its own.
      else if (this.serve !== undefined) return Effect.void
      const running = this.running
      this.running = undefined
      return running && running.size > 0 ? Fiber.interruptAll(running) : Effect.void
    })
  }

  /**
   * See `QuicConnection.handleStreams`. The handler and its fibers are fields of the
   * Dispatch, not closures made per call: an idle served connection costs one finalizer.
   */
  handleStreams(
    onStream: (socket: Socket.Socket) => Effect.Effect<void>
  ): Effect.Effect<void, never, Scope.Scope> {
    // A finalizer of the scope's own, not Effect.addFinalizer: the latter keeps the caller's FiberRefs.
    return Effect.flatMap(Effect.scope, (scope) =>
      Effect.suspend(() => {
        this.setStreamHandler(undefined, onStream)
        return Scope.addFinalizerExit(scope, this.stopServingWith(onStream))
      })
    )
  }

  // The finalizer made here holds only `this` and `serve` (not the caller's scope).
  private stopServingWith(serve: (socket: Socket.Socket) => Effect.Effect<void>) {
    return () => this.stopServing(serve)
  }

  /**
   * Calls `f` (synchronously, outside any fiber) when the connection closes; nothing if it
   * already has. Returns how to stop listening.
   */
  listenClose(f: (reason: CloseReason) => void): () => void {
    if (this.closedWith !== undefined) return () => {}
    if (this.onClose) this.onClose.push(f)
    else this.onClose = [f]
    return () => {
      const i = this.onClose?.indexOf(f) ?? -1
      if (i >= 0) this.onClose!.splice(i, 1)
    }
  }

  /** See `QuicConnection.closed`: the reason, at once if it has closed, else when it does. */
  get closed(): Effect.Effect<CloseReason> {
    return Effect.suspend(() => {
      if (this.closedWith !== undefined) return Effect.succeed(this.closedWith)
      return Effect.async<CloseReason>((resume) => {
        const stop = this.listenClose((reason) => resume(Effect.succeed(reason)))
        return Effect.sync(stop)
      })
    })
  }

  /** See `QuicConnection.whenClosed`. */
  whenClosed(f: (reason: CloseReason) => Effect.Effect<void>): Effect.Effect<void> {
    return Effect.sync(() => {
      const effects = this.closeEffects
      if (this.closedWith !== undefined) this.runClose(f(this.closedWith))
      else if (effects === undefined) this.closeEffects = f
      else if (typeof effects === "function") this.closeEffects = [effects, f]
      else effects.push(f)
    })
  }

  /** See `QuicConnection.acceptedStreams`: the streams as a Stream, ending at the close. */
  get acceptedStreams(): Stream.Stream<Socket.Socket> {
    return Stream.unwrapScoped(
      Effect.gen(this, function* () {
        const queue = yield* Queue.unbounded<Socket.Socket>()
        const handler = (socket: Socket.Socket) => {
          Queue.unsafeOffer(queue, socket)
        }
        this.setStreamHandler(handler)
        yield* Effect.addFinalizer(() =>
          Effect.sync(() => {
            if (this.onStream === handler) this.onStream = undefined
          })
        )
        yield* this.whenClosed(() => Queue.shutdown(queue))
        return Stream.fromQueue(queue)
      })
    )
  }
}
