/**
 * The quicmesh agent: a node composed from the live layers, joined to the network through
 * its seed nodes, serving the control API on `<node-path>/agent.sock` until SIGINT/SIGTERM
 * or `quicmesh agent stop`.
 */
import { appendFileSync, chmodSync, existsSync, rmSync } from "node:fs"
import { join } from "node:path"
import * as NodeSocketServer from "@effect/platform-node/NodeSocketServer"
import { RpcSerialization, RpcServer } from "@effect/rpc"
import { Config, Deferred, Duration, Effect, Either, Layer, Option, Predicate, Schedule } from "effect"
import { refreshPeriodically } from "../internal/bucketRefresh.js"
import * as IpDiversity from "../internal/ipDiversity.js"
import * as ConnectionGaterFile from "../layers/ConnectionGaterFile.js"
import * as KeyRingLive from "../layers/KeyRingLive.js"
import * as NodeGraphLmdb from "../layers/NodeGraphLmdb.js"
import * as NodeLive from "../layers/NodeLive.js"
import * as PortMapperLive from "../layers/PortMapperLive.js"
import { ConnectionManager } from "../services/ConnectionManager.js"
import * as CMConfig from "../services/ConnectionManagerConfig.js"
import type { Contact } from "../services/Contact.js"
import { NodeGraph } from "../services/NodeGraph.js"
import * as NodeId from "../services/NodeId.js"
import { QuicTransport } from "../services/QuicTransport.js"
import { RelayTap } from "../services/Relay.js"
import { ControlError, ControlRpcs } from "./ControlApi.js"
import { gateHandlers } from "./control/gates.js"
import { identityHandlers } from "./control/identity.js"
import { portMappingField } from "./control/portMapping.js"
import { reachabilityField } from "./control/reachability.js"
import { relayField } from "./control/relay.js"
import { configErrorText, OperationError, UsageError } from "./Input.js"
import { lockNodePath, socketPath } from "./NodePath.js"

export { lockNodePath, socketPath }

export interface AgentOptions {
  readonly nodePath: string
  readonly host: string
  readonly port: number
  readonly seedNodes: ReadonlyArray<Contact>
  readonly format: "human" | "json"
  /** Port mapping at the gateway: on unless `enabled: false`; the default route's gateway unless `gateway`. */
  readonly portMapping?: Partial<PortMapperLive.PortMapperOptions>
  /** Serve as a relay (`--relay`); QUICMESH_RELAY=true does too. */
  readonly relay?: boolean
}

/**
 * The connection manager's tuning from the environment: each option as QUICMESH_ plus its
 * name in CONSTANT_CASE (QUICMESH_CONNECTION_IDLE_TIMEOUT_TIME="30 seconds", …). A bad value
 * is a UsageError naming the variable.
 */
export const managerOptionsFromEnv = (
  seedNodes: ReadonlyArray<Contact>,
  env: Record<string, string | undefined> = process.env
): Effect.Effect<CMConfig.ConnectionManagerOptions, UsageError> =>
  CMConfig.fromEnv(seedNodes, env).pipe(
    Effect.mapError((e) => new UsageError({ message: configErrorText(String(e)) }))
  )

/**
 * The buckets' IP-diversity limit from the environment: QUICMESH_IP_DIVERSITY_MAX_PER_GROUP
 * (0 turns it off), QUICMESH_IP_DIVERSITY_IPV4_PREFIX, QUICMESH_IP_DIVERSITY_IPV6_PREFIX.
 */
export const ipDiversityFromEnv = (
  env: Record<string, string | undefined> = process.env
): Effect.Effect<IpDiversity.IpDiversityOption, UsageError> =>
  IpDiversity.config.pipe(
    Effect.withConfigProvider(CMConfig.envProvider(env)),
    Effect.mapError((e) => new UsageError({ message: configErrorText(String(e)) }))
  )

/**
 * The transport's UDP receive buffer from QUICMESH_RECEIVE_BUFFER_SIZE (bytes; 0 keeps the
 * kernel's default); none when the variable is unset (the transport's default, 4 MiB).
 */
export const receiveBufferFromEnv = (
  env: Record<string, string | undefined> = process.env
): Effect.Effect<Option.Option<number>, UsageError> =>
  Config.integer("receiveBufferSize").pipe(
    Config.validate({ message: "must be a number of bytes, 0 or more", validation: (n) => n >= 0 }),
    Config.option,
    Effect.withConfigProvider(CMConfig.envProvider(env)),
    Effect.mapError((e) => new UsageError({ message: configErrorText(String(e)) }))
  )

/**
 * A test hook: with QUICMESH_TEST_RELAY_TAP set to a file, every chunk the agent's relay
 * forwards is appended to it (the NAT lab looks there for plaintext). Nothing otherwise.
 */
const relayTapFromEnv = (env: Record<string, string | undefined> = process.env): Layer.Layer<RelayTap> => {
  const file = env.QUICMESH_TEST_RELAY_TAP
  // No tap: an empty layer (the manager reads the tap as an optional service).
  if (file === undefined || file === "") return Layer.empty as Layer.Layer<unknown> as Layer.Layer<RelayTap>
  return Layer.succeed(RelayTap, (bytes: Uint8Array) => appendFileSync(file, bytes))
}

/** What the agent reads from the environment besides the manager's options. */
export interface NodeTuning {
  readonly ipDiversity?: IpDiversity.IpDiversityOption | undefined
  readonly receiveBufferSize?: number | undefined
}

/** The node's layers: identity, routing table, transport, RPC, the connection manager and the port mapping it checks. */
export const nodeLayer = (
  options: AgentOptions,
  managerOptions: CMConfig.ConnectionManagerOptions,
  { ipDiversity, receiveBufferSize }: NodeTuning = {}
) =>
  NodeLive.layer({
    keyRing: KeyRingLive.layer({ nodePath: options.nodePath }),
    nodeGraph: NodeGraphLmdb.layer({
      path: join(options.nodePath, "nodegraph"),
      ...(ipDiversity === undefined ? {} : { ipDiversity })
    }),
    transport: {
      host: options.host,
      port: options.port,
      ...(receiveBufferSize === undefined ? {} : { receiveBufferSize })
    },
    config: CMConfig.layer(managerOptions),
    gater: ConnectionGaterFile.layer({ path: join(options.nodePath, ConnectionGaterFile.GATES_FILE) }),
    // Below the manager: its reachability checks the mapped address with a dial-back.
    portMapper: PortMapperLive.layer(options.portMapping)
  })

const handlers = (stop: Deferred.Deferred<void>) =>
  ControlRpcs.toLayer(
    Effect.gen(function* () {
      const cm = yield* ConnectionManager
      const graph = yield* NodeGraph
      const transport = yield* QuicTransport
      const identity = yield* identityHandlers
      const portMapping = yield* portMappingField
      const reachability = yield* reachabilityField
      const relay = yield* relayField
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
      const gates = yield* gateHandlers
      return {
        ...identity,
        ...gates,
        status: () =>
          Effect.gen(function* () {
            const connections = yield* cm.listConnections
            const nodes = yield* graph.size
            const counts = transport.stats === undefined ? undefined : yield* transport.stats
            return {
              status: "LIVE" as const,
              nodeId: NodeId.encode(cm.nodeId),
              host: cm.host,
              port: cm.port,
              connections: connections.length,
              nodes,
              pid: process.pid,
              ...(counts === undefined ? {} : { transport: counts }),
              ...(yield* portMapping),
              ...(yield* reachability),
              ...(yield* relay)
            }
          }),
        stop: () => Deferred.succeed(stop, undefined).pipe(Effect.asVoid),
        nodesAdd: ({ nodeId, host, port }) =>
          decode(nodeId).pipe(
            Effect.flatMap((id) => graph.setNode(id, { host, port, scope: "global" })),
            Effect.flatMap((r) =>
              Predicate.isTagged(r, "BucketFull")
                ? Effect.fail(new ControlError({ message: `bucket ${r.bucketIndex} is full` }))
                : Predicate.isTagged(r, "IpGroupFull")
                  ? Effect.fail(
                      new ControlError({
                        message: `bucket ${r.bucketIndex} already holds its limit of nodes from ${host}'s network (IP-diversity limit)`
                      })
                    )
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
              list.map((c) => ({
                ...c,
                hostname: c.hostname ?? null,
                timeout: c.timeout ?? null,
                relay: c.relay ?? null
              }))
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
  lockNodePath(options.nodePath).pipe(Effect.zipRight(runLocked(options)), Effect.scoped)

/** `run` for a caller that already holds the node path's lock (`lockNodePath`). */
export const runLocked = (options: AgentOptions) =>
  Effect.gen(function* () {
    const fromEnv = yield* managerOptionsFromEnv(options.seedNodes)
    const managerOptions = options.relay === true ? { ...fromEnv, relay: true } : fromEnv
    const ipDiversity = yield* ipDiversityFromEnv()
    const receiveBufferSize = Option.getOrUndefined(yield* receiveBufferFromEnv())
    const stop = yield* Deferred.make<void>()
    const program = Effect.gen(function* () {
      const cm = yield* ConnectionManager
      const ready = { nodeId: NodeId.encode(cm.nodeId), host: cm.host, port: cm.port }
      process.stdout.write(
        options.format === "json"
          ? `${JSON.stringify(ready)}\n`
          : `agent ready: node ${ready.nodeId} listening on ${ready.host.includes(":") ? `[${ready.host}]` : ready.host}:${ready.port}\n`
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
      // About every 10 minutes (jittered), the buckets not refreshed for bucketRefreshInterval.
      yield* refreshPeriodically(cm.refreshBuckets(), "10 minutes").pipe(Effect.forkScoped)
      yield* Effect.raceFirst(Deferred.await(stop), cm.failure)
      yield* Effect.logInfo("agent stopping")
    }).pipe(Effect.onInterrupt(() => Effect.logInfo("agent stopping (signal)")))
    yield* program.pipe(
      Effect.provide(
        controlServerLayer(options.nodePath, stop).pipe(
          Layer.provideMerge(
            nodeLayer(options, managerOptions, { ipDiversity, receiveBufferSize }).pipe(
              Layer.provide(relayTapFromEnv())
            )
          )
        )
      ),
      Effect.mapError((e) => new OperationError({ message: `agent failed: ${e.message}` }))
    )
  }).pipe(Effect.scoped)
