/**
 * Connecting to any of several nodes at several addresses at once (how a node reaches its
 * seeds): hostnames are resolved to all their addresses through `Dns`, every address is
 * dialled, and the call ends once every wanted node is connected or the timeout (which
 * covers the resolving too) passes.
 */
import { Deferred, type Duration, Effect } from "effect"
import * as Address from "../../services/Address.js"
import { MultiConnectionError, type OperationOptions } from "../../services/ConnectionManager.js"
import type { DnsService } from "../../services/Dns.js"
import * as NodeId from "../../services/NodeId.js"
import * as Deadline from "./deadline.js"
import type { GraphUpkeep } from "./graphUpkeep.js"
import type { Records } from "./records.js"
import type { ManagerState } from "./state.js"

/** An address to dial, and the hostname it was resolved from, if any. */
interface Resolved {
  readonly host: string
  readonly port: number
  readonly hostname: string | undefined
}

export interface MultiConnection {
  /** Dial every address (hostnames resolved to all their IPs) for any of `nodeIds`; ends once all are connected. */
  readonly getMultiConnection: (
    nodeIds: ReadonlyArray<NodeId.NodeId>,
    addresses: ReadonlyArray<Address.Address>,
    options?: OperationOptions
  ) => Effect.Effect<ReadonlyArray<NodeId.NodeId>, MultiConnectionError>
}

export const make = (
  state: ManagerState,
  deps: {
    readonly dns: DnsService
    readonly dialRecord: Records["dialRecord"]
    readonly addToGraph: GraphUpkeep["addToGraph"]
  }
): MultiConnection => {
  const { map, timeoutOf } = state
  const { dns, dialRecord, addToGraph } = deps

  /** Every address to dial; a name that does not resolve adds its reason to `errors` instead. */
  const resolveAddresses = (addresses: ReadonlyArray<Address.Address>, errors: Array<string>) =>
    Effect.forEach(
      addresses,
      (address): Effect.Effect<ReadonlyArray<Resolved>> =>
        Address.ipVersion(address.host) !== 0
          ? Effect.succeed([
              { host: Address.normalizeHost(address.host), port: address.port, hostname: undefined }
            ])
          : dns.lookup(address.host).pipe(
              Effect.map((found) =>
                found.map((ip): Resolved => ({ host: ip, port: address.port, hostname: address.host }))
              ),
              // One address fewer to try; if no other connects, the error says why.
              Effect.catchAll((e) =>
                Effect.sync(() => {
                  errors.push(e.message)
                  return []
                })
              )
            )
    ).pipe(Effect.map((xs) => xs.flat()))

  const getMultiConnection = (
    nodeIds: ReadonlyArray<NodeId.NodeId>,
    addresses: ReadonlyArray<Address.Address>,
    options?: OperationOptions
  ): Effect.Effect<ReadonlyArray<NodeId.NodeId>, MultiConnectionError> =>
    Effect.gen(function* () {
      const timeout = timeoutOf(options)
      const wanted = new Map(
        nodeIds.filter((id) => !NodeId.equals(id, state.self)).map((id) => [NodeId.encode(id) as string, id])
      )
      const connected = new Map<string, NodeId.NodeId>()
      for (const [key, id] of wanted) if (map.get(id)) connected.set(key, id)
      const allDone = yield* Deferred.make<void>()
      const errors: string[] = []
      const attempt = (address: Resolved, left: Duration.Duration) =>
        Effect.suspend(() => {
          const expected = [...wanted].filter(([key]) => !connected.has(key)).map(([, id]) => id)
          if (expected.length === 0) return Effect.void
          return dialRecord(expected, address, left, address.hostname).pipe(
            Effect.flatMap(map.adopt),
            Effect.flatMap((entry) =>
              Effect.suspend(() => {
                connected.set(entry.key, entry.nodeId)
                return addToGraph(entry.nodeId, address.host, address.port).pipe(
                  Effect.zipRight(
                    connected.size >= wanted.size ? Deferred.succeed(allDone, undefined) : Effect.void
                  )
                )
              })
            ),
            // Each failed address is kept for the error: the call fails only if none connects.
            Effect.catchAll((e) => Effect.sync(() => errors.push(e.message)))
          )
        })
      if (connected.size < wanted.size) {
        // One deadline: resolving the names and the dials share the timeout.
        const deadline = yield* Deadline.after(timeout)
        const dialAll = Effect.flatMap(resolveAddresses(addresses, errors), (resolved) =>
          Deadline.withLeft(
            deadline,
            (left) =>
              Effect.forEach(resolved, (address) => attempt(address, left), {
                concurrency: "unbounded",
                discard: true
              }),
            () => "no time left to dial"
          )
        )
        yield* Effect.raceFirst(dialAll, Deferred.await(allDone)).pipe(
          // The timeout ends the waiting, not the call: what connected by then is the answer.
          Effect.timeout(timeout),
          Effect.ignore
        )
      }
      if (connected.size === 0)
        return yield* Effect.fail(
          new MultiConnectionError({
            nodeIds: [...wanted.keys()] as Array<NodeId.NodeIdEncoded>,
            addresses: addresses.map((a) => `${a.host}:${a.port}`),
            detail: errors.length > 0 ? errors.slice(0, 3).join("; ") : "no connection within the timeout"
          })
        )
      return [...connected.values()]
    })

  return { getMultiConnection }
}
