/**
 * Application protocols in simulated worlds (`makeWorld` with `protocols`): a node reaches a
 * node it never met by NodeId (lookup, dial, hole punching through NATs) and talks to it over a
 * raw protocol stream, with the direct RPC (one world of 100 nodes) and the wire RPC (a smaller
 * one), and calls an application RPC group (`AppRpc`) served by every node. The same seed gives
 * the same trace hash; another seed another.
 */

import { Rpc, RpcGroup } from "@effect/rpc"
import { describe, expect, it } from "@effect/vitest"
import { Chunk, Effect, Layer, Option, Schema, Stream } from "effect"
import { simulate } from "../src/programs/SimRuntime.js"
import { makeWorld, type RpcMode, type SimNode, type SimWorld } from "../src/programs/Simulation.js"
import * as AppRpc from "../src/services/AppRpc.js"
import { Caller, type Contact } from "../src/services/Contact.js"
import * as NodeId from "../src/services/NodeId.js"
import * as Protocols from "../src/services/Protocols.js"
import type { NatType } from "../src/services/SimNetwork.js"
import { readAll, writeAll } from "./fixtures/socketText.js"

const id = Protocols.ProtocolId.unsafeMake
/** Answers `echo:` + what it read; records its callers. */
const echo =
  (callers: Contact[]): Protocols.StreamHandler =>
  (socket, caller) =>
    Effect.gen(function* () {
      callers.push(caller)
      const text = yield* readAll(socket)
      yield* writeAll(socket, [`echo:${text}`])
    }).pipe(Effect.orDie)

class NotesRpcs extends RpcGroup.make(
  Rpc.make("SendNote", { payload: { text: Schema.String }, success: Schema.String }),
  Rpc.make("Count", { payload: { upTo: Schema.Number }, success: Schema.Number, stream: true })
).middleware(AppRpc.WireMiddleware) {}

const Notes = AppRpc.make(NotesRpcs, { protocol: "notes/1" })

/** What node `index` serves: it answers with its index and the caller's NodeId. */
const notesOf = (node: { readonly index: number }) =>
  Notes.layer.pipe(
    Layer.provide(
      NotesRpcs.toLayer({
        SendNote: ({ text }) =>
          Effect.map(Caller, (caller) => `${node.index} got "${text}" from ${NodeId.encode(caller.nodeId)}`),
        Count: ({ upTo }) => Stream.range(1, upTo)
      })
    )
  )

/** Every third node behind a restricted NAT, the rest public. */
const natOf = (i: number): NatType => (i % 3 === 2 ? "restricted" : "none")

/** A world of `size` nodes (one seed) joined four at a time, every node with a registry. */
const joinedWorld = (
  ctx: Parameters<typeof makeWorld>[0],
  seed: number,
  size: number,
  rpc: RpcMode,
  protocols: true | typeof notesOf = true
) =>
  Effect.gen(function* () {
    const w = yield* makeWorld(ctx, { seed, rpc, k: 6, protocols })
    yield* w.join(yield* w.addNode({ seed: true }))
    const joined = yield* Effect.forEach(
      Array.from({ length: size - 1 }, (_, i) => i),
      (i) => Effect.flatMap(w.addNode({ nat: natOf(i) }), w.join),
      { concurrency: 4 }
    )
    expect(joined.every((ok) => ok)).toBe(true)
    return w
  })

/** The first pair (from, target) where `from` has neither a connection to nor an entry for `target`. */
const strangers = (w: SimWorld, targetNat: NatType) =>
  Effect.gen(function* () {
    for (const target of w.nodes) {
      if (target.isSeed || target.nat !== targetNat) continue
      for (const from of w.nodes) {
        if (from === target || from.isSeed) continue
        const known = Option.isSome(yield* from.graph.getNode(target.nodeId))
        if (!known && !(yield* from.cm.hasConnection(target.nodeId))) return [from, target] as const
      }
    }
    return yield* Effect.dieMessage("every node knows every other")
  })

/** `from` opens "echo/1" on `target` by NodeId, writes a line and reads the answer. */
const talk = (from: SimNode, target: SimNode) =>
  Effect.scoped(
    Effect.gen(function* () {
      const socket = yield* from.cm.openStream(target.nodeId, id("echo/1"))
      yield* writeAll(socket, [`hello from ${from.index}`])
      return yield* readAll(socket)
    })
  )

/** A world where a stranger talks to a NAT'd node over a raw protocol; its trace hash. */
const rawRun = (seed: number, size: number, rpc: RpcMode) =>
  simulate(
    (ctx) =>
      Effect.gen(function* () {
        const w = yield* joinedWorld(ctx, seed, size, rpc)
        const [from, target] = yield* strangers(w, "restricted")
        const callers: Contact[] = []
        yield* target.protocols!.handle(id("echo/1"), echo(callers))
        expect(yield* talk(from, target)).toBe(`echo:hello from ${from.index}`)
        expect(callers).toHaveLength(1)
        expect(NodeId.equals(callers[0]!.nodeId, from.nodeId)).toBe(true)
        // A protocol the target does not serve is refused with the typed error.
        const refused = yield* Effect.flip(Effect.scoped(from.cm.openStream(target.nodeId, id("other/1"))))
        expect(refused._tag).toBe("UnsupportedProtocolError")
        return yield* w.sim.traceHash
      }),
    { seed }
  )

/** A world where a stranger calls the notes group on a NATed node by NodeId; its trace hash. */
const appRun = (seed: number, size: number, rpc: RpcMode) =>
  simulate(
    (ctx) =>
      Effect.gen(function* () {
        const w = yield* joinedWorld(ctx, seed, size, rpc, notesOf)
        const [from, target] = yield* strangers(w, "restricted")
        const asFrom = w.contextOf(from)
        const reply = yield* Effect.provide(
          Notes.withClient(target.nodeId, (client) => client.SendNote({ text: "hi" })),
          asFrom
        )
        expect(reply).toBe(`${target.index} got "hi" from ${NodeId.encode(from.nodeId)}`)
        const counted = yield* Notes.withClientStream(target.nodeId, (client) =>
          client.Count({ upTo: 5 })
        ).pipe(Stream.runCollect, Effect.provide(asFrom))
        expect(Chunk.toReadonlyArray(counted)).toEqual([1, 2, 3, 4, 5])
        // The served group survives a restart of the node (its layer is built again).
        yield* w.crash(target)
        yield* w.restart(target)
        // The caller learns of the crash when its connection's keep-alive times out.
        yield* Effect.sleep("40 seconds")
        expect(yield* from.cm.hasConnection(target.nodeId)).toBe(false)
        const again = yield* Effect.provide(
          Notes.withClient(target.nodeId, (client) => client.SendNote({ text: "back" })),
          asFrom
        )
        expect(again).toBe(`${target.index} got "back" from ${NodeId.encode(from.nodeId)}`)
        return yield* w.sim.traceHash
      }),
    { seed }
  )

/** Runs `seed` twice and `seed + 1` once: the same trace hash, then another. */
const sameTraceForSameSeed = (run: (seed: number) => Effect.Effect<string, unknown>, seed: number) =>
  Effect.gen(function* () {
    const first = yield* run(seed)
    expect(yield* run(seed)).toBe(first)
    expect(yield* run(seed + 1)).not.toBe(first)
  })

describe("application protocols in a simulated world", () => {
  it.effect(
    "100 nodes, direct RPC: a node reaches a NATed node it never met by NodeId over a raw protocol; the same seed gives the same trace",
    () => sameTraceForSameSeed((seed) => rawRun(seed, 100, "direct"), 3),
    120_000
  )

  it.effect(
    "100 nodes, direct RPC: an application RPC group served by every node, called (unary and streamed) by a node that never met the callee, also after the callee restarts",
    () => sameTraceForSameSeed((seed) => appRun(seed, 100, "direct"), 3),
    120_000
  )

  it.effect(
    "wire RPC: the application group in 24 nodes",
    () => sameTraceForSameSeed((seed) => appRun(seed, 24, "wire"), 5),
    120_000
  )

  it.effect(
    "wire RPC (agent frames and protocol streams share the node's streams): the same, in 24 nodes",
    () => sameTraceForSameSeed((seed) => rawRun(seed, 24, "wire"), 5),
    120_000
  )
})
