/**
 * RpcServerLive: the agent RPC (`AgentRpcs`) served on QUIC streams by the group server
 * (`src/internal/groupServer.ts`: frames, limits, typed wire errors, timeouts, streamed
 * answers, interrupts), with the handlers of the layer's context.
 *
 * Each stream a peer opens is one `@effect/rpc` client; the stream's connection is the
 * `Caller` of every call on it, and the calls also see the context `serve` was given for
 * that connection.
 */

import type { Socket } from "@effect/platform"
import type { Rpc } from "@effect/rpc"
import { Context, Effect, Layer, Option, type Scope } from "effect"
import { makeGroupServer } from "../internal/groupServer.js"
import * as StreamRouter from "../internal/streamRouter.js"
import { type AgentRpc, AgentRpcs } from "../services/AgentRpc.js"
import { Caller } from "../services/Contact.js"
import * as ProtocolsService from "../services/Protocols.js"
import type { QuicConnection } from "../services/QuicTransport.js"
import { RpcConfig, RpcServer, type RpcServerService } from "../services/RpcServer.js"
import * as RpcClientLive from "./RpcClientLive.js"

/** A node that serves no application protocols refuses every protocol stream. */
const noProtocols = ProtocolsService.make()

export const make = Effect.gen(function* () {
  const config = yield* RpcConfig
  const handlers = yield* Effect.context<Rpc.ToHandler<AgentRpc>>()
  const { serveStream } = yield* makeGroupServer(AgentRpcs, handlers, config)

  // The node's application protocols, if it serves any: then each stream goes through the router.
  const protocols = yield* Effect.serviceOption(ProtocolsService.Protocols)

  /**
   * Serves every stream the peer opens, each in a fiber of its own started when the stream
   * arrives: an idle connection costs no fiber, and only this handler (holding the
   * connection and `context`) until a stream comes; its `Caller` is made per stream. With a
   * `Protocols` registry, the stream router sends agent streams here and protocol streams to
   * their handlers (`internal/streamRouter.ts`).
   */
  /** The agent RPC on one stream of `connection`, its `Caller` made for the stream. */
  const serveAgent = (socket: Socket.Socket, connection: QuicConnection, context: Context.Context<never>) =>
    Effect.ignore(
      serveStream(
        socket,
        Context.add(context, Caller, {
          nodeId: connection.remoteNodeId,
          host: connection.remoteHost,
          port: connection.remotePort
        })
      )
    )

  // One handler per connection, holding only the connection and its context (a held
  // connection costs no more with a Protocols registry than without).
  const serve = (
    connection: QuicConnection,
    context: Context.Context<never> = Context.empty(),
    polykey?: (socket: Socket.Socket) => Effect.Effect<void>
  ): Effect.Effect<void, never, Scope.Scope> =>
    Option.isNone(protocols) && polykey === undefined
      ? connection.handleStreams((socket) => serveAgent(socket, connection, context))
      : connection.handleStreams((socket) =>
          StreamRouter.route(
            socket,
            connection,
            (agentSocket) => serveAgent(agentSocket, connection, context),
            Option.getOrElse(protocols, () => noProtocols),
            config.rpcCallTimeoutTime,
            polykey
          )
        )

  return RpcServer.of({
    serve,
    makeClient: (connection) => RpcClientLive.make(connection, config)
  } satisfies RpcServerService)
})

/** Needs the handlers (`AgentRpcs.toLayer(...)`) and `RpcConfig`. */
export const layer: Layer.Layer<RpcServer, never, RpcConfig | Rpc.ToHandler<AgentRpc>> = Layer.scoped(
  RpcServer,
  make
)
