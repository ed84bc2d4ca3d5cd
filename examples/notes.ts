/**
 * A small notes app over application RPC: three quicmesh nodes on loopback, each serving the
 * group "notes/1" (send a note, list the notes, watch new ones as a stream). B and C join the
 * network through A; then every call goes to a NodeId, and the manager finds the node's address
 * and gets or makes the connection. A watches B's notes while C sends notes to B; an empty
 * note is refused with the group's own typed error.
 *
 *   npx tsx examples/notes.ts
 */
import { FileSystem } from "@effect/platform"
import { NodeContext, NodeRuntime } from "@effect/platform-node"
import { Rpc, RpcGroup } from "@effect/rpc"
import { Console, Context, Effect, Fiber, Layer, PubSub, Ref, Schema, Stream } from "effect"
import { AppRpc, ConnectionManager, ConnectionManagerConfig, Contact, NodeId } from "quicmesh"
import { KeyRingLive, NodeGraphLmdb, NodeLive } from "quicmesh/node"

// ---- The protocol: a group of typed calls, served as "notes/1" ---------------------------

class Note extends Schema.Class<Note>("Note")({
  id: Schema.Number,
  from: Schema.String,
  text: Schema.String
}) {}

class EmptyNoteError extends Schema.TaggedError<EmptyNoteError>()("EmptyNoteError", {}) {}

class NotesRpcs extends RpcGroup.make(
  Rpc.make("SendNote", { payload: { text: Schema.String }, success: Note, error: EmptyNoteError }),
  Rpc.make("ListNotes", { payload: {}, success: Schema.Array(Note) }),
  // The notes there are, then each new one as it arrives.
  Rpc.make("WatchNotes", { payload: {}, success: Note, stream: true })
).middleware(AppRpc.WireMiddleware) {} // so that the handlers see the calling node (`Caller`)

const Notes = AppRpc.make(NotesRpcs, { protocol: "notes/1" })

// Names for the NodeIds of this example, for printing.
const names = new Map<string, string>()
const nameOf = (nodeId: NodeId.NodeId) => names.get(NodeId.encode(nodeId)) ?? NodeId.encode(nodeId)

// ---- Serving: one node's notes and its handlers ------------------------------------------

const notesHandlers = (name: string) =>
  NotesRpcs.toLayer(
    Effect.gen(function* () {
      const notes = yield* Ref.make<ReadonlyArray<Note>>([])
      const added = yield* PubSub.unbounded<Note>()
      return {
        SendNote: ({ text }) =>
          Effect.gen(function* () {
            if (text.trim() === "") return yield* new EmptyNoteError()
            // The sender is the node the connection proves, not a name in the message.
            const caller = yield* Contact.Caller
            const all = yield* Ref.updateAndGet(notes, (list) => [
              ...list,
              new Note({ id: list.length + 1, from: nameOf(caller.nodeId), text })
            ])
            const note = all[all.length - 1]!
            yield* Console.log(`${name} got note #${note.id} from ${note.from}: ${text}`)
            yield* PubSub.publish(added, note)
            return note
          }),
        ListNotes: () => Ref.get(notes),
        WatchNotes: () =>
          Stream.unwrapScoped(
            Effect.gen(function* () {
              const live = yield* PubSub.subscribe(added)
              const now = yield* Ref.get(notes)
              const seen = now.length === 0 ? 0 : now[now.length - 1]!.id
              return Stream.concat(
                Stream.fromIterable(now),
                Stream.filter(Stream.fromQueue(live), (note) => note.id > seen)
              )
            })
          )
      }
    })
  )

// ---- A node: on real QUIC, serving "notes/1" ---------------------------------------------

const startNode = (name: string, seedNodes: ReadonlyArray<Contact.Contact>) =>
  Effect.gen(function* () {
    const fs = yield* FileSystem.FileSystem
    const nodePath = yield* fs.makeTempDirectoryScoped({ prefix: "quicmesh-" })
    const node = NodeLive.layer({
      keyRing: KeyRingLive.layer({ nodePath }),
      nodeGraph: NodeGraphLmdb.layer({ path: `${nodePath}/nodegraph` }),
      transport: { host: "127.0.0.1", port: 0 },
      config: ConnectionManagerConfig.layer({ seedNodes })
    })
    // The node, and the notes group served on every connection it holds.
    const context = yield* Layer.build(
      Notes.layer.pipe(Layer.provide(notesHandlers(name)), Layer.provideMerge(node))
    )
    const manager = Context.get(context, ConnectionManager.ConnectionManager)
    names.set(NodeId.encode(manager.nodeId), name)
    yield* Console.log(`node ${name}: ${NodeId.encode(manager.nodeId)} on ${manager.host}:${manager.port}`)
    // Runs `effect` as this node: its calls go out through this node's manager.
    const asNode = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.provide(effect, context)
    return { manager, asNode, contact: { nodeId: manager.nodeId, host: manager.host, port: manager.port } }
  })

const program = Effect.gen(function* () {
  const a = yield* startNode("A", [])
  const b = yield* startNode("B", [a.contact])
  const c = yield* startNode("C", [a.contact])
  yield* b.manager.syncNodeGraph()
  yield* c.manager.syncNodeGraph()
  yield* Console.log("B and C joined through A")

  const bId = b.manager.nodeId

  // A watches B's notes: a streamed call, by NodeId (the first two notes, then it stops).
  const watching = yield* a
    .asNode(
      Notes.withClientStream(bId, (client) => client.WatchNotes({})).pipe(
        Stream.take(2),
        Stream.runForEach((note) => Console.log(`A watching B: #${note.id} from ${note.from}: ${note.text}`))
      )
    )
    .pipe(Effect.fork)

  // C sends notes to B, knowing only B's NodeId.
  for (const text of ["hello B, this is C", "see you at the next hop"]) {
    const note = yield* c.asNode(Notes.withClient(bId, (client) => client.SendNote({ text })))
    yield* Console.log(`C sent note #${note.id} to B`)
  }

  // The group's own error crosses the wire typed.
  const refused = yield* c.asNode(Notes.withClient(bId, (client) => client.SendNote({ text: "  " }))).pipe(
    Effect.as("accepted"),
    Effect.catchTag("EmptyNoteError", (e) => Effect.succeed(`refused with ${e._tag}`))
  )
  yield* Console.log(`C sent an empty note to B: ${refused}`)

  yield* Fiber.join(watching)

  // B's notes, asked for by A.
  const list = yield* a.asNode(Notes.withClient(bId, (client) => client.ListNotes({})))
  yield* Console.log(`B's notes (asked by A): ${list.map((n) => `#${n.id} from ${n.from}`).join(", ")}`)
}).pipe(Effect.scoped)

NodeRuntime.runMain(program.pipe(Effect.provide(NodeContext.layer)))
