/**
 * Signed hole-punch signalling in the NAT lab: a real agent (bin/quicmesh.js, built) behind a
 * restricted NAT joins through a relay that misbehaves (test/nat/hostileRelay.ts, a quicmesh
 * node driven over stdio). UDP listeners stand at the source's address (src) and at the
 * address a hostile relay would have the target punch (victim). The relay rewrites the
 * observed address, rewrites the signed addresses, forges the source, replays an old request
 * and replays a fresh one: each time it gets the typed refusal, and the victim's listener
 * receives nothing. A well-formed request first shows that punches do reach a listener.
 *
 * Root only: `npm run build && npm run test:nat`.
 */
import { expect, layer } from "@effect/vitest"
import { Effect, Either } from "effect"
import type { Address } from "../../src/services/Address.js"
import type { SignedHolePunchRequest } from "../../src/services/AgentRpc.js"
import * as NodeId from "../../src/services/NodeId.js"
import { signedRequest } from "../fixtures/holePunchRequest.js"
import { type AgentInfo, connections, poll, startAgent } from "./agents.js"
import { describeLab } from "./describeLab.js"
import { type LabProcess, NatLab } from "./lab.js"

const SOURCE = "lab/source"

const udpListener = (proc: LabProcess) => proc.waitForLine((l) => l.includes('"ready"'), "20 seconds")
const received = (proc: LabProcess) => proc.lines().filter((l) => l.includes('"recv"')).length

describeLab("signed hole-punch signalling (agents)", () => {
  layer(
    NatLab.layer({ nats: [{ kind: "restricted", hosts: ["a"] }], publicHosts: ["relay", "src", "victim"] }),
    { timeout: "120 seconds", excludeTestServices: true }
  )((it) => {
    it.scoped(
      "a relay that rewrites the signed or observed address, forges the source or replays: refused, no packet to the victim",
      () =>
        Effect.gen(function* () {
          const lab = yield* NatLab
          const relay = yield* lab.spawn("relay", process.execPath, [
            "--import",
            "tsx",
            "test/nat/hostileRelay.ts",
            lab.node("relay").ip
          ])
          const ready = JSON.parse(yield* relay.waitForLine((l) => l.includes('"ready"'), "60 seconds"))
          const src = yield* lab.spawn("src", process.execPath, ["test/nat/udpTool.mjs", "7801"])
          const victim = yield* lab.spawn("victim", process.execPath, ["test/nat/udpTool.mjs", "7802"])
          yield* udpListener(src)
          yield* udpListener(victim)
          const relayInfo = { name: "relay", nodeId: ready.nodeId, port: ready.port } as AgentInfo
          const a = yield* startAgent(lab, "a", { port: 7810, seeds: [relayInfo] })
          yield* poll(connections(a), (list) => list.some((c) => c.nodeId === ready.nodeId))
          const target = Either.getOrThrow(NodeId.decode(a.nodeId))
          const S: Address = { host: lab.node("src").ip, port: 7801 }
          const V: Address = { host: lab.node("victim").ip, port: 7802 }

          let answers = 0
          /** The relay passes `request` to a, saying it observed the source at `observed`; its answer. */
          const relayed = (request: SignedHolePunchRequest, observed: Address) =>
            Effect.gen(function* () {
              const wire = { ...request, nonce: [...request.nonce], signature: [...request.signature] }
              yield* relay.writeLine(JSON.stringify({ target: a.nodeId, request: wire, observed }))
              const n = ++answers
              yield* relay.waitForLine(
                () => relay.lines().filter((l) => l.includes('"result"')).length >= n,
                "20 seconds"
              )
              return JSON.parse(relay.lines().filter((l) => l.includes('"result"'))[n - 1]!)
            })
          const signed = (addresses: ReadonlyArray<Address>, options: { seed?: string; ago?: number } = {}) =>
            signedRequest({
              seed: options.seed ?? SOURCE,
              target,
              addresses,
              timestamp: Date.now() - (options.ago ?? 0)
            })

          // Control: signed for where the relay saw the source; the target's punches reach it.
          expect(yield* relayed(signed([S]), S)).toEqual({ ev: "result", ok: true })
          yield* poll(
            Effect.sync(() => received(src)),
            (n) => n > 0,
            20
          )

          // The relay says it saw the source at the victim's address.
          expect(yield* relayed(signed([S]), V)).toMatchObject({ reason: "address-unsigned" })
          // It adds the victim's address to what the source signed.
          const r = signed([S])
          expect(yield* relayed({ ...r, addresses: [S, V] }, V)).toMatchObject({ reason: "bad-signature" })
          // It forges the source: its own signature on a request naming the source.
          const forged = signed([V], { seed: "lab/hostile-relay" })
          const source = signed([]).source
          expect(yield* relayed({ ...forged, source }, V)).toMatchObject({ reason: "bad-signature" })
          // It replays a request the source signed 40 s ago, when it was at the victim's address.
          expect(yield* relayed(signed([V], { ago: 40_000 }), V)).toMatchObject({ reason: "stale" })
          // And a fresh one the target has seen already (refused then: the relay saw the source at S).
          const fresh = signed([V])
          expect(yield* relayed(fresh, S)).toMatchObject({ reason: "address-unsigned" })
          expect(yield* relayed(fresh, V)).toMatchObject({ tag: "HolePunchRefused", reason: "replayed" })

          // A punch's first packet goes at once: two seconds is ample for any of them to arrive.
          yield* Effect.sleep("2 seconds")
          expect(received(victim)).toBe(0)
          expect(received(src)).toBeGreaterThan(0)
        })
    )
  })
})
