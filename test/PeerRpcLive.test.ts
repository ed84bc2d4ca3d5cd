import { describe, expect, it } from "@effect/vitest"
import { Context, Deferred, Effect, Layer, Stream } from "effect"
import * as PeerRpcLive from "../src/layers/PeerRpcLive.js"
import * as SimNet from "../src/layers/SimNetwork.js"
import { simulate } from "../src/programs/SimRuntime.js"
import type * as NodeId from "../src/services/NodeId.js"
import { type AgentHandlers, PeerRpc } from "../src/services/PeerRpc.js"
import type { QuicConnection } from "../src/services/QuicTransport.js"
import { RpcConfig } from "../src/services/RpcServer.js"

const idOf = (n: number): NodeId.NodeId => {
  const bytes = new Uint8Array(32)
  bytes[0] = n
  bytes[31] = n ^ 0x5a
  return bytes as NodeId.NodeId
}

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
      simulate(
        () =>
          Effect.gen(function* () {
            const sim = yield* SimNet.make({ seed: 1, latency: "10 millis", jitter: 0 })
            const ta = yield* sim.bind({}, idOf(1))
            const tb = yield* sim.bind({}, idOf(2))
            const accepted = yield* Deferred.make<QuicConnection>()
            yield* tb.incoming.pipe(
              Stream.take(1),
              Stream.runForEach((c) => Deferred.succeed(accepted, c)),
              Effect.forkScoped
            )
            const a = yield* ta.dial({ host: tb.host, port: tb.port, expectedNodeIds: [idOf(2)] })
            const b = yield* Deferred.await(accepted)
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
          }),
        { seed: 1 }
      ),
    30_000
  )
})
