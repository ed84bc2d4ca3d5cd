/**
 * `quicmesh identity`: print the node's NodeId; `quicmesh identity renew`: renew its key,
 * through the running agent when there is one (the agent moves to the new NodeId at once),
 * else on the key files, holding the node path's lock so that no agent starts meanwhile.
 */
import { existsSync } from "node:fs"
import { join } from "node:path"
import { Command } from "@effect/cli"
import { Effect } from "effect"
import type { KeyRing } from "../../services/KeyRing.js"
import * as NodeId from "../../services/NodeId.js"
import { OperationError } from "../Input.js"
import { lockNodePath, socketPath } from "../NodePath.js"
import { agentReachable, checkFormat, format, nodePath, print, resolveNodePath, withAgent } from "./shared.js"

/** The KeyRing of the key files under `dir` (loaded only here: the other commands start faster). */
const withKeyFiles = <A>(
  dir: string,
  f: (keyRing: KeyRing["Type"]) => Effect.Effect<A, { message: string }>
) =>
  Effect.promise(() => import("../../layers/KeyRingLive.js")).pipe(
    Effect.flatMap((KeyRingLive) => Effect.flatMap(KeyRingLive.make({ nodePath: dir }), f)),
    Effect.mapError((e) => new OperationError({ message: e.message }))
  )

/** A renewal on the key files, while no agent runs (the lock keeps one from starting). */
const renewFiles = (dir: string) =>
  Effect.gen(function* () {
    if (!existsSync(join(dir, "key.pem")))
      return yield* new OperationError({ message: `no identity at ${dir} to renew (no key.pem)` })
    yield* lockNodePath(dir)
    return yield* withKeyFiles(dir, (keyRing) =>
      Effect.gen(function* () {
        const previous = yield* keyRing.nodeId
        yield* keyRing.renew
        const nodeId = yield* keyRing.nodeId
        return { previous: NodeId.encode(previous), nodeId: NodeId.encode(nodeId) }
      })
    )
  }).pipe(Effect.scoped)

const renew = Command.make("renew", { nodePath, format }, (o) =>
  Effect.gen(function* () {
    const fmt = yield* checkFormat(o.format)
    const dir = resolveNodePath(o.nodePath)
    const renewal = (yield* agentReachable(socketPath(dir)))
      ? yield* withAgent(dir, (c) => c.identityRenew())
      : yield* renewFiles(dir)
    yield* print(fmt, renewal, `renewed the node's key: ${renewal.previous} -> ${renewal.nodeId}`)
  })
).pipe(
  Command.withDescription(
    "New key and certificate, signed by the old key; a running agent moves to the new NodeId at once"
  )
)

export const identityCommand = Command.make("identity", { nodePath, format }, (o) =>
  Effect.gen(function* () {
    const fmt = yield* checkFormat(o.format)
    const nodeId = yield* withKeyFiles(resolveNodePath(o.nodePath), (keyRing) => keyRing.nodeId)
    yield* print(fmt, { nodeId: NodeId.encode(nodeId) }, NodeId.encode(nodeId))
  })
).pipe(
  Command.withDescription("Print this node's NodeId (creates the identity if missing)"),
  Command.withSubcommands([renew])
)
