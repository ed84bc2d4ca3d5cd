/**
 * The quicmesh agent: a node composed from the live layers, joined to the network through
 * its seed nodes, serving the control API on `<node-path>/agent.sock` until SIGINT/SIGTERM
 * or `quicmesh agent stop`.
 */
import {
  chmodSync,
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  rmSync,
  writeSync
} from "node:fs"
import { join } from "node:path"
import { NodeSocketServer } from "@effect/platform-node"
import { RpcSerialization, RpcServer } from "@effect/rpc"
import { Deferred, Duration, Effect, Either, Layer, Option, Schedule } from "effect"
import * as KeyRingLive from "../layers/KeyRingLive.js"
import * as Node from "../layers/Node.js"
import * as NodeGraphLmdb from "../layers/NodeGraphLmdb.js"
import { ConnectionManager } from "../services/ConnectionManager.js"
import * as CMConfig from "../services/ConnectionManagerConfig.js"
import { ControlError, ControlRpcs } from "../services/ControlApi.js"
import { NodeGraph } from "../services/NodeGraph.js"
import * as NodeId from "../services/NodeId.js"
import { OperationError } from "./Input.js"

export interface AgentOptions {
  readonly nodePath: string
  readonly host: string
  readonly port: number
  readonly seedNodes: ReadonlyArray<CMConfig.SeedNode>
  readonly format: "human" | "json"
}

export const socketPath = (nodePath: string) => join(nodePath, "agent.sock")
const lockPath = (nodePath: string) => join(nodePath, "agent.lock")

const pidAlive = (pid: number) => {
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM"
  }
}

/** One agent per node path: an exclusive lock file holding our pid, removed on exit. */
export const lockNodePath = (nodePath: string) =>
  Effect.acquireRelease(
    Effect.try({
      try: () => {
        mkdirSync(nodePath, { recursive: true, mode: 0o700 })
        chmodSync(nodePath, 0o700)
        const path = lockPath(nodePath)
        for (let attempt = 0; attempt < 2; attempt++) {
          try {
            const fd = openSync(path, "wx", 0o600)
            writeSync(fd, `${process.pid}\n`)
            closeSync(fd)
            return path
          } catch (e) {
            if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e
            const pid = Number.parseInt(readFileSync(path, "utf8"), 10)
            if (Number.isInteger(pid) && pid !== process.pid && pidAlive(pid))
              throw new OperationError({ message: `another agent (pid ${pid}) is running at ${nodePath}` })
            rmSync(path, { force: true })
          }
        }
        throw new OperationError({ message: `cannot lock ${nodePath}` })
      },
      catch: (e) =>
        e instanceof OperationError
          ? e
          : new OperationError({ message: `cannot use node path ${nodePath}: ${(e as Error).message}` })
    }),
    (path) => Effect.sync(() => rmSync(path, { force: true }))
  )

/** The node's layers: identity, routing table, transport, RPC and the connection manager. */
export const nodeLayer = (options: AgentOptions) =>
  Node.layer({
    keyRing: KeyRingLive.layer({ nodePath: options.nodePath }),
    nodeGraph: NodeGraphLmdb.layer({ path: join(options.nodePath, "nodegraph") }),
    transport: { host: options.host, port: options.port },
    config: CMConfig.layerFromConfig(options.seedNodes).pipe(Layer.orDie)
  })

const handlers = (stop: Deferred.Deferred<void>) =>
  ControlRpcs.toLayer(
    Effect.gen(function* () {
      const cm = yield* ConnectionManager
      const graph = yield* NodeGraph
      const decode = (text: string): Effect.Effect<NodeId.NodeId, ControlError> => {
        const r = NodeId.decode(text)
        return Either.isLeft(r)
          ? Effect.fail(new ControlError({ message: r.left.message }))
          : Effect.succeed(r.right)
      }
      const timeoutOf = (ms: number | undefined) => (ms === undefined ? {} : { timeout: Duration.millis(ms) })
      const nodeJson = (
        nodeId: NodeId.NodeId,
        address: { host: string; port: number },
        lastSeen: number
      ) => ({
        nodeId: NodeId.encode(nodeId),
        host: address.host,
        port: address.port,
        bucketIndex: NodeId.bucketIndex(graph.ownNodeId, nodeId),
        lastUpdated: lastSeen
      })
      return {
        status: () =>
          Effect.gen(function* () {
            const connections = yield* cm.listConnections
            const nodes = yield* graph.size
            return {
              status: "LIVE" as const,
              nodeId: NodeId.encode(cm.nodeId),
              host: cm.host,
              port: cm.port,
              connections: connections.length,
              nodes,
              pid: process.pid
            }
          }),
        stop: () => Deferred.succeed(stop, undefined).pipe(Effect.asVoid),
        nodesAdd: ({ nodeId, host, port }) =>
          decode(nodeId).pipe(
            Effect.flatMap((id) => graph.setNode(id, { host, port, scope: "global" })),
            Effect.flatMap((r) =>
              r._tag === "BucketFull"
                ? Effect.fail(new ControlError({ message: `bucket ${r.bucketIndex} is full` }))
                : Effect.void
            ),
            Effect.catchTags({
              NodeGraphInputError: (e) => Effect.fail(new ControlError({ message: e.message })),
              NodeGraphStorageError: (e) => Effect.fail(new ControlError({ message: e.message }))
            })
          ),
        nodesFind: ({ nodeId, timeout }) =>
          decode(nodeId).pipe(
            Effect.flatMap((id) => cm.findNode(id, timeoutOf(timeout))),
            Effect.map((found) =>
              Option.match(found, {
                onNone: () => ({ success: false, nodeId }),
                onSome: (a) => ({ success: true, nodeId, address: { host: a.host, port: a.port } })
              })
            )
          ),
        nodesPing: ({ nodeId, address, timeout }) =>
          decode(nodeId).pipe(
            Effect.flatMap((id) => cm.pingNode(id, address, timeoutOf(timeout))),
            Effect.map((success) => ({ success }))
          ),
        nodesConnections: () =>
          cm.listConnections.pipe(
            Effect.map((list) =>
              list.map((c) => ({ ...c, hostname: c.hostname ?? null, timeout: c.timeout ?? null }))
            )
          ),
        nodesGetAll: () =>
          graph.getBuckets.pipe(
            Effect.map((buckets) =>
              buckets.flatMap(([, contacts]) =>
                contacts
                  .filter((c) => c.addresses[0])
                  .map((c) => nodeJson(c.nodeId, c.addresses[0]!, c.lastSeen))
              )
            )
          ),
        nodesClosest: ({ nodeId, limit }) =>
          decode(nodeId).pipe(
            Effect.flatMap((id) => graph.getClosestNodes(id, limit ?? graph.k)),
            Effect.map((contacts) =>
              contacts
                .filter((c) => c.addresses[0])
                .map((c) => nodeJson(c.nodeId, c.addresses[0]!, c.lastSeen))
            ),
            Effect.catchTag("NodeGraphInputError", (e) =>
              Effect.fail(new ControlError({ message: e.message }))
            )
          )
      }
    })
  )

/** Serves the control API on `<node-path>/agent.sock`, mode 0600. */
export const controlServerLayer = (nodePath: string, stop: Deferred.Deferred<void>) => {
  const path = socketPath(nodePath)
  const listen = Layer.effectDiscard(
    Effect.sync(() => {
      if (existsSync(path)) rmSync(path, { force: true })
    })
  )
  const server = RpcServer.layer(ControlRpcs).pipe(
    Layer.provide(handlers(stop)),
    Layer.provide(RpcServer.layerProtocolSocketServer),
    Layer.provide(RpcSerialization.layerNdjson),
    Layer.provide(NodeSocketServer.layer({ path })),
    Layer.provide(listen)
  )
  const secure = Layer.scopedDiscard(
    Effect.acquireRelease(
      Effect.sync(() => chmodSync(path, 0o600)),
      () => Effect.sync(() => rmSync(path, { force: true }))
    )
  )
  return Layer.provideMerge(secure, server)
}

/** Runs the agent until a signal interrupts it, `agent stop` is called, or the node fails. */
export const run = (options: AgentOptions) =>
  Effect.gen(function* () {
    yield* lockNodePath(options.nodePath)
    const stop = yield* Deferred.make<void>()
    const program = Effect.gen(function* () {
      const cm = yield* ConnectionManager
      const ready = { nodeId: NodeId.encode(cm.nodeId), host: cm.host, port: cm.port }
      process.stdout.write(
        options.format === "json"
          ? `${JSON.stringify(ready)}\n`
          : `quicmesh agent ${ready.nodeId} listening on ${ready.host}:${ready.port}\n`
      )
      yield* Effect.logInfo(`agent ready at ${options.nodePath}`)
      // Join through the seeds; unreachable seeds are retried with backoff, never fatal.
      if (cm.getSeedNodes.length > 0)
        yield* cm.syncNodeGraph().pipe(
          Effect.tapError((e) => Effect.logWarning(`joining the network failed, will retry: ${e.message}`)),
          Effect.retry(
            Schedule.exponential("1 second", 2).pipe(Schedule.union(Schedule.spaced("60 seconds")))
          ),
          Effect.tap(() => Effect.logInfo("joined the network")),
          Effect.forkScoped
        )
      yield* cm
        .refreshBuckets()
        .pipe(
          Effect.repeat(Schedule.spaced("10 minutes").pipe(Schedule.jittered)),
          Effect.delay("10 minutes"),
          Effect.forkScoped
        )
      yield* Effect.raceFirst(Deferred.await(stop), cm.failure)
      yield* Effect.logInfo("agent stopping")
    })
    yield* program.pipe(
      Effect.provide(controlServerLayer(options.nodePath, stop).pipe(Layer.provideMerge(nodeLayer(options))))
    )
  }).pipe(Effect.scoped)
