/**
 * The parts of signed hole-punch signalling on their own: the canonical bytes and their
 * verification, the replay cache and its bound, the relay's rate windows and theirs, and
 * what the wire refuses before any handler runs (the payload schema: the group server
 * answers a payload it does not decode with `RpcInvalidRequestError`).
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Layer, Schema } from "effect"
import * as Signature from "../src/internal/holePunchSignature.js"
import { RateWindows } from "../src/internal/rateWindows.js"
import { ReplayCache } from "../src/internal/replayCache.js"
import { encodeFrame, readMessages } from "../src/internal/rpcWire.js"
import * as KeyRingTest from "../src/layers/KeyRingTest.js"
import * as PeerRpcLive from "../src/layers/PeerRpcLive.js"
import * as RpcServerLive from "../src/layers/RpcServerLive.js"
import { NodesHolePunchSignal } from "../src/services/AgentRpc.js"
import * as NodeId from "../src/services/NodeId.js"
import { RpcConfig, RpcServer } from "../src/services/RpcServer.js"
import { signedRequest } from "./fixtures/holePunchRequest.js"
import { makeConnectionPair } from "./fixtures/memoryConnection.js"

const target = KeyRingTest.nodeIdOf("sig/target")
const S = { host: "198.51.100.7", port: 4000 }
const T0 = 1_700_000_000_000
const request = (
  overrides: { at?: number; addresses?: ReadonlyArray<{ host: string; port: number }> } = {}
) =>
  signedRequest({
    seed: "sig/source",
    target,
    addresses: overrides.addresses ?? [S],
    timestamp: overrides.at ?? T0
  })

const reasonOf = (r: Either.Either<unknown, Signature.Rejection>) => (Either.isLeft(r) ? r.left.reason : "ok")

describe("holePunchSignature", () => {
  it("verifies what the source signed, at most 30 s old and 5 s ahead", () => {
    const r = request()
    const ok = Signature.verify(r, T0 + 1000)
    expect(Either.isRight(ok) && NodeId.equals(ok.right.source, KeyRingTest.nodeIdOf("sig/source"))).toBe(
      true
    )
    expect(reasonOf(Signature.verify(r, T0 + Signature.MAX_AGE_MS))).toBe("ok")
    expect(reasonOf(Signature.verify(r, T0 + Signature.MAX_AGE_MS + 1))).toBe("stale")
    expect(reasonOf(Signature.verify(r, T0 - Signature.MAX_FUTURE_SKEW_MS))).toBe("ok")
    expect(reasonOf(Signature.verify(r, T0 - Signature.MAX_FUTURE_SKEW_MS - 1))).toBe("future")
  })

  it("every signed field counts: a change to any of them breaks the signature", () => {
    const r = request()
    const changed = [
      { ...r, addresses: [{ host: S.host, port: S.port + 1 }] },
      { ...r, addresses: [S, { host: "192.0.2.66", port: 6666 }] },
      { ...r, addresses: [] },
      { ...r, timestamp: r.timestamp + 1 },
      { ...r, nonce: Uint8Array.from(r.nonce, (b, i) => (i === 0 ? b ^ 1 : b)) },
      { ...r, target: NodeId.encode(KeyRingTest.nodeIdOf("sig/elsewhere")) },
      { ...r, source: NodeId.encode(KeyRingTest.nodeIdOf("sig/victim")) },
      { ...r, signature: Uint8Array.from(r.signature, (b, i) => (i === 63 ? b ^ 0x80 : b)) }
    ]
    for (const c of changed) expect(reasonOf(Signature.verify(c, T0))).toBe("bad-signature")
  })

  it("malformed fields are refused before any signature is checked", () => {
    const r = request()
    expect(Signature.verify({ ...r, signature: r.signature.subarray(0, 63) }, T0)).toEqual(
      Either.left({ reason: "bad-signature", detail: "signature must be 64 bytes" })
    )
    expect(reasonOf(Signature.verify({ ...r, nonce: new Uint8Array(15) }, T0))).toBe("bad-signature")
    const nine = Array.from({ length: 9 }, (_, i) => ({ host: "10.0.0.1", port: 1000 + i }))
    expect(reasonOf(Signature.verify({ ...r, addresses: nine }, T0))).toBe("bad-signature")
    expect(reasonOf(Signature.verify({ ...r, source: "vbad" as NodeId.NodeIdEncoded }, T0))).toBe(
      "bad-source"
    )
    expect(reasonOf(Signature.verify({ ...r, target: "x" as NodeId.NodeIdEncoded }, T0))).toBe("bad-target")
  })

  it("the canonical bytes start with the domain separator and hold every field", () => {
    const source = KeyRingTest.nodeIdOf("sig/source")
    const bytes = Signature.canonicalBytes({
      source,
      target,
      addresses: [S],
      timestamp: T0,
      nonce: new Uint8Array(16)
    })!
    expect(new TextDecoder().decode(bytes.subarray(0, 31))).toBe("quicmesh/hole-punch-request/v1\0")
    // domain 31, ids 64, timestamp 8, nonce 16, count 1, host length 1 + 12, port 2
    expect(bytes.length).toBe(31 + 64 + 8 + 16 + 1 + 1 + S.host.length + 2)
    expect(
      Signature.canonicalBytes({ source, target, addresses: [S], timestamp: -1, nonce: new Uint8Array(16) })
    ).toBe(undefined)
  })
})

describe("ReplayCache", () => {
  it("refuses a key seen before; forgets it once its request is too old to be taken", () => {
    const cache = new ReplayCache(100, 30_000)
    expect(cache.admit("a", T0, T0)).toBe(true)
    expect(cache.admit("a", T0, T0 + 29_999)).toBe(false)
    expect(cache.admit("b", T0 + 1, T0 + 30_001)).toBe(true)
    expect(cache.size).toBe(1)
  })

  it("holds at most its capacity; what it evicts raises the floor, so an evicted key's replay is refused", () => {
    const cache = new ReplayCache(3, 30_000)
    for (let i = 0; i < 3; i++) expect(cache.admit(`k${i}`, T0 + i, T0 + 10)).toBe(true)
    expect(cache.admit("k3", T0 + 3, T0 + 10)).toBe(true)
    expect(cache.size).toBe(3)
    // k0 was evicted: its replay is still refused (stamped at the floor).
    expect(cache.admit("k0", T0, T0 + 11)).toBe(false)
    expect(cache.admit("k4", T0 + 4, T0 + 11)).toBe(true)
    expect(cache.admit("k1", T0 + 1, T0 + 11)).toBe(false)
    expect(cache.size).toBe(3)
  })
})

describe("RateWindows", () => {
  it("counts per key within a window; a new window starts afresh", () => {
    const w = new RateWindows(2, 1000, 10)
    expect([w.exceeded("a", 0), w.exceeded("a", 1), w.exceeded("a", 2)]).toEqual([false, false, true])
    expect(w.exceeded("b", 3)).toBe(false)
    expect(w.exceeded("a", 1000)).toBe(false)
  })

  it("holds at most its capacity, evicting the oldest window, never the whole table", () => {
    const w = new RateWindows(1, 1000, 3)
    w.exceeded("a", 0)
    w.exceeded("b", 1)
    w.exceeded("c", 2)
    expect(w.exceeded("c", 3)).toBe(true)
    w.exceeded("d", 4)
    expect(w.size).toBe(3)
    // "a" (the oldest) went; "b" and "c" kept their counts.
    expect(w.exceeded("b", 5)).toBe(true)
    expect(w.exceeded("c", 6)).toBe(true)
    expect(w.exceeded("a", 7)).toBe(false)
    expect(w.size).toBe(3)
    // Windows that ended are dropped as new ones open.
    w.exceeded("e", 1500)
    expect(w.size).toBe(1)
  })
})

describe("the wire refuses malformed requests before the handler", () => {
  const decode = Schema.decodeUnknownEither(
    NodesHolePunchSignal.payloadSchema as Schema.Schema<unknown, unknown>
  )
  const r = request()
  it("takes a well-formed request, with or without the relay's observation", () => {
    expect(Either.isRight(decode({ request: r }))).toBe(true)
    expect(Either.isRight(decode({ request: r, observed: S }))).toBe(true)
  })
  it.scoped("a node answers such a request with a typed RpcInvalidRequestError", () =>
    Effect.gen(function* () {
      const { a, b } = yield* makeConnectionPair()
      const context = yield* Layer.build(
        RpcServerLive.layer.pipe(
          Layer.provide(PeerRpcLive.handlersLayer),
          Layer.provide(RpcConfig.layerDefaults)
        )
      )
      yield* (context.unsafeMap.get(RpcServer.key) as RpcServer["Type"]).serve(b)
      const answer = (payload: unknown) =>
        Effect.scoped(
          Effect.gen(function* () {
            const socket = yield* a.openStream
            const frame = encodeFrame({
              _tag: "Request",
              id: "1",
              tag: "nodesHolePunchSignal",
              payload,
              headers: []
            })
            yield* Effect.scoped(Effect.flatMap(socket.writer, (write) => write(frame.frame)))
            const messages: Array<Record<string, unknown>> = []
            yield* readMessages(socket, RpcConfig.defaults.rpcParserBufferSize, (m) =>
              Effect.succeed(messages.push(m) > 0)
            )
            return (messages[0] as { exit?: { cause?: { error?: unknown } } } | undefined)?.exit?.cause?.error
          })
        )
      const invalid = { _tag: "RpcInvalidRequestError", method: "nodesHolePunchSignal" }
      expect(yield* answer({ request: { ...r, signature: new Uint8Array(63) } })).toMatchObject(invalid)
      expect(yield* answer({ request: { ...r, extra: 1 } })).toMatchObject(invalid)
      expect(
        yield* answer({ request: { ...r, addresses: Array.from({ length: 9 }, () => S) } })
      ).toMatchObject(invalid)
      expect(
        yield* answer({ sourceNodeIdEncoded: r.source, targetNodeIdEncoded: r.target, address: S })
      ).toMatchObject(invalid)
    })
  )
  it("refuses wrong-length signatures and nonces, unknown fields, oversized address lists, the old unsigned form", () => {
    const bad: ReadonlyArray<unknown> = [
      { request: { ...r, signature: new Uint8Array(63) } },
      { request: { ...r, signature: new Uint8Array(65) } },
      { request: { ...r, nonce: new Uint8Array(17) } },
      { request: { ...r, extra: 1 } },
      { request: r, extra: 1 },
      { request: { ...r, addresses: [{ ...S, scope: "global" }] } },
      { request: { ...r, addresses: Array.from({ length: 9 }, () => S) } },
      { request: { ...r, addresses: [{ host: "h".repeat(256), port: 1 }] } },
      { request: { ...r, timestamp: 1.5 } },
      { sourceNodeIdEncoded: r.source, targetNodeIdEncoded: r.target, address: S }
    ]
    for (const b of bad) expect(Either.isLeft(decode(b))).toBe(true)
  })
})
