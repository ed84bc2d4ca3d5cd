/**
 * Signed hole-punch signalling on the simulated network (virtual time: the sim's clock is the
 * TestClock): a relay node of the world plays honest or hostile relay toward a target built
 * by hand, whose transport records every datagram it is asked to send. The target punches
 * only toward the address the relay observed, only if the source signed it; every other
 * request is refused with a typed `HolePunchRefused` (the relay's PeerCallError carries it),
 * and nothing is sent.
 */
import { describe, expect, it } from "@effect/vitest"
import { Clock, Effect, Either, Logger, LogLevel } from "effect"
import * as KeyRingTest from "../src/layers/KeyRingTest.js"
import * as Node from "../src/layers/Node.js"
import * as NodeGraphMemory from "../src/layers/NodeGraphMemory.js"
import * as PeerRpcSim from "../src/layers/PeerRpcSim.js"
import { simulate } from "../src/programs/SimRuntime.js"
import { makeWorld, type SimWorld } from "../src/programs/Simulation.js"
import type { Address } from "../src/services/Address.js"
import type { SignedHolePunchRequest } from "../src/services/AgentRpc.js"
import * as ConnectionGater from "../src/services/ConnectionGater.js"
import * as Dns from "../src/services/Dns.js"
import * as NodeConfig from "../src/services/NodeConfig.js"
import type { NodeId } from "../src/services/NodeId.js"
import { signedRequest } from "./fixtures/holePunchRequest.js"

const TARGET_SEED = "hp/target"
const SOURCE_SEED = "hp/source"
/** Where the source is, as the relay observed it; and where a hostile relay would have the target punch. */
const S: Address = { host: "198.51.100.7", port: 4000 }
const F: Address = { host: "192.0.2.66", port: 6666 }

/** A target built by hand; its transport records where it is asked to send datagrams. */
const targetNode = (w: SimWorld) =>
  Effect.gen(function* () {
    const keyRing = yield* KeyRingTest.make(TARGET_SEED)
    const nodeId = yield* keyRing.nodeId
    const host = yield* w.sim.addHost({})
    const config = NodeConfig.make({})
    const inner = yield* w.sim.bind({ host: host.host }, nodeId)
    const sent: Array<string> = []
    const { manager } = yield* Node.make({
      config: config.manager,
      keyRing,
      nodeGraph: yield* NodeGraphMemory.make(nodeId),
      transport: {
        ...inner,
        sendDatagram: (h, p, data) => {
          sent.push(`${h}:${p}`)
          return inner.sendDatagram(h, p, data)
        }
      },
      peerRpc: PeerRpcSim.make(w.sim, config.rpc.rpcCallTimeoutTime),
      dns: Dns.makeStatic({}),
      gater: yield* ConnectionGater.make({ rules: { allowOnly: false, deny: [], allow: [] } })
    })
    return { nodeId, cm: manager, address: { host: manager.host, port: manager.port }, sent }
  })

const setup = (ctx: Parameters<Parameters<typeof simulate>[0]>[0]) =>
  Effect.gen(function* () {
    const w = yield* makeWorld(ctx, { seed: 19, latency: 10, jitter: 0 })
    const relay = yield* w.addNode()
    const target = yield* targetNode(w)
    yield* relay.cm.getConnectionWithAddress(target.nodeId, target.address)
    /** The relay passes `request` to the target saying it observed the source at `observed`. */
    const relayed = (request: SignedHolePunchRequest, observed: Address | "direct" = S) =>
      relay.cm
        .withConnection(target.nodeId, (h) =>
          h.client.holePunchSignal(observed === "direct" ? { request } : { request, observed })
        )
        .pipe(
          // Let a punch the request started send its first packet.
          Effect.zipLeft(Effect.sleep("50 millis")),
          Effect.either
        )
    const now = Clock.currentTimeMillis
    const signed = (options: {
      addresses?: ReadonlyArray<Address>
      at?: number
      seed?: string
      target?: NodeId
    }) =>
      Effect.map(now, (t) =>
        signedRequest({
          seed: options.seed ?? SOURCE_SEED,
          target: options.target ?? target.nodeId,
          addresses: options.addresses ?? [S],
          timestamp: options.at ?? t
        })
      )
    return { w, relay, target, relayed, signed, now }
  })

/** The typed refusal a relayed call ended with (the PeerCallError's cause). */
const refusal = (result: Either.Either<void, { readonly cause?: unknown }>) =>
  Either.isLeft(result) ? result.left.cause : undefined

describe("signed hole-punch signalling (simulated network)", () => {
  it.effect("a request the source signed for the relay's observation: the target punches toward it", () =>
    simulate((ctx) =>
      Effect.gen(function* () {
        const { target, relayed, signed } = yield* setup(ctx)
        const result = yield* relayed(yield* signed({ addresses: [F, S] }))
        expect(Either.isRight(result)).toBe(true)
        // Toward the observed address only, though the source also signed F.
        expect(target.sent.length).toBeGreaterThan(0)
        expect(new Set(target.sent)).toEqual(new Set([`${S.host}:${S.port}`]))
      })
    )
  )

  it.effect("a relay that rewrites the observed address, or the signed addresses, gets no punch", () =>
    simulate((ctx) =>
      Effect.gen(function* () {
        const { target, relayed, signed } = yield* setup(ctx)
        // The relay says it saw the source at F; the source signed only S.
        const moved = yield* relayed(yield* signed({}), F)
        expect(refusal(moved)).toMatchObject({
          _tag: "HolePunchRefused",
          reason: "address-unsigned",
          observed: F
        })
        // The relay adds F to what the source signed.
        const request = yield* signed({})
        const rewritten = yield* relayed({ ...request, addresses: [...request.addresses, F] }, F)
        expect(refusal(rewritten)).toMatchObject({ _tag: "HolePunchRefused", reason: "bad-signature" })
        // Or swaps them.
        const swapped = yield* relayed({ ...request, addresses: [F] }, F)
        expect(refusal(swapped)).toMatchObject({ _tag: "HolePunchRefused", reason: "bad-signature" })
        expect(target.sent).toEqual([])
      })
    )
  )

  it.effect("a forged source, a wrong-length signature, a request for another target: refused", () =>
    simulate((ctx) =>
      Effect.gen(function* () {
        const { target, relayed, signed } = yield* setup(ctx)
        // Names the source but is signed by the relay's own key.
        const forged = yield* signed({ seed: "hp/forger" })
        const claimed = yield* signed({})
        const forgedResult = yield* relayed({ ...forged, source: claimed.source })
        expect(refusal(forgedResult)).toMatchObject({ reason: "bad-signature" })
        const short = yield* relayed({ ...claimed, signature: claimed.signature.subarray(0, 63) })
        expect(refusal(short)).toMatchObject({
          reason: "bad-signature",
          detail: "signature must be 64 bytes"
        })
        const shortNonce = yield* relayed({ ...claimed, nonce: claimed.nonce.subarray(0, 8) })
        expect(refusal(shortNonce)).toMatchObject({ reason: "bad-signature" })
        // A request signed for another target, relayed to this one (the target field is signed).
        const elsewhere = yield* signed({ target: KeyRingTest.nodeIdOf("hp/elsewhere") })
        const redirected = yield* relayed({ ...elsewhere, target: claimed.target })
        expect(refusal(redirected)).toMatchObject({ reason: "bad-signature" })
        expect(target.sent).toEqual([])
      })
    )
  )

  it.effect("a replayed request is refused, within the 30 s window and after it", () =>
    simulate((ctx) =>
      Effect.gen(function* () {
        const { target, relayed, signed } = yield* setup(ctx)
        const request = yield* signed({})
        expect(Either.isRight(yield* relayed(request))).toBe(true)
        const punches = target.sent.length
        expect(punches).toBeGreaterThan(0)
        // Same request again, through the same relay or claiming another observation.
        expect(refusal(yield* relayed(request))).toMatchObject({ reason: "replayed" })
        yield* Effect.sleep("29 seconds")
        const before = target.sent.length
        expect(refusal(yield* relayed(request))).toMatchObject({ reason: "replayed" })
        // Past the window it is too old to be taken at all.
        yield* Effect.sleep("2 seconds")
        expect(refusal(yield* relayed(request))).toMatchObject({ reason: "stale" })
        // (The first request's punch keeps going; none of the refused ones started another.)
        expect(target.sent.length - before).toBeLessThanOrEqual(1)
      })
    )
  )

  it.effect("older than 30 s or more than 5 s ahead is refused; the edges are taken", () =>
    simulate((ctx) =>
      Effect.gen(function* () {
        const { target, relayed, signed, now } = yield* setup(ctx)
        const t = yield* now
        expect(refusal(yield* relayed(yield* signed({ at: t - 30_001 })))).toMatchObject({ reason: "stale" })
        expect(refusal(yield* relayed(yield* signed({ at: t + 5_051 })))).toMatchObject({ reason: "future" })
        expect(target.sent).toEqual([])
        // Signed 30 s before it arrives (the call takes 10 ms each way), and 5 s ahead.
        const t2 = yield* now
        expect(Either.isRight(yield* relayed(yield* signed({ at: t2 - 29_990 })))).toBe(true)
        expect(target.sent.length).toBeGreaterThan(0)
        const t3 = yield* now
        expect(Either.isRight(yield* relayed(yield* signed({ at: t3 + 5_010 })))).toBe(true)
      })
    )
  )

  it.effect("a direct request must come from its source's connection", () =>
    simulate((ctx) =>
      Effect.gen(function* () {
        const { target, relayed, signed } = yield* setup(ctx)
        // No observation: the caller presents it as its own, but it is the source's.
        const direct = yield* relayed(yield* signed({}), "direct")
        expect(refusal(direct)).toMatchObject({ reason: "not-the-source" })
        expect(target.sent).toEqual([])
      })
    )
  )

  it.effect("each refusal is a debug log line at the target", () => {
    const lines: Array<string> = []
    const logger = Logger.make(({ logLevel, message }) => {
      if (logLevel === LogLevel.Debug) lines.push(String(message))
    })
    return simulate((ctx) =>
      Effect.gen(function* () {
        const { relayed, signed } = yield* setup(ctx)
        const request = yield* signed({})
        yield* relayed({ ...request, addresses: [F] }, F)
        expect(lines.some((l) => /hole-punch request from .* refused: bad-signature/.test(l))).toBe(true)
      }).pipe(
        Effect.provide(Logger.replace(Logger.defaultLogger, logger)),
        Logger.withMinimumLogLevel(LogLevel.Debug)
      )
    )
  })

  it.effect("a source that knows what its relay observes signs it: one request, no refusal, a punch", () => {
    const lines: Array<string> = []
    const logger = Logger.make(({ logLevel, message }) => {
      if (logLevel === LogLevel.Debug) lines.push(String(message))
    })
    return simulate((ctx) =>
      Effect.gen(function* () {
        const { w, relay, target } = yield* setup(ctx)
        const source = yield* w.addNode()
        // Dialling the relay runs the identify exchange: the source learns what the relay sees.
        yield* source.cm.getConnectionWithAddress(relay.nodeId, { host: relay.host, port: relay.port })
        yield* Effect.sleep("1 second")
        yield* source.cm.sendSignalingMessage(relay.nodeId, source.nodeId, target.nodeId)
        yield* Effect.sleep("50 millis")
        expect(target.sent).toContain(`${source.host}:${source.port}`)
        expect(lines.filter((l) => /refused/.test(l))).toEqual([])
      }).pipe(
        Effect.provide(Logger.replace(Logger.defaultLogger, logger)),
        Logger.withMinimumLogLevel(LogLevel.Debug)
      )
    )
  })
})
