/**
 * Liveness of a node now. Given an address, exactly that address (a fresh authenticated
 * connection proves it, unless the one we hold goes there); else a round trip on the
 * connection we hold, or getting one. A node that fails any of it is not alive: `pingNode`
 * answers a yes or no, and never fails.
 */
import { Effect } from "effect"
import * as Address from "../../services/Address.js"
import type { OperationOptions } from "../../services/ConnectionManager.js"
import * as NodeId from "../../services/NodeId.js"
import type { QuicConnection } from "../../services/QuicTransport.js"
import type { Dialing } from "./dialing.js"
import type { Records } from "./records.js"
import type { Entry, ManagerState } from "./state.js"

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
  const { self, map, timeoutOf } = state
  const { getEntry, dialRecord } = deps

  const pingNode = (nodeId: NodeId.NodeId, address?: Address.Address, options?: OperationOptions) =>
    Effect.suspend((): Effect.Effect<boolean> => {
      if (NodeId.equals(nodeId, self)) return Effect.succeed(false)
      const timeout = timeoutOf(options)
      const existing = map.get(nodeId)
      // A connection that fails its round trip is dead: it goes.
      const roundTrip = (entry: Entry) =>
        entry.record.client.ping.pipe(
          Effect.timeout(timeout),
          Effect.as(true),
          Effect.catchAll(() => map.remove(entry, "ping failed").pipe(Effect.as(false)))
        )
      if (address === undefined) {
        if (existing) return roundTrip(existing)
        return getEntry(nodeId, { timeout }).pipe(
          Effect.as(true),
          Effect.orElseSucceed(() => false)
        )
      }
      if (existing && sameAddress(existing.record.connection, address)) return roundTrip(existing)
      // Exactly that address: a fresh authenticated connection proves it.
      return dialRecord([nodeId], address, timeout).pipe(
        Effect.flatMap((record) =>
          map.get(nodeId) ? map.closeRecord(record, "ping") : Effect.asVoid(map.adopt(record))
        ),
        Effect.as(true),
        Effect.orElseSucceed(() => false)
      )
    }).pipe(
      Effect.timeout(timeoutOf(options)),
      Effect.orElseSucceed(() => false)
    )

  return { pingNode }
}
