/**
 * Connections other nodes open to us, and the transport's failure. Each accepted connection is
 * set up in a background fiber of its own (at most `maxInboundPending` at once), enters the map
 * if the connection gate lets it and there is room, and puts its node in the graph. When the
 * transport fails, the manager stops: every connection goes and `failure` fails.
 */
import { Deferred, Effect, Either, Exit, FiberSet, PubSub, Scope, Stream } from "effect"
import { ConnectionManagerStopped } from "../../services/ConnectionManager.js"
import type { QuicConnection, QuicTransportService } from "../../services/QuicTransport.js"
import { type Gating, gatedReason } from "./gating.js"
import type { GraphUpkeep } from "./graphUpkeep.js"
import type { Records } from "./records.js"
import type { ManagerState } from "./state.js"

export interface Inbound {
  /** Starts accepting the transport's incoming connections, in a fiber of the manager's scope. */
  readonly serveIncoming: Effect.Effect<unknown, never, Scope.Scope>
  /** Starts watching the transport: its failure stops the manager. */
  readonly stopOnTransportFailure: Effect.Effect<unknown, never, Scope.Scope>
  /** Inbound connections being set up now. */
  readonly inProgress: () => number
}

export const make = (
  state: ManagerState,
  deps: {
    readonly transport: QuicTransportService
    readonly records: Records
    readonly addToGraph: GraphUpkeep["addToGraph"]
    readonly gating: Gating
    /** True while we punch toward host:port: a connection from there is a punched one. */
    readonly isPunching?: (host: string, port: number) => boolean
  }
): Inbound => {
  const { config, map, background } = state
  const { transport, addToGraph } = deps
  const { setupRecord, ensureCapacity } = deps.records
  let inboundInProgress = 0

  const acceptInbound = (connection: QuicConnection): Effect.Effect<void> =>
    Effect.suspend(() => {
      if (deps.gating.connectionRefusal(connection) !== undefined) return connection.close(gatedReason)
      if (inboundInProgress >= config.maxInboundPending)
        return connection.close("too many inbound handshakes")
      inboundInProgress++
      return Effect.gen(function* () {
        const room = yield* ensureCapacity(connection.remoteNodeId).pipe(Effect.either)
        if (Either.isLeft(room) && !map.get(connection.remoteNodeId)) {
          yield* connection.close("connection limit reached")
          return
        }
        const scope = yield* Scope.make()
        const punched = deps.isPunching?.(connection.remoteHost, connection.remotePort) === true
        const record = yield* setupRecord(connection, scope, undefined, punched ? "punched" : "direct").pipe(
          Scope.extend(scope),
          Effect.onError(() => Scope.close(scope, Exit.void))
        )
        const entry = yield* map.adopt(record)
        // A dial of ours to the node that signalled it ends with this connection (it dialled back).
        const dial = state.pending.get(entry.key)
        if (dial?.arrived !== undefined) yield* Deferred.succeed(dial.arrived, entry)
        // A relayed peer's address is where the relay sees it, not where we could reach it.
        if (connection.relay === undefined)
          yield* addToGraph(connection.remoteNodeId, connection.remoteHost, connection.remotePort)
      }).pipe(
        // Nobody waits on an inbound set-up: a connection that closed meanwhile is only logged.
        Effect.catchAllCause((cause) => Effect.logDebug("inbound connection setup failed", cause)),
        Effect.ensuring(Effect.sync(() => inboundInProgress--))
      )
    })

  const serveIncoming = transport.incoming.pipe(
    Stream.runForEach((connection) =>
      FiberSet.run(background, Effect.interruptible(acceptInbound(connection)))
    ),
    Effect.forkScoped
  )

  const stopOnTransportFailure = transport.failure.pipe(
    Effect.catchAll((error) =>
      Effect.gen(function* () {
        const stop = new ConnectionManagerStopped({ detail: error.message, cause: error })
        yield* Effect.logError(`connection manager stopping: ${error.message}`)
        yield* PubSub.publish(state.events, { _tag: "ManagerError", error: stop })
        yield* map.removeAll("transport failed")
        yield* Deferred.fail(state.stopped, stop)
      })
    ),
    Effect.forkScoped
  )

  return { serveIncoming, stopOnTransportFailure, inProgress: () => inboundInProgress }
}
