/**
 * A whole node from its parts, over any transport: give it a KeyRing layer, a NodeGraph layer,
 * a QuicTransport layer (QuicTransportLive from "quicmesh/node", or a simulated one from
 * "quicmesh/testing") with its options, a Dns layer and the manager's options; get the
 * ConnectionManager with every service it stands on (KeyRing, NodeGraph, QuicTransport,
 * RpcServer, PeerRpc, Dns). `NodeLive.layer` is this composition on real QUIC.
 */
import { Effect, Layer } from "effect"
import type { ConnectionManager, ConnectionManagerDiagnostics } from "../services/ConnectionManager.js"
import { ConnectionManagerConfig } from "../services/ConnectionManagerConfig.js"
import type { Dns } from "../services/Dns.js"
import type { KeyRing } from "../services/KeyRing.js"
import type { NodeGraph } from "../services/NodeGraph.js"
import type { PeerRpc } from "../services/PeerRpc.js"
import { type QuicTransport, QuicTransportConfig } from "../services/QuicTransport.js"
import type { RpcConfig, RpcServer } from "../services/RpcServer.js"
import * as ConnectionManagerLive from "./ConnectionManagerLive.js"
import * as PeerRpcLive from "./PeerRpcLive.js"

export type NodeServices =
  | ConnectionManager
  | ConnectionManagerDiagnostics
  | KeyRing
  | NodeGraph
  | QuicTransport
  | RpcServer
  | PeerRpc
  | Dns

/**
 * The manager over `transport` (QuicTransportLive or a simulated one). The transport's
 * keep-alive follows the manager's options.
 */
export const layerWith = <E1, E2, E3, R3>(parts: {
  readonly keyRing: Layer.Layer<KeyRing, E1>
  readonly nodeGraph: Layer.Layer<NodeGraph, E2, KeyRing>
  readonly transport: Layer.Layer<QuicTransport, E3, R3 | KeyRing | QuicTransportConfig>
  readonly transportConfig: Layer.Layer<QuicTransportConfig, never, ConnectionManagerConfig>
  readonly config: Layer.Layer<ConnectionManagerConfig>
  /** How hostnames given to dial resolve: `DnsNode.layer` ("quicmesh/node") or `Dns.layerStatic`. */
  readonly dns: Layer.Layer<Dns>
  /** The agent RPC stack; PeerRpcLive by default (tests wrap it to observe calls). */
  readonly peerRpc?: Layer.Layer<PeerRpc | RpcServer, never, RpcConfig>
}): Layer.Layer<
  NodeServices | ConnectionManagerConfig,
  E1 | E2 | E3,
  Exclude<Exclude<Exclude<R3, QuicTransportConfig>, KeyRing>, ConnectionManagerConfig>
> =>
  ConnectionManagerLive.layer.pipe(
    Layer.provideMerge(
      Layer.mergeAll(
        parts.transport.pipe(Layer.provide(parts.transportConfig)),
        parts.nodeGraph,
        parts.dns,
        (parts.peerRpc ?? PeerRpcLive.layer).pipe(Layer.provide(PeerRpcLive.rpcConfigFromManager))
      )
    ),
    Layer.provideMerge(parts.keyRing),
    Layer.provideMerge(parts.config)
  )

/** Transport options: keep-alive and connect timeout follow the manager's options, then `overrides`. */
export const transportConfigFor = (
  overrides: Partial<typeof QuicTransportConfig.defaults>
): Layer.Layer<QuicTransportConfig, never, ConnectionManagerConfig> =>
  Layer.effect(
    QuicTransportConfig,
    Effect.map(ConnectionManagerConfig, (c) => ({
      ...QuicTransportConfig.defaults,
      keepAliveInterval: c.connectionKeepAliveIntervalTime,
      maxIdleTimeout: c.connectionKeepAliveTimeoutTime,
      connectTimeout: c.connectionConnectTimeoutTime,
      // One cap for inbound handshakes: at the transport (Initials dropped) and in the manager.
      maxInboundHandshakes: c.maxInboundPending,
      ...overrides
    }))
  )
