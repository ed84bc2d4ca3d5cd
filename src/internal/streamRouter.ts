/**
 * The stream router: which server reads a stream a peer opened, by the stream's first byte.
 *
 * - `AGENT_FIRST_BYTE` (every agent RPC frame starts so): the agent's stream server, on the
 *   same socket with the first chunk put back. No header, no status, no fiber of its own: the
 *   agent path costs one read of the first chunk.
 * - `PROTOCOL_MAGIC`: a protocol header (bounded by its size and `headerTimeout`). A protocol
 *   served by the node's `Protocols` is accepted (status first) and its handler gets the stream
 *   and the peer as the connection proves it; the stream ends when the handler returns (reset
 *   if it dies). Anything else named is refused with its reason, then the stream ends.
 * - `{` (a JSON-RPC message: Polykey's agent RPC), where the node serves that wire: its
 *   stream server, on the same socket with the first chunk put back.
 * - Any other first byte (or an agent stream where the agent is not on streams): reset.
 *
 * A bad stream is refused alone; the connection and its other streams go on.
 */
import { Socket } from "@effect/platform"
import { type Duration, Effect, Exit, Option } from "effect"
import type { Contact } from "../services/Contact.js"
import { ProtocolId, type ProtocolsService } from "../services/Protocols.js"
import type { QuicConnection } from "../services/QuicTransport.js"
import * as ProtocolWire from "./protocolWire.js"

/** Serves one agent RPC stream (errors already handled). */
export type AgentStream = (socket: Socket.Socket) => Effect.Effect<void>

/** The first byte of a JSON-RPC message, `{`: a Polykey agent RPC stream. */
export const JSON_RPC_FIRST_BYTE = 0x7b

const finished = new Socket.CloseEvent(1000)
const resetEvent = new Socket.CloseEvent(4000, "refused")

/** Writes `bytes` (if any), then ends the stream: FIN for `event` 1000, else a reset; reading stops. */
const endWith = (socket: Socket.Socket, event: Socket.CloseEvent, bytes?: Uint8Array) =>
  Effect.scoped(
    Effect.flatMap(socket.writer, (write) =>
      (bytes === undefined ? write(event) : Effect.zipRight(write(bytes), write(event))).pipe(Effect.ignore)
    )
  )

const callerOf = (connection: QuicConnection): Contact => ({
  nodeId: connection.remoteNodeId,
  host: connection.remoteHost,
  port: connection.remotePort
})

/** The stream after a protocol header: accepted and handled, or refused. */
const serveProtocol = (
  socket: Socket.Socket,
  connection: QuicConnection,
  protocols: ProtocolsService,
  id: string
): Effect.Effect<void> => {
  // Looked up first: the node's own protocols ("quicmesh/…", registered internally) are served
  // though they are not valid application ids.
  const handler = protocols.lookup(id)
  if (Option.isNone(handler))
    return endWith(
      socket,
      finished,
      ProtocolWire.encodeRefusal(
        ProtocolId.is(id)
          ? `protocol "${id}" is not served`
          : `"${id.slice(0, 80)}" is not a valid protocol id`
      )
    )
  const serve = handler.value
  return Effect.scoped(
    Effect.flatMap(socket.writer, (write) =>
      write(ProtocolWire.accepted).pipe(
        Effect.zipRight(Effect.suspend(() => serve(socket, callerOf(connection)))),
        Effect.exit,
        Effect.flatMap((exit) => Effect.ignore(write(Exit.isSuccess(exit) ? finished : resetEvent)))
      )
    )
  )
}

/**
 * Routes one stream the peer opened on `connection`. `agent` serves agent RPC streams
 * (undefined where the agent is not on streams); `protocols` the application protocols;
 * `polykey`, where given, Polykey's agent RPC streams.
 */
export const route = (
  socket: Socket.Socket,
  connection: QuicConnection,
  agent: AgentStream | undefined,
  protocols: ProtocolsService,
  headerTimeout: Duration.DurationInput,
  polykey?: AgentStream
): Effect.Effect<void> => {
  if (!ProtocolWire.isChunkReader(socket))
    return agent === undefined ? endWith(socket, resetEvent) : agent(socket)
  return Effect.matchEffect(socket.readChunk, {
    onFailure: () => endWith(socket, resetEvent),
    onSuccess: (first): Effect.Effect<void> => {
      if (first === undefined) return agent === undefined ? endWith(socket, finished) : agent(socket)
      if (first.length === 0) return route(socket, connection, agent, protocols, headerTimeout, polykey)
      const byte = first[0]
      if (byte === ProtocolWire.AGENT_FIRST_BYTE && agent !== undefined) {
        socket.unread(first)
        return agent(socket)
      }
      if (byte === JSON_RPC_FIRST_BYTE && polykey !== undefined) {
        socket.unread(first)
        return polykey(socket)
      }
      if (byte !== ProtocolWire.PROTOCOL_MAGIC) return endWith(socket, resetEvent)
      return Effect.matchEffect(
        ProtocolWire.readPrefix(socket, ProtocolWire.parseHeader, {
          maxBytes: ProtocolWire.MAX_HEADER_BYTES,
          timeout: headerTimeout,
          first
        }),
        {
          onFailure: () => endWith(socket, resetEvent),
          onSuccess: (parsed) => {
            switch (parsed._tag) {
              case "Done":
                return serveProtocol(socket, connection, protocols, parsed.value)
              case "Invalid":
                return endWith(socket, finished, ProtocolWire.encodeRefusal(parsed.detail))
              case "More":
                return endWith(socket, resetEvent)
            }
          }
        }
      )
    }
  })
}
