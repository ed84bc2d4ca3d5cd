/**
 * udpReceiveBuffer: sizing a UDP socket's kernel receive buffer for bursts.
 *
 * A burst of datagrams (hundreds of handshakes' Initial packets at once) that arrives faster
 * than the event loop reads it waits in the socket's receive buffer; what does not fit is
 * dropped by the kernel, unseen by QUIC, and each lost Initial costs its client a
 * retransmission back-off. The kernel's default buffer (`net.core.rmem_default`, 208 KiB on
 * most Linux systems) holds about 170 full-size Initials.
 *
 * Linux grants `SO_RCVBUF` up to `net.core.rmem_max` (only `SO_RCVBUFFORCE`, which Node does
 * not offer, goes past it, and only for root) and reports twice what it granted (the doubled
 * size counts its bookkeeping): asking for 4 MiB under the default `rmem_max` of 208 KiB
 * yields 416 KiB.
 */
import type { Socket } from "node:dgram"

/** What was asked of the kernel for a socket's receive buffer, and what it holds now. */
export interface ReceiveBuffer {
  /** Bytes asked for (0: the kernel's default was left alone). */
  readonly requested: number
  /** The socket's receive buffer as the kernel reports it (`SO_RCVBUF`). */
  readonly granted: number
}

/**
 * Asks the kernel for a receive buffer of `requested` bytes on a bound socket (0 leaves the
 * default) and reads back what it granted. A refusal of the call itself leaves the default.
 */
export const sizeReceiveBuffer = (socket: Socket, requested: number): ReceiveBuffer => {
  if (requested > 0) {
    try {
      socket.setRecvBufferSize(requested)
    } catch {
      // The default stays; `granted` below says what it is.
    }
  }
  let granted = 0
  try {
    granted = socket.getRecvBufferSize()
  } catch {
    granted = 0
  }
  return { requested, granted }
}

/** What the kernel reports for a request it granted whole (Linux doubles it). */
const fullGrant = (requested: number) => (process.platform === "linux" ? 2 * requested : requested)

/**
 * A one-line warning when the kernel granted less than was asked (capped by
 * `net.core.rmem_max`), naming the sysctl to raise; else undefined.
 */
export const shortfallWarning = (buffer: ReceiveBuffer): string | undefined =>
  buffer.granted >= fullGrant(buffer.requested)
    ? undefined
    : `UDP receive buffer: asked for ${buffer.requested} bytes, the kernel granted ${buffer.granted}; ` +
      `bursts of inbound handshakes may be dropped. Raise the limit with ` +
      `"sysctl -w net.core.rmem_max=${buffer.requested}" (as root).`
