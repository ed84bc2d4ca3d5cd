import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer, Stream } from "effect"
import * as PeerRpcLive from "../src/layers/PeerRpcLive.js"
import type { WireContact } from "../src/services/Contact.js"
import * as NodeId from "../src/services/NodeId.js"
import { type AgentHandlers, PeerRpc } from "../src/services/PeerRpc.js"
import type { QuicConnection } from "../src/services/QuicTransport.js"
import { RpcConfig } from "../src/services/RpcServer.js"
import { idOf, simPair } from "./fixtures/simPair.js"

const handlers: AgentHandlers = {
  touch: () => Effect.void,
  closestNodes: () => Effect.succeed([]),
  holePunchSignal: () => Effect.void
}

/** `connection`, counting the streams opened on it and the ones closed again. */
const counting = (connection: QuicConnection) => {
  const counts = { opened: 0, closed: 0 }
  const openStream = Effect.tap(connection.openStream, () =>
    Effect.zipRight(
      Effect.sync(() => counts.opened++),
      Effect.addFinalizer(() => Effect.sync(() => counts.closed++))
    )
  )
  const wrapped = new Proxy(connection, {
    get: (target, key) => {
      if (key === "openStream") return openStream
      const value = Reflect.get(target, key, target)
      return typeof value === "function" ? value.bind(target) : value
    }
  })
  return { connection: wrapped, counts }
}

describe("PeerRpcLive client", () => {
  it.effect(
    "a client's stream closes after it has been idle, and the next call opens a new one",
    () =>
      simPair(({ a, b }) =>
        Effect.gen(function* () {
          const rpc = Context.get(
            yield* Layer.build(PeerRpcLive.layer.pipe(Layer.provide(RpcConfig.layer()))),
            PeerRpc
          )
          yield* rpc.serve(b, handlers)
          const { connection, counts } = counting(a)
          const client = yield* rpc.client(connection)
          // Nothing until the first call; then one stream carries every call.
          expect(counts.opened).toBe(0)
          yield* client.ping
          yield* client.ping
          expect(counts).toEqual({ opened: 1, closed: 0 })
          // A call within the idle time keeps it.
          yield* Effect.sleep("600 millis")
          yield* client.ping
          yield* Effect.sleep("600 millis")
          expect(counts).toEqual({ opened: 1, closed: 0 })
          // Idle for longer than CLIENT_IDLE_CLOSE: the stream is closed...
          yield* Effect.sleep("1 second")
          expect(counts).toEqual({ opened: 1, closed: 1 })
          // ...and the next call opens a new one.
          expect(yield* Effect.either(client.ping)).toMatchObject({ _tag: "Right" })
          expect(counts).toEqual({ opened: 2, closed: 1 })
        })
      ),
    30_000
  )
})

describe("PeerRpcLive serve", () => {
  it.effect("each connection is answered by the handlers it was served with", () =>
    simPair(({ a, b }) =>
      Effect.gen(function* () {
        const rpc = Context.get(
          yield* Layer.build(PeerRpcLive.layer.pipe(Layer.provide(RpcConfig.layer()))),
          PeerRpc
        )
        const answering = (n: number): AgentHandlers => ({
          ...handlers,
          closestNodes: () =>
            Effect.succeed([{ nodeIdEncoded: NodeId.encode(idOf(n)), host: `1.0.0.${n}`, port: 1314 }])
        })
        // One PeerRpc serves both ends, each with handlers of its own.
        yield* rpc.serve(b, answering(7))
        yield* rpc.serve(a, answering(8))
        const closest = (connection: typeof a) =>
          Effect.flatMap(rpc.client(connection), (client) => Stream.runCollect(client.closestNodes(idOf(3))))
        const hosts = (contacts: Iterable<WireContact>) => Array.from(contacts, (c) => c.host)
        expect(hosts(yield* closest(a))).toEqual(["1.0.0.7"])
        expect(hosts(yield* closest(b))).toEqual(["1.0.0.8"])
      })
    )
  )
})
