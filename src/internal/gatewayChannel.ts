/**
 * A UDP request/answer channel to a gateway's port-mapping service (PCP and NAT-PMP share UDP
 * port 5351). The socket is connected to the gateway, so the kernel drops datagrams from any
 * other source, and the local address it reports is the one the gateway sees (the address a PCP
 * request must carry). A request is sent, then sent again each time the wait for an answer runs
 * out, the wait doubling from `firstWait` (RFC 6886 §3.1 starts at 250 ms); answers left over
 * from an earlier request are dropped before each send. Waits run on the Effect clock.
 */
import { createSocket, type Socket } from "node:dgram"
import { Duration, Effect, Either, Option, Queue, type Scope } from "effect"
import { type PortMapProtocol, PortMapSocketError, PortMapTimeout } from "../services/PortMapper.js"

export interface GatewayChannel {
  /** "host:port" of the gateway's service. */
  readonly gateway: string
  /** The local IPv4 address the socket sends from. */
  readonly localAddress: string
  readonly request: (
    protocol: PortMapProtocol,
    message: Uint8Array,
    retry: RetryPolicy
  ) => Effect.Effect<Uint8Array, PortMapTimeout | PortMapSocketError>
}

export interface RetryPolicy {
  readonly attempts: number
  readonly firstWait: Duration.Duration
}

type Arrival = Either.Either<Uint8Array, Error>

const bindAndConnect = (socket: Socket, bindHost: string, host: string, port: number) =>
  Effect.async<void, Error>((resume) => {
    const fail = (error: Error) => resume(Effect.fail(error))
    socket.once("error", fail)
    socket.bind({ address: bindHost, port: 0 }, () => {
      socket.connect(port, host, () => {
        socket.removeListener("error", fail)
        resume(Effect.void)
      })
    })
  })

/** Opens the channel for the life of the scope (the socket closes with it). */
export const openGatewayChannel = (options: {
  readonly host: string
  readonly port: number
  /** The local address to send from (default any: the route to the gateway picks it). */
  readonly bindHost?: string
}): Effect.Effect<GatewayChannel, PortMapSocketError, Scope.Scope> =>
  Effect.gen(function* () {
    const gateway = `${options.host}:${options.port}`
    const arrivals = yield* Effect.acquireRelease(Queue.sliding<Arrival>(16), Queue.shutdown)
    const socket = yield* Effect.acquireRelease(
      Effect.sync(() => createSocket("udp4")),
      (s) => Effect.sync(() => s.close())
    )
    yield* bindAndConnect(socket, options.bindHost ?? "0.0.0.0", options.host, options.port).pipe(
      Effect.mapError((cause) => new PortMapSocketError({ gateway, detail: cause.message, cause }))
    )
    socket.on("message", (message) => Queue.unsafeOffer(arrivals, Either.right(new Uint8Array(message))))
    socket.on("error", (error) => Queue.unsafeOffer(arrivals, Either.left(error)))
    const localAddress = socket.address().address
    const socketError = (cause: Error) => new PortMapSocketError({ gateway, detail: cause.message, cause })
    const send = (message: Uint8Array) =>
      Effect.async<void, PortMapSocketError>((resume) => {
        socket.send(message, (error) => resume(error ? Effect.fail(socketError(error)) : Effect.void))
      })
    const request: GatewayChannel["request"] = (protocol, message, retry) =>
      Effect.gen(function* () {
        yield* Queue.takeAll(arrivals)
        for (let attempt = 0; attempt < retry.attempts; attempt++) {
          yield* send(message)
          const wait = Duration.times(retry.firstWait, 2 ** attempt)
          const arrival = yield* Queue.take(arrivals).pipe(Effect.timeoutOption(wait))
          if (Option.isSome(arrival))
            return yield* Either.match(arrival.value, {
              onLeft: (error) => Effect.fail(socketError(error)),
              onRight: Effect.succeed
            })
        }
        return yield* new PortMapTimeout({ protocol, gateway, attempts: retry.attempts })
      })
    return { gateway, localAddress, request }
  })
