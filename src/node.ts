/**
 * quicmesh/node: the layers that run on Node.js itself.
 *
 * `import { NodeLive, KeyRingLive, NodeGraphLmdb } from "quicmesh/node"`: real QUIC over UDP
 * (`@matrixai/quic`), the routing table on disk (lmdb), the identity in key files, the system
 * resolver, port mapping at the gateway (`PortMapperLive`), and `NodeLive.layer`, a whole node
 * made of them. The services these layers implement, and the rest of the library, are in "quicmesh".
 */

/** `ConnectionGater` whose rules live in a JSON file (the agent's `<node-path>/gates.json`), written atomically. */
export * as ConnectionGaterFile from "./layers/ConnectionGaterFile.js"
/** `Dns` over the system resolver (`node:dns` lookup, every address). */
export * as DnsNode from "./layers/DnsNode.js"
/** `KeyRing` kept in a node path: an Ed25519 key file (0600), a self-signed X.509 chain, renewal. */
export * as KeyRingLive from "./layers/KeyRingLive.js"
/** `NodeGraph` stored in lmdb: incremental and crash-safe. */
export * as NodeGraphLmdb from "./layers/NodeGraphLmdb.js"
/** A whole node on real QUIC: `Node.layerWith` with QuicTransportLive. */
export * as NodeLive from "./layers/NodeLive.js"
/** `PortMapper` over PCP and NAT-PMP (node:dgram) to the default route's gateway: maps, renews, deletes on close. */
export * as PortMapperLive from "./layers/PortMapperLive.js"
/** `QuicTransport` over `@matrixai/quic`: one UDP socket for the server and every dial. */
export * as QuicTransportLive from "./layers/QuicTransportLive.js"
