/**
 * The simulated network's layers: `layer` builds a world (`SimNetwork`), `transport` binds
 * one node's `QuicTransport` in it.
 *
 * The world's machinery is in `src/internal/simNetwork/`: `scheduler.ts` (the discrete-event
 * clock), `world.ts` (hosts, links and connections), `hosts.ts`, `links.ts` (latency, loss,
 * partitions), `nat.ts` and `packets.ts`, `dial.ts` (handshakes), `connection.ts` and
 * `streams.ts`, `circuit.ts` and `circuitWire.ts` (connections over relay circuits),
 * `endpoint.ts` (a node's transport), `trace.ts` and `prng.ts`.
 */
import { Effect, FiberSet, Layer, type Scope } from "effect"
import { SimConnection } from "../internal/simNetwork/connection.js"
import { bind, stopEndpoint } from "../internal/simNetwork/endpoint.js"
import type { HostState } from "../internal/simNetwork/hosts.js"
import { seedOf } from "../internal/simNetwork/prng.js"
import { hasTimers } from "../internal/simNetwork/scheduler.js"
import { World } from "../internal/simNetwork/world.js"
import { KeyRing } from "../services/KeyRing.js"
import { QuicTransport, type TransportError } from "../services/QuicTransport.js"
import {
  SimNetwork,
  type SimNetworkOptions,
  type SimNetworkService,
  type SimTransportOptions
} from "../services/SimNetwork.js"

export { makePrng, type Prng, seedOf } from "../internal/simNetwork/prng.js"
export { hasTimers, type TimerClock } from "../internal/simNetwork/scheduler.js"

/** Builds a world; its scheduler stops with the scope. */
export const make = (options: SimNetworkOptions): Effect.Effect<SimNetworkService, never, Scope.Scope> =>
  Effect.gen(function* () {
    const clock = yield* Effect.clock
    const timers = yield* FiberSet.make<unknown, unknown>()
    const runFork = yield* FiberSet.runtime(timers)<never>()
    const seed = seedOf(options.seed)
    const world = new World(
      seed,
      clock,
      runFork,
      hasTimers(clock) ? clock : undefined,
      options,
      options.traceLimit ?? 100_000
    )
    const halt = Effect.sync(() => {
      world.scheduler.closed = true
    })
    yield* Effect.addFinalizer(() => halt)

    const resolve = (address: string) => world.hosts.addresses.get(address)
    const resolveOrAdd = (address: string) => resolve(address) ?? world.hosts.add("none", address)
    const hostSet = (addresses: Iterable<string>) => {
      const set = new Set<HostState>()
      for (const address of addresses) set.add(resolveOrAdd(address))
      return set
    }

    const service: SimNetworkService = {
      seed,
      halt,
      addHost: (hostOptions) =>
        Effect.sync(() => world.hosts.info(world.hosts.add(hostOptions?.nat ?? "none", hostOptions?.host))),
      hostInfo: (address) =>
        Effect.sync(() => {
          const state = resolve(address)
          return state === undefined ? undefined : world.hosts.info(state)
        }),
      setDefaults: (link) => Effect.sync(() => world.links.setDefaults(link)),
      setLink: (a, b, link) => Effect.sync(() => world.links.setLink(resolveOrAdd(a), resolveOrAdd(b), link)),
      partition: (a, b) => Effect.sync(() => world.partition(hostSet(a), hostSet(b))),
      heal: (id) => Effect.sync(() => world.heal(id)),
      crash: (address, port) =>
        Effect.sync(() => {
          const state = resolve(address)
          if (state === undefined) return
          for (const ep of [...state.bindings.values()])
            if (port === undefined || ep.port === port) stopEndpoint(world, ep, true)
        }),
      isBound: (address, port) =>
        Effect.sync(() => {
          const state = resolve(address)
          return state !== undefined && state.host === address && state.bindings.has(port)
        }),
      bind: (transportOptions, nodeId) => bind(world, transportOptions, nodeId),
      channel: (connection) =>
        connection instanceof SimConnection && connection.world === world ? connection : undefined,
      schedule: (ms, run) => world.scheduler.schedule(Math.max(0, ms), run),
      trace: Effect.sync(() => world.log.events.slice()),
      traceHash: Effect.sync(() => world.log.digest()),
      stats: Effect.sync(() => world.stats())
    }
    return service
  })

/** The world: `SimNetwork.layer({ seed })`. */
export const layer = (options: SimNetworkOptions): Layer.Layer<SimNetwork> =>
  Layer.scoped(SimNetwork, make(options))

/** One node's transport in the world, identified by its KeyRing's NodeId. */
export const transport = (
  options: SimTransportOptions = {}
): Layer.Layer<QuicTransport, TransportError, SimNetwork | KeyRing> =>
  Layer.scoped(
    QuicTransport,
    Effect.gen(function* () {
      const sim = yield* SimNetwork
      const keyRing = yield* KeyRing
      const nodeId = yield* keyRing.nodeId
      return yield* sim.bind(options, nodeId)
    })
  )
