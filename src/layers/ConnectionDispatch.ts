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

export class Dispatch {
  private pending: Array<Socket.Socket> | undefined
  private onStream: ((socket: Socket.Socket) => void) | undefined
  private onClose: Array<(reason: CloseReason) => void> | undefined
  private closedWith: CloseReason | undefined

  /** `fork` starts a fiber for an event (the transport's runtime). */
  constructor(private readonly fork: (effect: Effect.Effect<void>) => Fiber.RuntimeFiber<void>) {}

  /** A stream the peer opened. Held until someone handles streams. */
  offer(socket: Socket.Socket): void {
    if (this.closedWith !== undefined) return
    if (this.onStream) this.onStream(socket)
    else if (this.pending) this.pending.push(socket)
    else this.pending = [socket]
  }

  /** The connection closed: no more streams; the close handlers run. */
  close(reason: CloseReason): void {
    if (this.closedWith !== undefined) return
    this.closedWith = reason
    this.pending = undefined
    this.onStream = undefined
    const handlers = this.onClose
    this.onClose = undefined
    if (handlers) for (const f of handlers) f(reason)
  }

  private setStreamHandler(handler: ((socket: Socket.Socket) => void) | undefined): void {
    this.onStream = handler
    const waiting = this.pending
    this.pending = undefined
    if (handler && waiting) for (const socket of waiting) handler(socket)
  }

  /** See `QuicConnection.handleStreams`. */
  handleStreams(
    onStream: (socket: Socket.Socket) => Effect.Effect<void>
  ): Effect.Effect<void, never, Scope.Scope> {
    // Scope.addFinalizer, not Effect.addFinalizer: the latter keeps the caller's FiberRefs.
    return Effect.flatMap(Effect.scope, (scope) =>
      Effect.suspend(() => {
        let running: Set<Fiber.RuntimeFiber<void>> | undefined
        const handler = (socket: Socket.Socket) => {
          const fiber = this.fork(onStream(socket))
          const set = running ?? new Set<Fiber.RuntimeFiber<void>>()
          running = set
          set.add(fiber)
          fiber.addObserver(() => set.delete(fiber))
        }
        this.setStreamHandler(handler)
        return Scope.addFinalizer(
          scope,
          Effect.suspend(() => {
            if (this.onStream === handler) this.onStream = undefined
            return running && running.size > 0 ? Fiber.interruptAll(running) : Effect.void
          })
        )
      })
    )
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
      const run = (reason: CloseReason) => {
        this.fork(f(reason))
      }
      if (this.closedWith !== undefined) run(this.closedWith)
      else this.listenClose(run)
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
