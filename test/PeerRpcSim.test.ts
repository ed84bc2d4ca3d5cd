import { describe, expect, it } from "@effect/vitest"
import { Deferred, Duration, Effect, Exit, Fiber, Option, Stream } from "effect"
import * as PeerRpcSim from "../src/layers/PeerRpcSim.js"
import type { Contact, WireContact } from "../src/services/Contact.js"
import * as NodeId from "../src/services/NodeId.js"
import { type AgentHandlers, HolePunchRefused } from "../src/services/PeerRpc.js"
import { signedRequest } from "./fixtures/holePunchRequest.js"
import { idOf, simPair } from "./fixtures/simPair.js"

const contact: WireContact = { nodeIdEncoded: NodeId.encode(idOf(9)), host: "1.0.0.9", port: 1314 }
const farther: WireContact = { nodeIdEncoded: NodeId.encode(idOf(8)), host: "1.0.0.8", port: 1314 }

/** Handlers that record who called. */
const recording = () => {
  const callers: Contact[] = []
  const handlers: AgentHandlers = {
    touch: (caller) => Effect.sync(() => void callers.push(caller)),
    closestNodes: () => Effect.succeed([contact, farther]),
    holePunchSignal: () =>
      Effect.fail(
        new HolePunchRefused({ reason: "rate-limited", detail: "rate limited: too many hole-punch requests" })
      )
  }
  return { callers, handlers }
}

const pair = simPair

describe("PeerRpcSim", () => {
  it.effect("a call takes one round trip of the link and runs the handler with the proven caller", () =>
    pair(
      ({ sim, a, b, now }) =>
        Effect.gen(function* () {
          const rpc = PeerRpcSim.make(sim, Duration.seconds(15))
          const { callers, handlers } = recording()
          yield* rpc.serve(b, handlers)
          const client = yield* rpc.client(a)
          const start = now()
          yield* client.ping
          expect(now() - start).toBe(80)
          // The caller is what b's end of the connection proves: a's NodeId and its NAT's address.
          expect(callers).toHaveLength(1)
          expect(NodeId.equals(callers[0]!.nodeId, idOf(1))).toBe(true)
          expect(callers[0]!.host).toBe(b.remoteHost)
          expect(callers[0]!.port).toBe(b.remotePort)
          expect(callers[0]!.host).not.toBe(a.localHost)
          const contacts = yield* Stream.runCollect(client.closestNodes(idOf(9)))
          expect([...contacts]).toEqual([contact, farther])
          // The lookup's form: the first `limit` of them, in one round trip.
          expect(yield* client.closestNodesUpTo(idOf(9), 1, Duration.seconds(5))).toEqual([contact])
          const refused = yield* client
            .holePunchSignal({
              request: signedRequest({ seed: 1, target: idOf(2), addresses: [], timestamp: 0 })
            })
            .pipe(Effect.flip)
          expect(refused.reason).toBe("remote")
          expect(refused.detail).toContain("rate limited")
          expect(now() - start).toBe(320)
        }),
      "restricted"
    )
  )

  it.effect("a request that arrives before the end is served waits for `serve`", () =>
    pair(({ sim, a, b, now }) =>
      Effect.gen(function* () {
        const rpc = PeerRpcSim.make(sim, Duration.seconds(15))
        const client = yield* rpc.client(a)
        const call = yield* Effect.fork(client.ping)
        yield* Effect.sleep("500 millis")
        expect(Option.isNone(yield* Fiber.poll(call))).toBe(true)
        yield* rpc.serve(b, recording().handlers)
        yield* Fiber.join(call)
        // Dial (80) + accept (40) + 500 ms waiting + the answer's way back (40).
        expect(now()).toBe(660)
      })
    )
  )

  it.effect("a crashed peer never answers: the call times out after the call timeout", () =>
    pair(({ sim, a, b, now }) =>
      Effect.gen(function* () {
        const rpc = PeerRpcSim.make(sim, Duration.seconds(3))
        yield* rpc.serve(b, recording().handlers)
        yield* sim.crash(b.localHost)
        const start = now()
        const error = yield* (yield* rpc.client(a)).ping.pipe(Effect.flip)
        expect(error.reason).toBe("timeout")
        expect(now() - start).toBe(3000)
      })
    )
  )

  it.effect("our end closing during a call fails it with a connection error; the handler is stopped", () =>
    pair(({ sim, a, b, now }) =>
      Effect.gen(function* () {
        const rpc = PeerRpcSim.make(sim, Duration.seconds(15))
        const interrupted = yield* Deferred.make<void>()
        yield* rpc.serve(b, {
          ...recording().handlers,
          closestNodes: () =>
            Effect.never.pipe(Effect.onInterrupt(() => Deferred.succeed(interrupted, undefined)))
        })
        const client = yield* rpc.client(a)
        const start = now()
        const call = yield* Effect.fork(Stream.runCollect(client.closestNodes(idOf(3))))
        yield* Effect.sleep("1 second")
        yield* a.close("done")
        const error = yield* Fiber.join(call).pipe(Effect.flip)
        expect(error.reason).toBe("connection")
        // b hears of the close one latency later and stops the handler it was running.
        yield* Deferred.await(interrupted)
        expect(now() - start).toBe(1000 + 40)
        const after = yield* client.ping.pipe(Effect.exit)
        expect(Exit.isFailure(after)).toBe(true)
      })
    )
  )

  it.effect("a closest-nodes query gives up after its own timeout, shorter than the call timeout", () =>
    pair(({ sim, a, b, now }) =>
      Effect.gen(function* () {
        const rpc = PeerRpcSim.make(sim, Duration.seconds(15))
        yield* rpc.serve(b, { ...recording().handlers, closestNodes: () => Effect.never })
        const client = yield* rpc.client(a)
        const start = now()
        const error = yield* client.closestNodesUpTo(idOf(3), 20, Duration.seconds(2)).pipe(Effect.flip)
        expect(error.reason).toBe("timeout")
        expect(error.detail).toContain("2s")
        expect(now() - start).toBe(2000)
      })
    )
  )

  it.effect("across a partition the call is held, and answered after the heal", () =>
    pair(({ sim, a, b, now }) =>
      Effect.gen(function* () {
        const rpc = PeerRpcSim.make(sim, Duration.seconds(15))
        yield* rpc.serve(b, recording().handlers)
        const id = yield* sim.partition([a.localHost], [b.localHost])
        const start = now()
        const call = yield* Effect.fork((yield* rpc.client(a)).ping)
        yield* Effect.sleep("5 seconds")
        expect(Option.isNone(yield* Fiber.poll(call))).toBe(true)
        yield* sim.heal(id)
        yield* Fiber.join(call)
        expect(now() - start).toBe(5000 + 80)
      })
    )
  )

  it.effect("each connection is answered by the handlers it was served with", () =>
    pair(({ sim, a, b }) =>
      Effect.gen(function* () {
        const rpc = PeerRpcSim.make(sim, Duration.seconds(15))
        const answering = (c: WireContact): AgentHandlers => ({
          ...recording().handlers,
          closestNodes: () => Effect.succeed([c])
        })
        // One PeerRpc serves both ends, each with handlers of its own.
        yield* rpc.serve(b, answering(contact))
        yield* rpc.serve(a, answering(farther))
        expect(yield* (yield* rpc.client(a)).closestNodesUpTo(idOf(3), 20, Duration.seconds(5))).toEqual([
          contact
        ])
        expect(yield* (yield* rpc.client(b)).closestNodesUpTo(idOf(3), 20, Duration.seconds(5))).toEqual([
          farther
        ])
      })
    )
  )
})
