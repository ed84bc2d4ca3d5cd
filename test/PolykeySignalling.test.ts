/**
 * Polykey 1.x's signalled hole punching, as pure functions: the Initial and Final messages
 * against one real exchange between three Polykey 1.15.1 agents (fixtures/polykey/signalling,
 * see its README), our signatures checked by node:crypto over bytes rebuilt here, every
 * tampered field refused with its typed error, and the three roles with stub dependencies.
 */
import * as nodeCrypto from "node:crypto"
import * as fs from "node:fs"
import { fileURLToPath } from "node:url"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Option } from "effect"
import {
  makeFinal,
  makeInitial,
  type Sign,
  type SignalFinalParams,
  type SignalInitialParams,
  verifyFinal,
  verifyInitial
} from "../src/internal/polykey/signallingMessages.js"
import {
  asRelay,
  asSource,
  asTarget,
  type RelayDeps,
  type TargetRefusal
} from "../src/internal/polykey/signallingRoles.js"
import * as KeyRingTest from "../src/layers/KeyRingTest.js"
import { KeyRing } from "../src/services/KeyRing.js"
import * as NodeId from "../src/services/NodeId.js"

interface Capture {
  readonly seeds: Record<"source" | "relay" | "target", string>
  readonly nodeIds: Record<"source" | "relay" | "target", string>
  readonly addresses: Record<"source" | "relay" | "target", { host: string; port: number }>
  readonly nodesConnectionSignalInitial: ReadonlyArray<{
    params: SignalInitialParams & { metadata: unknown }
    result: { host: string; port: number }
  }>
  readonly nodesConnectionSignalFinal: ReadonlyArray<{ params: SignalFinalParams & { metadata: unknown } }>
  readonly targetPunchedToward: ReadonlyArray<{ host: string; port: number }>
}
const capture = JSON.parse(
  fs.readFileSync(
    fileURLToPath(new URL("./fixtures/polykey/signalling/capture.json", import.meta.url)),
    "utf8"
  )
) as Capture
const initial = capture.nodesConnectionSignalInitial[0]!
const final = capture.nodesConnectionSignalFinal[0]!

// Keys from the capture's seeds, through node:crypto alone (PKCS#8 / SPKI wrappers of raw Ed25519).
const PKCS8_PREFIX = Buffer.from("302e020100300506032b657004220420", "hex")
const SPKI_PREFIX = Buffer.from("302a300506032b6570032100", "hex")
const privateKeyOf = (seedHex: string) =>
  nodeCrypto.createPrivateKey({
    key: Buffer.concat([PKCS8_PREFIX, Buffer.from(seedHex, "hex")]),
    format: "der",
    type: "pkcs8"
  })
const nodeIdOfKey = (key: nodeCrypto.KeyObject) =>
  NodeId.unsafeFromBytes(
    new Uint8Array(nodeCrypto.createPublicKey(key).export({ format: "der", type: "spki" }).subarray(12))
  )
const signerOf =
  (key: nodeCrypto.KeyObject): Sign =>
  (data) =>
    Effect.sync(() => new Uint8Array(nodeCrypto.sign(null, data, key)))
/** node:crypto's verdict, from the raw NodeId, independent of the code under test. */
const independentlyVerifies = (signer: Uint8Array, data: Uint8Array, signature: Uint8Array) =>
  nodeCrypto.verify(
    null,
    data,
    nodeCrypto.createPublicKey({ key: Buffer.concat([SPKI_PREFIX, signer]), format: "der", type: "spki" }),
    signature
  )
const b64 = (text: string) => new Uint8Array(Buffer.from(text, "base64url"))

const keys = {
  source: privateKeyOf(capture.seeds.source),
  relay: privateKeyOf(capture.seeds.relay),
  target: privateKeyOf(capture.seeds.target)
}
const ids = {
  source: nodeIdOfKey(keys.source),
  relay: nodeIdOfKey(keys.relay),
  target: nodeIdOfKey(keys.target)
}
const stranger = KeyRingTest.nodeIdOf("signalling/stranger")
const sourceAt = capture.addresses.source
const targetAt = capture.addresses.target

/** The tag and fields that matter of a refusal, or "ok". */
const verdict = (r: Either.Either<unknown, { readonly _tag: string }>) =>
  Either.isRight(r) ? "ok" : { ...r.left, _tag: r.left._tag }
const flipped = (text: string, index = 0) => {
  const bytes = Buffer.from(text, "base64url")
  bytes[index]! ^= 1
  return bytes.toString("base64url")
}

describe("Polykey signalling messages", () => {
  it("the capture is one exchange: the seeds are the agents', the target punched where the relay saw the source", () => {
    expect(NodeId.encode(ids.source)).toBe(capture.nodeIds.source)
    expect(NodeId.encode(ids.relay)).toBe(capture.nodeIds.relay)
    expect(NodeId.encode(ids.target)).toBe(capture.nodeIds.target)
    expect(final.params.address).toEqual(sourceAt)
    expect(capture.targetPunchedToward).toEqual([sourceAt])
    expect(initial.result).toEqual(targetAt)
  })

  it("a Polykey source's Initial verifies at our relay", () => {
    const checked = verifyInitial(ids.source, initial.params)
    expect(Either.isRight(checked)).toBe(true)
    if (Either.isRight(checked)) {
      expect(NodeId.equals(checked.right.target, ids.target)).toBe(true)
      expect(checked.right.signature).toEqual(b64(initial.params.signature))
    }
  })

  it.effect("our Initial is Polykey's byte for byte, and node:crypto verifies it over source ‖ target", () =>
    Effect.gen(function* () {
      const ours = yield* makeInitial(ids.source, ids.target, signerOf(keys.source))
      expect(ours).toEqual({
        targetNodeIdEncoded: initial.params.targetNodeIdEncoded,
        signature: initial.params.signature
      })
      expect(
        independentlyVerifies(ids.source, Buffer.concat([ids.source, ids.target]), b64(ours.signature))
      ).toBe(true)
    })
  )

  it.effect("signed by the KeyRing's own sign, an Initial verifies independently", () =>
    Effect.gen(function* () {
      const keyRing = yield* KeyRing
      const self = yield* keyRing.nodeId
      const ours = yield* makeInitial(self, ids.target, keyRing.sign)
      expect(independentlyVerifies(self, Buffer.concat([self, ids.target]), b64(ours.signature))).toBe(true)
      expect(verdict(verifyInitial(self, ours))).toBe("ok")
    }).pipe(Effect.provide(KeyRingTest.layer("signalling/keyring")))
  )

  it("a Polykey relay's Final verifies at our target, with the address the relay saw", () => {
    const checked = verifyFinal(ids.relay, final.params)
    expect(Either.isRight(checked) && checked.right).toEqual({
      source: ids.source,
      target: ids.target,
      relay: ids.relay,
      address: sourceAt
    })
  })

  it.effect(
    "our Final is Polykey's byte for byte; node:crypto verifies it over source ‖ target ‖ address JSON ‖ request signature",
    () =>
      Effect.gen(function* () {
        const request = yield* verifyInitial(ids.source, initial.params)
        const ours = yield* makeFinal(request, sourceAt, signerOf(keys.relay))
        const { metadata: _, ...theirs } = final.params
        expect(ours).toEqual(theirs)
        const signed = Buffer.concat([
          ids.source,
          ids.target,
          Buffer.from(`{"host":"${sourceAt.host}","port":${sourceAt.port}}`, "utf8"),
          b64(initial.params.signature)
        ])
        expect(independentlyVerifies(ids.relay, signed, b64(ours.relaySignature))).toBe(true)
      })
  )

  it("a relay refuses a tampered Initial, each with its typed error", () => {
    const p = initial.params
    const mismatch = {
      _tag: "SignalSignatureError",
      signer: "source",
      checkedBy: "relay",
      reason: "mismatch"
    }
    expect(verdict(verifyInitial(ids.source, { ...p, signature: flipped(p.signature) }))).toEqual(mismatch)
    // The signature names the target: it does not vouch for another.
    expect(
      verdict(verifyInitial(ids.source, { ...p, targetNodeIdEncoded: NodeId.encode(stranger) }))
    ).toEqual(mismatch)
    // The source is the connection's NodeId: from any other connection the signature is not its.
    expect(verdict(verifyInitial(stranger, p))).toEqual(mismatch)
    const short = Buffer.from(p.signature, "base64url").subarray(0, 63).toString("base64url")
    expect(verdict(verifyInitial(ids.source, { ...p, signature: short }))).toEqual({
      ...mismatch,
      reason: "length"
    })
    expect(verdict(verifyInitial(ids.source, { ...p, signature: `${p.signature}==` }))).toMatchObject({
      _tag: "SignalDecodeError",
      field: "signature"
    })
    expect(verdict(verifyInitial(ids.source, { ...p, targetNodeIdEncoded: "vnot-a-node-id" }))).toMatchObject(
      {
        _tag: "SignalDecodeError",
        field: "targetNodeIdEncoded"
      }
    )
    expect(verdict(verifyInitial(ids.source, { signature: p.signature }))).toMatchObject({
      _tag: "SignalDecodeError",
      field: "params"
    })
  })

  it("a target refuses a tampered Final, each with its typed error", () => {
    const p = final.params
    const source = { _tag: "SignalSignatureError", signer: "source", checkedBy: "target", reason: "mismatch" }
    const relay = { ...source, signer: "relay" }
    const check = (changed: unknown, from = ids.relay) => verdict(verifyFinal(from, changed))
    expect(check({ ...p, address: { ...p.address, port: p.address.port + 1 } })).toEqual(relay)
    expect(check({ ...p, address: { ...p.address, host: "127.0.0.2" } })).toEqual(relay)
    // The relay signed the address as it sent it: the same address with its keys reversed is not it.
    expect(check({ ...p, address: { port: p.address.port, host: p.address.host } })).toEqual(relay)
    expect(check({ ...p, relaySignature: flipped(p.relaySignature, 63) })).toEqual(relay)
    expect(check(p, stranger)).toEqual(relay)
    expect(check({ ...p, requestSignature: flipped(p.requestSignature) })).toEqual(source)
    expect(check({ ...p, sourceNodeIdEncoded: NodeId.encode(stranger) })).toEqual(source)
    expect(check({ ...p, targetNodeIdEncoded: NodeId.encode(stranger) })).toEqual(source)
    const long = Buffer.concat([Buffer.from(p.relaySignature, "base64url"), Buffer.of(0)]).toString(
      "base64url"
    )
    expect(check({ ...p, relaySignature: long })).toEqual({ ...relay, reason: "length" })
    expect(check({ ...p, address: { host: "example.com", port: p.address.port } })).toMatchObject({
      _tag: "SignalDecodeError",
      field: "address"
    })
    expect(check({ ...p, address: { ...p.address, port: 0 } })).toMatchObject({ field: "address" })
    expect(check({ ...p, sourceNodeIdEncoded: 42 })).toMatchObject({
      _tag: "SignalDecodeError",
      field: "params"
    })
  })

  it("each refusal names the Polykey error a Polykey node answers with", () => {
    const refusals: ReadonlyArray<Either.Either<unknown, { readonly polykeyType: string }>> = [
      verifyInitial(ids.source, { ...initial.params, signature: flipped(initial.params.signature) }),
      verifyFinal(ids.relay, { ...final.params, requestSignature: flipped(final.params.requestSignature) }),
      verifyFinal(ids.relay, { ...final.params, relaySignature: flipped(final.params.relaySignature) }),
      verifyInitial(ids.source, { ...initial.params, targetNodeIdEncoded: "x" })
    ]
    expect(refusals.map((r) => Either.isLeft(r) && r.left.polykeyType)).toEqual([
      "ErrorNodesConnectionSignalRelayVerificationFailed",
      "ErrorNodesConnectionSignalRequestVerificationFailed",
      "ErrorNodesConnectionSignalRelayVerificationFailed",
      "ErrorParse"
    ])
  })
})

/** A relay's dependencies, recording the Finals it sends. */
const relayDeps = (options: { connected?: boolean; admit?: boolean; finalFails?: boolean } = {}) => {
  const finals: Array<{ target: NodeId.NodeId; params: SignalFinalParams }> = []
  const deps: RelayDeps = {
    sign: signerOf(keys.relay),
    connectedAddress: (target) =>
      Effect.succeed(
        options.connected === false || !NodeId.equals(target, ids.target)
          ? Option.none()
          : Option.some(targetAt)
      ),
    admit: () => Effect.succeed(options.admit ?? true),
    callFinal: (target, params) =>
      Effect.suspend(() => {
        finals.push({ target, params })
        return options.finalFails ? Effect.fail("the target reset the stream") : Effect.succeed({})
      })
  }
  return { deps, finals }
}
const sourceContact = { nodeId: ids.source, ...sourceAt }

/** A target's dependencies, recording punches and refusals. */
const targetDeps = (self: NodeId.NodeId = ids.target) => {
  const punches: Array<string> = []
  const refusals: Array<TargetRefusal["_tag"]> = []
  return {
    punches,
    refusals,
    deps: {
      self,
      punch: (host: string, port: number) => Effect.sync(() => void punches.push(`${host}:${port}`)),
      refused: (_: NodeId.NodeId, refusal: TargetRefusal) =>
        Effect.sync(() => void refusals.push(refusal._tag))
    }
  }
}

describe("Polykey signalling roles", () => {
  it.effect(
    "a relay forwards to a connected target a Final the target accepts, naming where it sees the source",
    () =>
      Effect.gen(function* () {
        const { deps, finals } = relayDeps()
        const answer = yield* asRelay(sourceContact, initial.params, deps)
        expect(answer).toEqual(targetAt)
        expect(finals.length).toBe(1)
        expect(NodeId.equals(finals[0]!.target, ids.target)).toBe(true)
        expect(verdict(verifyFinal(ids.relay, finals[0]!.params))).toBe("ok")
        expect(finals[0]!.params.address).toEqual(sourceAt)
      })
  )

  it.effect(
    "a relay forwards nothing for a target it is not connected to, a bad signature, or a source over its rate",
    () =>
      Effect.gen(function* () {
        const cases = [
          { deps: relayDeps({ connected: false }), params: initial.params, tag: "SignalTargetNotConnected" },
          { deps: relayDeps({ admit: false }), params: initial.params, tag: "SignalRateLimited" },
          {
            deps: relayDeps(),
            params: { ...initial.params, signature: flipped(initial.params.signature) },
            tag: "SignalSignatureError"
          }
        ]
        for (const c of cases) {
          const error = yield* Effect.flip(asRelay(sourceContact, c.params, c.deps.deps))
          expect(error._tag).toBe(c.tag)
          expect(c.deps.finals).toEqual([])
        }
      })
  )

  it.effect("a relay answers the source although the target's Final failed", () =>
    Effect.gen(function* () {
      const { deps, finals } = relayDeps({ finalFails: true })
      expect(yield* asRelay(sourceContact, initial.params, deps)).toEqual(targetAt)
      expect(finals.length).toBe(1)
    })
  )

  it.effect("a target punches toward the address the relay signed, and answers {}", () =>
    Effect.gen(function* () {
      const t = targetDeps()
      expect(yield* asTarget(ids.relay, final.params, t.deps)).toEqual({})
      expect(t.punches).toEqual([`${sourceAt.host}:${sourceAt.port}`])
      expect(t.refusals).toEqual([])
    })
  )

  it.effect("a target answers {} to every Final it refuses, and punches nowhere", () =>
    Effect.gen(function* () {
      const refused = [
        { from: ids.relay, params: { ...final.params, address: { ...final.params.address, port: 1 } } },
        { from: stranger, params: final.params },
        { from: ids.relay, params: null },
        { from: ids.relay, params: "garbage" }
      ]
      const t = targetDeps()
      for (const r of refused) expect(yield* asTarget(r.from, r.params, t.deps)).toEqual({})
      const other = targetDeps(stranger)
      expect(yield* asTarget(ids.relay, final.params, other.deps)).toEqual({})
      expect(t.punches).toEqual([])
      expect(other.punches).toEqual([])
      expect(t.refusals).toEqual([
        "SignalSignatureError",
        "SignalSignatureError",
        "SignalDecodeError",
        "SignalDecodeError"
      ])
      expect(other.refusals).toEqual(["SignalNotForUs"])
    })
  )

  it.effect("a source asks its relays in order until one answers, skipping itself and the target", () =>
    Effect.gen(function* () {
      const relays = [ids.source, ids.target, stranger, ids.relay, KeyRingTest.nodeIdOf("signalling/unasked")]
      const asked: Array<string> = []
      const answer = yield* asSource(ids.target, relays, {
        self: ids.source,
        sign: signerOf(keys.source),
        callInitial: (relay, params) =>
          Effect.suspend(() => {
            asked.push(NodeId.encode(relay))
            // Each relay gets an Initial it accepts from us.
            expect(verdict(verifyInitial(ids.source, params))).toBe("ok")
            return NodeId.equals(relay, stranger) ? Effect.fail("not connected") : Effect.succeed(targetAt)
          })
      })
      expect(asked).toEqual([NodeId.encode(stranger), NodeId.encode(ids.relay)])
      expect(NodeId.equals(answer.relay, ids.relay)).toBe(true)
      expect(answer.address).toEqual(targetAt)
    })
  )

  it.effect("a source fails with every relay's error when none answers with an address", () =>
    Effect.gen(function* () {
      const other = KeyRingTest.nodeIdOf("signalling/other")
      const error = yield* Effect.flip(
        asSource(ids.target, [stranger, other], {
          self: ids.source,
          sign: signerOf(keys.source),
          callInitial: (relay) =>
            NodeId.equals(relay, stranger)
              ? Effect.fail("refused")
              : Effect.succeed({ host: "not a host!", port: 1 })
        })
      )
      expect(error._tag).toBe("SignalFailed")
      expect(error.attempts.map((a) => NodeId.encode(a.relay))).toEqual([
        NodeId.encode(stranger),
        NodeId.encode(other)
      ])
      expect(error.attempts[0]!.error).toBe("refused")
      expect(error.attempts[1]!.error).toMatchObject({ _tag: "SignalDecodeError", field: "result" })
    })
  )

  it.effect(
    "source, relay and target chained: the target punches toward the source, the source learns the target",
    () =>
      Effect.gen(function* () {
        const t = targetDeps()
        const relay: RelayDeps = {
          ...relayDeps().deps,
          callFinal: (_target, params) => asTarget(ids.relay, params, t.deps)
        }
        const answer = yield* asSource(ids.target, [ids.relay], {
          self: ids.source,
          sign: signerOf(keys.source),
          callInitial: (_relay, params) => asRelay(sourceContact, params, relay)
        })
        expect(answer.address).toEqual(targetAt)
        expect(t.punches).toEqual([`${sourceAt.host}:${sourceAt.port}`])
      })
  )
})
