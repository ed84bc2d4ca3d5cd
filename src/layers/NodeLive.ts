/**
 * A whole node on real QUIC: `Node.layerWith` with QuicTransportLive (`@matrixai/quic`) as
 * the transport and the system resolver (DnsNode) for hostnames. Give it a KeyRing layer
 * (KeyRingLive), a NodeGraph layer (NodeGraphLmdb or NodeGraphMemory), the transport's options
 * (host, port, …; keep-alive and connect timeout follow the manager's options unless given)
 * and the manager's options; optionally the application protocols it serves (`Protocols`) and its
 * connection gate (`ConnectionGater`: `ConnectionGater.layer(rules)`, `ConnectionGaterFile.layer`)
 * and its gateway's port mapping (`PortMapperLive.layer(options)`).
 */
import type { Layer } from "effect"
import type { ConnectionGater } from "../services/ConnectionGater.js"
import type { ConnectionManagerConfig } from "../services/ConnectionManagerConfig.js"
import type { Dns } from "../services/Dns.js"
import type { KeyRing } from "../services/KeyRing.js"
import type { NodeGraph } from "../services/NodeGraph.js"
import type { PortMapper } from "../services/PortMapper.js"
import type { Protocols } from "../services/Protocols.js"
import type { QuicTransport, QuicTransportOptions } from "../services/QuicTransport.js"
import * as DnsNode from "./DnsNode.js"
import * as Node from "./Node.js"
import * as QuicTransportLive from "./QuicTransportLive.js"

export const layer = <E1, E2, E5 = never, E6 = never, P extends PortMapper = never>(parts: {
  readonly keyRing: Layer.Layer<KeyRing, E1>
  readonly nodeGraph: Layer.Layer<NodeGraph, E2, KeyRing>
  readonly transport?: Partial<QuicTransportOptions>
  readonly config: Layer.Layer<ConnectionManagerConfig>
  /** The system resolver (`DnsNode.layer`) unless given. */
  readonly dns?: Layer.Layer<Dns>
  /** The application protocols served on every connection (an empty registry unless given). */
  readonly protocols?: Layer.Layer<Protocols, E5>
  /** Which nodes may connect and be dialled; no rules unless given. */
  readonly gater?: Layer.Layer<ConnectionGater, E6>
  /** The gateway's port mapping (`PortMapperLive.layer(…)`), which the manager's reachability checks; none unless given. */
  readonly portMapper?: Layer.Layer<P, never, QuicTransport>
}) =>
  Node.layerWith({
    keyRing: parts.keyRing,
    nodeGraph: parts.nodeGraph,
    transport: QuicTransportLive.layer,
    options: { transport: parts.transport ?? {} },
    config: parts.config,
    dns: parts.dns ?? DnsNode.layer,
    ...(parts.protocols === undefined ? {} : { protocols: parts.protocols }),
    ...(parts.gater === undefined ? {} : { gater: parts.gater }),
    ...(parts.portMapper === undefined ? {} : { portMapper: parts.portMapper })
  })
