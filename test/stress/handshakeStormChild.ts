/**
 * One source of the handshake storm (handshakeStorm.stress.ts), run as its own process with
 * `node --import tsx`: raw `@matrixai/quic` clients, each with an Ed25519 identity and
 * certificate of its own — `valid` well-formed ones and `garbage` ones (an expired certificate
 * or one whose signature is broken, alternately) — spread over a few shared UDP sockets.
 * Each behaves as an honest client does when the server refuses it explicitly at its handshake
 * cap (CONNECTION_REFUSED, "busy"): it tries again after a short back-off (50 ms doubled per
 * refusal up to 1 s, less a random part of up to half), until its handshake timeout.
 *
 * Protocol on stdio, one JSON object a line:
 *   argv[2]: the Plan (JSON).
 *   out {"ready":true} once identities and sockets are made; then waits for "go" on stdin and
 *   dials every client at once.
 *   out {"result":…} once every dial has settled and every established connection has been
 *   closed by the server (or `holdMs` has passed). A garbage certificate can finish the
 *   client's side of the handshake; the server's refusal (a TLS or transport error) arrives
 *   after, on the next packet. An accepted connection ends with an application close (the
 *   agent's idle timeout). Then the clients are destroyed and the process exits.
 */
import { createInterface } from "node:readline"
import { QUICClient, errors as quicErrors } from "@matrixai/quic"
import { Effect } from "effect"
import { clientCrypto, quietLogger, startSocket } from "../../bench/rawQuic.js"
import {
  certChainToPem,
  type Ed25519KeyPair,
  generateKeyPair,
  selfSignedCert,
  validityFrom
} from "../../src/internal/certificates.js"
import { udpSocketOf } from "../../src/internal/quicPatches.js"
import { sizeReceiveBuffer } from "../../src/internal/udpReceiveBuffer.js"

export interface Plan {
  readonly host: string
  readonly port: number
  readonly valid: number
  readonly garbage: number
  readonly sockets: number
  /** Each dial's timeout (js-quic retransmits Initials refused at the server's cap until then). */
  readonly handshakeTimeoutMs: number
  /** An application close sooner than this after the handshake counts as closed early. */
  readonly aliveAfterMs: number
  /** The longest wait for the server to close every established connection. */
  readonly holdMs: number
}

export interface StormResult {
  /** Valid clients the agent kept (until it closed them as idle, an application close). */
  readonly validAccepted: number
  /** Valid clients whose handshake did not finish within the timeout. */
  readonly validFailed: number
  /** Valid clients the server closed with a transport or TLS error. */
  readonly validRefused: number
  /** Valid clients closed by the application within `aliveAfterMs` of the handshake. */
  readonly validClosedEarly: number
  /** Garbage clients whose handshake failed or that the server closed with an error. */
  readonly garbageRejected: number
  /** Garbage clients that got an application close or stayed open: must be 0. */
  readonly garbageAccepted: number
  /** Connections the server had not closed after `holdMs`. */
  readonly stillOpen: number
  /** Milliseconds from "go" to each valid client's established handshake (refusals included). */
  readonly validHandshakeMs: ReadonlyArray<number>
  /** Explicit refusals (busy) seen by all clients, and by how many clients at least once. */
  readonly refusals: number
  readonly clientsRefused: number
  /** CPU seconds this source process used from "go" to the result. */
  readonly cpuSeconds: number
  /** Why dials failed, counted by error name. */
  readonly failures: Record<string, number>
  /** How established connections closed, by error name, for valid and garbage clients. */
  readonly closeReasons: { readonly valid: Record<string, number>; readonly garbage: Record<string, number> }
}

interface Attempt {
  readonly valid: boolean
  client?: QUICClient
  establishedMs?: number
  closedAt?: number
  /** The error the connection closed with, by name (`:app` for an application close). */
  closeReason?: string
  failure?: string
  /** Explicit refusals (CONNECTION_REFUSED) before the handshake that counted. */
  refusals: number
}

/** CONNECTION_REFUSED (RFC 9000 §20.1): the server's explicit refusal at its handshake cap. */
const isRefusal = (error: unknown) =>
  error instanceof quicErrors.ErrorQUICConnectionPeer &&
  (error as { data?: { errorCode?: number; isApp?: boolean } }).data?.errorCode === 0x2 &&
  (error as { data?: { isApp?: boolean } }).data?.isApp !== true

const backoff = (n: number) => Math.min(1000, 50 * 2 ** (n - 1)) * (1 - Math.random() / 2)

const line = (o: unknown) => process.stdout.write(`${JSON.stringify(o)}\n`)

const identity = async (kind: "valid" | "expired" | "broken"): Promise<{ key: string; cert: string }> => {
  const keyPair: Ed25519KeyPair = generateKeyPair()
  const day = 24 * 3600 * 1000
  const validity =
    kind === "expired" ? validityFrom(Date.now() - 2 * day, day) : validityFrom(Date.now(), day)
  const der = await Effect.runPromise(selfSignedCert(keyPair, validity))
  if (kind === "broken") der[der.length - 1] = der[der.length - 1]! ^ 0x01 // the signature's last byte
  return { key: keyPair.privateKeyPem(), cert: certChainToPem([der]) }
}

const main = async () => {
  const plan = JSON.parse(process.argv[2]!) as Plan
  const kinds = [
    ...Array.from({ length: plan.valid }, () => "valid" as const),
    ...Array.from({ length: plan.garbage }, (_, i) =>
      i % 2 === 0 ? ("expired" as const) : ("broken" as const)
    )
  ]
  const identities = await Promise.all(kinds.map(identity))
  const sockets = await Promise.all(Array.from({ length: plan.sockets }, () => startSocket("127.0.0.1")))
  // Room for the agent's answers to a whole share of the storm (the kernel's default buffer
  // overflows: each lost answer costs its client a retransmission back-off).
  for (const socket of sockets) sizeReceiveBuffer(udpSocketOf(socket), 4 * 1024 * 1024)
  line({ ready: true })
  const input = createInterface({ input: process.stdin })
  await new Promise<void>((resolve) => input.on("line", (l) => l.trim() === "go" && resolve()))

  const attempts: Array<Attempt> = kinds.map((k) => ({ valid: k === "valid", refusals: 0 }))
  const started = performance.now()
  const cpu0 = process.cpuUsage()
  const handshakeDeadline = started + plan.handshakeTimeoutMs
  /** A handshake, asked again after each explicit refusal while the timeout leaves time. */
  const handshake = async (attempt: Attempt, i: number): Promise<QUICClient> => {
    while (true) {
      try {
        return await QUICClient.createQUICClient(
          {
            host: plan.host,
            port: plan.port,
            socket: sockets[i % sockets.length]!,
            crypto: clientCrypto,
            config: {
              key: identities[i]!.key,
              cert: identities[i]!.cert,
              verifyPeer: false,
              maxIdleTimeout: plan.holdMs
            },
            logger: quietLogger
          },
          { timer: Math.max(1, handshakeDeadline - performance.now()) }
        )
      } catch (error) {
        if (!isRefusal(error)) throw error
        attempt.refusals++
        const wait = backoff(attempt.refusals)
        if (handshakeDeadline - performance.now() - wait < 100) throw error
        await new Promise((r) => setTimeout(r, wait))
      }
    }
  }
  await Promise.all(
    attempts.map(async (attempt, i) => {
      try {
        const client = await handshake(attempt, i)
        attempt.client = client
        attempt.establishedMs = performance.now() - started
        const connection = client.connection
        connection.addEventListener(
          "EventQUICConnectionError",
          (evt: Event) => {
            const error = (evt as unknown as { detail?: { data?: { isApp?: boolean; errorCode?: number } } })
              .detail
            const code = error?.data?.errorCode
            attempt.closeReason ??= `${error?.constructor?.name ?? "unknown"}${code === undefined ? "" : `:${code}`}${error?.data?.isApp ? ":app" : ""}`
          },
          { once: true }
        )
        connection.addEventListener(
          "EventQUICConnectionStopped",
          () => {
            attempt.closedAt = performance.now()
          },
          { once: true }
        )
        // A client whose certificate the server refused learns it on its next packet.
        if (!attempt.valid)
          await connection
            .newStream()
            .writable.getWriter()
            .write(new Uint8Array([0]))
            .catch(() => undefined)
      } catch (error) {
        attempt.failure = (error as Error)?.constructor?.name ?? "unknown"
      }
    })
  )
  // Everything established is closed by the server: a refused certificate at once, an
  // accepted connection by the agent's idle timeout.
  const deadline = performance.now() + plan.holdMs
  const open = (a: Attempt) => a.client !== undefined && a.closedAt === undefined
  while (attempts.some(open) && performance.now() < deadline) await new Promise((r) => setTimeout(r, 200))

  const established = (a: Attempt) => a.establishedMs !== undefined
  // An application close before the handshake is confirmed travels as the transport error
  // APPLICATION_ERROR (0xc, RFC 9000 10.2.3): an application close all the same.
  const appClose = (a: Attempt) =>
    a.closeReason?.endsWith(":app") || a.closeReason === "ErrorQUICConnectionPeer:12"
  const refusedClose = (a: Attempt) => a.closedAt !== undefined && !appClose(a)
  const closedEarly = (a: Attempt) =>
    !refusedClose(a) &&
    a.closedAt !== undefined &&
    a.closedAt - started - a.establishedMs! < plan.aliveAfterMs
  const count = (xs: ReadonlyArray<Attempt>, f: (a: Attempt) => boolean) => xs.filter(f).length
  const reasons = (xs: ReadonlyArray<Attempt>) => {
    const r: Record<string, number> = {}
    for (const a of xs)
      if (a.closedAt !== undefined) r[a.closeReason ?? "none"] = (r[a.closeReason ?? "none"] ?? 0) + 1
    return r
  }
  const failures: Record<string, number> = {}
  for (const a of attempts) if (a.failure) failures[a.failure] = (failures[a.failure] ?? 0) + 1
  const valid = attempts.filter((a) => a.valid)
  const garbage = attempts.filter((a) => !a.valid)
  const result: StormResult = {
    validAccepted: count(valid, (a) => established(a) && !refusedClose(a) && !closedEarly(a)),
    validFailed: count(valid, (a) => !established(a)),
    validRefused: count(valid, (a) => established(a) && refusedClose(a)),
    validClosedEarly: count(valid, (a) => established(a) && closedEarly(a)),
    garbageRejected: count(garbage, (a) => !established(a) || refusedClose(a)),
    garbageAccepted: count(garbage, (a) => established(a) && !refusedClose(a)),
    stillOpen: count(attempts, open),
    validHandshakeMs: valid.flatMap((a) => (established(a) ? [Math.round(a.establishedMs!)] : [])),
    refusals: attempts.reduce((n, a) => n + a.refusals, 0),
    clientsRefused: count(attempts, (a) => a.refusals > 0),
    cpuSeconds: (() => {
      const used = process.cpuUsage(cpu0)
      return Math.round((used.user + used.system) / 1e5) / 10
    })(),
    failures,
    closeReasons: { valid: reasons(valid), garbage: reasons(garbage) }
  }
  line({ result })
  await Promise.all(attempts.map((a) => a.client?.destroy({ force: true }).catch(() => undefined)))
  await Promise.all(sockets.map((s) => s.stop({ force: true }).catch(() => undefined)))
  process.exit(0)
}

main().catch((error) => {
  process.stderr.write(`storm child failed: ${String(error)}\n`)
  process.exit(1)
})
