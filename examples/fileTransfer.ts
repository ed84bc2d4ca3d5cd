/**
 * A file sent over a raw application stream between two quicmesh nodes on loopback. The
 * receiver serves the protocol "files/1"; the sender joins the network through it, opens a
 * "files/1" stream to it by NodeId and writes a 4 MiB file, showing the progress. The receiver
 * checks the file's SHA-256 on arrival and answers whether it matches.
 *
 * The protocol's bytes: the sender writes the file's size (8 bytes, big-endian) and SHA-256
 * (32 bytes), then the file, then ends its side; the receiver answers one line and ends the
 * stream. QUIC's flow control holds the sender back while the receiver writes to disk.
 *
 *   npx tsx examples/fileTransfer.ts
 */
import { createHash, randomBytes } from "node:crypto"
import { closeSync, openSync, writeSync } from "node:fs"
import { FileSystem, Socket } from "@effect/platform"
import { NodeContext, NodeRuntime } from "@effect/platform-node"
import { Console, Context, Deferred, Effect, Layer } from "effect"
import { ConnectionManager, ConnectionManagerConfig, type Contact, Protocols } from "quicmesh"
import { KeyRingLive, NodeGraphLmdb, NodeLive } from "quicmesh/node"

const FILES = Protocols.ProtocolId.unsafeMake("files/1")
const FILE_SIZE = 3 * 1024 * 1024
const HEADER_SIZE = 8 + 32
const finished = new Socket.CloseEvent(1000)

const mib = (bytes: number) => `${(bytes / (1024 * 1024)).toFixed(1)} MiB`

/** A progress display: one line per quarter (a line redrawn in place on a terminal). */
const progress = (label: string, total: number) => {
  let shownQuarter = 0
  return (done: number) => {
    const percent = Math.floor((done / total) * 100)
    const text = `${label} ${mib(done)} of ${mib(total)} (${percent}%)`
    if (process.stdout.isTTY) process.stdout.write(`\r${text}${done === total ? "\n" : ""}`)
    else if (Math.floor((done / total) * 4) > shownQuarter) {
      shownQuarter = Math.floor((done / total) * 4)
      process.stdout.write(`${text}\n`)
    }
  }
}

// A node on real QUIC: its identity and routing table under a temporary directory.
const startNode = (seedNodes: ReadonlyArray<Contact.Contact>) =>
  Effect.gen(function* () {
    const fs = yield* FileSystem.FileSystem
    const nodePath = yield* fs.makeTempDirectoryScoped({ prefix: "quicmesh-" })
    const context = yield* Layer.build(
      NodeLive.layer({
        keyRing: KeyRingLive.layer({ nodePath }),
        nodeGraph: NodeGraphLmdb.layer({ path: `${nodePath}/nodegraph` }),
        transport: { host: "127.0.0.1", port: 0 },
        config: ConnectionManagerConfig.layer({ seedNodes })
      })
    )
    return {
      manager: Context.get(context, ConnectionManager.ConnectionManager),
      protocols: Context.get(context, Protocols.Protocols)
    }
  })

/**
 * Receives one file into `path`: reads the header, then hashes each chunk and writes it to disk
 * as it comes (synchronously: the next chunk is read once this one is written, so a slow disk
 * holds the sender back through QUIC's flow control). Answers once `size` bytes have arrived.
 */
const receive = (socket: Socket.Socket, path: string) =>
  Effect.gen(function* () {
    const file = openSync(path, "w")
    const hash = createHash("sha256")
    let header = Buffer.alloc(0)
    let size = 0
    let received = 0
    let show = (_: number) => {}
    let digest = ""
    let matches = false
    const write = yield* socket.writer
    const answer = (text: string) => Effect.zipRight(write(text), write(finished))
    yield* socket.run((chunk) => {
      let data = chunk
      if (header.length < HEADER_SIZE) {
        const need = HEADER_SIZE - header.length
        header = Buffer.concat([header, data.subarray(0, need)])
        data = data.subarray(need)
        if (header.length < HEADER_SIZE) return
        size = Number(header.readBigUInt64BE(0))
        show = progress("B received", size)
      }
      writeSync(file, data)
      hash.update(data)
      received += data.length
      show(received)
      if (received < size) return
      digest = hash.digest("hex")
      matches = received === size && digest === header.subarray(8).toString("hex")
      // The answer, then the end of the stream (which ends this loop too).
      return answer(matches ? `ok ${digest}\n` : `corrupt ${digest}\n`)
    })
    closeSync(file)
    return { received, digest, matches }
  }).pipe(Effect.scoped)

const program = Effect.gen(function* () {
  const fs = yield* FileSystem.FileSystem
  const dir = yield* fs.makeTempDirectoryScoped({ prefix: "quicmesh-files-" })

  // B receives: it serves "files/1" on every connection while this scope is open.
  const b = yield* startNode([])
  const arrived = yield* Deferred.make<{ readonly received: number; readonly matches: boolean }>()
  yield* b.protocols.handle(FILES, (socket, caller) =>
    Effect.gen(function* () {
      yield* Console.log(`B: a file from ${caller.host}:${caller.port}`)
      const result = yield* receive(socket, `${dir}/received.bin`)
      yield* Console.log(`B: SHA-256 ${result.digest} ${result.matches ? "matches" : "DOES NOT MATCH"}`)
      yield* Deferred.succeed(arrived, result)
    }).pipe(Effect.orDie)
  )

  // A sends: it joins through B, then reaches B by NodeId alone.
  const a = yield* startNode([{ nodeId: b.manager.nodeId, host: b.manager.host, port: b.manager.port }])
  yield* a.manager.syncNodeGraph()

  const source = `${dir}/source.bin`
  const content = randomBytes(FILE_SIZE)
  yield* fs.writeFile(source, content)
  const sha256 = createHash("sha256").update(content).digest()
  yield* Console.log(`A: sending ${mib(FILE_SIZE)}, SHA-256 ${sha256.toString("hex")}`)

  const answer = yield* Effect.scoped(
    Effect.gen(function* () {
      // Gets or makes the connection to B by NodeId, and opens a "files/1" stream on it.
      const socket = yield* a.manager.openStream(b.manager.nodeId, FILES)
      const write = yield* socket.writer
      const header = Buffer.alloc(HEADER_SIZE)
      header.writeBigUInt64BE(BigInt(FILE_SIZE), 0)
      sha256.copy(header, 8)
      yield* write(header)
      const file = yield* fs.open(source, { flag: "r" })
      const buffer = new Uint8Array(64 * 1024)
      const show = progress("A sent", FILE_SIZE)
      let sent = 0
      while (sent < FILE_SIZE) {
        const read = Number(yield* file.read(buffer))
        // Each write waits while the stream's window is full.
        yield* write(buffer.slice(0, read))
        sent += read
        show(sent)
      }
      // B's answer, until B ends the stream.
      const parts: Uint8Array[] = []
      yield* socket.run((chunk) => {
        parts.push(chunk.slice())
      })
      return Buffer.concat(parts).toString("utf8").trim()
    })
  )
  yield* Console.log(`A: B answered "${answer}"`)
  const result = yield* Deferred.await(arrived)
  if (!result.matches) return yield* Effect.dieMessage("the file arrived damaged")
  yield* Console.log(`done: ${mib(result.received)} arrived intact`)
}).pipe(Effect.scoped)

NodeRuntime.runMain(program.pipe(Effect.provide(NodeContext.layer)))
