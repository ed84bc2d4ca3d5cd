/**
 * Polykey's JSON-RPC wire (src/internal/polykey/): the value parser on any split of the bytes,
 * the 64 KiB limit, malformed input; calls between rpcClient and rpcServer on an in-memory
 * connection pair (unary, server stream, refused methods, timeouts, interruption, a server
 * stopping), and the exact bytes the server writes.
 */
import { describe, expect, it } from "@effect/vitest"
import { Deferred, Duration, Effect, Either, Exit, Fiber, Option, Ref, Scope, TestClock } from "effect"
import * as Contacts from "../src/internal/polykey/contacts.js"
import * as JsonRpc from "../src/internal/polykey/jsonRpc.js"
import * as NodeMethods from "../src/internal/polykey/nodeMethods.js"
import * as RpcClient from "../src/internal/polykey/rpcClient.js"
import {
  type PolykeyMethods,
  servePolykeyStream,
  serverStreamMethod,
  type UnaryMethod,
  unaryMethod
} from "../src/internal/polykey/rpcServer.js"
import * as PolykeyPeer from "../src/internal/polykeyPeer.js"
import type { Contact, WireContact } from "../src/services/Contact.js"
import * as NodeId from "../src/services/NodeId.js"
import type { AgentHandlers, PeerCallError } from "../src/services/PeerRpc.js"
import type { QuicConnection } from "../src/services/QuicTransport.js"
import { endpoint, makeConnectionPair } from "./fixtures/memoryConnection.js"
import { readAll, writeAll } from "./fixtures/socketText.js"

const encoder = new TextEncoder()
const bytes = (text: string) => encoder.encode(text)

/** Every value `chunks` hold, or the parser's error. */
const parseAll = (chunks: ReadonlyArray<Uint8Array>, limit?: number) => {
  const parser = new JsonRpc.JsonValueParser(limit)
  const values: Array<unknown> = []
  for (const chunk of chunks) {
    const pushed = parser.push(chunk)
    if (Either.isLeft(pushed)) return pushed
    values.push(...pushed.right)
  }
  return Either.map(parser.end(), (last) => [...values, ...last])
}

describe("JsonValueParser", () => {
  const values: ReadonlyArray<unknown> = [
    {
      jsonrpc: "2.0",
      method: "m",
      params: { s: 'a "quoted" {brace} [bracket] \\ back', u: "é✓ 😀" },
      id: null
    },
    [1, [2, { x: [] }], "}"],
    'a string with \\" and }',
    { empty: {} },
    -12.5e3,
    { after: "a number" },
    true,
    ["after a literal"],
    null
  ]
  // Back to back, as @matrixai/rpc writes them; a literal needs a delimiter before the next literal.
  const text = values.map((v) => JSON.stringify(v)).join("")
  const all = bytes(text)

  it("reads values written back to back, split at any byte or merged into one chunk", () => {
    expect(parseAll([all])).toEqual(Either.right(values))
    for (let i = 0; i <= all.length; i++)
      expect(parseAll([all.subarray(0, i), all.subarray(i)])).toEqual(Either.right(values))
    expect(parseAll(Array.from(all, (b) => Uint8Array.of(b)))).toEqual(Either.right(values))
    // Whitespace between values is skipped.
    expect(parseAll([bytes(' {"a":1}\n\t {"b":2} ')])).toEqual(Either.right([{ a: 1 }, { b: 2 }]))
  })

  it("takes a value of exactly the limit; one byte more is refused before it completes", () => {
    const exact = `{"p":"${"x".repeat(JsonRpc.MAX_MESSAGE_BYTES - 8)}"}`
    expect(bytes(exact).length).toBe(JsonRpc.MAX_MESSAGE_BYTES)
    expect(parseAll([bytes(exact)])).toEqual(Either.right([{ p: "x".repeat(JsonRpc.MAX_MESSAGE_BYTES - 8) }]))
    const over = bytes(`{"p":"${"x".repeat(JsonRpc.MAX_MESSAGE_BYTES - 7)}"}`)
    // Split in four chunks; the opening part alone (no closing brace yet) is refused.
    const quarter = Math.floor(over.length / 4)
    const parts = [0, 1, 2, 3].map((i) =>
      over.subarray(i * quarter, i === 3 ? over.length : (i + 1) * quarter)
    )
    const refused = parseAll(parts)
    expect(Either.isLeft(refused) && refused.left._tag).toBe("JsonRpcMessageTooLarge")
    const early = parseAll([over.subarray(0, JsonRpc.MAX_MESSAGE_BYTES + 1)])
    expect(Either.isLeft(early) && early.left._tag).toBe("JsonRpcMessageTooLarge")
    // The limit is per value: many values in one chunk are fine.
    const many = bytes(`{"p":"${"y".repeat(40_000)}"}`.repeat(4))
    expect(Either.map(parseAll([many]), (v) => v.length)).toEqual(Either.right(4))
  })

  it("refuses malformed input with a typed error", () => {
    const malformed = [
      '{"a":}',
      "}",
      "[1}",
      '{"a":1]',
      "@",
      '{"a":1', // truncated: the stream ends inside the value
      "truex"
    ]
    for (const input of malformed) {
      const result = parseAll([bytes(input)])
      expect(Either.isLeft(result) && result.left._tag, input).toBe("JsonRpcParseError")
    }
    // A closing bracket that does not match is refused at once, before the value would end.
    const mismatched = new JsonRpc.JsonValueParser().push(bytes('[{"a":1]'))
    expect(Either.isLeft(mismatched) && mismatched.left._tag).toBe("JsonRpcParseError")
    const badUtf8 = parseAll([Uint8Array.of(0x22, 0xff, 0xfe, 0x22)])
    expect(Either.isLeft(badUtf8) && badUtf8.left._tag).toBe("JsonRpcParseError")
  })
})

describe("JSON-RPC messages", () => {
  it("answers hold exactly one of result and error, with Polykey's id", () => {
    expect(JsonRpc.parseResponse({ jsonrpc: "2.0", result: { a: 1 }, id: null })).toEqual(
      Either.right({ _tag: "Result", result: { a: 1 } })
    )
    const error = { code: -32006, message: "boom" }
    expect(JsonRpc.parseResponse({ jsonrpc: "2.0", error, id: null })).toEqual(
      Either.right({ _tag: "Error", error })
    )
    for (const bad of [
      { jsonrpc: "2.0", result: 1, error, id: null },
      { jsonrpc: "2.0", id: null },
      { jsonrpc: "2.0", result: 1 },
      { jsonrpc: "1.0", result: 1, id: null },
      { jsonrpc: "2.0", error: { code: "x", message: "m" }, id: null },
      [1]
    ])
      expect(Either.isLeft(JsonRpc.parseResponse(bad))).toBe(true)
  })

  it("the metadata timeout: milliseconds, null for none, absent when not said", () => {
    const header = JsonRpc.request("m", { a: 1 }, Duration.seconds(2))
    expect(header).toEqual({
      jsonrpc: "2.0",
      method: "m",
      params: { a: 1, metadata: { timeout: 2000 } },
      id: null
    })
    const read = (params: unknown) => JsonRpc.requestTimeout({ jsonrpc: "2.0", method: "m", params })
    expect(read(header.params)).toEqual(Duration.millis(2000))
    expect(read({ metadata: { timeout: null } })).toEqual(Duration.infinity)
    expect(read({})).toBeUndefined()
    expect(read({ metadata: { timeout: "soon" } })).toBeUndefined()
    expect(JsonRpc.request("m", {}, Duration.infinity).params.metadata.timeout).toBeNull()
  })

  it("an error message is what Polykey's client rebuilds as a remote Error", () => {
    const message = JsonRpc.errorMessage(-32601, "no such method", 0)
    expect(message).toEqual({
      jsonrpc: "2.0",
      error: {
        code: -32601,
        message: "no such method",
        data: {
          type: "Error",
          message: "no such method",
          data: { stack: "Error: no such method", timestamp: "1970-01-01T00:00:00.000Z" }
        }
      },
      id: null
    })
    expect(JsonRpc.describeError(message.error)).toBe("Error: no such method (code -32601)")
    // A Polykey error class: the inner message is the one told.
    expect(
      JsonRpc.describeError({
        code: -32006,
        message: "outer",
        data: { type: "ErrorNodeGraphNodeIdNotFound", data: { message: "inner", timestamp: "x", data: {} } }
      })
    ).toBe("ErrorNodeGraphNodeIdNotFound: inner (code -32006)")
  })
})

const peer = endpoint(1)
const contactOf = (i: number): WireContact => {
  const e = endpoint(i)
  return { nodeIdEncoded: NodeId.encode(e.nodeId), host: e.host, port: e.port } as WireContact
}

/** The peer as `b`'s side of the pair sees it. */
const callerOf = (connection: QuicConnection): Contact => ({
  nodeId: connection.remoteNodeId,
  host: connection.remoteHost,
  port: connection.remotePort
})

/** `methods` served on b's side of an in-memory pair (in the `serving` scope); a calls. */
const setup = (methods: PolykeyMethods, timeout?: Duration.DurationInput) =>
  Effect.gen(function* () {
    const { a, b } = yield* makeConnectionPair(peer, endpoint(2))
    const serving = yield* Scope.make()
    yield* Effect.addFinalizer(() => Scope.close(serving, Exit.void))
    const served = yield* Ref.make(0)
    yield* b
      .handleStreams((socket) =>
        servePolykeyStream(socket, callerOf(b), methods, timeout === undefined ? {} : { timeout }).pipe(
          Effect.ensuring(Ref.update(served, (n) => n + 1))
        )
      )
      .pipe(Scope.extend(serving))
    return { a, b, serving, served }
  })

/** Writes `header` on a new stream, ends our side, and reads the answer's JSON values until the server's FIN. */
const rawCall = (connection: QuicConnection, header: string | Uint8Array) =>
  Effect.scoped(
    Effect.gen(function* () {
      const socket = yield* connection.openStream
      yield* writeAll(socket, [header])
      const text = yield* readAll(socket)
      return { text, values: Either.getOrThrow(parseAll([bytes(text)])) }
    })
  )

const expectFailure = (
  exit: Exit.Exit<unknown, PeerCallError>,
  reason: PeerCallError["reason"],
  detail: RegExp
) => {
  expect(Exit.isFailure(exit)).toBe(true)
  if (Exit.isFailure(exit)) {
    const error = exit.cause._tag === "Fail" ? exit.cause.error : undefined
    expect(error?.reason).toBe(reason)
    expect(error?.detail).toMatch(detail)
  }
}

const timeout = { timeout: Duration.seconds(30) }

describe("rpcClient and rpcServer in memory", () => {
  it.scoped(
    "a unary call: the params as sent (with the metadata timeout), the caller from the connection",
    () =>
      Effect.gen(function* () {
        const { a } = yield* setup({
          echo: unaryMethod((caller, params) =>
            Effect.succeed({ params, caller: NodeId.encode(caller.nodeId), port: caller.port })
          )
        })
        const result = yield* RpcClient.unary(a, "echo", { x: [1, "two"] }, timeout)
        expect(result).toEqual({
          params: { x: [1, "two"], metadata: { timeout: 30_000 } },
          caller: NodeId.encode(peer.nodeId),
          port: peer.port
        })
      })
  )

  it.scoped(
    "nodesClosestActiveConnectionsGet answers the nodes connected now, nearest the target first, at most 20, the caller left out",
    () =>
      Effect.gen(function* () {
        // Connections to nodes 3…30, and one to the caller (node 1); node 31 is only in the graph.
        const connected = [1, ...Array.from({ length: 28 }, (_, i) => i + 3)]
        const connectionOf = (i: number) => {
          const e = endpoint(i)
          return {
            remoteNodeId: e.nodeId,
            remoteHost: e.host,
            remotePort: e.port
          } as unknown as QuicConnection
        }
        const agent: AgentHandlers = {
          touch: () => Effect.void,
          closestNodes: () => Effect.succeed([contactOf(31)]),
          holePunchSignal: () => Effect.void,
          signalling: {
            self: () => endpoint(2).nodeId,
            sign: () => Effect.succeed(new Uint8Array(64)),
            punch: () => Effect.void,
            connectionTo: () => Option.none(),
            connections: () => connected.map(connectionOf),
            admit: () => Effect.succeed(true)
          }
        }
        const { a } = yield* setup(PolykeyPeer.methods(agent))
        const target = endpoint(9).nodeId
        // The XOR distance of node i (every byte i) to node 9 is every byte i ^ 9.
        const nearest = connected
          .filter((i) => i !== 1)
          .sort((x, y) => (x ^ 9) - (y ^ 9))
          .slice(0, 20)
        expect(yield* NodeMethods.closestActiveConnections(a, target, timeout)).toEqual(
          nearest.map(contactOf)
        )
        // The graph still answers nodesClosestLocalNodesGet.
        expect(yield* NodeMethods.closestLocalNodes(a, target, timeout)).toEqual([contactOf(31)])
      })
  )

  it.scoped("a server-stream call: Polykey's contact messages, mapped back to WireContacts", () =>
    Effect.gen(function* () {
      const touched = yield* Ref.make(0)
      const asked = yield* Ref.make<ReadonlyArray<string>>([])
      const answer = [contactOf(3), contactOf(4), { ...contactOf(5), port: 0 }, contactOf(6)]
      const agent: AgentHandlers = {
        touch: () => Ref.update(touched, (n) => n + 1),
        closestNodes: (_caller, target) =>
          Ref.update(asked, (t) => [...t, NodeId.encode(target)]).pipe(Effect.as(answer)),
        holePunchSignal: () => Effect.void
      }
      const { a } = yield* setup(NodeMethods.polykeyMethods(NodeMethods.fromAgentHandlers(agent)))
      const target = endpoint(9).nodeId
      const contacts = yield* NodeMethods.closestLocalNodes(a, target, timeout)
      // The contact without a usable port is not sent.
      expect(contacts).toEqual([contactOf(3), contactOf(4), contactOf(6)])
      expect(yield* NodeMethods.closestLocalNodes(a, target, { ...timeout, limit: 2 })).toEqual([
        contactOf(3),
        contactOf(4)
      ])
      expect(yield* NodeMethods.closestActiveConnections(a, target, timeout)).toEqual(contacts)
      expect(yield* Ref.get(touched)).toBe(3)
      expect(yield* Ref.get(asked)).toEqual([
        NodeId.encode(target),
        NodeId.encode(target),
        NodeId.encode(target)
      ])
      // A target that is not a NodeId: invalid params.
      const bad = yield* Effect.exit(
        RpcClient.serverStream(a, "nodesClosestLocalNodesGet", { nodeIdEncoded: "v0" }, timeout)
      )
      expectFailure(bad, "remote", /nodeIdEncoded.*code -32602/)
    })
  )

  it.scoped("unknown and refused methods get a JSON-RPC error, then FIN, on the wire", () =>
    Effect.gen(function* () {
      const { a } = yield* setup(NodeMethods.polykeyMethods(NodeMethods.fromAgentHandlers(stubAgent)))
      for (const method of [
        "vaultsScan",
        "nodesClaimsGet",
        "notificationsSend",
        "nodesCrossSignClaim",
        "toString"
      ]) {
        const { values } = yield* rawCall(
          a,
          JSON.stringify({ jsonrpc: "2.0", method, params: { metadata: { timeout: 5000 } }, id: null })
        )
        // readAll returned: the server ended the stream with FIN (a reset fails the read).
        expect(values).toEqual([
          {
            jsonrpc: "2.0",
            error: {
              code: -32601,
              message: `method "${method}" is not served by this node`,
              data: {
                type: "Error",
                message: `method "${method}" is not served by this node`,
                data: {
                  stack: `Error: method "${method}" is not served by this node`,
                  timestamp: expect.any(String)
                }
              }
            },
            id: null
          }
        ])
      }
      const unary = yield* Effect.exit(RpcClient.unary(a, "nodesClaimNetworkSign", {}, timeout))
      expectFailure(unary, "remote", /"nodesClaimNetworkSign" is not served.*code -32601/)
      const stream = yield* Effect.exit(RpcClient.serverStream(a, "vaultsScan", {}, timeout))
      expectFailure(stream, "remote", /"vaultsScan" is not served/)
    })
  )

  it.scoped(
    "nodesConnectionSignalFinal is always answered {}: no provider, or one that fails, dies or hangs",
    () =>
      Effect.gen(function* () {
        const withFinal = (handle: UnaryMethod["handle"]) =>
          NodeMethods.polykeyMethods({
            ...NodeMethods.fromAgentHandlers(stubAgent),
            nodesConnectionSignalFinal: unaryMethod(handle)
          })
        const { a } = yield* setup(NodeMethods.polykeyMethods(NodeMethods.fromAgentHandlers(stubAgent)))
        expect(yield* RpcClient.unary(a, "nodesConnectionSignalFinal", {}, timeout)).toEqual({})
        const failing = yield* setup(
          withFinal(() => Effect.fail(new JsonRpc.PolykeyRpcError({ code: -32006, detail: "refused" })))
        )
        expect(yield* RpcClient.unary(failing.a, "nodesConnectionSignalFinal", {}, timeout)).toEqual({})
        const dying = yield* setup(withFinal(() => Effect.die("bug")))
        expect(yield* RpcClient.unary(dying.a, "nodesConnectionSignalFinal", {}, timeout)).toEqual({})
        const hanging = yield* setup(withFinal(() => Effect.never))
        const call = yield* Effect.fork(RpcClient.unary(hanging.a, "nodesConnectionSignalFinal", {}, timeout))
        yield* TestClock.adjust(Duration.seconds(15))
        expect(yield* Fiber.join(call)).toEqual({})
        // Other methods still get their errors.
        expectFailure(
          yield* Effect.exit(RpcClient.unary(a, "nodesConnectionSignalInitial", {}, timeout)),
          "remote",
          /not served/
        )
      })
  )

  it.scoped("malformed, oversized and missing headers get an error message and FIN", () =>
    Effect.gen(function* () {
      const { a } = yield* setup({})
      const codeOf = (values: ReadonlyArray<unknown>) =>
        values.map((v) => (v as { error?: { code?: number } }).error?.code)
      expect(codeOf((yield* rawCall(a, '{"jsonrpc":"2.0","method":}')).values)).toEqual([-32700])
      expect(codeOf((yield* rawCall(a, '{"jsonrpc":"2.0","params":{},"id":null}')).values)).toEqual([-32700])
      const huge = `{"jsonrpc":"2.0","method":"m","params":{"p":"${"z".repeat(JsonRpc.MAX_MESSAGE_BYTES)}"},"id":null}`
      expect(codeOf((yield* rawCall(a, huge)).values)).toEqual([-32003])
      expect(codeOf((yield* rawCall(a, new Uint8Array(0))).values)).toEqual([-32014])
    })
  )

  it.scoped("a stream without a header gets -32008 after the server's timeout, then FIN", () =>
    Effect.gen(function* () {
      const { a } = yield* setup({})
      const read = yield* Effect.fork(
        Effect.scoped(Effect.flatMap(a.openStream, (socket) => readAll(socket)))
      )
      yield* TestClock.adjust(Duration.seconds(15))
      // The server waits (2 s at most) for the caller to end its side before its FIN.
      yield* TestClock.adjust(Duration.seconds(2))
      const values = Either.getOrThrow(parseAll([bytes(yield* Fiber.join(read))]))
      expect(values).toMatchObject([{ error: { code: -32008, message: "no call header in time" } }])
    })
  )

  it.scoped("the caller's metadata timeout shortens the server's: the call gets -32008 when it passes", () =>
    Effect.gen(function* () {
      const started = yield* Deferred.make<void>()
      const { a } = yield* setup({
        slow: unaryMethod(() => Deferred.succeed(started, undefined).pipe(Effect.zipRight(Effect.never)))
      })
      const header = JSON.stringify({
        jsonrpc: "2.0",
        method: "slow",
        params: { metadata: { timeout: 1000 } },
        id: null
      })
      const call = yield* Effect.fork(rawCall(a, header))
      yield* Deferred.await(started)
      yield* TestClock.adjust(Duration.millis(999))
      expect(Option.isNone(yield* Fiber.poll(call))).toBe(true)
      yield* TestClock.adjust(Duration.millis(1))
      const { values } = yield* Fiber.join(call)
      expect(values).toMatchObject([{ error: { code: -32008, message: "slow did not answer within 1s" } }])
    })
  )

  it.scoped("without metadata, the server's own timeout (15 s) bounds the handler", () =>
    Effect.gen(function* () {
      const started = yield* Deferred.make<void>()
      const { a } = yield* setup({
        slow: serverStreamMethod(() =>
          Deferred.succeed(started, undefined).pipe(Effect.zipRight(Effect.never))
        )
      })
      const call = yield* Effect.fork(
        Effect.exit(RpcClient.serverStream(a, "slow", {}, { timeout: Duration.minutes(1) }))
      )
      yield* Deferred.await(started)
      yield* TestClock.adjust(Duration.seconds(15))
      expectFailure(yield* Fiber.join(call), "remote", /slow did not answer within 15s \(code -32008\)/)
    })
  )

  it.scoped("the client's own timeout ends the call with reason timeout, its side of the stream ended", () =>
    Effect.gen(function* () {
      const { a, b } = yield* makeConnectionPair()
      // A peer that reads the call and never answers.
      const received = yield* Deferred.make<string>()
      yield* b.handleStreams((socket) =>
        readAll(socket).pipe(
          Effect.flatMap((text) => Deferred.succeed(received, text)),
          Effect.zipRight(Effect.never),
          Effect.orDie
        )
      )
      const call = yield* Effect.fork(
        Effect.exit(RpcClient.unary(a, "slow", {}, { timeout: Duration.seconds(2) }))
      )
      // readAll returned: the caller ended its side (FIN) after the header.
      expect(JSON.parse(yield* Deferred.await(received))).toMatchObject({ method: "slow" })
      yield* TestClock.adjust(Duration.seconds(2))
      expectFailure(yield* Fiber.join(call), "timeout", /no answer within 2s/)
    })
  )

  it.scoped("a call interrupted mid-way ends its stream cleanly: FIN after the header, reading stopped", () =>
    Effect.gen(function* () {
      const { a, b } = yield* makeConnectionPair()
      const received = yield* Deferred.make<string>()
      const laterWrite = yield* Deferred.make<Exit.Exit<void, unknown>>()
      const proceed = yield* Deferred.make<void>()
      yield* b.handleStreams((socket) =>
        Effect.gen(function* () {
          // readAll succeeds only if the caller ends its side with FIN.
          yield* Deferred.succeed(received, yield* readAll(socket))
          yield* Deferred.await(proceed)
          const exit = yield* Effect.exit(
            Effect.scoped(
              Effect.flatMap(socket.writer, (write) => write(JsonRpc.encode(JsonRpc.resultMessage(1))))
            )
          )
          yield* Deferred.succeed(laterWrite, exit)
        }).pipe(Effect.orDie)
      )
      const call = yield* Effect.fork(
        RpcClient.serverStream(a, "nodesClosestLocalNodesGet", { nodeIdEncoded: "x" }, timeout)
      )
      const header = JSON.parse(yield* Deferred.await(received))
      expect(header).toEqual({
        jsonrpc: "2.0",
        method: "nodesClosestLocalNodesGet",
        params: { nodeIdEncoded: "x", metadata: { timeout: 30_000 } },
        id: null
      })
      yield* Fiber.interrupt(call)
      yield* Deferred.succeed(proceed, undefined)
      // The caller stopped reading when it was interrupted: the server's write fails.
      expect(Exit.isFailure(yield* Deferred.await(laterWrite))).toBe(true)
    })
  )

  it.scoped(
    "a server stopping with calls in flight answers them (an error, or the method's insteadOfError), then FIN",
    () =>
      Effect.gen(function* () {
        const started = yield* Ref.make(0)
        const interrupted = yield* Ref.make(0)
        const hang = () =>
          Ref.update(started, (n) => n + 1).pipe(
            Effect.zipRight(Effect.never),
            Effect.onInterrupt(() => Ref.update(interrupted, (n) => n + 1))
          )
        const { a, serving, served } = yield* setup({
          stream: serverStreamMethod(hang),
          final: unaryMethod(hang, { insteadOfError: {} })
        })
        const streamCall = yield* Effect.fork(Effect.exit(RpcClient.serverStream(a, "stream", {}, timeout)))
        const finalCall = yield* Effect.fork(Effect.exit(RpcClient.unary(a, "final", {}, timeout)))
        yield* Ref.get(started).pipe(Effect.repeat({ until: (n) => n === 2 }))
        // Closing the serving scope interrupts the stream fibers and waits for them to end.
        yield* Scope.close(serving, Exit.void)
        expect(yield* Ref.get(interrupted)).toBe(2)
        expectFailure(yield* Fiber.join(streamCall), "remote", /the node is stopping \(code -32001\)/)
        expect(yield* Fiber.join(finalCall)).toEqual(Exit.succeed({}))
        expect(yield* Ref.get(served)).toBe(2)
      })
  )
})

const stubAgent: AgentHandlers = {
  touch: () => Effect.void,
  closestNodes: () => Effect.succeed([]),
  holePunchSignal: () => Effect.void
}

describe("contacts", () => {
  const id = (i: number) => NodeId.encode(endpoint(i).nodeId)
  const data = (mode: string, connectedTime: number) => ({ mode, connectedTime, scopes: ["global"] })

  it("reads a Polykey contact: its best address, its other IP addresses, bad ones dropped", () => {
    const contact = Contacts.fromNodeContactMessage({
      nodeIdEncoded: id(3),
      nodeContact: {
        "10.0.0.3-4000": data("signal", 900),
        "10.0.0.4-4001": data("direct", 100),
        "::1-4002": data("direct", 500),
        "seed.example.com-4003": data("direct", 50),
        "10.0.0.5-0": data("direct", 999),
        "10.0.0.6-70000": data("direct", 999),
        "10.0.0.7-x": data("direct", 999),
        "bad host!-4004": data("direct", 999),
        "10.0.0.8-4005": { mode: "teleport", connectedTime: 999, scopes: [] },
        "[::ffff:10.0.0.9]-4006": data("relay", 1)
      }
    })
    expect(contact).toEqual(
      Option.some({
        nodeIdEncoded: id(3),
        host: "::1",
        port: 4002,
        addresses: [
          { host: "10.0.0.4", port: 4001 },
          { host: "10.0.0.3", port: 4000 },
          { host: "10.0.0.9", port: 4006 }
        ]
      })
    )
    for (const bad of [
      { nodeIdEncoded: "vnot-a-node-id", nodeContact: { "10.0.0.1-1": data("direct", 1) } },
      { nodeIdEncoded: id(3), nodeContact: { "10.0.0.1-0": data("direct", 1) } },
      { nodeIdEncoded: id(3) },
      "string"
    ])
      expect(Contacts.fromNodeContactMessage(bad)).toEqual(Option.none())
  })

  it("writes a contact as Polykey's message, and reads it back", () => {
    const contact = { ...contactOf(3), addresses: [{ host: "192.0.2.1", port: 5000 }] } as WireContact
    const message = Option.getOrThrow(Contacts.toNodeContactMessage(contact, 1234))
    expect(message).toEqual({
      nodeIdEncoded: contact.nodeIdEncoded,
      nodeContact: {
        "10.0.0.3-40003": { mode: "direct", connectedTime: 1234, scopes: ["global"] },
        "192.0.2.1-5000": { mode: "direct", connectedTime: 1234, scopes: ["global"] }
      }
    })
    expect(Contacts.fromNodeContactMessage(message)).toEqual(Option.some(contact))
    expect(Contacts.toNodeContactMessage({ ...contactOf(3), port: 0 } as WireContact)).toEqual(Option.none())
  })

  it("active connections: the primary connection's address, both ways", () => {
    const message = Option.getOrThrow(Contacts.toActiveConnectionMessage(contactOf(4)))
    expect(message).toEqual({
      nodeId: contactOf(4).nodeIdEncoded,
      connections: { "10.0.0.4-40004": { host: "10.0.0.4", port: 40004, primary: true } }
    })
    expect(Contacts.fromActiveConnectionMessage(message)).toEqual(Option.some(contactOf(4)))
    const polykey = {
      nodeId: id(5),
      connections: {
        c1: { host: "10.0.0.1", port: 1, primary: false, timeout: 1000 },
        c2: { host: "10.0.0.2", hostName: "peer.example.com", port: 2, primary: true },
        c3: { host: "10.0.0.3", port: 99999, primary: true }
      }
    }
    expect(Contacts.fromActiveConnectionMessage(polykey)).toEqual(
      Option.some({ nodeIdEncoded: id(5), host: "10.0.0.2", port: 2 })
    )
    expect(Contacts.fromActiveConnectionMessage({ nodeId: "v", connections: polykey.connections })).toEqual(
      Option.none()
    )
  })
})
