/**
 * Agent RPC over QUIC streams: in memory (both client modes) and over real QUIC on loopback.
 */

import { describe, expect, it } from "@effect/vitest"
import {
  Chunk,
  Deferred,
  Duration,
  Effect,
  Either,
  Exit,
  Fiber,
  Layer,
  Ref,
  Scope,
  Stream,
  TestClock
} from "effect"
import { encodeFrame, readMessages } from "../src/internal/rpcWire.js"
import * as RpcClientLive from "../src/layers/RpcClientLive.js"
import * as RpcServerLive from "../src/layers/RpcServerLive.js"
import {
  AgentRpcs,
  HolePunchRefused,
  NODES_CLOSEST_LIMIT,
  type NodesHolePunchSignal,
  RpcMalformedMessageError,
  RpcMessageTooLargeError,
  RpcStreamError,
  RpcTimeoutError
} from "../src/services/AgentRpc.js"
import { Caller, type Contact, type WireContact } from "../src/services/Contact.js"
import * as NodeId from "../src/services/NodeId.js"
import type { QuicConnection } from "../src/services/QuicTransport.js"
import { RpcConfig, type RpcOptions, RpcServer, type RpcStreamMode } from "../src/services/RpcServer.js"
import { signedRequest } from "./fixtures/holePunchRequest.js"
import { endpoint, makeConnectionPair } from "./fixtures/memoryConnection.js"
import { connect, quicNode } from "./fixtures/quicNode.js"

const contacts: ReadonlyArray<WireContact> = Array.from({ length: 30 }, (_, i) => {
  const e = endpoint(i + 1)
  return { nodeIdEncoded: NodeId.encode(e.nodeId), host: e.host, port: e.port } as WireContact
})

interface HandlerOverrides {
  readonly nodesClosestLocalNodesGet?: () => Stream.Stream<WireContact, never, Caller>
  readonly nodesPing?: (nonce: string) => Effect.Effect<{ readonly nonce: string }, never, Caller>
  readonly nodesHolePunchSignal?: (
    payload: typeof NodesHolePunchSignal.payloadSchema.Type
  ) => Effect.Effect<void, HolePunchRefused, Caller>
}

const handlersLayer = (overrides: HandlerOverrides = {}) =>
  AgentRpcs.toLayer({
    nodesPing: ({ nonce }) => (overrides.nodesPing ? overrides.nodesPing(nonce) : Effect.succeed({ nonce })),
    nodesHolePunchSignal: (payload) =>
      overrides.nodesHolePunchSignal ? overrides.nodesHolePunchSignal(payload) : Effect.void,
    nodesIdentify: () =>
      Effect.map(Caller, (c) => ({ observed: { host: c.host, port: c.port }, confirmed: [] })),
    nodesDialBackRequest: () => Effect.void,
    nodesDialBack: () => Effect.void,
    nodesDialBackProof: () => Effect.void,
    // The k closest known contacts, never the caller itself.
    nodesClosestLocalNodesGet: () =>
      overrides.nodesClosestLocalNodesGet?.() ??
      Stream.unwrap(
        Effect.map(Caller, (caller) =>
          Stream.fromIterable(contacts).pipe(
            Stream.filter((c) => c.nodeIdEncoded !== NodeId.encode(caller.nodeId)),
            Stream.take(NODES_CLOSEST_LIMIT)
          )
        )
      )
  })

/** A server on `b`'s side of an in-memory pair, and a client on `a`'s side. */
const setup = (
  mode: RpcStreamMode,
  overrides: HandlerOverrides = {},
  options: Partial<RpcOptions> = {},
  clientOptions: Partial<RpcOptions> = {}
) =>
  Effect.gen(function* () {
    const { a, b } = yield* makeConnectionPair()
    const config = { ...RpcConfig.defaults, ...options, rpcStreamMode: mode }
    const context = yield* Layer.build(
      RpcServerLive.layer.pipe(
        Layer.provide(handlersLayer(overrides)),
        Layer.provide(RpcConfig.layer(config))
      )
    )
    const server = context.unsafeMap.get(RpcServer.key) as RpcServer["Type"]
    const serving = yield* Scope.make()
    yield* Effect.addFinalizer(() => Scope.close(serving, Exit.void))
    // Returns at once: calls are served by fibers started when they arrive.
    yield* server.serve(b).pipe(Scope.extend(serving))
    const client = yield* RpcClientLive.make(a, { ...config, ...clientOptions })
    return { a, b, server, client, serving }
  })

/** Opens a raw stream, writes `bytes`, ends our side and collects the messages until the server ends it. */
const rawExchange = (
  connection: QuicConnection,
  bytes: Uint8Array,
  limit = RpcConfig.defaults.rpcParserBufferSize
) =>
  Effect.scoped(
    Effect.gen(function* () {
      const socket = yield* connection.openStream
      yield* Effect.scoped(Effect.flatMap(socket.writer, (write) => write(bytes)))
      const messages: Array<Record<string, unknown>> = []
      const end = yield* readMessages(socket, limit, (m) => Effect.succeed(messages.push(m) > 0))
      return { messages, end }
    })
  )

const request = (tag: string, payload: unknown, id = "1") =>
  encodeFrame({ _tag: "Request", id, tag, payload, headers: [] }).frame

const failureOf = (message: Record<string, unknown> | undefined) =>
  (message as { exit: { cause: { error: { _tag: string } } } } | undefined)?.exit?.cause?.error

for (const mode of ["per-call", "multiplexed"] as const) {
  describe(`agent RPC in memory (${mode})`, () => {
    it.scoped("nodesPing echoes the nonce", () =>
      Effect.gen(function* () {
        const { client } = yield* setup(mode)
        const answers = yield* Effect.forEach(["a", "b", "c"], (nonce) => client.nodesPing({ nonce }))
        expect(answers).toEqual([{ nonce: "a" }, { nonce: "b" }, { nonce: "c" }])
      })
    )

    it.scoped("nodesClosestLocalNodesGet streams at most k contacts, never the caller", () =>
      Effect.gen(function* () {
        const { client } = yield* setup(mode)
        // The caller's own NodeId (endpoint 1) is among the contacts the handler knows.
        const target = NodeId.encode(endpoint(9).nodeId)
        const got = yield* Stream.runCollect(client.nodesClosestLocalNodesGet({ nodeIdEncoded: target }))
        const list = Chunk.toReadonlyArray(got)
        expect(list).toHaveLength(NODES_CLOSEST_LIMIT)
        expect(list.map((c) => c.nodeIdEncoded)).not.toContain(NodeId.encode(endpoint(1).nodeId))
        expect(list[0]).toEqual(contacts[1])
      })
    )

    it.scoped("handlers see the Caller from the connection, never from the message", () =>
      Effect.gen(function* () {
        const seen = yield* Ref.make<ReadonlyArray<{ caller: Contact; address: unknown; source: string }>>([])
        const { client } = yield* setup(mode, {
          nodesHolePunchSignal: (payload) =>
            Effect.flatMap(Caller, (caller) =>
              Ref.update(seen, (xs) => [
                ...xs,
                { caller, address: payload.observed, source: payload.request.source }
              ])
            )
        })
        // The message claims to come from another node at a made-up address.
        const request = signedRequest({ seed: 7, target: endpoint(3).nodeId, addresses: [], timestamp: 0 })
        const claimed = request.source
        yield* client.nodesHolePunchSignal({ request, observed: { host: "6.6.6.6", port: 666 } })
        const [entry] = yield* Ref.get(seen)
        const a = endpoint(1)
        expect(NodeId.equals(entry!.caller.nodeId, a.nodeId)).toBe(true)
        expect(entry!.caller).toMatchObject({ host: a.host, port: a.port })
        expect(entry!.source).toBe(claimed)
        expect(entry!.address).toEqual({ host: "6.6.6.6", port: 666 })
      })
    )

    it.scoped("a handler's typed failure reaches the caller", () =>
      Effect.gen(function* () {
        const { client } = yield* setup(mode, {
          nodesHolePunchSignal: () =>
            Effect.fail(new HolePunchRefused({ reason: "stale", detail: "too old" }))
        })
        const request = signedRequest({ seed: 1, target: endpoint(3).nodeId, addresses: [], timestamp: 0 })
        const result = yield* Effect.either(client.nodesHolePunchSignal({ request }))
        expect(Either.isLeft(result) && result.left).toBeInstanceOf(HolePunchRefused)
        expect(Either.isLeft(result) && result.left).toMatchObject({ reason: "stale", detail: "too old" })
      })
    )

    it.scoped("an oversized request fails with a typed error; the connection goes on", () =>
      Effect.gen(function* () {
        const { client } = yield* setup(mode, {}, { rpcParserBufferSize: 1024 })
        const big = yield* Effect.either(client.nodesPing({ nonce: "x".repeat(2000) }))
        expect(Either.isLeft(big) && big.left).toBeInstanceOf(RpcMessageTooLargeError)
        expect(yield* client.nodesPing({ nonce: "ok" })).toEqual({ nonce: "ok" })
      })
    )

    it.scoped("an oversized answer fails that call with a typed error; the connection goes on", () =>
      Effect.gen(function* () {
        const { client } = yield* setup(
          mode,
          { nodesPing: (nonce) => Effect.succeed({ nonce: nonce.repeat(100) }) },
          {
            rpcParserBufferSize: 1024
          }
        )
        const big = yield* Effect.either(client.nodesPing({ nonce: "0123456789abcdef" }))
        expect(Either.isLeft(big) && big.left).toBeInstanceOf(RpcMessageTooLargeError)
        expect(yield* client.nodesPing({ nonce: "." })).toEqual({ nonce: ".".repeat(100) })
      })
    )

    it.scoped("an oversized streamed item fails the call with a typed error and stops the handler", () =>
      Effect.gen(function* () {
        const stopped = yield* Deferred.make<void>()
        const huge = { ...contacts[0]!, host: "h".repeat(2000) }
        const { client } = yield* setup(
          mode,
          {
            nodesClosestLocalNodesGet: () =>
              Stream.make(contacts[0]!)
                .pipe(Stream.concat(Stream.make(huge)), Stream.concat(Stream.never))
                .pipe(Stream.ensuring(Deferred.succeed(stopped, undefined)))
          },
          { rpcParserBufferSize: 1024 }
        )
        const seen: WireContact[] = []
        const result = yield* client
          .nodesClosestLocalNodesGet({ nodeIdEncoded: contacts[5]!.nodeIdEncoded })
          .pipe(
            Stream.runForEach((c) => Effect.sync(() => seen.push(c))),
            Effect.either
          )
        expect(Either.isLeft(result) && result.left).toBeInstanceOf(RpcMessageTooLargeError)
        expect(seen).toEqual([contacts[0]])
        yield* Deferred.await(stopped)
        expect(yield* client.nodesPing({ nonce: "ok" })).toEqual({ nonce: "ok" })
      })
    )

    /**
     * A handler that never answers, with the server's and the client's call timeouts: the
     * caller gets a typed timeout after the shorter one, and the handler is interrupted.
     */
    const slowHandler = (server: Duration.Duration, client: Duration.Duration) =>
      Effect.gen(function* () {
        const finalized = yield* Deferred.make<void>()
        const started = yield* Deferred.make<void>()
        const { client: rpc } = yield* setup(
          mode,
          {
            nodesPing: () =>
              Deferred.succeed(started, undefined).pipe(
                Effect.zipRight(Effect.never),
                Effect.onInterrupt(() => Deferred.succeed(finalized, undefined))
              )
          },
          { rpcCallTimeoutTime: server },
          { rpcCallTimeoutTime: client }
        )
        const call = yield* Effect.fork(Effect.either(rpc.nodesPing({ nonce: "slow" })))
        yield* Deferred.await(started)
        const shorter = Duration.min(server, client)
        yield* TestClock.adjust(shorter)
        const result = yield* Fiber.join(call)
        expect(Either.isLeft(result) && result.left).toEqual(
          new RpcTimeoutError({ method: "nodesPing", timeoutMillis: Duration.toMillis(shorter) })
        )
        yield* Deferred.await(finalized)
      })

    // The client waits longer: the timeout seen is the server's.
    it.scoped("a slow handler is interrupted and the caller gets a typed timeout", () =>
      slowHandler(Duration.seconds(15), Duration.seconds(60))
    )

    it.scoped("a caller giving up interrupts the handler on the peer", () =>
      slowHandler(Duration.seconds(60), Duration.seconds(1))
    )

    it.scoped("50 concurrent calls on one connection run in parallel", () =>
      Effect.gen(function* () {
        const inside = yield* Ref.make(0)
        const allInside = yield* Deferred.make<void>()
        const { client } = yield* setup(mode, {
          nodesPing: (nonce) =>
            Ref.updateAndGet(inside, (n) => n + 1).pipe(
              Effect.tap((n) => (n === 50 ? Deferred.succeed(allInside, undefined) : Effect.void)),
              Effect.zipRight(Deferred.await(allInside)),
              Effect.as({ nonce })
            )
        })
        const answers = yield* Effect.forEach(
          Array.from({ length: 50 }, (_, i) => String(i)),
          (nonce) => client.nodesPing({ nonce }),
          { concurrency: "unbounded" }
        )
        expect(answers.map((x) => x.nonce)).toEqual(Array.from({ length: 50 }, (_, i) => String(i)))
      })
    )

    it.scoped("both peers serve and call each other on one connection", () =>
      Effect.gen(function* () {
        const { a, b, server } = yield* setup(mode)
        yield* Effect.forkScoped(server.serve(a))
        const fromB = yield* server.makeClient(b)
        expect(yield* fromB.nodesPing({ nonce: "from b" })).toEqual({ nonce: "from b" })
      })
    )
  })
}

describe("agent RPC server against raw bytes", () => {
  it.scoped(
    "a frame declaring more than rpcParserBufferSize: typed error, stream closed, connection serves on",
    () =>
      Effect.gen(function* () {
        const { a, client } = yield* setup("per-call")
        const header = new Uint8Array([0, 0x10, 0, 0]) // 1 MiB announced, nothing more sent
        const { messages, end } = yield* rawExchange(a, header)
        expect(messages).toHaveLength(1)
        expect(messages[0]).toMatchObject({
          _tag: "Defect",
          defect: { _tag: "RpcMessageTooLargeError", size: 0x100000, limit: 65536 }
        })
        expect(end._tag).toBe("Eof")
        expect(yield* client.nodesPing({ nonce: "still fine" })).toEqual({ nonce: "still fine" })
      })
  )

  it.scoped("malformed bytes: typed error, stream closed, connection serves on", () =>
    Effect.gen(function* () {
      const { a, client } = yield* setup("per-call")
      const garbage = new Uint8Array([0, 0, 0, 5, 0xc1, 0xc1, 0xc1, 0xc1, 0xc1])
      const { messages, end } = yield* rawExchange(a, garbage)
      expect(messages[0]).toMatchObject({ _tag: "Defect", defect: { _tag: "RpcMalformedMessageError" } })
      expect(end._tag).toBe("Eof")
      // Well-formed MessagePack that is not a message.
      const notMessage = yield* rawExchange(a, encodeFrame([1, 2, 3]).frame)
      expect(notMessage.messages[0]).toMatchObject({
        _tag: "Defect",
        defect: { _tag: "RpcMalformedMessageError" }
      })
      const badId = yield* rawExchange(a, request("nodesPing", { nonce: "x" }, "not-a-number"))
      expect(badId.messages[0]).toMatchObject({
        _tag: "Defect",
        defect: { _tag: "RpcMalformedMessageError" }
      })
      expect(yield* client.nodesPing({ nonce: "still fine" })).toEqual({ nonce: "still fine" })
    })
  )

  it.scoped("a request failing its schema gets a typed error", () =>
    Effect.gen(function* () {
      const { a } = yield* setup("per-call")
      const r1 = yield* rawExchange(a, request("nodesPing", { nonce: 5 }, "7"))
      expect(r1.messages[0]).toMatchObject({ _tag: "Exit", requestId: "7" })
      expect(failureOf(r1.messages[0])).toMatchObject({ _tag: "RpcInvalidRequestError", method: "nodesPing" })
      const r2 = yield* rawExchange(
        a,
        request("nodesClosestLocalNodesGet", { nodeIdEncoded: "not-a-node-id" })
      )
      expect(failureOf(r2.messages[0])).toMatchObject({
        _tag: "RpcInvalidRequestError",
        method: "nodesClosestLocalNodesGet"
      })
      // The stream stays usable after a refused request: a good one on the same stream.
      const both = new Uint8Array([
        ...request("nodesPing", {}, "1"),
        ...request("nodesPing", { nonce: "n" }, "2")
      ])
      const r3 = yield* rawExchangeUntil(a, both, 2)
      expect(failureOf(r3[0])).toMatchObject({ _tag: "RpcInvalidRequestError" })
      expect(r3[1]).toMatchObject({
        _tag: "Exit",
        requestId: "2",
        exit: { _tag: "Success", value: { nonce: "n" } }
      })
    })
  )

  it.scoped("an unknown method gets a typed error", () =>
    Effect.gen(function* () {
      const { a } = yield* setup("per-call")
      const { messages } = yield* rawExchange(a, request("nodesDestroy", {}, "3"))
      expect(messages[0]).toMatchObject({ _tag: "Exit", requestId: "3" })
      expect(failureOf(messages[0])).toEqual({ _tag: "RpcUnknownMethodError", method: "nodesDestroy" })
    })
  )

  it.scoped("the client refuses an oversized or malformed answer: typed error for that call only", () =>
    Effect.gen(function* () {
      const { a, b } = yield* makeConnectionPair()
      // A misbehaving peer: answers each stream with whatever `reply` says.
      const replies = [new Uint8Array([0, 0x10, 0, 0]), new Uint8Array([0, 0, 0, 2, 0xc1, 0xc1])]
      let n = 0
      yield* Stream.runForEach(b.acceptedStreams, (socket) =>
        Effect.scoped(
          Effect.gen(function* () {
            const write = yield* socket.writer
            const reply = replies[n++]
            yield* socket.run((bytes) => (reply ? write(reply) : write(bytes)))
          })
        ).pipe(Effect.ignore, Effect.forkScoped)
      ).pipe(Effect.forkScoped)
      const client = yield* RpcClientLive.make(a)
      const r1 = yield* Effect.either(client.nodesPing({ nonce: "1" }))
      expect(Either.isLeft(r1) && r1.left).toBeInstanceOf(RpcMessageTooLargeError)
      const r2 = yield* Effect.either(client.nodesPing({ nonce: "2" }))
      expect(Either.isLeft(r2) && r2.left).toBeInstanceOf(RpcMalformedMessageError)
      // An echo of the request frame is an unexpected message, not a crash.
      const r3 = yield* Effect.either(client.nodesPing({ nonce: "3" }))
      expect(Either.isLeft(r3) && r3.left).toBeInstanceOf(RpcMalformedMessageError)
    })
  )

  it.scoped("calls on a closed connection fail with a typed stream error", () =>
    Effect.gen(function* () {
      const { a, client } = yield* setup("per-call")
      yield* a.close()
      const r = yield* Effect.either(client.nodesPing({ nonce: "x" }))
      expect(Either.isLeft(r) && r.left).toBeInstanceOf(RpcStreamError)
    })
  )

  it.scoped("closing the serving scope interrupts the calls in progress", () =>
    Effect.gen(function* () {
      const started = yield* Deferred.make<void>()
      const interrupted = yield* Deferred.make<void>()
      const { client, serving } = yield* setup("multiplexed", {
        nodesPing: () =>
          Deferred.succeed(started, undefined).pipe(
            Effect.zipRight(Effect.never),
            Effect.onInterrupt(() => Deferred.succeed(interrupted, undefined))
          )
      })
      const call = yield* Effect.fork(client.nodesPing({ nonce: "x" }))
      yield* Deferred.await(started)
      yield* Scope.close(serving, Exit.void)
      yield* Deferred.await(interrupted)
      yield* Fiber.interrupt(call)
    })
  )
})

/** Like rawExchange, but stops after `count` messages (the stream stays open until then). */
const rawExchangeUntil = (connection: QuicConnection, bytes: Uint8Array, count: number) =>
  Effect.scoped(
    Effect.gen(function* () {
      const socket = yield* connection.openStream
      const write = yield* socket.writer
      yield* write(bytes)
      const messages: Array<Record<string, unknown>> = []
      yield* readMessages(socket, RpcConfig.defaults.rpcParserBufferSize, (m) =>
        Effect.succeed(messages.push(m) < count)
      )
      return messages
    })
  )

// ---------------------------------------------------------------------------------------
// Real QUIC on loopback

const quicPair = Effect.gen(function* () {
  const scope = yield* Effect.scope
  const a = yield* quicNode("rpc-test-a", scope)
  const b = yield* quicNode("rpc-test-b", scope)
  const { connA, connB } = yield* connect(a, b)
  return { a, b, connA, connB }
})

for (const mode of ["per-call", "multiplexed"] as const) {
  describe(`agent RPC over QUIC loopback (${mode})`, () => {
    it.live("round trips, streaming, Caller, limits", () =>
      Effect.gen(function* () {
        const { a, connA, connB } = yield* quicPair
        const seen = yield* Deferred.make<Contact>()
        const context = yield* Layer.build(
          RpcServerLive.layer.pipe(
            Layer.provide(
              handlersLayer({
                nodesHolePunchSignal: () => Effect.flatMap(Caller, (caller) => Deferred.succeed(seen, caller))
              })
            ),
            Layer.provide(RpcConfig.layer({ rpcStreamMode: mode }))
          )
        )
        const server = context.unsafeMap.get(RpcServer.key) as RpcServer["Type"]
        yield* Effect.forkScoped(server.serve(connB))
        const client = yield* server.makeClient(connA)
        expect(yield* client.nodesPing({ nonce: "quic" })).toEqual({ nonce: "quic" })
        const got = yield* Stream.runCollect(
          client.nodesClosestLocalNodesGet({ nodeIdEncoded: NodeId.encode(endpoint(9).nodeId) })
        )
        expect(Chunk.size(got)).toBe(NODES_CLOSEST_LIMIT)
        yield* client.nodesHolePunchSignal({
          request: signedRequest({ seed: 7, target: endpoint(3).nodeId, addresses: [], timestamp: 0 })
        })
        const caller = yield* Deferred.await(seen)
        expect(NodeId.equals(caller.nodeId, a.nodeId)).toBe(true)
        expect(caller.port).toBe(a.transport.port)
        const big = yield* Effect.either(client.nodesPing({ nonce: "x".repeat(70_000) }))
        expect(Either.isLeft(big) && big.left).toBeInstanceOf(RpcMessageTooLargeError)
        const many = yield* Effect.forEach(
          Array.from({ length: 16 }, (_, i) => String(i)),
          (nonce) => client.nodesPing({ nonce }),
          { concurrency: "unbounded" }
        )
        expect(many.map((x) => x.nonce)).toEqual(Array.from({ length: 16 }, (_, i) => String(i)))
        // Raw oversized header over real QUIC: that stream only.
        const raw = yield* rawExchange(connA, new Uint8Array([0, 0x10, 0, 0]))
        expect(raw.messages[0]).toMatchObject({ _tag: "Defect", defect: { _tag: "RpcMessageTooLargeError" } })
        const unknown = yield* rawExchange(connA, request("nodesNope", {}, "9"))
        expect(failureOf(unknown.messages[0])).toMatchObject({ _tag: "RpcUnknownMethodError" })
        expect(yield* client.nodesPing({ nonce: "after" })).toEqual({ nonce: "after" })
      }).pipe(Effect.scoped)
    )
  })
}
