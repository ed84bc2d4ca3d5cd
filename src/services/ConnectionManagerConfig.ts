/**
 * ConnectionManagerConfig: every option of the connection manager with its default (the
 * reference connection manager's), as a service of its own: `layer(options)`,
 * `layerDefaults`, `layerFromConfig(seedNodes)` (the current ConfigProvider) and
 * `layerFromEnv(seedNodes)` (QUICMESH_… environment variables). It is the root of a node's
 * configuration: the transport's and the RPC's shared options follow it (`NodeConfig`).
 */
import { Config, ConfigError, ConfigProvider, Context, Duration, Effect, Either, Layer } from "effect"
import type { Contact } from "./Contact.js"

export interface ConnectionManagerOptions {
  /** Kademlia alpha: queries in flight at once during a lookup. */
  readonly connectionFindConcurrencyLimit: number
  readonly connectionIdleTimeoutTime: Duration.Duration
  readonly connectionConnectTimeoutTime: Duration.Duration
  readonly connectionKeepAliveTimeoutTime: Duration.Duration
  readonly connectionKeepAliveIntervalTime: Duration.Duration
  readonly connectionHolePunchIntervalTime: Duration.Duration
  readonly rpcParserBufferSize: number
  readonly rpcCallTimeoutTime: Duration.Duration
  /** Seed nodes; our own NodeId is filtered out when the manager starts. */
  readonly seedNodes: ReadonlyArray<Contact>
  /** Most connections held at once; past it, idle non-seed connections are pruned (LRU). */
  readonly maxConnections: number
  /**
   * Most inbound handshakes in progress at once: the transport drops further Initials (the
   * client retries) and the manager closes connections past it while setting them up.
   */
  readonly maxInboundPending: number
  /** Hole-punch relay requests accepted per source NodeId per `relayRateWindow`. */
  readonly relayRateLimit: number
  readonly relayRateWindow: Duration.Duration
  /** Buckets not looked up for this long are refreshed (with jitter). */
  readonly bucketRefreshInterval: Duration.Duration
  /**
   * Serve as a relay (`Relay`): other nodes reserve with us and we splice circuits to them,
   * within the `relayMax…` limits.
   */
  readonly relay: boolean
  /** How many relays a node that may be unreachable (`Reachability`: not public, not cone) reserves with. */
  readonly relayReservationsKept: number
  /** Serving as a relay: nodes holding a reservation at once. */
  readonly relayMaxReservations: number
  /** Serving as a relay: circuits open at once. */
  readonly relayMaxCircuits: number
  /** Serving as a relay: a circuit with no byte either way for this long is ended. */
  readonly relayCircuitIdleTimeout: Duration.Duration
  /** Serving as a relay: the byte rate of one circuit, both directions together. */
  readonly relayCircuitBytesPerSecond: number
  /** Serving as a relay: how long a reservation lasts before the node must reserve again. */
  readonly relayReservationDuration: Duration.Duration
  /**
   * Serving as a relay: HOP requests (reservations and circuits, refused or malformed ones
   * included) taken from one node per second; past it the relay answers `rate-limited`.
   */
  readonly relayHopRequestsPerSecond: number
}

export const defaults: ConnectionManagerOptions = {
  connectionFindConcurrencyLimit: 3,
  connectionIdleTimeoutTime: Duration.seconds(60),
  connectionConnectTimeoutTime: Duration.seconds(15),
  connectionKeepAliveTimeoutTime: Duration.seconds(30),
  connectionKeepAliveIntervalTime: Duration.seconds(10),
  connectionHolePunchIntervalTime: Duration.seconds(1),
  rpcParserBufferSize: 64 * 1024,
  rpcCallTimeoutTime: Duration.seconds(15),
  seedNodes: [],
  maxConnections: 1024,
  maxInboundPending: 64,
  relayRateLimit: 10,
  relayRateWindow: Duration.seconds(1),
  bucketRefreshInterval: Duration.hours(1),
  relay: false,
  relayReservationsKept: 2,
  relayMaxReservations: 128,
  relayMaxCircuits: 256,
  relayCircuitIdleTimeout: Duration.seconds(60),
  relayCircuitBytesPerSecond: 1024 * 1024,
  relayReservationDuration: Duration.hours(1),
  relayHopRequestsPerSecond: 10
}

export class ConnectionManagerConfig extends Context.Tag("quicmesh/ConnectionManagerConfig")<
  ConnectionManagerConfig,
  ConnectionManagerOptions
>() {}

export const layer = (options: Partial<ConnectionManagerOptions> = {}) =>
  Layer.succeed(ConnectionManagerConfig, { ...defaults, ...options })

export const layerDefaults = layer()

const durationOr = (name: string, fallback: Duration.Duration) =>
  Config.duration(name).pipe(Config.withDefault(fallback))
const intOr = (name: string, fallback: number) => Config.integer(name).pipe(Config.withDefault(fallback))

const options: Config.Config<Omit<ConnectionManagerOptions, "seedNodes">> = Config.all({
  connectionFindConcurrencyLimit: intOr(
    "connectionFindConcurrencyLimit",
    defaults.connectionFindConcurrencyLimit
  ),
  connectionIdleTimeoutTime: durationOr("connectionIdleTimeoutTime", defaults.connectionIdleTimeoutTime),
  connectionConnectTimeoutTime: durationOr(
    "connectionConnectTimeoutTime",
    defaults.connectionConnectTimeoutTime
  ),
  connectionKeepAliveTimeoutTime: durationOr(
    "connectionKeepAliveTimeoutTime",
    defaults.connectionKeepAliveTimeoutTime
  ),
  connectionKeepAliveIntervalTime: durationOr(
    "connectionKeepAliveIntervalTime",
    defaults.connectionKeepAliveIntervalTime
  ),
  connectionHolePunchIntervalTime: durationOr(
    "connectionHolePunchIntervalTime",
    defaults.connectionHolePunchIntervalTime
  ),
  rpcParserBufferSize: intOr("rpcParserBufferSize", defaults.rpcParserBufferSize),
  rpcCallTimeoutTime: durationOr("rpcCallTimeoutTime", defaults.rpcCallTimeoutTime),
  maxConnections: intOr("maxConnections", defaults.maxConnections),
  maxInboundPending: intOr("maxInboundPending", defaults.maxInboundPending),
  relayRateLimit: intOr("relayRateLimit", defaults.relayRateLimit),
  relayRateWindow: durationOr("relayRateWindow", defaults.relayRateWindow),
  bucketRefreshInterval: durationOr("bucketRefreshInterval", defaults.bucketRefreshInterval),
  relay: Config.boolean("relay").pipe(Config.withDefault(defaults.relay)),
  relayReservationsKept: intOr("relayReservationsKept", defaults.relayReservationsKept),
  relayMaxReservations: intOr("relayMaxReservations", defaults.relayMaxReservations),
  relayMaxCircuits: intOr("relayMaxCircuits", defaults.relayMaxCircuits),
  relayCircuitIdleTimeout: durationOr("relayCircuitIdleTimeout", defaults.relayCircuitIdleTimeout),
  relayCircuitBytesPerSecond: intOr("relayCircuitBytesPerSecond", defaults.relayCircuitBytesPerSecond),
  relayReservationDuration: durationOr("relayReservationDuration", defaults.relayReservationDuration),
  relayHopRequestsPerSecond: intOr("relayHopRequestsPerSecond", defaults.relayHopRequestsPerSecond)
})

/**
 * The options (all but `seedNodes`) from the current ConfigProvider, each under its own name
 * (`connectionIdleTimeoutTime`, …); a missing one takes its default, and a count (concurrency,
 * sizes, limits) below 1 is refused with a message naming it.
 */
export const config: Config.Config<Omit<ConnectionManagerOptions, "seedNodes">> = options.pipe(
  Config.mapOrFail((o) => {
    const bad = Object.entries(o).find(([, v]) => typeof v === "number" && v < 1)
    return bad === undefined
      ? Either.right(o)
      : Either.left(ConfigError.InvalidData([bad[0]], `${bad[1]} must be at least 1`))
  })
)

/**
 * The ConfigProvider of the environment as quicmesh reads it: each option as QUICMESH_ plus
 * its name in CONSTANT_CASE (QUICMESH_CONNECTION_IDLE_TIMEOUT_TIME="60 seconds", …).
 */
export const envProvider = (
  env: Record<string, string | undefined> = process.env
): ConfigProvider.ConfigProvider =>
  ConfigProvider.fromMap(
    new Map(Object.entries(env).filter((kv): kv is [string, string] => kv[1] !== undefined)),
    { pathDelim: "_" }
  ).pipe(ConfigProvider.constantCase, ConfigProvider.nested("QUICMESH"))

/** The options from the current ConfigProvider, with `seedNodes` given by the caller. */
export const fromConfig = (
  seedNodes: ReadonlyArray<Contact> = []
): Effect.Effect<ConnectionManagerOptions, ConfigError.ConfigError> =>
  Effect.map(config, (o) => ({ ...o, seedNodes }))

/** The options from the environment (`envProvider`), with `seedNodes` given by the caller. */
export const fromEnv = (
  seedNodes: ReadonlyArray<Contact> = [],
  env: Record<string, string | undefined> = process.env
): Effect.Effect<ConnectionManagerOptions, ConfigError.ConfigError> =>
  fromConfig(seedNodes).pipe(Effect.withConfigProvider(envProvider(env)))

/** Reads the options from the current ConfigProvider, with `seedNodes` given by the caller. */
export const layerFromConfig = (seedNodes: ReadonlyArray<Contact> = []) =>
  Layer.effect(ConnectionManagerConfig, fromConfig(seedNodes))

/** Reads the options from the environment (`envProvider`), with `seedNodes` given by the caller. */
export const layerFromEnv = (
  seedNodes: ReadonlyArray<Contact> = [],
  env: Record<string, string | undefined> = process.env
) => Layer.effect(ConnectionManagerConfig, fromEnv(seedNodes, env))
