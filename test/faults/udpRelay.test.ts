/**
 * The UDP fault relay on loopback: forwarding both ways with one upstream flow per client, seeded
 * loss, delay and jitter, runtime updates, and that close() releases the port.
 */
import { createSocket, type Socket } from "node:dgram"
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { makeUdpRelay, seededRandom, startUdpRelay, UdpRelayError, type UdpRelayOptions } from "./udpRelay.js"

interface Received {
  readonly data: string
  readonly port: number
  readonly at: number
}

/** A loopback UDP socket recording what it receives; closed with the test's scope. */
const endpoint = (onMessage?: (socket: Socket, msg: Buffer, port: number) => void) =>
  Effect.acquireRelease(
    Effect.async<{ socket: Socket; port: number; received: Array<Received> }>((resume) => {
      const socket = createSocket("udp4")
      const received: Array<Received> = []
      socket.on("message", (msg, rinfo) => {
        received.push({ data: msg.toString(), port: rinfo.port, at: performance.now() })
        onMessage?.(socket, msg, rinfo.port)
      })
      socket.bind(0, "127.0.0.1", () =>
        resume(Effect.succeed({ socket, port: socket.address().port, received }))
      )
    }),
    ({ socket }) =>
      Effect.async<void>((resume) => {
        socket.close(() => resume(Effect.void))
      })
  )

/** An echo server replying `echo:<msg>` to the sender. */
const echoServer = endpoint((socket, msg, port) => socket.send(`echo:${msg}`, port, "127.0.0.1"))

const send = (socket: Socket, data: string, port: number) =>
  Effect.async<void>((resume) => socket.send(data, port, "127.0.0.1", () => resume(Effect.void)))

/** A relay on 127.0.0.1 in front of `targetPort` on 127.0.0.1. */
const loopbackRelay = (
  targetPort: number,
  options: Omit<UdpRelayOptions, "listenHost" | "targetHost" | "targetPort">
) => makeUdpRelay({ listenHost: "127.0.0.1", targetHost: "127.0.0.1", targetPort, ...options })

/** Polls `cond` every 5 ms until it holds or `ms` elapse (live clock). */
const waitUntil = (cond: () => boolean, ms = 3_000) =>
  Effect.gen(function* () {
    const deadline = Date.now() + ms
    while (!cond() && Date.now() < deadline) yield* Effect.sleep("5 millis")
  })

describe("udpRelay", () => {
  it.scopedLive("forwards both ways, one distinct upstream flow per client", () =>
    Effect.gen(function* () {
      const target = yield* echoServer
      const relay = yield* loopbackRelay(target.port, {
        lossRate: 0,
        delayMs: 0,
        seed: 1
      })
      const a = yield* endpoint()
      const b = yield* endpoint()
      yield* send(a.socket, "from-a", relay.port)
      yield* send(b.socket, "from-b", relay.port)
      yield* send(a.socket, "again-a", relay.port)
      yield* waitUntil(() => a.received.length === 2 && b.received.length === 1)
      expect(a.received.map((r) => r.data)).toEqual(["echo:from-a", "echo:again-a"])
      expect(b.received.map((r) => r.data)).toEqual(["echo:from-b"])
      // Replies come from the relay's listen port, not from the target.
      expect(a.received.every((r) => r.port === relay.port)).toBe(true)
      // The target saw two flows: one source port per client, neither of them the client's own.
      const portsSeen = new Map(target.received.map((r) => [r.data, r.port]))
      expect(portsSeen.get("from-a")).toBe(portsSeen.get("again-a"))
      expect(portsSeen.get("from-a")).not.toBe(portsSeen.get("from-b"))
      expect(portsSeen.get("from-a")).not.toBe(a.port)
      expect(relay.stats()).toMatchObject({
        toTarget: { received: 3, dropped: 0, forwarded: 3 },
        toClient: { received: 3, dropped: 0, forwarded: 3 },
        clients: 2,
        pending: 0
      })
    })
  )

  it.scopedLive("drops about lossRate of 2,000 datagrams, deterministically per seed", () =>
    Effect.gen(function* () {
      const total = 2_000
      const runOnce = (seed: number) =>
        Effect.scoped(
          Effect.gen(function* () {
            const target = yield* endpoint()
            const relay = yield* loopbackRelay(target.port, {
              lossRate: 0.1,
              delayMs: 0,
              seed
            })
            const client = yield* endpoint()
            // Paced in bursts so that loopback socket buffers never overflow: every loss is the relay's.
            for (let i = 0; i < total; i++) {
              yield* send(client.socket, String(i), relay.port)
              if (i % 100 === 99)
                yield* waitUntil(
                  () => relay.stats().toTarget.forwarded + relay.stats().toTarget.dropped === i + 1
                )
            }
            yield* waitUntil(() => {
              const s = relay.stats().toTarget
              return s.received === total && target.received.length === s.forwarded
            })
            return { stats: relay.stats().toTarget, delivered: target.received.map((r) => Number(r.data)) }
          })
        )
      const first = yield* runOnce(42)
      expect(first.stats.received).toBe(total)
      expect(first.stats.dropped + first.stats.forwarded).toBe(total)
      expect(first.delivered.length).toBe(first.stats.forwarded)
      // Binomial(2000, 0.1): mean 200, sd ~13.4; ±4 sd.
      expect(first.stats.dropped).toBeGreaterThan(145)
      expect(first.stats.dropped).toBeLessThan(255)
      const again = yield* runOnce(42)
      expect(again.delivered).toEqual(first.delivered)
      const other = yield* runOnce(7)
      expect(other.delivered).not.toEqual(first.delivered)
    })
  )

  it.scopedLive("delays each direction by at least delayMs, jitter within bounds", () =>
    Effect.gen(function* () {
      const target = yield* echoServer
      const relay = yield* loopbackRelay(target.port, {
        lossRate: 0,
        delayMs: 60,
        jitterMs: 40,
        seed: 3
      })
      const client = yield* endpoint()
      const rtts: Array<number> = []
      for (let i = 0; i < 5; i++) {
        const sentAt = performance.now()
        yield* send(client.socket, `p${i}`, relay.port)
        yield* waitUntil(() => client.received.length === i + 1)
        rtts.push(client.received[i]!.at - sentAt)
      }
      // Two delayed hops per round trip: >= 2 × 60 ms (1 ms timer slack), < 2 × (60 + 40) + slack.
      for (const rtt of rtts) {
        expect(rtt).toBeGreaterThanOrEqual(119)
        expect(rtt).toBeLessThan(300)
      }
      // The jitter actually varies the delay.
      expect(Math.max(...rtts) - Math.min(...rtts)).toBeGreaterThan(2)
      // Without delay the same round trip is far faster.
      relay.update({ delayMs: 0, jitterMs: 0 })
      const sentAt = performance.now()
      yield* send(client.socket, "fast", relay.port)
      yield* waitUntil(() => client.received.length === 6)
      expect(client.received[5]!.at - sentAt).toBeLessThan(60)
    })
  )

  it.scopedLive("update: lossRate 1 cuts the link, 0 heals it", () =>
    Effect.gen(function* () {
      const target = yield* echoServer
      const relay = yield* loopbackRelay(target.port, {
        lossRate: 1,
        delayMs: 0,
        seed: 9
      })
      const client = yield* endpoint()
      for (let i = 0; i < 20; i++) yield* send(client.socket, "lost", relay.port)
      yield* waitUntil(() => relay.stats().toTarget.received === 20)
      yield* Effect.sleep("30 millis")
      expect(target.received).toEqual([])
      expect(relay.stats().toTarget.dropped).toBe(20)
      relay.update({ lossRate: 0 })
      yield* send(client.socket, "healed", relay.port)
      yield* waitUntil(() => client.received.length === 1)
      expect(client.received.map((r) => r.data)).toEqual(["echo:healed"])
      expect(() => relay.update({ lossRate: 2 })).toThrow(UdpRelayError)
    })
  )

  it.scopedLive("close frees the port and cancels delayed datagrams", () =>
    Effect.gen(function* () {
      const target = yield* endpoint()
      const relay = yield* Effect.promise(() =>
        startUdpRelay({
          listenHost: "127.0.0.1",
          targetHost: "127.0.0.1",
          targetPort: target.port,
          lossRate: 0,
          delayMs: 100,
          seed: 5
        })
      )
      const client = yield* endpoint()
      yield* send(client.socket, "late", relay.port)
      yield* waitUntil(() => relay.stats().pending === 1)
      expect(relay.stats().pending).toBe(1)
      yield* Effect.promise(() => Promise.all([relay.close(), relay.close()]))
      expect(relay.stats().pending).toBe(0)
      // The same port can be bound exclusively again.
      const rebound = yield* Effect.promise(() =>
        startUdpRelay({
          listenHost: "127.0.0.1",
          listenPort: relay.port,
          targetHost: "127.0.0.1",
          targetPort: target.port,
          lossRate: 0,
          delayMs: 0,
          seed: 5
        })
      )
      expect(rebound.port).toBe(relay.port)
      yield* Effect.promise(() => rebound.close())
      yield* Effect.sleep("150 millis")
      expect(target.received).toEqual([])
    })
  )

  it.scopedLive("invalid options and a taken port fail as UdpRelayError", () =>
    Effect.gen(function* () {
      const bad = yield* loopbackRelay(9, {
        lossRate: -0.5,
        delayMs: 0,
        seed: 1
      }).pipe(Effect.flip)
      expect(bad).toBeInstanceOf(UdpRelayError)
      const taken = yield* endpoint()
      const clash = yield* makeUdpRelay({
        listenHost: "127.0.0.1",
        listenPort: taken.port,
        targetHost: "127.0.0.1",
        targetPort: 9,
        lossRate: 0,
        delayMs: 0,
        seed: 1
      }).pipe(Effect.flip)
      expect(clash.message).toContain(`127.0.0.1:${taken.port}`)
    })
  )

  it("seededRandom is deterministic and uniform enough", () => {
    const a = seededRandom(123)
    const b = seededRandom(123)
    const xs = Array.from({ length: 10_000 }, () => a())
    expect(Array.from({ length: 10_000 }, () => b())).toEqual(xs)
    expect(xs.every((x) => x >= 0 && x < 1)).toBe(true)
    const mean = xs.reduce((s, x) => s + x, 0) / xs.length
    expect(Math.abs(mean - 0.5)).toBeLessThan(0.02)
  })
})
