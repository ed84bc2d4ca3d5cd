/**
 * quicErrors: js-quic's errors read as quicmesh's: a one-line description, the `CloseReason`
 * a connection error stands for, and the `DialError` a failed dial becomes.
 */
import { native, errors as quicErrors } from "@matrixai/quic"
import { Duration } from "effect"
import { type CloseReason, DialError } from "../services/QuicTransport.js"

import { describe } from "./errorText.js"

export { describe }

const textDecoder = new TextDecoder()

type ErrorData = { reason?: Uint8Array; errorCode?: number; isApp?: boolean } | undefined

/**
 * A connection gate's refusal (quicGate): the TLS alert access_denied as a QUIC crypto error,
 * which js-quic reports with the bare code when the TLS check sends it.
 */
const gateRefusalOf = (data: ErrorData): string | undefined =>
  data?.isApp !== true && data?.errorCode === native.CryptoError.AccessDenied
    ? "refused by the node's connection gate (TLS access_denied)"
    : undefined

/** The reason a js-quic connection error stands for. */
export const closeReasonOf = (error: unknown): CloseReason => {
  const data = (error as { data?: ErrorData }).data
  const reasonText = data?.reason && data.reason.byteLength > 0 ? textDecoder.decode(data.reason) : undefined
  const detail =
    reasonText ??
    gateRefusalOf(data) ??
    (error instanceof Error && error.message !== "" ? error.message : (error as object).constructor.name)
  if (error instanceof quicErrors.ErrorQUICConnectionIdleTimeout) return { _tag: "IdleTimeout" }
  if (
    error instanceof quicErrors.ErrorQUICConnectionPeerTLS ||
    error instanceof quicErrors.ErrorQUICConnectionPeer
  )
    return { _tag: "Peer", detail }
  if (error instanceof quicErrors.ErrorQUICConnectionLocal) return { _tag: "Local", detail }
  return { _tag: "Error", detail: describe(error) }
}

/** The transport error code CONNECTION_REFUSED (RFC 9000 §20.1). */
const connectionRefused = 0x2

/**
 * The reason phrase of an explicit refusal — the peer closed the connection with the transport
 * error CONNECTION_REFUSED before the handshake finished (a server at its handshake cap) — or
 * undefined when `error` is anything else.
 */
export const refusalOf = (error: unknown): string | undefined => {
  if (!(error instanceof quicErrors.ErrorQUICConnectionPeer)) return undefined
  const data = (error as { data?: { reason?: Uint8Array; errorCode?: number; isApp?: boolean } }).data
  if (data === undefined || data.isApp === true || data.errorCode !== connectionRefused) return undefined
  const text = data.reason && data.reason.byteLength > 0 ? textDecoder.decode(data.reason) : ""
  return `peer refused the connection${text === "" ? "" : `: ${text}`}`
}

/**
 * The `DialError` a failed js-quic dial to `host:port` becomes (`timeout` is the dial's, for
 * the message; `stopping` tells whether the transport is stopping).
 */
export const dialErrorOf = (
  error: unknown,
  host: string,
  port: number,
  timeout: Duration.Duration,
  stopping: boolean
): DialError => {
  const fail = (reason: DialError["reason"], detail: string) => new DialError({ host, port, reason, detail })
  if (
    error instanceof quicErrors.ErrorQUICClientCreateTimeout ||
    error instanceof quicErrors.ErrorQUICConnectionStartTimeout
  )
    return fail("timeout", `no connection within ${Duration.format(timeout)}`)
  if (stopping || error instanceof quicErrors.ErrorQUICServerSocketNotRunning)
    return fail("stopped", "the transport is stopping")
  if (
    error instanceof quicErrors.ErrorQUICHostInvalid ||
    error instanceof quicErrors.ErrorQUICClientInvalidHost
  )
    return fail("invalid-address", describe(error))
  if (error instanceof quicErrors.ErrorQUICClientInvalidArgument) return fail("unreachable", describe(error))
  if (error instanceof quicErrors.ErrorQUICConnectionIdleTimeout) return fail("timeout", "no answer")
  if (
    error instanceof quicErrors.ErrorQUICConnectionLocalTLS ||
    error instanceof quicErrors.ErrorQUICConnectionPeerTLS
  )
    return fail("tls", gateRefusalOf((error as { data?: ErrorData }).data) ?? describe(error))
  if (error instanceof quicErrors.ErrorQUICConnectionPeer)
    return fail("unreachable", `peer refused: ${describe(error)}`)
  return fail("unreachable", describe(error))
}
