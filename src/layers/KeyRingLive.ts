/**
 * KeyRingLive: the node's Ed25519 identity kept in files under `nodePath`.
 *
 * - `key.pem`: PKCS#8 PEM private key, mode 0600. Created on first start; afterwards it must be
 *   a readable Ed25519 key that nobody but the owner can read or write, or start-up fails with
 *   a KeyRingError naming the file, and no file is touched.
 * - `cert.pem`: the certificate chain, leaf first. Rebuilt from the key when it is missing,
 *   unparsable, expired, not yet valid, for another key, or made before certificates carried
 *   Polykey's extensions and quicmesh's marker.
 * - `key.prev.pem`: the key before the last renewal; the chain's second certificate is its
 *   self-signed one and the leaf is issued by it.
 *
 * Every file is written atomically (temporary file, fsync, rename, fsync of the directory).
 * Renewal writes `key.prev.pem`, then `cert.pem`, then `key.pem`: the rename of `key.pem` is the
 * commit point, and a chain that does not match the key on disk is rebuilt on the next start.
 */
import { randomBytes } from "node:crypto"
import * as fs from "node:fs/promises"
import * as path from "node:path"
import { Duration, Effect, Either, Layer, Option } from "effect"
import {
  certChainFromPem,
  certChainToPem,
  DEFAULT_CERT_VALIDITY_MS,
  type Ed25519KeyPair,
  generateKeyPair,
  keyPairFromPem,
  makeCertChain
} from "../internal/certificates.js"
import { keyMaterial, makeService, validityNow, verifyNow } from "../internal/keyRingCore.js"
import { isQuicmeshCertificate } from "../internal/polykey/certificateFormat.js"
import { KeyRing, KeyRingError, type KeyRingService } from "../services/KeyRing.js"
import { encode, equals } from "../services/NodeId.js"

export interface KeyRingLiveOptions {
  /** Directory holding the key files; created with mode 0700 when missing. */
  readonly nodePath: string
  /** Validity of the certificates made; one year by default. */
  readonly certValidity?: Duration.DurationInput
}

export const KEY_FILE = "key.pem"
export const PREVIOUS_KEY_FILE = "key.prev.pem"
export const CERT_FILE = "cert.pem"

const KEY_MODE = 0o600
const CERT_MODE = 0o644
const DIR_MODE = 0o700

/** An fs failure as text: its code and syscall, never file contents. */
const describe = (e: unknown): string => {
  if (typeof e === "object" && e !== null && "code" in e) {
    const err = e as NodeJS.ErrnoException
    return `${err.code}${err.syscall ? ` (${err.syscall})` : ""}`
  }
  return e instanceof Error ? e.message : "unknown error"
}

const isNotFound = (e: unknown) =>
  typeof e === "object" && e !== null && "code" in e && (e as NodeJS.ErrnoException).code === "ENOENT"

/** Writes `data` to `file` atomically with `mode`. */
export const writeFileAtomic = (
  file: string,
  data: string,
  mode: number,
  reason: KeyRingError["reason"] = "write-failed"
): Effect.Effect<void, KeyRingError> =>
  Effect.tryPromise({
    try: async () => {
      const tmp = path.join(
        path.dirname(file),
        `.${path.basename(file)}.${randomBytes(6).toString("hex")}.tmp`
      )
      try {
        const handle = await fs.open(tmp, "wx", mode)
        try {
          await handle.writeFile(data)
          await handle.sync()
        } finally {
          await handle.close()
        }
        await fs.rename(tmp, file)
      } catch (e) {
        await fs.rm(tmp, { force: true }).catch(() => undefined)
        throw e
      }
      const dir = await fs.open(path.dirname(file), "r")
      try {
        await dir.sync()
      } finally {
        await dir.close()
      }
    },
    catch: (cause) =>
      new KeyRingError({ path: file, reason, detail: `could not write: ${describe(cause)}`, cause })
  })

/**
 * Reads and checks a private key file. `None` when it does not exist. The file is opened once
 * and its mode checked on that handle before any content is read.
 */
export const readKeyFile = (file: string): Effect.Effect<Option.Option<Ed25519KeyPair>, KeyRingError> =>
  Effect.gen(function* () {
    const unreadable = (detail: string, cause?: unknown) =>
      new KeyRingError({ path: file, reason: "unreadable", detail, cause })
    const content = yield* Effect.tryPromise({
      try: async () => {
        let handle: fs.FileHandle
        try {
          handle = await fs.open(file, "r")
        } catch (e) {
          if (isNotFound(e)) return Either.right(Option.none<Buffer>())
          return Either.left(unreadable(`cannot open: ${describe(e)}`, e))
        }
        try {
          const stat = await handle.stat()
          if (!stat.isFile()) return Either.left(unreadable("not a regular file"))
          if ((stat.mode & 0o077) !== 0) {
            const mode = (stat.mode & 0o777).toString(8).padStart(4, "0")
            return Either.left(
              new KeyRingError({
                path: file,
                reason: "insecure-permissions",
                detail: `mode ${mode} lets group or others access the private key; expected 0600 (chmod 600 ${file})`
              })
            )
          }
          return Either.right(Option.some(await handle.readFile()))
        } finally {
          await handle.close()
        }
      },
      catch: (e) => unreadable(`cannot read: ${describe(e)}`, e)
    }).pipe(Effect.flatten)
    if (Option.isNone(content)) return Option.none()
    const parsed = keyPairFromPem(content.value)
    if (Either.isLeft(parsed))
      return yield* new KeyRingError({ path: file, reason: "corrupt", detail: parsed.left })
    return Option.some(parsed.right)
  })

/** The chain in `cert.pem` if it verifies now and belongs to `keyPair`; otherwise why not. */
const readChain = (file: string, keyPair: Ed25519KeyPair) =>
  Effect.gen(function* () {
    const text = yield* Effect.tryPromise(() => fs.readFile(file, "utf8")).pipe(Effect.either)
    if (Either.isLeft(text))
      return Either.left(isNotFound(text.left.error) ? "missing" : `unreadable: ${describe(text.left.error)}`)
    const chain = certChainFromPem(text.right)
    const verified = yield* Effect.either(verifyNow(chain))
    if (Either.isLeft(verified)) return Either.left(verified.left.message)
    if (!equals(verified.right, keyPair.nodeId))
      return Either.left(`it belongs to ${encode(verified.right)}, not to ${encode(keyPair.nodeId)}`)
    if (!chain.every(isQuicmeshCertificate)) return Either.left("it is in an older format")
    return Either.right(chain)
  })

/** Loads or creates the key files; see the module comment. */
export const make = (options: KeyRingLiveOptions): Effect.Effect<KeyRingService, KeyRingError> =>
  Effect.gen(function* () {
    const validityMs =
      options.certValidity === undefined ? DEFAULT_CERT_VALIDITY_MS : Duration.toMillis(options.certValidity)
    const dir = path.resolve(options.nodePath)
    const keyFile = path.join(dir, KEY_FILE)
    const prevKeyFile = path.join(dir, PREVIOUS_KEY_FILE)
    const certFile = path.join(dir, CERT_FILE)

    yield* Effect.tryPromise({
      try: () => fs.mkdir(dir, { recursive: true, mode: DIR_MODE }),
      catch: (cause) =>
        new KeyRingError({
          path: dir,
          reason: "write-failed",
          detail: `cannot create: ${describe(cause)}`,
          cause
        })
    })

    const makeChain = (keyPair: Ed25519KeyPair, previous?: Ed25519KeyPair) =>
      Effect.flatMap(validityNow(validityMs), (validity) => makeCertChain(keyPair, validity, previous))

    const existing = yield* readKeyFile(keyFile)
    let keyPair: Ed25519KeyPair
    if (Option.isSome(existing)) {
      keyPair = existing.value
    } else {
      keyPair = generateKeyPair()
      yield* writeFileAtomic(keyFile, keyPair.privateKeyPem(), KEY_MODE)
      yield* Effect.logInfo(`created node key ${encode(keyPair.nodeId)} in ${keyFile}`)
    }

    let chain: ReadonlyArray<Uint8Array>
    const current = yield* readChain(certFile, keyPair)
    if (Either.isRight(current)) {
      chain = current.right
    } else {
      // Keep a renewal's continuity when the previous key is still around (never for a new key).
      const previous = Option.isSome(existing) ? yield* readKeyFile(prevKeyFile) : Option.none()
      chain = yield* makeChain(keyPair, Option.getOrUndefined(previous))
      yield* writeFileAtomic(certFile, certChainToPem(chain), CERT_MODE)
      if (Option.isSome(existing))
        yield* Effect.logInfo(`rebuilt certificate chain in ${certFile} (${current.left})`)
    }

    return yield* makeService({
      keyPair,
      material: keyMaterial(keyPair, chain),
      makeChain: (kp) => makeChain(kp),
      renew: (old) =>
        Effect.gen(function* () {
          const next = generateKeyPair()
          const nextChain = yield* makeChain(next, old)
          yield* writeFileAtomic(prevKeyFile, old.privateKeyPem(), KEY_MODE, "renew-failed")
          yield* writeFileAtomic(certFile, certChainToPem(nextChain), CERT_MODE, "renew-failed")
          yield* writeFileAtomic(keyFile, next.privateKeyPem(), KEY_MODE, "renew-failed")
          yield* Effect.logInfo(`renewed node key ${encode(old.nodeId)} -> ${encode(next.nodeId)}`)
          return keyMaterial(next, nextChain)
        })
    })
  })

/** The KeyRing kept in files under `options.nodePath`. */
export const layer = (options: KeyRingLiveOptions): Layer.Layer<KeyRing, KeyRingError> =>
  Layer.effect(KeyRing, make(options))
