/**
 * The js-quic internals `src/internal/quicPatches.ts` relies on, checked on real js-quic objects:
 * a server on one loopback socket, a client on another, one connection and one stream between
 * them. Each check goes through the patch or peek the transport uses, so a js-quic release that
 * renames or reshapes one of those private members fails here, not in production.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import type Logger from "@matrixai/logger"
import {
  QUICClient,
  QUICConnection,
  QUICServer,
  QUICSocket,
  QUICStream,
  errors as quicErrors,
  events as quicEvents
} from "@matrixai/quic"
import { Effect } from "effect"
import {
  type AcceptConnection,
  connectionError,
  dropSendsWhenStopped,
  existingStreams,
  initialPacketType,
  isOurRetryToken,
  peerStreamsLeft,
  quicConnectionCount,
  silentLogger,
  udpSocketOf,
  wrapAcceptConnection
} from "../src/internal/quicPatches.js"
import { initialPacketNumber, quicVersion1 } from "../src/internal/quicRefusal.js"
import { clientCrypto, makeServerCrypto } from "../src/internal/quicTls.js"
import * as KeyRingTest from "../src/layers/KeyRingTest.js"
import { KeyRing } from "../src/services/KeyRing.js"

const tlsOf = (seed: string) =>
  Effect.runPromise(
    Effect.flatMap(KeyRing, (keyRing) => keyRing.tlsConfig).pipe(Effect.provide(KeyRingTest.layer(seed)))
  )

/** Resolves once `check` holds (polled), or fails after 5 s. */
const waitFor = async (check: () => boolean) => {
  const deadline = Date.now() + 5000
  while (!check()) {
    if (Date.now() > deadline) throw new Error("timed out waiting")
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
}

/** The silent logger behind a proxy that records every member js-quic reads from it. */
const loggerMembersUsed = new Set<string>()
const recordingLogger: Logger = new Proxy(silentLogger, {
  get: (target, key, receiver) => {
    if (typeof key === "string") loggerMembersUsed.add(key)
    return key === "getChild" ? () => recordingLogger : Reflect.get(target, key, receiver)
  }
})

/** What the wrapped `acceptConnection` saw: each packet's type and token length, and the result. */
interface AcceptCall {
  readonly ty: number
  readonly version: number
  readonly tokenLength: number | undefined
  /** The packet number read by quicRefusal (the client's Initial keys, header protection removed). */
  readonly packetNumber: number | undefined
  /** Whether the token is one the server minted, for the sender's host and for another. */
  readonly ourToken: Promise<readonly [boolean, boolean]> | undefined
  readonly result: Promise<QUICConnection | undefined>
}

const accepted: Array<AcceptCall> = []
const serverConnections: Array<QUICConnection> = []
const serverStreams: Array<QUICStream> = []
let serverSocket: QUICSocket
let clientSocket: QUICSocket
let server: QUICServer
let client: QUICClient

const acceptAll = async () => undefined

beforeAll(async () => {
  const [serverTls, clientTls] = await Promise.all([tlsOf("patches-server"), tlsOf("patches-client")])
  serverSocket = new QUICSocket({ logger: recordingLogger })
  clientSocket = new QUICSocket({ logger: recordingLogger })
  await serverSocket.start({ host: "127.0.0.1", port: 0 })
  await clientSocket.start({ host: "127.0.0.1", port: 0 })
  server = new QUICServer({
    socket: serverSocket,
    crypto: makeServerCrypto(),
    config: {
      key: serverTls.keyPrivatePem,
      cert: serverTls.certChainPem,
      verifyPeer: true,
      verifyCallback: acceptAll
    },
    logger: recordingLogger
  })
  wrapAcceptConnection(
    server,
    (accept): AcceptConnection =>
      (remoteInfo, header, dcid, data) => {
        const token = header.token
        const ourToken =
          token === undefined || token === null || token.byteLength === 0
            ? undefined
            : Promise.all([
                isOurRetryToken(server, token, remoteInfo.host),
                isOurRetryToken(server, token, "127.0.0.2")
              ])
        const result = accept(remoteInfo, header, dcid, data)
        accepted.push({
          ty: header.ty,
          version: header.version,
          tokenLength: token?.byteLength,
          packetNumber: initialPacketNumber(data, header.dcid),
          ourToken,
          result
        })
        return result
      }
  )
  server.addEventListener(quicEvents.EventQUICServerConnection.name, (evt: Event) => {
    const connection = (evt as quicEvents.EventQUICServerConnection).detail
    serverConnections.push(connection)
    connection.addEventListener(quicEvents.EventQUICConnectionStream.name, (e: Event) => {
      serverStreams.push((e as quicEvents.EventQUICConnectionStream).detail)
    })
  })
  await server.start()
  client = await QUICClient.createQUICClient({
    host: "127.0.0.1",
    port: serverSocket.port,
    socket: clientSocket,
    crypto: clientCrypto,
    config: {
      key: clientTls.keyPrivatePem,
      cert: clientTls.certChainPem,
      verifyPeer: true,
      verifyCallback: acceptAll
    },
    logger: recordingLogger
  })
  await waitFor(() => serverConnections.length === 1)
}, 20_000)

afterAll(async () => {
  await client?.destroy({ force: true }).catch(() => undefined)
  await server?.stop({ force: true }).catch(() => undefined)
  await clientSocket?.stop({ force: true }).catch(() => undefined)
  await serverSocket?.stop({ force: true }).catch(() => undefined)
})

describe("the js-quic internals quicPatches relies on", () => {
  it("QUICServer.acceptConnection: the socket passes it each new connection's packets; an Initial with a token makes the connection", async () => {
    // The token-less Initial (answered by a stateless retry), then the Initial with the token.
    expect(accepted.find((c) => c.ty === initialPacketType && c.tokenLength === 0)).toBeDefined()
    const withToken = accepted.filter((c) => c.ty === initialPacketType && (c.tokenLength ?? 0) > 0)
    expect(withToken.length).toBeGreaterThanOrEqual(1)
    const made = (await Promise.all(withToken.map((c) => c.result))).filter((c) => c !== undefined)
    expect(made).toHaveLength(1)
    expect(made[0]).toBeInstanceOf(QUICConnection)
    expect(made[0]).toBe(serverConnections[0])
  })

  it("QUICServer.validateToken: the retry token it minted holds for the client's host only; the Initials' packet numbers and version read", async () => {
    const initials = accepted.filter((c) => c.ty === initialPacketType)
    const withToken = initials.filter((c) => (c.tokenLength ?? 0) > 0)
    for (const c of withToken) expect(await c.ourToken).toEqual([true, false])
    // The client's first Initial is packet 0; after the Retry it goes on counting (RFC 9000 §17.2.5.3).
    expect(initials.map((c) => c.packetNumber)).toEqual(initials.map((_, i) => i))
    for (const c of initials) expect(c.version).toBe(quicVersion1)
  })

  it("QUICSocket.send_: fails once the socket stopped; dropSendsWhenStopped makes it drop instead", async () => {
    const send = (socket: QUICSocket) =>
      (
        socket as unknown as { send_: (msg: Uint8Array, port: number, host: string) => Promise<unknown> }
      ).send_(new Uint8Array([1]), serverSocket.port, "127.0.0.1")
    const plain = new QUICSocket({ logger: silentLogger })
    const patched = new QUICSocket({ logger: silentLogger })
    dropSendsWhenStopped(patched)
    for (const socket of [plain, patched]) await socket.start({ host: "127.0.0.1" })
    await expect(send(patched)).resolves.toBe(1) // the bytes sent
    for (const socket of [plain, patched]) await socket.stop({ force: true })
    await expect(send(plain)).rejects.toBeInstanceOf(quicErrors.ErrorQUICSocketNotRunning)
    await expect(send(patched)).resolves.toBeUndefined()
  })

  it("QUICSocket.socket: the bound node dgram socket under it", () => {
    const udp = udpSocketOf(serverSocket)
    expect(udp.address().port).toBe(serverSocket.port)
    expect(udp.getRecvBufferSize()).toBeGreaterThan(0)
  })

  it("QUICSocket.connectionMap: its size counts the socket's connections", () => {
    expect(quicConnectionCount(serverSocket)).toBe(1)
    expect(quicConnectionCount(clientSocket)).toBe(1)
  })

  it("QUICConnection.streamMap: holds the connection's streams, the peer's included; conn.peerStreamsLeftBidi counts the credit", async () => {
    const serverConnection = serverConnections[0]!
    expect(existingStreams(serverConnection)).toEqual([])
    expect(peerStreamsLeft(client.connection)).toBe(100)
    const stream = client.connection.newStream("bidi")
    // conn.peerStreamsLeftBidi: the peer's credit, one less for the stream opened.
    expect(peerStreamsLeft(client.connection)).toBe(99)
    const writer = stream.writable.getWriter()
    await writer.write(new Uint8Array([1, 2, 3]))
    await waitFor(() => serverStreams.length === 1)
    const streams = existingStreams(serverConnection)
    expect(streams).toHaveLength(1)
    expect(streams[0]).toBeInstanceOf(QUICStream)
    expect(streams[0]).toBe(serverStreams[0])
    expect(existingStreams(client.connection)).toEqual([stream])
    writer.releaseLock()
  })

  it("QUICConnection.errorLast: nothing while open, the error it closed with after", async () => {
    const serverConnection = serverConnections[0]!
    expect(connectionError(serverConnection)).toBeUndefined()
    expect(connectionError(client.connection)).toBeUndefined()
    const clientConnection = client.connection
    await client.destroy({ isApp: true, errorCode: 0, reason: new TextEncoder().encode("bye"), force: true })
    await serverConnection.closedP
    expect(connectionError(clientConnection)).toBeInstanceOf(quicErrors.ErrorQUICConnectionLocal)
    expect(connectionError(serverConnection)).toBeInstanceOf(quicErrors.ErrorQUICConnectionPeer)
    await waitFor(() => quicConnectionCount(serverSocket) === 0 && quicConnectionCount(clientSocket) === 0)
  })

  it("the silent logger has every member js-quic uses", () => {
    expect(loggerMembersUsed.size).toBeGreaterThan(0)
    for (const member of loggerMembersUsed) expect(silentLogger).toHaveProperty(member)
  })
})
