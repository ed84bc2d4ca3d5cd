/**
 * Application RPC through the managers (AppRpc) on real QUIC over loopback: a user's groups
 * served with `layer` and called by NodeId with `withClient`, refused when not served, under
 * their own limits, and never in the way of the node's own methods.
 */

import { Rpc, RpcGroup } from "@effect/rpc"
import { describe, expect, it } from "@effect/vitest"
import {
  Cause,
  Chunk,
  Context,
  Deferred,
  Duration,
  Effect,
  Exit,
  Layer,
  Option,
  Schema,
  Stream
} from "effect"
import {
  RpcInvalidRequestError,
  RpcMessageTooLargeError,
  RpcTimeoutError,
  RpcUnknownMethodError
} from "../src/services/AgentRpc.js"
import * as AppRpc from "../src/services/AppRpc.js"
import type { ConnectionManager } from "../src/services/ConnectionManager.js"
import { Caller } from "../src/services/Contact.js"
import * as NodeId from "../src/services/NodeId.js"
import { Protocols, UnsupportedProtocolError } from "../src/services/Protocols.js"
import type { RpcConfig } from "../src/services/RpcServer.js"
import { eventually, makeNode, type TestNode, type TestNodeOptions } from "./fixtures/cmNode.js"

// ---------------------------------------------------------------------------------------
// A user's groups

class NoteTooLongError extends Schema.TaggedError<NoteTooLongError>()("NoteTooLongError", {
  length: Schema.Number
}) {}

const MAX_NOTE = 10

/** With `WireMiddleware` in its definition: handlers may use `Caller`. */
class NotesRpcs extends RpcGroup.make(
  Rpc.make("send", {
    payload: { text: Schema.String },
    success: Schema.Struct({ from: Schema.String, length: Schema.Number }),
    error: NoteTooLongError
  }),
  Rpc.make("list", { payload: { count: Schema.Number }, success: Schema.String, stream: true }),
  Rpc.make("wait", { payload: { millis: Schema.Number }, success: Schema.Void }),
  Rpc.make("hang", { payload: {}, success: Schema.Void }),
  Rpc.make("boom", { payload: {}, success: Schema.Void }),
  Rpc.make("die", { payload: {}, success: Schema.Void })
).middleware(AppRpc.WireMiddleware) {}

/** Another group with a method of the same name, and one of its own. */
class EchoRpcs extends RpcGroup.make(
  Rpc.make("send", { payload: { text: Schema.String }, success: Schema.String }),
  Rpc.make("shout", { payload: { text: Schema.String }, success: Schema.String })
) {}

/** What a peer with another idea of "notes/1" sends: a wrong payload, a method Notes lacks. */
class WrongNotesRpcs extends RpcGroup.make(
  Rpc.make("send", { payload: { text: Schema.Number }, success: Schema.Unknown }),
  Rpc.make("shout", { payload: { text: Schema.String }, success: Schema.String })
) {}

const Notes = AppRpc.make(NotesRpcs, { protocol: "notes/1" })
const NotesV2 = AppRpc.make(NotesRpcs, { protocol: "notes/2" })
const Echo = AppRpc.make(EchoRpcs, { protocol: "echo/1" })
const WrongNotes = AppRpc.make(WrongNotesRpcs, { protocol: "notes/1" })

/** The server's limits where a test wants them small. */
const strictLimits = { rpcParserBufferSize: 1024, rpcCallTimeoutTime: Duration.millis(300) }
const StrictNotes = AppRpc.make(NotesRpcs, { protocol: "notes/1", ...strictLimits })

interface Observed {
  readonly hangInterrupted: Deferred.Deferred<void>
  echoCalls: number
}

const notesLive = (observed: Observed) =>
  NotesRpcs.toLayer({
    send: ({ text }) =>
      text.length > MAX_NOTE
        ? Effect.fail(new NoteTooLongError({ length: text.length }))
        : Effect.map(Caller, (caller) => ({ from: NodeId.encode(caller.nodeId), length: text.length })),
    list: ({ count }) => Stream.range(1, count).pipe(Stream.map((i) => `note ${i}`)),
    wait: ({ millis }) => Effect.sleep(Duration.millis(millis)),
    hang: () =>
      Effect.never.pipe(Effect.onInterrupt(() => Deferred.succeed(observed.hangInterrupted, undefined))),
    boom: () =>
      Effect.sync(() => {
        throw new Error("boom")
      }),
    die: () => Effect.die("dead")
  })

const echoLive = (observed: Observed) =>
  EchoRpcs.toLayer({
    send: ({ text }) =>
      Effect.sync(() => {
        observed.echoCalls++
        return `echo: ${text}`
      }),
    shout: ({ text }) =>
      Effect.sync(() => {
        observed.echoCalls++
        return text.toUpperCase()
      })
  })

const observe = Effect.map(
  Deferred.make<void>(),
  (hangInterrupted): Observed => ({ hangInterrupted, echoCalls: 0 })
)

/** Serves `layer` (a definition's layer with its handlers) on `node` for the test's scope. */
const serve = (node: TestNode, layer: Layer.Layer<never, never, Protocols | RpcConfig>) =>
  Effect.asVoid(Effect.provide(Layer.build(layer), node.ctx))

/** b serves Notes (with `notes`' limits) and Echo; a and b are connected. */
const served = (options: { readonly notes?: typeof Notes; readonly a?: TestNodeOptions } = {}) =>
  Effect.gen(function* () {
    const observed = yield* observe
    const a = yield* makeNode("app-a", options.a)
    const b = yield* makeNode("app-b")
    yield* serve(b, (options.notes ?? Notes).layer.pipe(Layer.provide(notesLive(observed))))
    yield* serve(b, Echo.layer.pipe(Layer.provide(echoLive(observed))))
    yield* a.cm.getConnectionWithAddress(b.nodeId, b.address)
    return { a, b, observed }
  })

/** Runs `effect` as node `node` (its ConnectionManager and RpcConfig). */
const as =
  (node: TestNode) =>
  <A, E, R>(effect: Effect.Effect<A, E, R>) =>
    Effect.provide(effect, node.ctx as Context.Context<never>) as Effect.Effect<
      A,
      E,
      Exclude<R, ConnectionManager | RpcConfig>
    >

/** How many connections `node` holds to `peer`. */
const connectionsTo = (node: TestNode, peer: TestNode) =>
  Effect.map(
    node.cm.listConnections,
    (list) => list.filter((c) => c.nodeId === NodeId.encode(peer.nodeId)).length
  )

describe("AppRpc over QUIC loopback", () => {
  it("refuses an invalid protocol id where the definition is made", () => {
    expect(() => AppRpc.make(NotesRpcs, { protocol: "notes 1" })).toThrow(/invalid protocol id/)
    expect(() => AppRpc.make(NotesRpcs, { protocol: "quicmesh/agent" })).toThrow(/reserved/)
  })

  it.scopedLive("unary and streamed calls by NodeId; typed errors; the handler sees the caller", () =>
    Effect.gen(function* () {
      const { a, b } = yield* served()
      // c knows only a: it finds b by NodeId through a, then calls it.
      const c = yield* makeNode("app-c")
      yield* c.cm.getConnectionWithAddress(a.nodeId, a.address)
      const sent = yield* as(c)(Notes.withClient(b.nodeId, (client) => client.send({ text: "hello" })))
      expect(sent).toEqual({ from: NodeId.encode(c.nodeId), length: 5 })
      const notes = yield* as(a)(
        Stream.runCollect(Notes.withClientStream(b.nodeId, (client) => client.list({ count: 3 })))
      )
      expect(Chunk.toReadonlyArray(notes)).toEqual(["note 1", "note 2", "note 3"])
      const tooLong = yield* as(a)(
        Effect.flip(Notes.withClient(b.nodeId, (client) => client.send({ text: "x".repeat(MAX_NOTE + 1) })))
      )
      expect(tooLong).toBeInstanceOf(NoteTooLongError)
      expect(tooLong).toMatchObject({ length: MAX_NOTE + 1 })
      // Consecutive calls reuse one client: they go on the stream the first call opened.
      const registry = Context.get(b.ctx, Protocols)
      const notesHandler = Option.getOrThrow(registry.lookup("notes/1"))
      let streams = 0
      yield* registry.handle(Notes.protocol, (socket, caller) => {
        streams++
        return notesHandler(socket, caller)
      })
      yield* as(a)(Notes.withClient(b.nodeId, (client) => client.send({ text: "0" })))
      const froms = yield* as(a)(
        Notes.withClient(b.nodeId, (client) =>
          Effect.all([client.send({ text: "1" }), client.send({ text: "2" })], { concurrency: 2 })
        )
      )
      expect(froms.map((x) => x.from)).toEqual([NodeId.encode(a.nodeId), NodeId.encode(a.nodeId)])
      expect(streams).toBe(0)
      expect(yield* connectionsTo(a, b)).toBe(1)
    })
  )

  it.scopedLive("a node that does not serve the group refuses it at once, unary and streamed", () =>
    Effect.gen(function* () {
      const { a } = yield* served()
      const c = yield* makeNode("app-plain")
      yield* a.cm.getConnectionWithAddress(c.nodeId, c.address)
      const start = Date.now()
      const unary = yield* as(a)(
        Effect.flip(Notes.withClient(c.nodeId, (client) => client.send({ text: "hi" })))
      )
      expect(unary).toBeInstanceOf(UnsupportedProtocolError)
      expect(unary).toMatchObject({ protocol: "notes/1", nodeId: NodeId.encode(c.nodeId) })
      const streamed = yield* as(a)(
        Effect.flip(
          Stream.runCollect(Notes.withClientStream(c.nodeId, (client) => client.list({ count: 2 })))
        )
      )
      expect(streamed).toBeInstanceOf(UnsupportedProtocolError)
      expect(Date.now() - start).toBeLessThan(2000)
      // The refused client was dropped: once c serves the group, the next call gets through.
      yield* serve(c, Notes.layer.pipe(Layer.provide(notesLive(yield* observe))))
      const sent = yield* as(a)(Notes.withClient(c.nodeId, (client) => client.send({ text: "now" })))
      expect(sent.length).toBe(3)
    })
  )

  it.scopedLive("another version of the group is unsupported", () =>
    Effect.gen(function* () {
      const { a, b } = yield* served()
      const error = yield* as(a)(
        Effect.flip(NotesV2.withClient(b.nodeId, (client) => client.send({ text: "v2" })))
      )
      expect(error).toBeInstanceOf(UnsupportedProtocolError)
      expect(error).toMatchObject({ protocol: "notes/2" })
      expect((yield* as(a)(Notes.withClient(b.nodeId, (client) => client.send({ text: "v1" })))).length).toBe(
        2
      )
    })
  )

  it.scopedLive("a call keeps the connection from idle GC; it is collected after", () =>
    Effect.gen(function* () {
      const { a, b } = yield* served({
        a: { config: { connectionIdleTimeoutTime: Duration.millis(300) } }
      })
      const call = yield* Effect.fork(
        as(a)(Notes.withClient(b.nodeId, (client) => client.wait({ millis: 1000 })))
      )
      yield* Effect.sleep(Duration.millis(700))
      const during = yield* a.cm.listConnections
      expect(during.map((c) => c.usageCount)).toEqual([1])
      yield* call.await.pipe(Effect.flatten)
      expect(yield* a.cm.hasConnection(b.nodeId)).toBe(true)
      yield* eventually(a.cm.hasConnection(b.nodeId), (has) => !has, "2 seconds")
      // A new call makes a new connection, and a new client on it.
      expect(
        (yield* as(a)(Notes.withClient(b.nodeId, (client) => client.send({ text: "again" })))).length
      ).toBe(5)
    })
  )

  it.scopedLive("an oversized request fails typed; the connection serves pings and another group", () =>
    Effect.gen(function* () {
      const { a, b } = yield* served({ notes: StrictNotes })
      // The caller's limit is the default (larger): the server refuses it from its header.
      const big = yield* as(a)(
        Effect.flip(Notes.withClient(b.nodeId, (client) => client.send({ text: "x".repeat(4096) })))
      )
      expect(big).toBeInstanceOf(RpcMessageTooLargeError)
      expect(big).toMatchObject({ limit: strictLimits.rpcParserBufferSize })
      expect(yield* a.cm.pingNode(b.nodeId)).toBe(true)
      expect(yield* as(a)(Echo.withClient(b.nodeId, (client) => client.send({ text: "other" })))).toBe(
        "echo: other"
      )
      expect(
        (yield* as(a)(Notes.withClient(b.nodeId, (client) => client.send({ text: "after" })))).length
      ).toBe(5)
      // With the server's limit, the caller refuses it before sending: the same typed error.
      const local = yield* as(a)(
        Effect.flip(StrictNotes.withClient(b.nodeId, (client) => client.send({ text: "x".repeat(4096) })))
      )
      expect(local).toBeInstanceOf(RpcMessageTooLargeError)
      expect((yield* a.cm.listConnections).length).toBe(1)
    })
  )

  it.scopedLive("a slow handler is interrupted at the group's timeout", () =>
    Effect.gen(function* () {
      const { a, b, observed } = yield* served({ notes: StrictNotes })
      const slow = yield* as(a)(Effect.flip(Notes.withClient(b.nodeId, (client) => client.hang({}))))
      expect(slow).toBeInstanceOf(RpcTimeoutError)
      expect(slow).toMatchObject({ method: "hang", timeoutMillis: 300 })
      yield* Deferred.await(observed.hangInterrupted).pipe(Effect.timeout(Duration.seconds(2)))
      expect(
        (yield* as(a)(Notes.withClient(b.nodeId, (client) => client.send({ text: "alive" })))).length
      ).toBe(5)
    })
  )

  it.scopedLive(
    "misbehaving handlers never break pings, lookups and hole-punch signalling on the connection",
    () =>
      Effect.gen(function* () {
        const { a, b } = yield* served({ notes: StrictNotes })
        // b relays hole-punch requests to c.
        const c = yield* makeNode("app-target")
        yield* c.cm.getConnectionWithAddress(b.nodeId, b.address)
        const unruly = Effect.all(
          [
            Effect.exit(as(a)(Notes.withClient(b.nodeId, (client) => client.boom({})))),
            Effect.exit(as(a)(Notes.withClient(b.nodeId, (client) => client.die({})))),
            Effect.exit(as(a)(Notes.withClient(b.nodeId, (client) => client.hang({}))))
          ],
          { concurrency: "unbounded" }
        )
        const node = Effect.all(
          [
            a.cm.pingNode(b.nodeId),
            a.cm.getRemoteNodeClosestNodes(b.nodeId, c.nodeId),
            a.cm.sendSignalingMessage(b.nodeId, a.nodeId, c.nodeId)
          ],
          { concurrency: "unbounded" }
        )
        const [exits, [pinged, closest]] = yield* Effect.all([unruly, node], { concurrency: 2 })
        for (const exit of exits) expect(Exit.isFailure(exit)).toBe(true)
        expect(Exit.isFailure(exits[0]) && Cause.isDie(exits[0].cause)).toBe(true)
        expect(pinged).toBe(true)
        expect(closest.some((x) => NodeId.equals(x.nodeId, c.nodeId))).toBe(true)
        const punched = yield* eventually(c.sentDatagrams, (xs) => xs.some((d) => d.port === a.address.port))
        expect(punched.length).toBeGreaterThan(0)
        // And again afterwards, on the same connection.
        expect(yield* a.cm.pingNode(b.nodeId)).toBe(true)
        expect(Option.isSome(yield* a.cm.findNode(c.nodeId))).toBe(true)
        expect(yield* connectionsTo(a, b)).toBe(1)
      })
  )

  it.scopedLive("bad input: a payload failing its schema and an unknown method get typed errors", () =>
    Effect.gen(function* () {
      const { a, b, observed } = yield* served()
      const invalid = yield* as(a)(
        Effect.flip(WrongNotes.withClient(b.nodeId, (client) => client.send({ text: 5 })))
      )
      expect(invalid).toBeInstanceOf(RpcInvalidRequestError)
      expect(invalid).toMatchObject({ method: "send" })
      // "shout" is Echo's, served on the same node: Notes' protocol never runs it.
      const unknown = yield* as(a)(
        Effect.flip(WrongNotes.withClient(b.nodeId, (client) => client.shout({ text: "x" })))
      )
      expect(unknown).toBeInstanceOf(RpcUnknownMethodError)
      expect(observed.echoCalls).toBe(0)
      expect(
        (yield* as(a)(Notes.withClient(b.nodeId, (client) => client.send({ text: "fine" })))).length
      ).toBe(4)
      expect(yield* a.cm.pingNode(b.nodeId)).toBe(true)
    })
  )

  it.scopedLive("two groups on one node: each protocol runs its own handlers", () =>
    Effect.gen(function* () {
      const { a, b, observed } = yield* served()
      const [note, echo] = yield* as(a)(
        Effect.all(
          [
            Notes.withClient(b.nodeId, (client) => client.send({ text: "n" })),
            Echo.withClient(b.nodeId, (client) => client.send({ text: "e" }))
          ],
          { concurrency: 2 }
        )
      )
      expect(note).toEqual({ from: NodeId.encode(a.nodeId), length: 1 })
      expect(echo).toBe("echo: e")
      expect(observed.echoCalls).toBe(1)
      yield* as(a)(Notes.withClient(b.nodeId, (client) => client.send({ text: "again" })))
      expect(observed.echoCalls).toBe(1)
    })
  )
})
