/**
 * Parsing and checking what a person types: seed lists, addresses, ports, NodeIds.
 * Every failure is a UsageError whose message names the bad value (exit code 2).
 */
import { Data, Effect, Either, Option } from "effect"
import * as Address from "../services/Address.js"
import type { Contact } from "../services/Contact.js"
import * as NodeId from "../services/NodeId.js"

/** Bad usage or bad input: the CLI exits with code 2 and this one-line message. */
export class UsageError extends Data.TaggedError("UsageError")<{ readonly message: string }> {}

/** The operation ran but failed (not found, unreachable, no agent): exit code 1. */
export class OperationError extends Data.TaggedError("OperationError")<{ readonly message: string }> {}

export const checkHost = (host: string, what = "host"): Effect.Effect<string, UsageError> =>
  Address.isHost(host)
    ? Effect.succeed(host)
    : Effect.fail(new UsageError({ message: `invalid ${what} "${host}": not an IP address or hostname` }))

export const checkPort = (port: number, what = "port"): Effect.Effect<number, UsageError> =>
  Number.isInteger(port) && port >= 0 && port <= 65535
    ? Effect.succeed(port)
    : Effect.fail(new UsageError({ message: `invalid ${what} ${port}: must be an integer from 0 to 65535` }))

export const parseNodeId = (text: string): Effect.Effect<NodeId.NodeId, UsageError> =>
  Either.match(NodeId.decode(text.trim()), {
    onLeft: (e) => Effect.fail(new UsageError({ message: e.message })),
    onRight: Effect.succeed
  })

/** A positive whole number typed as text, if given (`--timeout`, `--limit`). */
export const positiveInt = (
  name: string,
  text: Option.Option<string>,
  unit = ""
): Effect.Effect<number | undefined, UsageError> =>
  Option.match(text, {
    onNone: () => Effect.succeed(undefined),
    onSome: (t) =>
      /^\d+$/.test(t.trim()) && Number(t) > 0 && Number.isSafeInteger(Number(t))
        ? Effect.succeed(Number(t))
        : Effect.fail(
            new UsageError({ message: `invalid ${name} "${t}": must be a whole number > 0${unit}` })
          )
  })

/** "HOST:PORT" or "[IPV6]:PORT". */
export const parseAddress = (text: string): Effect.Effect<Address.Address, UsageError> =>
  Either.match(Address.parse(text), {
    onLeft: (e) => Effect.fail(new UsageError({ message: e.message })),
    onRight: Effect.succeed
  })

/** "NODEID@HOST:PORT;NODEID@HOST:PORT" (empty means none). */
export const parseSeedNodes = (text: string): Effect.Effect<ReadonlyArray<Contact>, UsageError> =>
  Effect.forEach(
    text
      .split(";")
      .map((s) => s.trim())
      .filter((s) => s.length > 0),
    (entry) =>
      Effect.gen(function* () {
        const at = entry.indexOf("@")
        if (at < 0)
          return yield* Effect.fail(
            new UsageError({ message: `invalid seed node "${entry}": expected NODEID@HOST:PORT` })
          )
        const nodeId = yield* parseNodeId(entry.slice(0, at)).pipe(
          Effect.mapError((e) => new UsageError({ message: `invalid seed node "${entry}": ${e.message}` }))
        )
        const address = yield* parseAddress(entry.slice(at + 1)).pipe(
          Effect.mapError((e) => new UsageError({ message: `invalid seed node "${entry}": ${e.message}` }))
        )
        return { nodeId, host: address.host, port: address.port }
      })
  )

/** `connectionIdleTimeoutTime` → `QUICMESH_CONNECTION_IDLE_TIMEOUT_TIME`. */
export const envName = (key: string) =>
  key.startsWith("QUICMESH_")
    ? key
    : // The env provider names a variable it could not read by its path: QUICMESH.MAX_CONNECTIONS.
      key.startsWith("QUICMESH.")
      ? `QUICMESH_${key.slice(9)}`
      : `QUICMESH_${key.replace(/([a-z0-9])([A-Z])/g, "$1_$2").toUpperCase()}`

/**
 * A ConfigError's text as one readable line naming the environment variable:
 * `(Invalid data at maxConnections: "Expected an integer value but received "x"")` →
 * `invalid QUICMESH_MAX_CONNECTIONS: expected an integer value but received "x"`.
 */
export const configErrorText = (text: string) =>
  text
    .replace(/\s+/g, " ")
    .trim()
    .replace(/^\((.*)\)$/, "$1")
    .replace(
      /Invalid data at ([A-Za-z0-9_.]+): "(.*?)"(?=$| and | or |\))/g,
      (_, key: string, msg: string) =>
        `invalid ${envName(key)}: ${msg.charAt(0).toLowerCase()}${msg.slice(1)}`
    )
    .replace(/Missing data at ([A-Za-z0-9_.]+): "(.*?)"/g, (_, key: string) => `missing ${envName(key)}`)
