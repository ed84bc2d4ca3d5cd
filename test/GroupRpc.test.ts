/**
 * Application RPC groups over real QUIC on loopback: a user's `@effect/rpc` group served by
 * the group server and called through the group client, in both client modes.
 */

import { Rpc, RpcGroup } from "@effect/rpc"
import { describe, expect, it } from "@effect/vitest"
import { Chunk, Deferred, Duration, Effect, Either, Schema, Stream } from "effect"
import { makeGroupClient } from "../src/internal/groupClient.js"
import { makeGroupServer } from "../src/internal/groupServer.js"
import { RpcMessageTooLargeError, RpcTimeoutError, WireMiddleware } from "../src/services/AgentRpc.js"
import { Caller } from "../src/services/Contact.js"
import * as NodeId from "../src/services/NodeId.js"
import type { QuicConnection } from "../src/services/QuicTransport.js"
import { RpcConfig, type RpcOptions } from "../src/services/RpcServer.js"
import { connect, quicNode } from "./fixtures/quicNode.js"

// ---------------------------------------------------------------------------------------
// A user's groups, defined with effect/Schema

class NoteTooLongError extends Schema.TaggedError<NoteTooLongError>()("NoteTooLongError", {
  length: Schema.Number
}) {}

const Send = Rpc.make("send", {
  payload: { text: Schema.String },
  success: Schema.Struct({ from: Schema.String, length: Schema.Number }),
  error: NoteTooLongError
})
const List = Rpc.make("list", { payload: { count: Schema.Number }, success: Schema.String, stream: true })
const Slow = Rpc.make("slow", { payload: {}, success: Schema.Void })

/** With `WireMiddleware` in its definition: handlers may use `Caller`. */
class NotesRpcs extends RpcGroup.make(Send, List, Slow).middleware(WireMiddleware) {}

/** Another group with a method of the same name, without `WireMiddleware` (the server and client add it). */
class EchoRpcs extends RpcGroup.make(
  Rpc.make("send", { payload: { text: Schema.String }, success: Schema.String })
) {}

const MAX_NOTE = 10

const notesHandlers = (slowInterrupted: Deferred.Deferred<void>) =>
  NotesRpcs.toHandlersContext({
    send: ({ text }) =>
      text.length > MAX_NOTE
        ? Effect.fail(new NoteTooLongError({ length: text.length }))
        : Effect.map(Caller, (caller) => ({ from: NodeId.encode(caller.nodeId), length: text.length })),
    list: ({ count }) => Stream.range(1, count).pipe(Stream.map((i) => `note ${i}`)),
    slow: () => Effect.never.pipe(Effect.onInterrupt(() => Deferred.succeed(slowInterrupted, undefined)))
  })

const echoHandlers = EchoRpcs.toHandlersContext({ send: ({ text }) => Effect.succeed(`echo: ${text}`) })

// ---------------------------------------------------------------------------------------
// Two transports on loopback

/** Two nodes and `count` connections from `a` to `b` (both ends of each). */
const quicPairs = (count: number) =>
  Effect.gen(function* () {
    const scope = yield* Effect.scope
    const a = yield* quicNode("group-rpc-a", scope)
    const b = yield* quicNode("group-rpc-b", scope)
    const pairs: Array<{ readonly connA: QuicConnection; readonly connB: QuicConnection }> = []
    for (let i = 0; i < count; i++) {
      pairs.push(yield* connect(a, b))
    }
    return { a, b, pairs }
  })

/** Serves one group's stream handler on every stream the peer opens on `connection`. */
const serveOn = (
  connection: QuicConnection,
  handler: (
    socket: Parameters<Parameters<QuicConnection["handleStreams"]>[0]>[0],
    caller: Caller["Type"]
  ) => Effect.Effect<void>
) =>
  connection.handleStreams((socket) =>
    handler(socket, {
      nodeId: connection.remoteNodeId,
      host: connection.remoteHost,
      port: connection.remotePort
    })
  )

const serverLimits = { rpcParserBufferSize: 1024, rpcCallTimeoutTime: Duration.millis(300) }

/** `a` calling `b`, which serves `NotesRpcs` (with `serverLimits`) on one connection. */
const servedNotes = (clientOptions: RpcOptions, slowInterrupted?: Deferred.Deferred<void>) =>
  Effect.gen(function* () {
    const { a, pairs } = yield* quicPairs(1)
    const { connA, connB } = pairs[0]!
    const handlers = yield* notesHandlers(slowInterrupted ?? (yield* Deferred.make<void>()))
    const server = yield* makeGroupServer(NotesRpcs, handlers, serverLimits)
    yield* serveOn(connB, server.handler)
    const client = yield* makeGroupClient(NotesRpcs, connA.openStream, clientOptions)
    return { a, connA, client }
  })

for (const mode of ["per-call", "multiplexed"] as const) {
  describe(`application RPC group over QUIC loopback (${mode})`, () => {
    const clientOptions: RpcOptions = {
      ...RpcConfig.defaults,
      rpcStreamMode: mode,
      rpcParserBufferSize: 64 * 1024,
      rpcCallTimeoutTime: Duration.seconds(10)
    }

    it.live("unary, streamed, typed application error, Caller", () =>
      Effect.gen(function* () {
        const { a, client } = yield* servedNotes(clientOptions)
        const sent = yield* client.send({ text: "hello" })
        expect(sent).toEqual({ from: NodeId.encode(a.nodeId), length: 5 })
        const notes = yield* Stream.runCollect(client.list({ count: 4 }))
        expect(Chunk.toReadonlyArray(notes)).toEqual(["note 1", "note 2", "note 3", "note 4"])
        const refused = yield* Effect.either(client.send({ text: "x".repeat(MAX_NOTE + 1) }))
        expect(Either.isLeft(refused) && refused.left).toBeInstanceOf(NoteTooLongError)
        expect(Either.isLeft(refused) && refused.left).toMatchObject({ length: MAX_NOTE + 1 })
      }).pipe(Effect.scoped)
    )

    it.live("an oversized request fails with the typed error; the stream and connection go on serving", () =>
      Effect.gen(function* () {
        // The client accepts larger messages than the server: the server refuses it from its header.
        const { connA, client } = yield* servedNotes(clientOptions)
        expect((yield* client.send({ text: "before" })).length).toBe(6)
        const big = yield* Effect.either(client.send({ text: "x".repeat(4096) }))
        expect(Either.isLeft(big) && big.left).toBeInstanceOf(RpcMessageTooLargeError)
        expect(Either.isLeft(big) && big.left).toMatchObject({ limit: serverLimits.rpcParserBufferSize })
        expect((yield* client.send({ text: "after" })).length).toBe(5)
        // A client with the server's limit refuses it before sending: same typed error.
        const strict = yield* makeGroupClient(NotesRpcs, connA.openStream, {
          ...clientOptions,
          ...serverLimits
        })
        const local = yield* Effect.either(strict.send({ text: "x".repeat(4096) }))
        expect(Either.isLeft(local) && local.left).toBeInstanceOf(RpcMessageTooLargeError)
        expect((yield* strict.send({ text: "again" })).length).toBe(5)
      }).pipe(Effect.scoped)
    )

    it.live("a slow handler is interrupted at the server's timeout; the caller gets RpcTimeoutError", () =>
      Effect.gen(function* () {
        const interrupted = yield* Deferred.make<void>()
        const { client } = yield* servedNotes(clientOptions, interrupted)
        const slow = yield* Effect.either(client.slow({}))
        // The server's timeout (300 ms), not the client's (10 s).
        expect(Either.isLeft(slow) && slow.left).toBeInstanceOf(RpcTimeoutError)
        expect(Either.isLeft(slow) && slow.left).toMatchObject({
          method: "slow",
          timeoutMillis: Duration.toMillis(serverLimits.rpcCallTimeoutTime)
        })
        yield* Deferred.await(interrupted).pipe(Effect.timeout(Duration.seconds(2)))
        expect((yield* client.send({ text: "alive" })).length).toBe(5)
      }).pipe(Effect.scoped)
    )

    it.live("two groups with a same-named method stay separate on one server", () =>
      Effect.gen(function* () {
        const { a, pairs } = yield* quicPairs(2)
        // Both servers live in one scope of one node, each built where the other group's
        // handlers are around too: each answers with the handlers it was given.
        const notesContext = yield* notesHandlers(yield* Deferred.make<void>())
        const echoContext = yield* echoHandlers
        const notes = yield* makeGroupServer(NotesRpcs, notesContext, serverLimits).pipe(
          Effect.provide(echoContext)
        )
        const echo = yield* makeGroupServer(EchoRpcs, echoContext, serverLimits).pipe(
          Effect.provide(notesContext)
        )
        yield* serveOn(pairs[0]!.connB, notes.handler)
        yield* serveOn(pairs[1]!.connB, echo.handler)
        const notesClient = yield* makeGroupClient(NotesRpcs, pairs[0]!.connA.openStream, clientOptions)
        const echoClient = yield* makeGroupClient(EchoRpcs, pairs[1]!.connA.openStream, clientOptions)
        const [n, e] = yield* Effect.all(
          [notesClient.send({ text: "one" }), echoClient.send({ text: "two" })],
          {
            concurrency: "unbounded"
          }
        )
        expect(n).toEqual({ from: NodeId.encode(a.nodeId), length: 3 })
        expect(e).toBe("echo: two")
        // The group without WireMiddleware in its definition gets the typed wire errors too.
        const big = yield* Effect.either(echoClient.send({ text: "x".repeat(4096) }))
        expect(Either.isLeft(big) && big.left).toBeInstanceOf(RpcMessageTooLargeError)
      }).pipe(Effect.scoped)
    )
  })
}
