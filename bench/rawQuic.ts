/**
 * Raw `@matrixai/quic` baselines shared by the benches: the pieces that bench/transport.ts and
 * bench/rpc.ts set up inline (silent logger, server crypto, a client dial with the same
 * certificates and NodeId check as QuicTransportLive, an echo server, one echo over a new
 * stream), as plain functions so that any suite can measure against the same baseline.
 */
import { createHmac, randomFillSync } from "node:crypto"
import {
  QUICClient,
  type QUICConnection,
  QUICServer,
  QUICSocket,
  type QUICStream,
  events as quicEvents
} from "@matrixai/quic"
import { Effect, Exit } from "effect"
import type { KeyRingService } from "../src/services/KeyRing.js"
import * as NodeId from "../src/services/NodeId.js"

export interface RawTls {
  readonly keyPrivatePem: string
  readonly certChainPem: string
}

/** js-quic's logger, silenced. */
export const quietLogger = (() => {
  const noop = () => {}
  const logger = { debug: noop, info: noop, warn: noop, error: noop, getChild: () => logger }
  return logger as never
})()

/** Server-side crypto (HMAC over a random key), as QuicTransportLive does it. */
export const serverCrypto = () => {
  const key = randomFillSync(new Uint8Array(32)).buffer
  const sign = async (k: ArrayBuffer, d: ArrayBuffer) => {
    const h = createHmac("sha256", Buffer.from(k)).update(Buffer.from(d)).digest()
    return h.buffer.slice(h.byteOffset, h.byteOffset + h.byteLength) as ArrayBuffer
  }
  return {
    key,
    ops: {
      sign,
      verify: async (k: ArrayBuffer, d: ArrayBuffer, s: ArrayBuffer) =>
        Buffer.from(await sign(k, d)).equals(Buffer.from(s))
    }
  }
}

export const clientCrypto = {
  ops: { randomBytes: async (data: ArrayBuffer) => void randomFillSync(new Uint8Array(data)) }
}

/** A started socket of its own. */
export const startSocket = async (host = "::") => {
  const socket = new QUICSocket({ logger: quietLogger })
  await socket.start({ host, port: 0 })
  return socket
}

/**
 * The verify callback QuicTransportLive's dial amounts to: the peer's chain is checked by
 * `keyRing.verifyCertChain` and must prove `expected`.
 */
export const nodeIdVerifier =
  (keyRing: KeyRingService, expected: NodeId.NodeId) => async (certs: Array<Uint8Array>) => {
    const exit = await Effect.runPromiseExit(keyRing.verifyCertChain(certs))
    return Exit.isSuccess(exit) && NodeId.equals(exit.value, expected) ? undefined : (298 as never)
  }

export interface RawDialOptions {
  readonly socket: QUICSocket
  readonly host: string
  readonly port: number
  /** Our certificate (sent to the server, which verifies peers). */
  readonly tls: RawTls
  /** Checks the server's chain; none means the server is not verified. */
  readonly verify?: (certs: Array<Uint8Array>) => Promise<undefined>
  readonly keepAliveIntervalTime?: number
  readonly maxIdleTimeout?: number
}

/** A raw client connection from a shared socket, with the same TLS setup as QuicTransportLive. */
export const rawDial = (options: RawDialOptions) =>
  QUICClient.createQUICClient({
    host: options.host,
    port: options.port,
    socket: options.socket,
    crypto: clientCrypto,
    config: {
      key: options.tls.keyPrivatePem,
      cert: options.tls.certChainPem,
      verifyPeer: options.verify !== undefined,
      ...(options.verify ? { verifyCallback: options.verify } : {}),
      keepAliveIntervalTime: options.keepAliveIntervalTime ?? 10_000,
      maxIdleTimeout: options.maxIdleTimeout ?? 30_000
    },
    logger: quietLogger
  })

/** A raw server (on `socket` when given) that echoes every stream its clients open. */
export const startEchoServer = async (
  tls: RawTls,
  options: { readonly socket?: QUICSocket; readonly host?: string; readonly verifyPeer?: boolean } = {}
) => {
  const server = new QUICServer({
    ...(options.socket ? { socket: options.socket } : {}),
    crypto: serverCrypto(),
    config: { key: tls.keyPrivatePem, cert: tls.certChainPem, verifyPeer: options.verifyPeer ?? false },
    logger: quietLogger
  })
  server.addEventListener(quicEvents.EventQUICServerConnection.name, (evt: Event) => {
    const connection = (evt as unknown as { detail: QUICConnection }).detail
    connection.addEventListener(quicEvents.EventQUICConnectionStream.name, (e: Event) => {
      const stream = (e as unknown as { detail: QUICStream }).detail
      void stream.readable.pipeTo(stream.writable).catch(() => undefined)
    })
  })
  await server.start(options.socket ? {} : { host: options.host ?? "127.0.0.1", port: 0 })
  return server
}

/** One echo over a new bidirectional stream: write, FIN, read until the server's FIN. */
export const rawEcho = async (connection: QUICConnection, bytes: Uint8Array) => {
  const stream = connection.newStream("bidi")
  const writer = stream.writable.getWriter()
  const reading = (async () => {
    const reader = stream.readable.getReader()
    let n = 0
    while (true) {
      const { done, value } = await reader.read()
      if (done) return n
      n += value.length
    }
  })()
  await writer.write(bytes)
  await writer.close()
  return reading
}

/** An echo server and a client connected to it on its own socket, released with the scope. */
/** Tears down a raw client, its server and its socket, in that order. */
export const stopRaw = (raw: {
  readonly server: { readonly stop: (options: { force: boolean }) => Promise<unknown> }
  readonly socket: { readonly stop: (options: { force: boolean }) => Promise<unknown> }
  readonly client: { readonly destroy: (options: { force: boolean }) => Promise<unknown> }
}) =>
  Effect.promise(async () => {
    await raw.client.destroy({ force: true })
    await raw.server.stop({ force: true })
    await raw.socket.stop({ force: true })
  })

export const rawEchoPair = (tls: RawTls) =>
  Effect.acquireRelease(
    Effect.promise(async () => {
      const server = await startEchoServer(tls)
      const socket = await startSocket("127.0.0.1")
      const client = await rawDial({ socket, host: "127.0.0.1", port: server.port, tls })
      return { server, socket, client }
    }),
    stopRaw
  )
