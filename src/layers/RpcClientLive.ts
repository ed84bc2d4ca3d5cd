/**
 * RpcClientLive: `@effect/rpc`'s client of `AgentRpcs` over a QUIC connection's streams,
 * made by the group client (`src/internal/groupClient.ts`).
 *
 * Two ways to carry calls (`RpcOptions.rpcStreamMode`):
 * - `per-call`: every call opens its own bidirectional stream, sends its request, reads its
 *   answer and ends the stream. A failure (oversized or malformed answer, reset) concerns
 *   that call alone; cancelling a call resets its stream, which interrupts the handler.
 * - `multiplexed`: one stream, opened on first use, carries every call of the client; when
 *   it fails, the calls in flight on it fail and the next call opens a new one.
 *
 * A request larger than `rpcParserBufferSize` is not sent: it fails at once with
 * `RpcMessageTooLargeError`. Every call is bounded by `rpcCallTimeoutTime`.
 */
import { Effect, type Scope } from "effect"
import { makeGroupClient, makeGroupProtocol } from "../internal/groupClient.js"
import { AgentRpcs } from "../services/AgentRpc.js"
import type { QuicConnection } from "../services/QuicTransport.js"
import { type AgentClient, RpcConfig, type RpcOptions } from "../services/RpcServer.js"

/** The Protocol of one client on `connection`. */
export const makeProtocol = (connection: QuicConnection, options: RpcOptions) =>
  makeGroupProtocol(connection.openStream, options)

/** A client for calls to the peer of `connection`; its streams close with the scope. */
export const make = (
  connection: QuicConnection,
  options: RpcOptions = RpcConfig.defaults
): Effect.Effect<AgentClient, never, Scope.Scope> =>
  makeGroupClient(AgentRpcs, connection.openStream, options)

/** `make` with the limits of the `RpcConfig` service. */
export const makeWithConfig = (
  connection: QuicConnection
): Effect.Effect<AgentClient, never, Scope.Scope | RpcConfig> =>
  Effect.flatMap(RpcConfig, (options) => make(connection, options))
