/**
 * NodeConfig: a node's configuration as one tree. The manager's options
 * (`ConnectionManagerConfig`, the reference's names and defaults) are its root; the transport's
 * and the RPC's sections take the options they share with it from there:
 *
 * - transport: keep-alive interval and idle timeout (`connectionKeepAlive*Time`), connect
 *   timeout (`connectionConnectTimeoutTime`) and the inbound handshake cap (`maxInboundPending`);
 * - RPC: the largest message (`rpcParserBufferSize`) and the call timeout (`rpcCallTimeoutTime`).
 *
 * Anything else in a section (host, port, stream mode, …) is its own, with its own default,
 * and a section's overrides win over what it derives.
 */
import { Context, Effect, Layer } from "effect"
import {
  ConnectionManagerConfig,
  type ConnectionManagerOptions,
  defaults as managerDefaults
} from "./ConnectionManagerConfig.js"
import { QuicTransportConfig, type QuicTransportOptions } from "./QuicTransport.js"
import { RpcConfig, type RpcOptions } from "./RpcServer.js"

export interface NodeOptions {
  readonly manager: ConnectionManagerOptions
  readonly transport: QuicTransportOptions
  readonly rpc: RpcOptions
}

/** What a section may set beyond what it derives from the manager's options. */
export interface SectionOverrides {
  readonly transport?: Partial<QuicTransportOptions>
  readonly rpc?: Partial<RpcOptions>
}

/** A section's options: its own defaults, then what it shares with the manager, then overrides. */
const section =
  <A>(defaults: A, shared: (manager: ConnectionManagerOptions) => Partial<A>) =>
  (manager: ConnectionManagerOptions, overrides: Partial<A> = {}): A => ({
    ...defaults,
    ...shared(manager),
    ...overrides
  })

/** The transport's options over the manager's `manager`. */
export const transportOptions = section(QuicTransportConfig.defaults, (manager) => ({
  keepAliveInterval: manager.connectionKeepAliveIntervalTime,
  maxIdleTimeout: manager.connectionKeepAliveTimeoutTime,
  connectTimeout: manager.connectionConnectTimeoutTime,
  // One cap for inbound handshakes: at the transport (Initials refused) and in the manager.
  maxInboundHandshakes: manager.maxInboundPending
}))

/** The RPC's options over the manager's `manager`. */
export const rpcOptions = section(RpcConfig.defaults, (manager) => ({
  rpcParserBufferSize: manager.rpcParserBufferSize,
  rpcCallTimeoutTime: manager.rpcCallTimeoutTime
}))

/** The whole tree from complete manager options and section overrides. */
export const fromManager = (
  manager: ConnectionManagerOptions,
  overrides: SectionOverrides = {}
): NodeOptions => ({
  manager,
  transport: transportOptions(manager, overrides.transport),
  rpc: rpcOptions(manager, overrides.rpc)
})

/** The whole tree from the manager's options (defaults for any not given) and section overrides. */
export const make = (
  manager: Partial<ConnectionManagerOptions> = {},
  overrides: SectionOverrides = {}
): NodeOptions => fromManager({ ...managerDefaults, ...manager }, overrides)

/** The three config services of one tree. */
export const context = (
  options: NodeOptions
): Context.Context<ConnectionManagerConfig | QuicTransportConfig | RpcConfig> =>
  Context.make(ConnectionManagerConfig, options.manager).pipe(
    Context.add(QuicTransportConfig, options.transport),
    Context.add(RpcConfig, options.rpc)
  )

export type Services = ConnectionManagerConfig | QuicTransportConfig | RpcConfig

/** The tree as its three config services. */
export const layer = (
  manager: Partial<ConnectionManagerOptions> = {},
  overrides: SectionOverrides = {}
): Layer.Layer<Services> => Layer.succeedContext(context(make(manager, overrides)))

/**
 * The tree over a `ConnectionManagerConfig` layer (given options, `layerFromEnv`, …): the
 * transport and RPC sections follow whatever options it provides.
 */
export const layerFrom = <E, R>(
  manager: Layer.Layer<ConnectionManagerConfig, E, R>,
  overrides: SectionOverrides = {}
): Layer.Layer<Services, E, R> =>
  Layer.effectContext(
    Effect.map(ConnectionManagerConfig, (root) => context(fromManager(root, overrides)))
  ).pipe(Layer.provide(manager))
