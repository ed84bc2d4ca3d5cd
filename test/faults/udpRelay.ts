/**
 * A userspace UDP fault relay for tests: a datagram proxy between clients and one target that
 * drops datagrams with a seeded probability and delays each one (plus optional jitter).
 *
 *   client ──▶ relay listen socket ──(loss, delay)──▶ per-client upstream socket ──▶ target
 *   client ◀── relay listen socket ◀──(loss, delay)── per-client upstream socket ◀── target
 *
 * Every client address gets its own upstream socket, so the target sees one distinct flow
 * (source port) per client, as it would without the relay. The relay works in real time (it
 * exists to disturb real sockets), so its delays are node timers; every pending timer belongs to
 * the relay and is cleared by `close()`.
 */
import { createSocket, type RemoteInfo, type Socket } from "node:dgram"
import { isIPv6 } from "node:net"
import { Data, Effect, type Scope } from "effect"

export interface UdpRelayFaults {
  /** Probability in [0, 1] that a datagram (either direction) is dropped. */
  readonly lossRate: number
  /** Fixed delay added to every forwarded datagram, in milliseconds. */
  readonly delayMs: number
  /** Extra uniform random delay in [0, jitterMs) added per datagram (may reorder). */
  readonly jitterMs?: number
}

export interface UdpRelayOptions extends UdpRelayFaults {
  readonly listenHost: string
  /** 0 or absent: an ephemeral port. */
  readonly listenPort?: number
  readonly targetHost: string
  readonly targetPort: number
  /** Seed of the PRNG deciding drops and jitter; the same seed and traffic give the same faults. */
  readonly seed: number
  /** Address the per-client upstream sockets bind to (default: `listenHost`). */
  readonly upstreamHost?: string
}

export interface UdpRelayDirectionStats {
  /** Datagrams the relay received in this direction. */
  readonly received: number
  /** Datagrams dropped by the loss rule. */
  readonly dropped: number
  /** Datagrams actually handed to the kernel after their delay. */
  readonly forwarded: number
}

export interface UdpRelayStats {
  readonly toTarget: UdpRelayDirectionStats
  readonly toClient: UdpRelayDirectionStats
  /** Distinct client addresses seen (= upstream sockets opened). */
  readonly clients: number
  /** Datagrams waiting for their delay to elapse. */
  readonly pending: number
}

export interface UdpRelay {
  /** The port clients send to. */
  readonly port: number
  readonly host: string
  readonly stats: () => UdpRelayStats
  /** Change the faults from now on (e.g. `lossRate: 1` to cut the link, back to 0 to heal it). */
  readonly update: (faults: Partial<UdpRelayFaults>) => void
  /** Closes every socket and cancels datagrams still delayed; idempotent. */
  readonly close: () => Promise<void>
}

export class UdpRelayError extends Data.TaggedError("UdpRelayError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

/** mulberry32: a small, fast, seedable 32-bit PRNG returning floats in [0, 1). */
export const seededRandom = (seed: number): (() => number) => {
  let state = seed >>> 0
  return () => {
    state = (state + 0x6d2b79f5) >>> 0
    let t = state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

const validateFaults = (faults: UdpRelayFaults): string | undefined => {
  if (!(faults.lossRate >= 0 && faults.lossRate <= 1))
    return `lossRate must be in [0, 1], got ${faults.lossRate}`
  if (!(faults.delayMs >= 0)) return `delayMs must be >= 0, got ${faults.delayMs}`
  if (faults.jitterMs !== undefined && !(faults.jitterMs >= 0))
    return `jitterMs must be >= 0, got ${faults.jitterMs}`
  return undefined
}

const socketType = (host: string) => (isIPv6(host) ? "udp6" : "udp4")

const bindSocket = (socket: Socket, host: string, port: number) =>
  new Promise<void>((resolve, reject) => {
    const onError = (error: Error) => reject(error)
    socket.once("error", onError)
    socket.bind({ address: host, port, exclusive: true }, () => {
      socket.off("error", onError)
      resolve()
    })
  })

const closeSocket = (socket: Socket) =>
  new Promise<void>((resolve) => {
    try {
      socket.close(() => resolve())
    } catch {
      resolve() // already closed
    }
  })

interface MutableDirection {
  received: number
  dropped: number
  forwarded: number
}

/** Starts a relay; rejects on invalid options or when the listen address cannot be bound. */
export const startUdpRelay = async (options: UdpRelayOptions): Promise<UdpRelay> => {
  const invalid = validateFaults(options)
  if (invalid !== undefined) throw new UdpRelayError({ message: invalid })
  let faults: UdpRelayFaults = {
    lossRate: options.lossRate,
    delayMs: options.delayMs,
    jitterMs: options.jitterMs ?? 0
  }
  const random = seededRandom(options.seed)
  const upstreamHost = options.upstreamHost ?? options.listenHost
  const listener = createSocket({ type: socketType(options.listenHost) })
  // A UDP socket error (e.g. ICMP-induced) must not crash the test process.
  listener.on("error", () => {})
  try {
    await bindSocket(listener, options.listenHost, options.listenPort ?? 0)
  } catch (cause) {
    await closeSocket(listener)
    throw new UdpRelayError({
      message: `cannot bind relay to ${options.listenHost}:${options.listenPort ?? 0}`,
      cause
    })
  }

  const toTarget: MutableDirection = { received: 0, dropped: 0, forwarded: 0 }
  const toClient: MutableDirection = { received: 0, dropped: 0, forwarded: 0 }
  const timers = new Set<NodeJS.Timeout>()
  const upstreams = new Map<string, Promise<Socket | undefined>>()
  const upstreamSockets = new Set<Socket>()
  let closed = false

  /** Applies loss and delay, then runs `send` (unless the relay closed meanwhile). */
  const relay = (direction: MutableDirection, send: () => void) => {
    direction.received++
    if (faults.lossRate > 0 && random() < faults.lossRate) {
      direction.dropped++
      return
    }
    const jitter = faults.jitterMs ? random() * faults.jitterMs : 0
    const delay = faults.delayMs + jitter
    const deliver = () => {
      if (closed) return
      direction.forwarded++
      send()
    }
    if (delay <= 0) {
      deliver()
      return
    }
    const timer = setTimeout(() => {
      timers.delete(timer)
      deliver()
    }, delay)
    timers.add(timer)
  }

  const upstreamFor = (client: RemoteInfo): Promise<Socket | undefined> => {
    const key = `${client.address}|${client.port}`
    const existing = upstreams.get(key)
    if (existing !== undefined) return existing
    const created = (async () => {
      const upstream = createSocket({ type: socketType(upstreamHost) })
      upstream.on("error", () => {})
      try {
        await bindSocket(upstream, upstreamHost, 0)
      } catch {
        await closeSocket(upstream)
        return undefined
      }
      if (closed) {
        await closeSocket(upstream)
        return undefined
      }
      upstreamSockets.add(upstream)
      upstream.on("message", (msg) => {
        relay(toClient, () => listener.send(msg, client.port, client.address))
      })
      return upstream
    })()
    upstreams.set(key, created)
    return created
  }

  listener.on("message", (msg, client) => {
    const upstream = upstreamFor(client)
    relay(toTarget, () => {
      void upstream.then((socket) => {
        if (socket !== undefined && !closed) socket.send(msg, options.targetPort, options.targetHost)
      })
    })
  })

  const address = listener.address()
  let closing: Promise<void> | undefined
  return {
    port: address.port,
    host: address.address,
    stats: () => ({
      toTarget: { ...toTarget },
      toClient: { ...toClient },
      clients: upstreams.size,
      pending: timers.size
    }),
    update: (partial) => {
      const next = { ...faults, ...partial }
      const problem = validateFaults(next)
      if (problem !== undefined) throw new UdpRelayError({ message: problem })
      faults = next
    },
    close: () => {
      if (closing === undefined) {
        closed = true
        for (const timer of timers) clearTimeout(timer)
        timers.clear()
        closing = (async () => {
          await Promise.all(upstreams.values())
          await Promise.all([closeSocket(listener), ...[...upstreamSockets].map(closeSocket)])
        })()
      }
      return closing
    }
  }
}

/** The relay as a scoped resource: closed when the scope closes. */
export const makeUdpRelay = (options: UdpRelayOptions): Effect.Effect<UdpRelay, UdpRelayError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.tryPromise({
      try: () => startUdpRelay(options),
      catch: (cause) =>
        cause instanceof UdpRelayError
          ? cause
          : new UdpRelayError({ message: "relay failed to start", cause })
    }),
    (relay) => Effect.promise(() => relay.close())
  )
