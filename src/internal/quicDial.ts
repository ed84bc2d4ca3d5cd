/**
 * quicDial: `QuicTransport.dial` over js-quic. A `QUICClient` on the transport's shared socket
 * presents the KeyRing's current certificate chain and checks the peer's (`DialCheck`); the
 * connection it makes is wrapped, tracked by the transport and closed with the caller's scope.
 */
import { isIPv4, isIPv6 } from "node:net"
import { QUICClient, type QUICSocket } from "@matrixai/quic"
import { Duration, Effect, type Runtime, type Scope } from "effect"
import type { KeyRingService, TlsConfig } from "../services/KeyRing.js"
import { DialError, type DialOptions, type QuicConnection } from "../services/QuicTransport.js"
import { type ConnectionContext, closeWithScope, WrappedConnection } from "./quicConnection.js"
import { dialErrorOf } from "./quicErrors.js"
import { silentLogger } from "./quicPatches.js"
import { clientCrypto, DialCheck, verifyCallback } from "./quicTls.js"

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

/** The transport's `dial`. */
export const makeDial =
  (dc: DialContext) =>
  (dialOptions: DialOptions): Effect.Effect<QuicConnection, DialError, Scope.Scope> => {
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
        const controller = new AbortController()
        const slow = dialOptions.whenSlow
        const slowTimer =
          slow === undefined
            ? undefined
            : setTimeout(slow.run, Duration.toMillis(Duration.decode(slow.after)))
        slowTimer?.unref()
        const pending = QUICClient.createQUICClient(
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
              ...dc.timings
            },
            logger: silentLogger
          },
          { signal: controller.signal, timer: timeoutMs }
        )
        let abandoned = false
        const settled = pending.then(
          (client) => {
            clearTimeout(slowTimer)
            check.expected = undefined
            if (abandoned) return client.destroy({ force: true }).catch(() => undefined)
            resume(Effect.succeed(client))
          },
          (error: unknown) => {
            clearTimeout(slowTimer)
            check.expected = undefined
            if (abandoned) return
            const rejection = check.rejection
            resume(
              Effect.fail(
                rejection
                  ? fail(rejection.reason, rejection.detail)
                  : dialErrorOf(error, host, port, timeout, dc.isStopping())
              )
            )
          }
        )
        return Effect.promise(() => {
          abandoned = true
          clearTimeout(slowTimer)
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
            () => new WrappedConnection(dc.connections, client.connection, "forward", remoteNodeId, client)
          )
        ),
        Effect.tap(closeWithScope)
      )
    )
  }
