/**
 * The bulk-transfer pieces two suites share (appProtocols, relay): a sink that counts the bytes
 * of a stream until its FIN and answers the count, the sender's side of one transfer, and agent
 * handlers that answer `nodesPing` alone (the rpc and relay suites' servers).
 */
import type { Socket } from "@effect/platform"
import { Effect, Fiber, type Scope, Stream } from "effect"
import { AgentRpcs } from "../src/services/AgentRpc.js"
import type * as Protocols from "../src/services/Protocols.js"

const encoder = new TextEncoder()
const decoder = new TextDecoder()

/** Counts the bytes until the peer's FIN, then answers the count and ends; a broken stream is dropped. */
export const sinkHandler: Protocols.StreamHandler = (socket) =>
  Effect.gen(function* () {
    let received = 0
    yield* socket.run((chunk) => {
      received += chunk.length
    })
    yield* Effect.scoped(Effect.flatMap(socket.writer, (write) => write(encoder.encode(String(received)))))
  }).pipe(Effect.ignore)

/** `chunks` writes of `chunk` on the stream `open` gives (a sink's), FIN, and the count it answered. */
export const sendToSink = <E>(
  open: Effect.Effect<Socket.Socket, E, Scope.Scope>,
  chunk: Uint8Array,
  chunks: number
) =>
  Effect.scoped(
    Effect.gen(function* () {
      const socket = yield* open
      const parts: Array<Uint8Array> = []
      const reading = yield* Effect.fork(
        socket.run((c) => {
          parts.push(c.slice())
        })
      )
      yield* Effect.scoped(
        Effect.flatMap(socket.writer, (write) =>
          Effect.gen(function* () {
            for (let i = 0; i < chunks; i++) yield* write(chunk)
          })
        )
      )
      yield* Fiber.join(reading)
      return Number(decoder.decode(Buffer.concat(parts)))
    })
  )

/** Agent handlers for a server measured by `nodesPing`: the other methods answer nothing. */
export const pingHandlers = AgentRpcs.toLayer({
  nodesPing: ({ nonce }) => Effect.succeed({ nonce }),
  nodesHolePunchSignal: () => Effect.void,
  nodesClosestLocalNodesGet: () => Stream.empty,
  nodesIdentify: () => Effect.succeed({ observed: { host: "127.0.0.1", port: 1 }, confirmed: [] }),
  nodesDialBackRequest: () => Effect.void,
  nodesDialBack: () => Effect.void,
  nodesDialBackProof: () => Effect.void
})
