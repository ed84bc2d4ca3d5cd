/**
 * Two quicmesh nodes on loopback in one process. Node B joins the network through node A (its
 * seed), then B pings A by NodeId and A looks B up by NodeId. Each node keeps its key and
 * routing table in a temporary directory, removed at the end.
 *
 *   npx tsx examples/library.ts
 */
import { FileSystem } from "@effect/platform"
import { NodeContext, NodeRuntime } from "@effect/platform-node"
import { Console, Context, Effect, Layer, Option } from "effect"
import { ConnectionManager, ConnectionManagerConfig, type Contact, NodeId } from "quicmesh"
import { KeyRingLive, NodeGraphLmdb, NodeLive } from "quicmesh/node"

// A node on real QUIC: its identity and routing table under `nodePath`, any free UDP port.
const node = (nodePath: string, seedNodes: ReadonlyArray<Contact.Contact>) =>
  NodeLive.layer({
    keyRing: KeyRingLive.layer({ nodePath }),
    nodeGraph: NodeGraphLmdb.layer({ path: `${nodePath}/nodegraph` }),
    transport: { host: "127.0.0.1", port: 0 },
    config: ConnectionManagerConfig.layer({ seedNodes })
  })

// Starts a node in the current scope (it stops when the scope closes); returns its manager.
const start = (seedNodes: ReadonlyArray<Contact.Contact>) =>
  Effect.gen(function* () {
    const nodePath = yield* FileSystem.FileSystem.pipe(
      Effect.flatMap((fs) => fs.makeTempDirectoryScoped({ prefix: "quicmesh-" }))
    )
    const context = yield* Layer.build(node(nodePath, seedNodes))
    return Context.get(context, ConnectionManager.ConnectionManager)
  })

const program = Effect.gen(function* () {
  const a = yield* start([])
  yield* Console.log(`node A: ${NodeId.encode(a.nodeId)} on ${a.host}:${a.port}`)

  const b = yield* start([{ nodeId: a.nodeId, host: a.host, port: a.port }])
  yield* Console.log(`node B: ${NodeId.encode(b.nodeId)} on ${b.host}:${b.port}`)

  // Connect to the seeds and look up our own NodeId to fill the routing table.
  yield* b.syncNodeGraph()
  const connected = yield* b.hasConnection(a.nodeId)
  yield* Console.log(`B joined through A: ${connected ? "connected" : "not connected"}`)

  // By NodeId alone: the manager finds the address and uses (or opens) the connection.
  const alive = yield* b.pingNode(a.nodeId)
  yield* Console.log(`B pinged A: ${alive ? "alive" : "no answer"}`)

  const found = yield* a.findNode(b.nodeId)
  yield* Console.log(
    Option.match(found, {
      onNone: () => "A looked up B: not found",
      onSome: (address) => `A looked up B: ${address.host}:${address.port}`
    })
  )
}).pipe(Effect.scoped)

NodeRuntime.runMain(program.pipe(Effect.provide(NodeContext.layer)))
