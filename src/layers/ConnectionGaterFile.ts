/**
 * ConnectionGaterFile: a `ConnectionGater` whose rules live in a JSON file (the agent's
 * `<node-path>/gates.json`), loaded when the layer is built and written atomically (temporary
 * file, fsync, rename) before each change takes effect, mode 0600:
 *
 *     { "version": 1, "allowOnly": false, "deny": ["10.0.0.0/8", "v…"], "allow": [] }
 *
 * A missing file is no rules. A file that cannot be read or decoded, or that holds an entry
 * which is neither a NodeId nor a CIDR, fails the build with a `GatesFileError` naming the
 * file: a node never starts with its gates silently dropped.
 */
import { readFile } from "node:fs/promises"
import { Effect, Either, Layer } from "effect"
import { decodeRules, emptyRules, encodeRules } from "../internal/gateRules.js"
import {
  ConnectionGater,
  type ConnectionGaterService,
  type GateRules,
  GatesFileError,
  unsafeMake
} from "../services/ConnectionGater.js"
import { writeFileAtomic } from "./KeyRingLive.js"

/** The file's name in a node path. */
export const GATES_FILE = "gates.json"

const FILE_MODE = 0o600

/** The rules in `path`: none when it does not exist; a `GatesFileError` naming it when it is unusable. */
export const load = (path: string): Effect.Effect<GateRules, GatesFileError> =>
  Effect.tryPromise({
    try: () =>
      readFile(path, "utf8").catch((e: NodeJS.ErrnoException) =>
        e.code === "ENOENT" ? undefined : Promise.reject(e)
      ),
    catch: (cause) =>
      new GatesFileError({
        path,
        reason: "read",
        detail: (cause as NodeJS.ErrnoException).code ?? String(cause),
        cause
      })
  }).pipe(
    Effect.flatMap((text) => {
      if (text === undefined) return Effect.succeed(emptyRules)
      const rules = decodeRules(text)
      return Either.isRight(rules)
        ? Effect.succeed(rules.right)
        : Effect.fail(new GatesFileError({ path, reason: "corrupt", detail: rules.left }))
    })
  )

/** Writes `rules` to `path` atomically. */
export const save = (path: string, rules: GateRules): Effect.Effect<void, GatesFileError> =>
  writeFileAtomic(path, encodeRules(rules), FILE_MODE).pipe(
    Effect.mapError((e) => new GatesFileError({ path, reason: "write", detail: e.detail, cause: e }))
  )

/** A gater over the file at `path`. */
export const make = (path: string): Effect.Effect<ConnectionGaterService, GatesFileError> =>
  Effect.map(load(path), (rules) => unsafeMake({ rules, save: (next) => save(path, next) }))

export const layer = (options: { readonly path: string }): Layer.Layer<ConnectionGater, GatesFileError> =>
  Layer.effect(ConnectionGater, make(options.path))
