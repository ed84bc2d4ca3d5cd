/**
 * Installs the Polykey test harness: `polykey@1.15.1` (GPL-3.0) in a folder of its own, outside
 * quicmesh's dependency tree (it has its own package.json; quicmesh never imports it, its tests
 * run it as a child process). `bitset` is pinned to 5.1.1 through that folder's npm `overrides`:
 * newer versions break `PolykeyAgent` start. Install scripts are not run (`--ignore-scripts`):
 * the native modules Polykey needs ship prebuilt binaries that load without them.
 *
 * The folder is `<repo>/.polykey-harness`, or `QUICMESH_POLYKEY_DIR`. Does nothing when the
 * right versions are already there. `npm run polykey:install`.
 */
import { spawnSync } from "node:child_process"
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs"
import { dirname, join, resolve } from "node:path"
import { fileURLToPath } from "node:url"

const POLYKEY = "1.15.1"
const BITSET = "5.1.1"

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..")
const dir = resolve(process.env.QUICMESH_POLYKEY_DIR || join(root, ".polykey-harness"))

const versionOf = (name) => {
  try {
    return JSON.parse(readFileSync(join(dir, "node_modules", name, "package.json"), "utf8")).version
  } catch {
    return undefined
  }
}

const fail = (why) => {
  console.error(`polykey harness: installing polykey@${POLYKEY} into ${dir} failed: ${why}`)
  process.exit(1)
}

if (versionOf("polykey") === POLYKEY && versionOf("bitset") === BITSET) {
  console.log(`polykey harness: polykey@${POLYKEY} (bitset ${BITSET}) already in ${dir}`)
  process.exit(0)
}

try {
  mkdirSync(dir, { recursive: true })
  const manifest = {
    name: "quicmesh-polykey-harness",
    private: true,
    description: "Polykey for quicmesh's interop tests and benchmarks (made by test/polykey/install.mjs)",
    dependencies: { polykey: POLYKEY },
    overrides: { bitset: BITSET }
  }
  writeFileSync(join(dir, "package.json"), `${JSON.stringify(manifest, null, 2)}\n`)
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
if (versionOf("polykey") !== POLYKEY || versionOf("bitset") !== BITSET) {
  fail(`npm install left polykey ${versionOf("polykey")} and bitset ${versionOf("bitset")}`)
}
if (!existsSync(join(dir, "node_modules", "polykey", "dist", "PolykeyAgent.js"))) {
  fail("polykey/dist/PolykeyAgent.js is missing after npm install")
}
console.log(`polykey harness: polykey@${POLYKEY} (bitset ${BITSET}) installed in ${dir}`)
