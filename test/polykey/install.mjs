/**
 * Installs the Polykey test harness: `polykey@1.15.1` (GPL-3.0) in a folder of its own, outside
 * quicmesh's dependency tree (it has its own package.json; quicmesh never imports it, its tests
 * run it as a child process). Two of its dependencies are pinned through that folder's npm
 * `overrides`: `bitset` to 5.1.1 (newer versions break `PolykeyAgent` start) and
 * `@peculiar/x509` to 1.9.5, the version in Polykey 1.15.1's own lockfile (with the 1.14.3 that
 * npm resolves otherwise, Polykey throws on checking any two-certificate chain, that is a
 * renewed node's: a Polykey agent a renewed peer dials dies of it). Install scripts are not
 * run (`--ignore-scripts`): the native modules Polykey needs ship prebuilt binaries that load
 * without them.
 *
 * The folder is `<repo>/.polykey-harness`, or `QUICMESH_POLYKEY_DIR`. Does nothing when its
 * manifest asks for these versions and they are installed; otherwise writes the manifest,
 * drops the old lockfile (so that changed overrides are resolved afresh) and runs
 * `npm install`. `npm run polykey:install`.
 */
import { spawnSync } from "node:child_process"
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { createRequire } from "node:module"
import { dirname, join, resolve } from "node:path"
import { fileURLToPath } from "node:url"

const POLYKEY = "1.15.1"
/** Pinned dependencies of Polykey: npm `overrides`, and what must be installed. */
const OVERRIDES = { bitset: "5.1.1", "@peculiar/x509": "1.9.5" }
const pinned = `polykey@${POLYKEY} (${Object.entries(OVERRIDES)
  .map(([name, version]) => `${name} ${version}`)
  .join(", ")})`

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..")
const dir = resolve(process.env.QUICMESH_POLYKEY_DIR || join(root, ".polykey-harness"))

const polykeyManifest = join(dir, "node_modules", "polykey", "package.json")
/**
 * The version of `name` that Polykey loads (npm may nest a pinned dependency under
 * polykey/node_modules), or undefined when there is none.
 */
const versionOf = (name) => {
  try {
    const path =
      name === "polykey" ? polykeyManifest : createRequire(polykeyManifest).resolve(`${name}/package.json`)
    return JSON.parse(readFileSync(path, "utf8")).version
  } catch {
    return undefined
  }
}

const fail = (why) => {
  console.error(`polykey harness: installing ${pinned} into ${dir} failed: ${why}`)
  process.exit(1)
}

const manifest = `${JSON.stringify(
  {
    name: "quicmesh-polykey-harness",
    private: true,
    description: "Polykey for quicmesh's interop tests and benchmarks (made by test/polykey/install.mjs)",
    dependencies: { polykey: POLYKEY },
    overrides: OVERRIDES
  },
  null,
  2
)}\n`
const manifestPath = join(dir, "package.json")
const readManifest = () => {
  try {
    return readFileSync(manifestPath, "utf8")
  } catch {
    return undefined
  }
}
/** Installed versions that differ from the pins: `name version` each. */
const wrongVersions = () =>
  Object.entries({ polykey: POLYKEY, ...OVERRIDES })
    .filter(([name, version]) => versionOf(name) !== version)
    .map(([name]) => `${name} ${versionOf(name) ?? "missing"}`)

if (readManifest() === manifest && wrongVersions().length === 0) {
  console.log(`polykey harness: ${pinned} already in ${dir}`)
  process.exit(0)
}

try {
  mkdirSync(dir, { recursive: true })
  if (readManifest() !== manifest) {
    writeFileSync(manifestPath, manifest)
    // A lockfile made under other overrides would keep the versions they chose.
    rmSync(join(dir, "package-lock.json"), { force: true })
  }
} catch (e) {
  fail(e instanceof Error ? e.message : String(e))
}

const npm = process.platform === "win32" ? "npm.cmd" : "npm"
const run = spawnSync(
  npm,
  ["install", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error", "--prefix", dir],
  { cwd: dir, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] }
)
if (run.error) fail(`could not run npm: ${run.error.message}`)
if (run.status !== 0) {
  const lines = `${run.stderr}\n${run.stdout}`.split("\n").filter((l) => l.trim() !== "")
  const why = lines.find((l) => /npm error (code|\d{3})|ERR!/.test(l)) ?? lines.at(-1) ?? ""
  fail(`npm install exited ${run.status}: ${why.trim()}`)
}
const wrong = wrongVersions()
if (wrong.length > 0) fail(`npm install left ${wrong.join(", ")}`)
if (!existsSync(join(dir, "node_modules", "polykey", "dist", "PolykeyAgent.js"))) {
  fail("polykey/dist/PolykeyAgent.js is missing after npm install")
}
console.log(`polykey harness: ${pinned} installed in ${dir}`)
