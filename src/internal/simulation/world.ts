/** A simulated world to script: nodes composed by `Node.make` over the SimNetwork, join, crash, restart, look up. */
import { Context, Duration, Effect, ExecutionStrategy, Exit, Layer, Option, Scope } from "effect"
import * as KeyRingTest from "../../layers/KeyRingTest.js"
import * as Node from "../../layers/Node.js"
import * as NodeGraphMemory from "../../layers/NodeGraphMemory.js"
import * as PeerRpcLive from "../../layers/PeerRpcLive.js"
import * as PeerRpcSim from "../../layers/PeerRpcSim.js"
import * as SimNet from "../../layers/SimWorld.js"
import type { SimContext } from "../../programs/SimRuntime.js"
import {
  ConnectionManager,
  type ConnectionManagerDiagnostics,
  type ConnectionManagerService
} from "../../services/ConnectionManager.js"
import * as CMConfig from "../../services/ConnectionManagerConfig.js"
import type { Contact } from "../../services/Contact.js"
import * as Dns from "../../services/Dns.js"
import * as NodeConfig from "../../services/NodeConfig.js"
import type { NodeGraphService } from "../../services/NodeGraph.js"
import * as NodeId from "../../services/NodeId.js"
import { PeerRpc } from "../../services/PeerRpc.js"
import * as Protocols from "../../services/Protocols.js"
import type { TransportError } from "../../services/QuicTransport.js"
import { RpcConfig, type RpcOptions } from "../../services/RpcServer.js"
import type { NatType, SimNetworkService } from "../../services/SimNetwork.js"
import type { LookupOutcome } from "./figures.js"
import type { WorldOptions } from "./options.js"

export interface SimNode {
  readonly index: number
  /** The KeyRingTest seed: the same key across restarts. */
  readonly keySeed: string
  readonly nodeId: NodeId.NodeId
  readonly nat: NatType
  readonly isSeed: boolean
  /** Bind address (private for NATed nodes). */
  readonly host: string
  readonly port: number
  alive: boolean
  cm: ConnectionManagerService
  diagnostics: ConnectionManagerDiagnostics["Type"]
  graph: NodeGraphService
  scope: Scope.CloseableScope
  /**
   * The application protocols the node serves on its connections (`handle` one here), kept
   * across restarts; undefined unless the world was made with `protocols`.
   */
  readonly protocols: Protocols.ProtocolsService | undefined
  /** The node's RPC options (limits and call timeout of its application RPC groups). */
  rpcConfig: RpcOptions
}

export interface SimWorld {
  readonly sim: SimNetworkService
  readonly ctx: SimContext
  readonly nodes: ReadonlyArray<SimNode>
  readonly seeds: ReadonlyArray<SimNode>
  /** Virtual milliseconds since the world started. */
  readonly now: Effect.Effect<number>
  /** Adds a running node (not joined). Seeds are public and given to later nodes. */
  readonly addNode: (options?: {
    readonly nat?: NatType
    readonly seed?: boolean
  }) => Effect.Effect<SimNode, TransportError>
  /** Connects to the seeds and looks up its own id; false when no seed answered. */
  readonly join: (node: SimNode) => Effect.Effect<boolean>
  /** The node's process dies: its transport crashes, its manager stops. */
  readonly crash: (node: SimNode) => Effect.Effect<void>
  /** Starts a crashed node again with the same key and address (its routing table is empty). */
  readonly restart: (node: SimNode) => Effect.Effect<void, TransportError>
  /** `from` looks `target` up with the network (never its own table first). */
  readonly lookup: (from: SimNode, target: SimNode) => Effect.Effect<LookupOutcome>
  /**
   * What a program acting as `node`'s application needs (its manager, its `Protocols` registry
   * and its `RpcConfig`), e.g. to call an `AppRpc` group from it or serve one on it. Throws when
   * the world was made without `protocols`.
   */
  readonly contextOf: (node: SimNode) => Context.Context<ConnectionManager | Protocols.Protocols | RpcConfig>
}

const keySeedOf = (seed: number, index: number) => `sim/${seed}/${index}`

/**
 * A world of managers on the current SimRuntime (call inside `simulate`). Everything it
 * builds lives in the current scope.
 */
export const makeWorld = (
  ctx: SimContext,
  options: WorldOptions
): Effect.Effect<SimWorld, never, Scope.Scope> =>
  Effect.gen(function* () {
    const latency = options.latency ?? 50
    const sim = yield* SimNet.make({
      seed: options.seed,
      latency: Duration.millis(latency),
      jitter: Duration.millis(options.jitter ?? Math.floor(latency / 5)),
      loss: options.loss ?? 0,
      traceLimit: options.traceLimit ?? 0
    })
    const worldScope = yield* Effect.scope
    const connectTimeoutMs = options.connectTimeoutMs ?? 15_000
    const lookupTimeout = Duration.millis(options.lookupTimeoutMs ?? connectTimeoutMs)
    const wire = options.rpc === "wire"
    // Direct calls need nothing per node: one PeerRpc serves the whole world.
    const directRpc = PeerRpcSim.make(sim, CMConfig.defaults.rpcCallTimeoutTime)
    // Simulated hosts are IP addresses: no name to resolve.
    const dns = Dns.makeStatic({})
    const relays = options.relays === true
    // Relays are served from a node's registry, as application protocols are.
    const withProtocols = options.protocols !== undefined || relays
    const nodeProtocols = options.protocols === true ? undefined : options.protocols
    const nodes: SimNode[] = []
    const seeds: SimNode[] = []
    let nextIndex = 0

    const contextOf = (
      node: { readonly protocols: Protocols.ProtocolsService | undefined; readonly rpcConfig: RpcOptions },
      cm: ConnectionManagerService
    ) => {
      if (node.protocols === undefined)
        throw new Error("this simulated world serves no application protocols (make it with `protocols`)")
      return Context.make(ConnectionManager, cm).pipe(
        Context.add(Protocols.Protocols, node.protocols),
        Context.add(RpcConfig, node.rpcConfig)
      )
    }

    const build = (node: {
      index: number
      keySeed: string
      nat: NatType
      isSeed: boolean
      host: string
      port: number
      protocols: Protocols.ProtocolsService | undefined
    }) =>
      Effect.gen(function* () {
        const scope = yield* Scope.fork(worldScope, ExecutionStrategy.sequential)
        const seedNodes: ReadonlyArray<Contact> = seeds.map((s) => ({
          nodeId: s.nodeId,
          host: s.host,
          port: s.port
        }))
        const config = NodeConfig.make({
          connectionFindConcurrencyLimit: options.alpha ?? 3,
          connectionConnectTimeoutTime: Duration.millis(connectTimeoutMs),
          seedNodes,
          // A seed is provisioned to hold a connection to everyone who joined through it.
          ...(node.isSeed ? { maxConnections: 1_000_000, maxInboundPending: 1_000_000 } : {}),
          ...(relays && node.isSeed
            ? {
                relay: true,
                relayMaxReservations: options.relayLimits?.maxReservations ?? 1_000_000,
                relayMaxCircuits: options.relayLimits?.maxCircuits ?? 1_000_000
              }
            : {})
        })
        // The services of one node as values, composed by Node.make rather than with layers:
        // a layer graph per node costs more memory than the node (thousands of them).
        return yield* Effect.gen(function* () {
          const keyRing = yield* KeyRingTest.make(node.keySeed)
          const nodeId = yield* keyRing.nodeId
          // Simulated public hosts are numbered in sequence (hundreds per /24), which no real
          // network is: the buckets' IP-diversity limit is off in a simulated world.
          const graph = yield* NodeGraphMemory.make(nodeId, {
            ipDiversity: false,
            ...(options.k === undefined ? {} : { k: options.k })
          })
          const transport = yield* sim.bind(
            {
              host: node.host,
              port: node.port,
              nat: node.nat,
              connectTimeout: config.transport.connectTimeout,
              maxIdleTimeout: config.transport.maxIdleTimeout
            },
            nodeId
          )
          const registry = node.protocols
          const rpcContext = Layer.succeed(RpcConfig, config.rpc)
          // A node with a registry routes the streams peers open to it (in either mode).
          const peerRpc = wire
            ? Context.get(
                yield* Layer.buildWithScope(
                  PeerRpcLive.layer.pipe(
                    Layer.provide(
                      registry === undefined
                        ? rpcContext
                        : Layer.merge(rpcContext, Layer.succeed(Protocols.Protocols, registry))
                    )
                  ),
                  scope
                ),
                PeerRpc
              )
            : registry === undefined
              ? directRpc
              : PeerRpcSim.make(sim, config.rpc.rpcCallTimeoutTime, registry)
          // The unchanged manager over the simulated transport and the chosen RPC layer.
          const { manager: cm, diagnostics } = yield* Node.make({
            config: config.manager,
            keyRing,
            nodeGraph: graph,
            transport,
            peerRpc,
            dns,
            ...(registry === undefined ? {} : { protocols: registry })
          })
          if (nodeProtocols !== undefined)
            yield* Layer.buildWithScope(
              nodeProtocols({ index: node.index, isSeed: node.isSeed, nat: node.nat }),
              scope
            ).pipe(
              Effect.provide(contextOf({ protocols: registry, rpcConfig: config.rpc }, cm)),
              Effect.orDie
            )
          return { scope, cm, diagnostics, graph, rpcConfig: config.rpc }
        }).pipe(
          Scope.extend(scope),
          Effect.onError(() => Scope.close(scope, Exit.void))
        )
      })

    const addNode = (addOptions: { readonly nat?: NatType; readonly seed?: boolean } = {}) =>
      Effect.gen(function* () {
        const isSeed = addOptions.seed === true
        const nat = isSeed ? "none" : (addOptions.nat ?? "none")
        const index = nextIndex++
        const keySeed = keySeedOf(options.seed, index)
        const host = yield* sim.addHost({ nat })
        const protocols = withProtocols ? Protocols.make() : undefined
        const built = yield* build({ index, keySeed, nat, isSeed, host: host.host, port: 0, protocols })
        const node: SimNode = {
          index,
          keySeed,
          nodeId: built.cm.nodeId,
          nat,
          isSeed,
          host: built.cm.host,
          port: built.cm.port,
          alive: true,
          cm: built.cm,
          diagnostics: built.diagnostics,
          graph: built.graph,
          scope: built.scope,
          protocols,
          rpcConfig: built.rpcConfig
        }
        nodes[index] = node
        if (isSeed) seeds.push(node)
        return node
      })

    const join = (node: SimNode) =>
      node.cm.syncNodeGraph().pipe(
        Effect.as(true),
        Effect.orElseSucceed(() => false)
      )

    const crash = (node: SimNode) =>
      Effect.gen(function* () {
        if (!node.alive) return
        node.alive = false
        yield* sim.crash(node.host, node.port)
        yield* Scope.close(node.scope, Exit.void)
      })

    const restart = (node: SimNode) =>
      Effect.gen(function* () {
        if (node.alive) return
        const built = yield* build(node)
        node.cm = built.cm
        node.diagnostics = built.diagnostics
        node.graph = built.graph
        node.scope = built.scope
        node.rpcConfig = built.rpcConfig
        node.alive = true
      })

    const now = Effect.sync(() => ctx.clock.elapsed)

    const lookup = (from: SimNode, target: SimNode) =>
      Effect.gen(function* () {
        const start = ctx.clock.elapsed
        const connected = yield* from.cm.hasConnection(target.nodeId)
        const result = yield* from.cm.getClosestGlobalNodes(target.nodeId, { timeout: lookupTimeout })
        const targetKey = NodeId.encode(target.nodeId)
        const entry = (yield* from.cm.listConnections).find((c) => c.nodeId === targetKey)
        return {
          from: from.index,
          target: target.index,
          fromNat: from.nat,
          targetNat: target.nat,
          found: Option.isSome(result.address),
          connected,
          rounds: result.stats.rounds,
          queries: result.stats.queries,
          contacted: result.stats.contacted,
          virtualMs: ctx.clock.elapsed - start,
          path: entry?.path,
          relay: entry?.relay
        } satisfies LookupOutcome
      })

    return {
      sim,
      ctx,
      nodes,
      seeds,
      now,
      addNode,
      join,
      crash,
      restart,
      lookup,
      contextOf: (node) => contextOf(node, node.cm)
    } satisfies SimWorld
  })
