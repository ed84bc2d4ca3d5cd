/**
 * The agent's local control API, served on `<node-path>/agent.sock` (mode 0600) with
 * @effect/rpc. The CLI's commands are its clients.
 */
import { Rpc, RpcGroup } from "@effect/rpc"
import { Schema } from "effect"

import { ControlError } from "./control/error.js"
import { GateRpcs } from "./control/gates.js"
import { IdentityRpcs } from "./control/identity.js"
import { PortMappingJson } from "./control/portMapping.js"
import { ReachabilityJson } from "./control/reachability.js"
import { RelayJson } from "./control/relay.js"

export { ControlError }

export const AddressJson = Schema.Struct({ host: Schema.String, port: Schema.Number })

/**
 * The QUIC transport's counts: connections; the inbound handshake cap — how many
 * handshakes are in progress, the most there have ever been at once, and how many attempts
 * the cap refused; the UDP receive buffer asked for and granted (bytes, as the kernel reports).
 */
export const TransportJson = Schema.Struct({
  connections: Schema.Number,
  quicConnections: Schema.Number,
  handshakesInProgress: Schema.Number,
  handshakesHighWater: Schema.Number,
  handshakesRefused: Schema.Number,
  maxInboundHandshakes: Schema.Number,
  /** Optional: an agent started before these were counted leaves them out. */
  receiveBufferRequested: Schema.optional(Schema.Number),
  receiveBufferGranted: Schema.optional(Schema.Number)
})

export const StatusJson = Schema.Struct({
  status: Schema.Literal("LIVE"),
  nodeId: Schema.String,
  host: Schema.String,
  port: Schema.Number,
  connections: Schema.Number,
  nodes: Schema.Number,
  pid: Schema.Number,
  /** Absent when the transport keeps no counts (not the live QUIC transport). */
  transport: Schema.optional(TransportJson),
  /** Present while the gateway grants a mapping of the node's port. */
  portMapping: Schema.optional(PortMappingJson),
  /** How the world sees the node (absent from an agent that does not tell). */
  reachability: Schema.optional(ReachabilityJson),
  /** Relay reservations, relayed connections, and the relay's figures when it serves as one. */
  relay: Schema.optional(RelayJson)
})

export const ConnectionJson = Schema.Struct({
  nodeId: Schema.String,
  host: Schema.String,
  port: Schema.Number,
  hostname: Schema.NullOr(Schema.String),
  usageCount: Schema.Number,
  timeout: Schema.NullOr(Schema.Number),
  direction: Schema.String,
  /** "direct", "punched" or "relayed" (absent from agents older than relays). */
  path: Schema.optional(Schema.String),
  /** The relay's NodeId for a relayed connection. */
  relay: Schema.optional(Schema.NullOr(Schema.String))
})

export const NodeJson = Schema.Struct({
  nodeId: Schema.String,
  host: Schema.String,
  port: Schema.Number,
  bucketIndex: Schema.Number,
  lastUpdated: Schema.Number
})

const Timeout = Schema.optional(Schema.Number)

export class ControlRpcs extends RpcGroup.make(
  Rpc.make("status", { success: StatusJson }),
  Rpc.make("stop", {}),
  Rpc.make("nodesAdd", {
    payload: { nodeId: Schema.String, host: Schema.String, port: Schema.Number },
    error: ControlError
  }),
  Rpc.make("nodesFind", {
    payload: { nodeId: Schema.String, timeout: Timeout },
    success: Schema.Struct({
      success: Schema.Boolean,
      nodeId: Schema.String,
      address: Schema.optional(AddressJson)
    }),
    error: ControlError
  }),
  Rpc.make("nodesPing", {
    payload: { nodeId: Schema.String, address: Schema.optional(AddressJson), timeout: Timeout },
    success: Schema.Struct({ success: Schema.Boolean }),
    error: ControlError
  }),
  Rpc.make("nodesConnections", { success: Schema.Array(ConnectionJson) }),
  Rpc.make("nodesGetAll", { success: Schema.Array(NodeJson) }),
  Rpc.make("nodesClosest", {
    payload: { nodeId: Schema.String, limit: Schema.optional(Schema.Number) },
    success: Schema.Array(NodeJson),
    error: ControlError
  })
).merge(IdentityRpcs, GateRpcs) {}
