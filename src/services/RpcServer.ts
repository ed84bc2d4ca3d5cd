/**
 * RpcServer: serves the agent RPC (`AgentRpcs`) on the streams a peer opens on a QUIC
 * connection; `RpcConfig` holds the limits shared by server and client.
 *
 * Wire format (see `src/internal/rpcWire.ts`): each message is a 4-byte big-endian length
 * followed by that many bytes of MessagePack, carrying `@effect/rpc`'s encoded messages.
 * The server accepts any number of calls on any stream, so both client modes work:
 * `multiplexed` (the default: one stream per client carrying every call) and `per-call`
 * (a new QUIC stream per call). Opening a stream costs more than a call on an open one, so
 * multiplexed is the default; bench/rpc.ts compares both with a raw js-quic echo (figures
 * in bench/results/latest.md).
 */
import type { Socket } from "@effect/platform"
import { Context, type Duration, type Effect, Layer, type Scope, type Stream } from "effect"
import type {
  HolePunchRefused,
  NodesClosestLocalNodesGet,
  NodesDialBack,
  NodesDialBackProof,
  NodesDialBackRequest,
  NodesHolePunchSignal,
  NodesIdentify,
  NodesPing,
  RpcHandlerError,
  RpcWireError
} from "./AgentRpc.js"
import { defaults as managerDefaults } from "./ConnectionManagerConfig.js"
import type { WireContact } from "./Contact.js"
import type { QuicConnection } from "./QuicTransport.js"

export type RpcStreamMode = "per-call" | "multiplexed"

export interface RpcOptions {
  /** Largest message (encoded bytes) accepted or sent; larger fails the call and closes that stream. */
  readonly rpcParserBufferSize: number
  /** A handler running longer is interrupted; a caller waiting longer gets `RpcTimeoutError`. */
  readonly rpcCallTimeoutTime: Duration.Duration
  /** How a client carries its calls (default `multiplexed`). The server serves both. */
  readonly rpcStreamMode: RpcStreamMode
}

export class RpcConfig extends Context.Tag("quicmesh/RpcConfig")<RpcConfig, RpcOptions>() {
  static readonly defaults: RpcOptions = {
    // The options a node shares with its manager take the manager's defaults (NodeConfig).
    rpcParserBufferSize: managerDefaults.rpcParserBufferSize,
    rpcCallTimeoutTime: managerDefaults.rpcCallTimeoutTime,
    rpcStreamMode: "multiplexed"
  }
  static readonly layer = (options: Partial<RpcOptions> = {}): Layer.Layer<RpcConfig> =>
    Layer.succeed(RpcConfig, { ...RpcConfig.defaults, ...options })
  static readonly layerDefaults: Layer.Layer<RpcConfig> = Layer.succeed(RpcConfig, RpcConfig.defaults)
}

/** Every way a call can fail besides its own typed errors. */
export type AgentCallError = RpcWireError

/**
 * Typed calls on one connection. Every call is bounded by `rpcCallTimeoutTime` (then fails
 * with `RpcTimeoutError`); a broken stream or connection fails with `RpcStreamError`.
 */
export interface AgentClient {
  readonly nodesIdentify: (
    payload: typeof NodesIdentify.payloadSchema.Type
  ) => Effect.Effect<typeof NodesIdentify.successSchema.Type, AgentCallError>
  readonly nodesDialBackRequest: (
    payload: typeof NodesDialBackRequest.payloadSchema.Type
  ) => Effect.Effect<void, RpcHandlerError | AgentCallError>
  readonly nodesDialBack: (
    payload: typeof NodesDialBack.payloadSchema.Type
  ) => Effect.Effect<void, RpcHandlerError | AgentCallError>
  readonly nodesDialBackProof: (
    payload: typeof NodesDialBackProof.payloadSchema.Type
  ) => Effect.Effect<void, AgentCallError>
  readonly nodesPing: (
    payload: typeof NodesPing.payloadSchema.Type
  ) => Effect.Effect<typeof NodesPing.successSchema.Type, AgentCallError>
  /** At most `NODES_CLOSEST_LIMIT` contacts, never the caller itself. */
  readonly nodesClosestLocalNodesGet: (
    payload: typeof NodesClosestLocalNodesGet.payloadSchema.Type
  ) => Stream.Stream<WireContact, AgentCallError>
  readonly nodesHolePunchSignal: (
    payload: typeof NodesHolePunchSignal.payloadSchema.Type
  ) => Effect.Effect<void, HolePunchRefused | AgentCallError>
}

export interface RpcServerService {
  /**
   * Serves the agent RPC on every stream the peer opens on `connection`, each in a fiber of
   * its own started when the stream arrives; returns at once. Serving lasts until the
   * connection or the scope closes (the scope's close interrupts calls in progress).
   * Handlers see the peer as `Caller`, and the services of `context` (empty by default): what
   * the calls of this connection, and no other, are answered with. `polykey`, when given,
   * serves the streams that carry Polykey's agent RPC (JSON-RPC) on the same connection.
   */
  readonly serve: (
    connection: QuicConnection,
    context?: Context.Context<never>,
    polykey?: (socket: Socket.Socket) => Effect.Effect<void>
  ) => Effect.Effect<void, never, Scope.Scope>
  /** A client for calls to the peer of `connection`, with this server's limits. */
  readonly makeClient: (connection: QuicConnection) => Effect.Effect<AgentClient, never, Scope.Scope>
}

export class RpcServer extends Context.Tag("quicmesh/RpcServer")<RpcServer, RpcServerService>() {}
