/**
 * quicDial: `QuicTransport.dial` over js-quic. A `QUICClient` on the transport's shared socket
 * presents the KeyRing's current certificate chain and checks the peer's (`DialCheck`); the
 * connection it makes is wrapped, tracked by the transport and closed with the caller's scope.
 * A peer that refuses the handshake explicitly (busy, at its handshake cap) is dialled again
 * after a short back-off until the dial's timeout; then the dial fails with reason `refused`.
 */
import { isIPv4, isIPv6 } from "node:net"
import { QUICClient, type QUICSocket } from "@matrixai/quic"
import { Duration, Effect, type Runtime, type Scope } from "effect"
import type { KeyRingService, TlsConfig } from "../services/KeyRing.js"
import type { NodeId } from "../services/NodeId.js"
import { DialError, type DialOptions } from "../services/QuicTransport.js"
import { type ConnectionContext, closeWithScope, WrappedConnection } from "./quicConnection.js"
import { dialErrorOf, refusalOf } from "./quicErrors.js"
import { silentLogger } from "./quicPatches.js"
import { clientCrypto, DialCheck, verifyCallback } from "./quicTls.js"

/**
 * A connection over a relayed circuit sends packets of at most 1200 bytes (QUIC's minimum),
 * both ways (the peer's sends are bounded by our advertised max_udp_payload_size): framed, each
 * fits in one packet of the relay's connection, where a full-size one would take two.
 */
const circuitPacketSizes = { maxSendUdpPayloadSize: 1200, maxRecvUdpPayloadSize: 1200 }

/** The shortest time worth a new handshake attempt after a refusal. */
const minAttemptMs = 100

/**
 * The wait before the next attempt after the `n`th explicit refusal: 50 ms doubled per
 * refusal up to 1 s, less a random part of up to half (refused clients spread out).
 */
const refusalBackoff = (n: number) => Math.min(1000, 50 * 2 ** (n - 1)) * (1 - Math.random() / 2)

const isValidHost = (host: string) => isIPv4(host) || isIPv6(host) || /^[a-zA-Z0-9.-]{1,253}$/.test(host)

/** What dials share: the transport's socket, identity, connections and settings. */
export interface DialContext {
  readonly socket: QUICSocket
  readonly keyRing: KeyRingService
  readonly runtime: Runtime.Runtime<never>
  readonly connections: ConnectionContext
  /** A dial's timeout unless it gives its own. */
  readonly connectTimeout: Duration.Duration
  /** js-quic's timing settings (keep-alive, idle timeout), as the server has them. */
  readonly timings: { readonly keepAliveIntervalTime?: number; readonly maxIdleTimeout: number }
  readonly isStopping: () => boolean
}

/**
 * A dial through a relayed circuit (quicCircuit): the address is the circuit's local end.
 * When `ended` aborts (the circuit has ended), the dial fails at once: with the peer's
 * rejection if its certificate was already refused, otherwise `unreachable` with the abort's
 * reason (a string) as its detail.
 */
export interface DialVia {
  readonly relay: NodeId
  readonly ended: AbortSignal
  /** The peer's address as the relay observes it (the connection's remoteHost/remotePort). */
  readonly peer?: { readonly host: string; readonly port: number } | undefined
}

/** The transport's `dial`; `via` for a dial through a relayed circuit. */
export const makeDial =
  (dc: DialContext) =>
  (dialOptions: DialOptions, via?: DialVia): Effect.Effect<WrappedConnection, DialError, Scope.Scope> => {
    const { host, port, expectedNodeIds } = dialOptions
    const fail = (reason: DialError["reason"], detail: string) =>
      new DialError({ host, port, reason, detail })
    if (!Number.isInteger(port) || port < 1 || port > 65535 || !isValidHost(host))
      return Effect.fail(fail("invalid-address", `not a valid address: ${host}:${port}`))
    if (expectedNodeIds.length === 0) return Effect.fail(fail("mismatch", "no expected NodeId given"))
    const timeout =
      dialOptions.timeout === undefined ? dc.connectTimeout : Duration.decode(dialOptions.timeout)
    const timeoutMs = Duration.toMillis(timeout)

    const attempt = (current: TlsConfig) => {
      const check = new DialCheck(expectedNodeIds)
      return Effect.async<QUICClient, DialError>((resume) => {
        const deadline = performance.now() + timeoutMs
        const controller = new AbortController()
        const slow = dialOptions.whenSlow
        const slowTimer =
          slow === undefined
            ? undefined
            : setTimeout(slow.run, Duration.toMillis(Duration.decode(slow.after)))
        slowTimer?.unref()
        let abandoned = false
        let refusals = 0
        let retryTimer: ReturnType<typeof setTimeout> | undefined
        let settled: Promise<unknown> = Promise.resolve()
        const finish = () => {
          clearTimeout(slowTimer)
          check.expected = undefined
          if (onCircuitEnd !== undefined) via!.ended.removeEventListener("abort", onCircuitEnd)
        }
        const onClient = (client: QUICClient) => {
          finish()
          if (abandoned) return client.destroy({ force: true }).catch(() => undefined)
          resume(Effect.succeed(client))
        }
        const onError = (error: unknown) => {
          if (abandoned) return
          // A peer that refused us explicitly (busy) is asked again after a short back-off,
          // as long as the dial's deadline leaves room for another handshake.
          const refusal = refusalOf(error)
          if (refusal !== undefined) {
            refusals++
            const wait = refusalBackoff(refusals)
            if (deadline - performance.now() - wait >= minAttemptMs) {
              retryTimer = setTimeout(start, wait)
              return
            }
          }
          finish()
          const rejection = check.rejection
          resume(
            Effect.fail(
              rejection
                ? fail(rejection.reason, rejection.detail)
                : refusal !== undefined
                  ? fail("refused", `${refusal} (refused ${refusals} times in ${Duration.format(timeout)})`)
                  : dialErrorOf(error, host, port, timeout, dc.isStopping())
            )
          )
        }
        const start = () => {
          settled = QUICClient.createQUICClient(
            {
              host,
              port,
              socket: dc.socket,
              crypto: clientCrypto,
              config: {
                key: current.keyPrivatePem,
                cert: current.certChainPem,
                verifyPeer: true,
                verifyCallback: verifyCallback(dc.runtime, dc.keyRing, check),
                ...dc.timings,
                ...(via === undefined ? undefined : circuitPacketSizes)
              },
              logger: silentLogger
            },
            { signal: controller.signal, timer: Math.max(1, deadline - performance.now()) }
          ).then(onClient, onError)
        }
        const onCircuitEnd =
          via === undefined
            ? undefined
            : () => {
                if (abandoned) return
                abandoned = true
                clearTimeout(retryTimer)
                finish()
                const ended = String(via.ended.reason)
                controller.abort(new Error(ended))
                const rejection = check.rejection
                resume(
                  Effect.fail(
                    rejection ? fail(rejection.reason, rejection.detail) : fail("unreachable", ended)
                  )
                )
              }
        if (via?.ended.aborted) {
          onCircuitEnd!()
          return
        }
        via?.ended.addEventListener("abort", onCircuitEnd!)
        start()
        return Effect.promise(() => {
          abandoned = true
          clearTimeout(retryTimer)
          finish()
          controller.abort(new Error("dial interrupted"))
          return settled
        })
      }).pipe(Effect.map((client) => ({ client, remoteNodeId: check.verified! })))
    }

    // The attempt itself is interruptible (the caller); once it has produced a connection,
    // the connection is registered and tied to the caller's scope atomically. The timeout is
    // js-quic's own timer: it aborts the attempt like an interruption does, without a race
    // fiber on the hot path.
    return Effect.uninterruptibleMask((restore) =>
      restore(
        dc.isStopping()
          ? Effect.fail(fail("stopped", "the transport is stopping"))
          : Effect.flatMap(dc.keyRing.tlsConfig, attempt)
      ).pipe(
        Effect.flatMap(({ client, remoteNodeId }) =>
          Effect.sync(
            () =>
              new WrappedConnection(
                dc.connections,
                client.connection,
                "forward",
                remoteNodeId,
                client,
                via?.relay,
                via?.peer
              )
          )
        ),
        Effect.tap(closeWithScope)
      )
    )
  }
