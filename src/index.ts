/**
 * quicmesh: a peer-to-peer node connection manager over QUIC, built with Effect.
 *
 * `import { ConnectionManager, NodeId, … } from "quicmesh"`: the services (each a
 * `Context.Tag` with its interface, errors and options), the domain types, the connection
 * manager and the other layers that run on any transport, and `Node`, the composition of a
 * whole node from its parts. Nothing here loads `@matrixai/quic`, lmdb, the X.509 library or
 * the CLI: the live layers on them (QUIC, the routing table on disk, key files) are in
 * "quicmesh/node", the simulated network in "quicmesh/testing".
 */

// ---- Domain types ------------------------------------------------------------------------

/** A host and a UDP port: the one address type, with its parser, normaliser and checks. */
export * as Address from "./services/Address.js"

/** A node at one address (`Contact`), its wire form (`WireContact`) and the calling peer (`Caller`). */
export * as Contact from "./services/Contact.js"

/** A node's identity: the 32-byte Ed25519 public key, its text form, XOR distance and buckets. */
export * as NodeId from "./services/NodeId.js"

// ---- Services ----------------------------------------------------------------------------

/** The agent RPC: its `@effect/rpc` methods and wire errors. */
export * as AgentRpc from "./services/AgentRpc.js"
/** Your own `@effect/rpc` groups over the node's connections: `AppRpc.make(group, { protocol })`, its `layer` and `withClient`. */
export * as AppRpc from "./services/AppRpc.js"
/** Which nodes may connect and be dialled: deny and allow lists by NodeId and CIDR, allow-only mode (`layer` in memory). */
export * as ConnectionGater from "./services/ConnectionGater.js"
/** Connections to other nodes keyed by NodeId, lookups, joining, hole-punch signalling. */
export * as ConnectionManager from "./services/ConnectionManager.js"
/** Every option of the connection manager with its default: `layer`, `layerDefaults`, `layerFromConfig`, `layerFromEnv`. */
export * as ConnectionManagerConfig from "./services/ConnectionManagerConfig.js"
/** The IP addresses of a hostname; `layerStatic` answers from a table (the system resolver is in "quicmesh/node"). */
export * as Dns from "./services/Dns.js"
/** The node's Ed25519 identity and X.509 certificate chain (live layer in "quicmesh/node"). */
export * as KeyRing from "./services/KeyRing.js"
/** A node's configuration as one tree: the manager's options, and the transport and RPC sections that follow them. */
export * as NodeConfig from "./services/NodeConfig.js"
/** The Kademlia routing table (lmdb layer in "quicmesh/node", memory layer `NodeGraphMemory`). */
export * as NodeGraph from "./services/NodeGraph.js"
/** What the connection manager needs from the agent RPC: serve it, and call a peer. */
export * as PeerRpc from "./services/PeerRpc.js"
/** A UDP port mapping of the node's QUIC port asked of its gateway (PCP, NAT-PMP): the mapping as a value and a change stream (live layer in "quicmesh/node"). */
export * as PortMapper from "./services/PortMapper.js"
/** Application protocols on node connections: `Protocols` (serve with `handle`), `open`, `ProtocolId`, their errors. */
export * as Protocols from "./services/Protocols.js"
/** One UDP port with a QUIC server and every dial, authenticated by NodeId (live layer in "quicmesh/node"). */
export * as QuicTransport from "./services/QuicTransport.js"
/** How the world sees a node: observed addresses, confirmed external addresses, its NAT class (`ConnectionManager.reachability`). */
export * as Reachability from "./services/Reachability.js"
/** Relays: their options, typed refusals (`RelayRefused`), figures and the test hook `RelayTap`. */
export * as Relay from "./services/Relay.js"
/** Serving the agent RPC on a connection's streams, and `RpcConfig`, its limits. */
export * as RpcServer from "./services/RpcServer.js"

// ---- Layers on any transport -------------------------------------------------------------

/** The connection manager's layer. */
export * as ConnectionManagerLive from "./layers/ConnectionManagerLive.js"
/** A whole node from its parts over any transport (`Node.layerWith`). */
export * as Node from "./layers/Node.js"

/** A NodeGraph held in memory only. */
export * as NodeGraphMemory from "./layers/NodeGraphMemory.js"

/** PeerRpc over the agent RPC (`RpcServerLive` and `RpcClientLive`). */
export * as PeerRpcLive from "./layers/PeerRpcLive.js"
/** The `@effect/rpc` client of the agent RPC over a QUIC connection. */
export * as RpcClientLive from "./layers/RpcClientLive.js"
/** The agent RPC served on QUIC streams with `@effect/rpc`. */
export * as RpcServerLive from "./layers/RpcServerLive.js"
