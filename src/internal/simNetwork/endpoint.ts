/**
 * A node's transport in the simulated world: `bind` puts an endpoint on a host (a
 * `QuicTransportService` whose dials, connections over relay circuits (`circuit.ts`) and
 * datagrams are events of the world),
 * and `stopEndpoint` takes it off again, gracefully or by a crash.
 */
import { Deferred, Effect, Exit, type Fiber, Mailbox, Runtime, Scope } from "effect"
import { isPort } from "../../services/Address.js"
import * as NodeId from "../../services/NodeId.js"
import {
  DialError,
  type DialOptions,
  type QuicConnection,
  type QuicTransportService,
  TransportError
} from "../../services/QuicTransport.js"
import type { SimTransportOptions } from "../../services/SimNetwork.js"
import { acceptCircuit, dialCircuit } from "./circuit.js"
import { localReason, type SimConnection } from "./connection.js"
import { cancelDial, failDial, type PendingDial, startDial } from "./dial.js"
import { type HostState, isSimHostAddress } from "./hosts.js"
import * as Packets from "./packets.js"
import { millis } from "./scheduler.js"
import type { World } from "./world.js"

/** A bound transport: one node's place in the world. */
export interface Endpoint {
  readonly host: HostState
  readonly port: number
  readonly label: string
  readonly nodeId: NodeId.NodeId
  readonly nodeKey: string
  /** Starts the fibers of its connections' events (streams, closes): the transport's runtime. */
  readonly fork: (effect: Effect.Effect<void>) => Fiber.RuntimeFiber<void>
  readonly connectMs: number
  readonly idleMs: number
  stopped: boolean
  readonly incoming: Mailbox.Mailbox<QuicConnection>
  readonly failure: Deferred.Deferred<never, TransportError>
  readonly ends: Set<SimConnection>
  readonly pending: Set<PendingDial>
  nextConnection: number
}

/** Stops an endpoint: gracefully (its scope closed) or by a crash. */
export const stopEndpoint = (world: World, ep: Endpoint, crashed: boolean) => {
  if (ep.stopped) return
  ep.stopped = true
  world.endpointCount--
  if (ep.host.bindings.get(ep.port) === ep) ep.host.bindings.delete(ep.port)
  world.log.add(crashed ? "crash" : "unbind", ep.label, "")
  for (const end of [...ep.ends])
    world.closeConnection(
      end,
      crashed ? { _tag: "Error", detail: "crashed" } : localReason("transport stopped"),
      crashed ? "idle" : "peer"
    )
  for (const p of [...ep.pending]) failDial(world, p, "stopped", "the transport stopped")
  ep.incoming.unsafeDone(Exit.void)
  if (crashed)
    Deferred.unsafeDone(
      ep.failure,
      Exit.fail(new TransportError({ reason: "stopped", detail: `${ep.label} crashed (simulated)` }))
    )
}

/** Binds an endpoint for `nodeId`; it stops when the scope closes. */
export const bind = (
  world: World,
  options: SimTransportOptions,
  nodeId: NodeId.NodeId
): Effect.Effect<QuicTransportService, TransportError, Scope.Scope> =>
  Effect.gen(function* () {
    if (options.host !== undefined && !isSimHostAddress(options.host))
      return yield* new TransportError({ reason: "bind", detail: `not an IPv4 address: ${options.host}` })
    if (options.port !== undefined && options.port !== 0 && !isPort(options.port))
      return yield* new TransportError({ reason: "bind", detail: `not a port: ${options.port}` })
    const fork = Runtime.runFork(yield* Effect.runtime<never>())
    const incoming = yield* Mailbox.make<QuicConnection>()
    const failure = yield* Deferred.make<never, TransportError>()
    const bound = yield* Effect.suspend(() => {
      const host = world.hosts.add(options.nat ?? "none", options.host)
      if (options.host !== undefined && host.host !== options.host)
        return Effect.fail(
          new TransportError({ reason: "bind", detail: `${options.host} is a NAT's external address` })
        )
      let port = options.port ?? 0
      if (port === 0) {
        while (host.bindings.has(host.nextPort)) host.nextPort++
        port = host.nextPort++
      }
      if (host.bindings.has(port))
        return Effect.fail(new TransportError({ reason: "bind", detail: `${host.host}:${port} is in use` }))
      const ep: Endpoint = {
        host,
        port,
        label: `${host.host}:${port}`,
        nodeId,
        nodeKey: NodeId.encode(nodeId),
        fork: (effect) => fork(effect),
        connectMs: options.connectTimeout === undefined ? 15_000 : millis(options.connectTimeout),
        idleMs: options.maxIdleTimeout === undefined ? 30_000 : millis(options.maxIdleTimeout),
        stopped: false,
        incoming,
        failure,
        ends: new Set(),
        pending: new Set(),
        nextConnection: 0
      }
      host.bindings.set(port, ep)
      world.endpointCount++
      world.log.add("bind", ep.label, host.publicHost, ep.nodeKey)
      return Effect.succeed(ep)
    })
    const ep = bound
    yield* Effect.addFinalizer(() => Effect.sync(() => stopEndpoint(world, ep, false)))

    const dialError = (options: DialOptions, reason: DialError["reason"], detail: string) =>
      new DialError({ host: options.host, port: options.port, reason, detail })

    const dial = (options: DialOptions): Effect.Effect<QuicConnection, DialError, Scope.Scope> =>
      Effect.suspend(() => {
        if (ep.stopped) return Effect.fail(dialError(options, "stopped", "the transport is stopped"))
        if (!isSimHostAddress(options.host) || !isPort(options.port))
          return Effect.fail(dialError(options, "invalid-address", "not an IPv4 address and port"))
        const timeoutMs = options.timeout === undefined ? ep.connectMs : millis(options.timeout)
        return Effect.flatMap(Effect.scope, (scope) => {
          const pending: PendingDial = {
            ep,
            host: options.host,
            port: options.port,
            expected: options.expectedNodeIds,
            resume: undefined,
            done: false,
            end: undefined
          }
          // The handshake and its timeout are events of the world's scheduler (on the same
          // Clock), which resume this fiber: no sleep, no racing fiber and no Deferred per dial.
          const handshake = Effect.async<SimConnection, DialError>((resume) => {
            pending.resume = resume
            startDial(world, pending, timeoutMs)
            const slow = options.whenSlow
            if (slow !== undefined)
              world.scheduler.schedule(millis(slow.after), () => {
                if (!pending.done) slow.run()
              })
          })
          // Whatever stops the dial short (interruption, even just after it succeeded) leaves
          // nothing of it. The close finalizer holds only the connection: not the dial, nor
          // this fiber's FiberRefs (as `Effect.addFinalizer` would).
          return Effect.uninterruptibleMask((restore) =>
            restore(handshake).pipe(
              Effect.onError(() => Effect.sync(() => cancelDial(world, pending))),
              Effect.tap((connection) => Scope.addFinalizer(scope, connection.close("released")))
            )
          )
        })
      })

    const sendDatagram = (
      host: string,
      port: number,
      data: Uint8Array
    ): Effect.Effect<void, TransportError> =>
      Effect.suspend(() => {
        if (ep.stopped)
          return Effect.fail(new TransportError({ reason: "stopped", detail: "the transport is stopped" }))
        if (!isSimHostAddress(host) || !isPort(port))
          return Effect.fail(
            new TransportError({ reason: "send", detail: `not an address: ${host}:${port}` })
          )
        Packets.sendDatagram(world, ep, host, port, data.length)
        return Effect.void
      })

    const service: QuicTransportService = {
      host: ep.host.host,
      port: ep.port,
      dial,
      dialCircuit: dialCircuit(world, ep),
      acceptCircuit: acceptCircuit(world, ep),
      incoming: Mailbox.toStream(incoming),
      sendDatagram,
      failure: Deferred.await(failure)
    }
    return service
  })
