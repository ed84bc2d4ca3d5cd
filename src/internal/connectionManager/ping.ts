/**
 * Liveness of a node now: alive means the peer accepted us and answered, a round trip on a
 * connection (a finished handshake is no proof: in TLS 1.3 the server checks our certificate
 * after our side is done, and a peer that refuses us closes the connection only then). Given
 * an address, exactly that address (a fresh connection, unless the one we hold goes there);
 * else the connection we hold, or one got as `getConnection` does. Getting the connection and
 * the round trip share the one timeout. A node that fails any of it is not alive: `pingNode`
 * answers a yes or no, and never fails.
 */
import { type Duration, Effect, Exit } from "effect"
import * as Address from "../../services/Address.js"
import type { OperationOptions } from "../../services/ConnectionManager.js"
import * as NodeId from "../../services/NodeId.js"
import type { QuicConnection } from "../../services/QuicTransport.js"
import * as Deadline from "./deadline.js"
import type { Dialing } from "./dialing.js"
import type { Records } from "./records.js"
import type { ConnRecord, Entry, ManagerState } from "./state.js"

const sameAddress = (connection: QuicConnection, address: Address.Address) =>
  connection.remotePort === address.port &&
  Address.normalizeHost(connection.remoteHost) === Address.normalizeHost(address.host)

export interface Ping {
  readonly pingNode: (
    nodeId: NodeId.NodeId,
    address?: Address.Address,
    options?: OperationOptions
  ) => Effect.Effect<boolean>
}

export const make = (
  state: ManagerState,
  deps: { readonly getEntry: Dialing["getEntry"]; readonly dialRecord: Records["dialRecord"] }
): Ping => {
  const { map, timeoutOf } = state
  const { getEntry, dialRecord } = deps

  const expired = () => "no time left" as const

  // A connection that fails its round trip is dead: it goes (unless another has replaced it
  // meanwhile). The round trip uses the record: an upgrade closes it only after the answer.
  const roundTrip = (entry: Entry, timeout: Duration.Duration) =>
    Effect.acquireUseRelease(
      map.acquire(entry),
      (record) =>
        record.client.ping.pipe(
          Effect.timeout(timeout),
          Effect.as(true),
          Effect.catchAll(() =>
            (entry.record === record ? map.remove(entry, "ping failed") : Effect.void).pipe(Effect.as(false))
          )
        ),
      (record) => map.release(entry, record, false)
    )

  // A fresh connection to exactly the address: kept (if we hold none) once the peer answered.
  const pingAt = (nodeId: NodeId.NodeId, address: Address.Address, timeout: Duration.Duration) =>
    Effect.flatMap(Deadline.after(timeout), (deadline) =>
      Effect.acquireUseRelease(
        Effect.interruptible(dialRecord([nodeId], address, timeout)),
        (record) => Deadline.withLeft(deadline, (left) => Effect.timeout(record.client.ping, left), expired),
        (record: ConnRecord, exit) =>
          Exit.isSuccess(exit) && !map.get(nodeId)
            ? Effect.asVoid(map.adopt(record))
            : map.closeRecord(record, "ping")
      )
    )

  const pingNode = (nodeId: NodeId.NodeId, address?: Address.Address, options?: OperationOptions) =>
    Effect.suspend((): Effect.Effect<boolean> => {
      if (NodeId.equals(nodeId, state.self)) return Effect.succeed(false)
      const timeout = timeoutOf(options)
      const existing = map.get(nodeId)
      if (existing && (address === undefined || sameAddress(existing.record.connection, address)))
        return roundTrip(existing, timeout)
      if (address !== undefined)
        return pingAt(nodeId, address, timeout).pipe(
          Effect.as(true),
          Effect.orElseSucceed(() => false)
        )
      return Deadline.andThen(timeout, getEntry(nodeId, { timeout }), roundTrip, expired).pipe(
        Effect.orElseSucceed(() => false)
      )
    })

  return { pingNode }
}
