/**
 * quicGate: the connection gate at the QUIC server. A `ConnectionGater` in the transport's
 * context (optional: without one every valid peer is let in) refuses inbound connections in
 * two places, both before the transport hands the connection on:
 *
 * - in the TLS check of the client's certificate, when its NodeId alone decides: the handshake
 *   fails with the alert access_denied (QUIC error 0x131), and the server never establishes;
 * - once the handshake is done and the address is known too (TLS verification does not see
 *   it): the connection is closed at once with the same error code and a reason phrase,
 *   before any of its streams is served.
 *
 * The client reads either as the peer closing with error 0x131 (quicmesh's dialler reports
 * "refused by the node's connection gate"). In TLS 1.3 the server checks the client's
 * certificate after the client has finished its handshake, so a dialler may see its
 * connection made and then closed by the refusal.
 */
import type { QUICConnection } from "@matrixai/quic"
import { native } from "@matrixai/quic"
import { Effect, Exit, Option, Predicate } from "effect"
import { type ConnectionDenied, ConnectionGater } from "../services/ConnectionGater.js"
import type { NodeId } from "../services/NodeId.js"
import { acceptValid, type CertificateCheck } from "./quicTls.js"

/** The QUIC error code of a gate's refusal: TLS alert access_denied (49) as a crypto error. */
export const gatedErrorCode = native.CryptoError.AccessDenied

const gatedReason = new TextEncoder().encode("refused by the node's connection gate")

/** The server's side of the gate. */
export interface InboundGate {
  /** The check of the client's certificate chain (the verify callback's). */
  readonly check: CertificateCheck
  /** The verified peer, unless the gate refuses it at its address. */
  readonly admit: (nodeId: NodeId, host: string) => Effect.Effect<NodeId, ConnectionDenied>
  /** How a connection that failed verification or `admit` is stopped. */
  readonly stopOptions: (error: unknown) => Parameters<QUICConnection["stop"]>[0]
}

const refusedStop = { isApp: false, errorCode: gatedErrorCode, reason: gatedReason, force: true }
const invalidStop = { isApp: false, errorCode: 1, force: true }

const open: InboundGate = {
  check: acceptValid,
  admit: Effect.succeed,
  stopOptions: () => invalidStop
}

/** The inbound gate of the `ConnectionGater` in context, if there is one. */
export const inboundGate: Effect.Effect<InboundGate> = Effect.map(
  Effect.serviceOption(ConnectionGater),
  Option.match({
    onNone: () => open,
    onSome: (gater): InboundGate => ({
      check: {
        accept: (exit) => Exit.isSuccess(exit) && gater.refusal(exit.value) === undefined,
        alertFor: (exit) => (Exit.isSuccess(exit) ? gatedErrorCode : native.CryptoError.BadCertificate)
      },
      admit: (nodeId, host) => {
        const refused = gater.refusal(nodeId, host)
        return refused === undefined ? Effect.succeed(nodeId) : Effect.fail(refused)
      },
      stopOptions: (error) => (Predicate.isTagged(error, "ConnectionDenied") ? refusedStop : invalidStop)
    })
  })
)
