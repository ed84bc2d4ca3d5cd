/**
 * A whole node from its parts, over any transport. `layerWith` takes each part as a layer: a
 * KeyRing, a NodeGraph, a QuicTransport (QuicTransportLive from "quicmesh/node", or a simulated
 * one from "quicmesh/testing"), a Dns and the manager's options, whose shared options the
 * transport and the RPC follow (`NodeConfig`); it provides the ConnectionManager with every
 * service it stands on, and the node's `Protocols` registry (the application protocols its
 * connections serve: `handle` one there), and its `ConnectionGater` (no rules unless given; the
 * transport and the manager enforce it). `make` is the same node from services already made, with no layer
 * graph: for programs that build nodes by the thousand (the simulation). `NodeLive.layer` is
 * `layerWith` on real QUIC.
 */
import { Context, Effect, Layer, type Scope } from "effect"
import * as ConnectionGater from "../services/ConnectionGater.js"
import type {
  ConnectionManager,
  ConnectionManagerDiagnostics,
  ConnectionManagerService
} from "../services/ConnectionManager.js"
import {
  ConnectionManagerConfig,
  type ConnectionManagerOptions
} from "../services/ConnectionManagerConfig.js"
import { Dns, type DnsService } from "../services/Dns.js"
import { KeyRing, type KeyRingService } from "../services/KeyRing.js"
import * as NodeConfig from "../services/NodeConfig.js"
import { NodeGraph, type NodeGraphService } from "../services/NodeGraph.js"
import { PeerRpc, type PeerRpcService } from "../services/PeerRpc.js"
import type { PortMapper } from "../services/PortMapper.js"
import * as Protocols from "../services/Protocols.js"
import {
  QuicTransport,
  type QuicTransportConfig,
  type QuicTransportService
} from "../services/QuicTransport.js"
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
  | Protocols.Protocols
  | ConnectionGater.ConnectionGater

/** The manager over `transport` (QuicTransportLive or a simulated one), every part a layer. */
export const layerWith = <
  E1,
  E2,
  E3,
  R3,
  E4 = never,
  E5 = never,
  E6 = never,
  P extends PortMapper = never
>(parts: {
  readonly keyRing: Layer.Layer<KeyRing, E1>
  readonly nodeGraph: Layer.Layer<NodeGraph, E2, KeyRing>
  readonly transport: Layer.Layer<QuicTransport, E3, R3 | KeyRing | QuicTransportConfig>
  /** The manager's options (`ConnectionManagerConfig.layer(…)`, `layerFromEnv(…)`, …). */
  readonly config: Layer.Layer<ConnectionManagerConfig, E4>
  /** The transport's and the RPC's own options (host, port, …), over what they derive. */
  readonly options?: NodeConfig.SectionOverrides
  /** How hostnames given to dial resolve: `DnsNode.layer` ("quicmesh/node") or `Dns.layerStatic`. */
  readonly dns: Layer.Layer<Dns>
  /** The agent RPC stack; PeerRpcLive by default (tests wrap it to observe calls). */
  readonly peerRpc?: Layer.Layer<PeerRpc | RpcServer, never, RpcConfig>
  /** The application protocols served on every connection; an empty registry by default. */
  readonly protocols?: Layer.Layer<Protocols.Protocols, E5>
  /** Which nodes may connect and be dialled (`ConnectionGater`); no rules by default. */
  readonly gater?: Layer.Layer<ConnectionGater.ConnectionGater, E6>
  /**
   * The gateway's port mapping of the node's port (`PortMapperLive.layer(…)`), provided to the
   * manager and beside it: its reachability checks the mapped address with a dial-back like a
   * confirmed one. None by default.
   */
  readonly portMapper?: Layer.Layer<P, never, QuicTransport>
}): Layer.Layer<
  NodeServices | NodeConfig.Services | P,
  E1 | E2 | E3 | E4 | E5 | E6,
  Exclude<Exclude<R3, KeyRing | Protocols.Protocols | ConnectionGater.ConnectionGater>, NodeConfig.Services>
> =>
  ConnectionManagerLive.layer.pipe(
    // No PortMapper in the context unless given (P is never then).
    Layer.provideMerge(parts.portMapper ?? (Layer.empty as unknown as Layer.Layer<P, never, QuicTransport>)),
    Layer.provideMerge(
      Layer.mergeAll(parts.transport, parts.nodeGraph, parts.dns, parts.peerRpc ?? PeerRpcLive.layer)
    ),
    Layer.provideMerge(
      Layer.mergeAll(
        parts.keyRing,
        parts.protocols ?? Protocols.layer,
        parts.gater ?? ConnectionGater.layerAllowAll
      )
    ),
    Layer.provideMerge(NodeConfig.layerFrom(parts.config, parts.options))
  )

/** The services a node's manager stands on, already made. */
export interface Parts {
  readonly config: ConnectionManagerOptions
  readonly keyRing: KeyRingService
  readonly nodeGraph: NodeGraphService
  readonly transport: QuicTransportService
  readonly peerRpc: PeerRpcService
  readonly dns: DnsService
  /**
   * The registry of application protocols that `peerRpc` serves with (given to it when it was
   * made: `PeerRpcSim.make`'s, or the `Protocols` in PeerRpcLive's layer); returned beside the
   * manager so the node's owner can `handle` protocols.
   */
  readonly protocols?: Protocols.ProtocolsService
  /** The node's connection gate; no rules unless given (give the transport the same one). */
  readonly gater?: ConnectionGater.ConnectionGaterService
}

/** The manager and its diagnostics over `parts`, running in the current scope. */
export const make = (
  parts: Parts
): Effect.Effect<
  {
    readonly manager: ConnectionManagerService
    readonly diagnostics: ConnectionManagerDiagnostics["Type"]
    readonly protocols: Protocols.ProtocolsService | undefined
  },
  never,
  Scope.Scope
> =>
  Effect.map(
    Effect.provide(
      ConnectionManagerLive.makeWithDiagnostics,
      Context.make(ConnectionManagerConfig, parts.config).pipe(
        Context.add(KeyRing, parts.keyRing),
        Context.add(NodeGraph, parts.nodeGraph),
        Context.add(QuicTransport, parts.transport),
        Context.add(PeerRpc, parts.peerRpc),
        Context.add(Dns, parts.dns),
        Context.add(ConnectionGater.ConnectionGater, parts.gater ?? ConnectionGater.unsafeMake()),
        // The relay protocols are served from the same registry (`Relay`).
        (context) => (parts.protocols ? Context.add(context, Protocols.Protocols, parts.protocols) : context)
      )
    ),
    (made) => ({ ...made, protocols: parts.protocols })
  )
