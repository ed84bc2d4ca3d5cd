/**
 * `npm run bench`: runs every suite (or those named on the command line), prints a table,
 * and writes bench/results/latest.json and bench/results/latest.md.
 */
import { existsSync, mkdirSync, writeFileSync } from "node:fs"
import { cpus, totalmem } from "node:os"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import type { BenchResult, BenchSuite } from "./types.js"

/**
 * The project root: the nearest folder up from this file with a package.json. The suites run
 * compiled (build/bench/bench/run.js, see package.json) so that they measure the JavaScript
 * users run: tsx compiles with esbuild's keepNames, which gives every named closure its own
 * property table and inflates per-object memory figures.
 */
const root = (() => {
  let dir = dirname(fileURLToPath(import.meta.url))
  while (!existsSync(join(dir, "package.json")) && dirname(dir) !== dir) dir = dirname(dir)
  return dir
})()

/** Suites in run order; each is `bench/<name>.ts` exporting `suite: BenchSuite`. */
const suiteNames = [
  "nodeGraph",
  "transport",
  "rpc",
  "holePunch",
  "reachability",
  "connectionManager",
  "appProtocols",
  "relay",
  "relayLab",
  "polykey",
  "simulation"
]
const load = (name: string): Promise<{ suite: BenchSuite }> => import(`./${name}.js`)

const wanted = process.argv.slice(2)
const results: BenchResult[] = []
for (const name of suiteNames) {
  if (wanted.length > 0 && !wanted.includes(name)) continue
  let mod: { suite: BenchSuite }
  try {
    mod = await load(name)
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ERR_MODULE_NOT_FOUND" && String(e).includes(`${name}.`))
      continue
    throw e
  }
  process.stderr.write(`bench: ${name}…\n`)
  results.push(...(await mod.suite.run()))
}

const fmt = (n: number | undefined) =>
  n === undefined
    ? ""
    : Math.abs(n) >= 100
      ? n.toFixed(0)
      : Math.abs(n) >= 1
        ? n.toFixed(2)
        : n.toPrecision(3)
const machine = `${cpus().length} × ${cpus()[0]?.model ?? "cpu"}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}`
const lines = [
  `Machine: ${machine}; run ${new Date().toISOString()}`,
  "",
  "| suite | measure | value | baseline | ratio | target | met |",
  "|---|---|---|---|---|---|---|",
  ...results.map(
    (r) =>
      `| ${r.suite} | ${r.name} | ${fmt(r.value)} ${r.unit} | ${r.baselineName ? `${r.baselineName}: ${fmt(r.baseline)} ${r.unit}` : ""} | ${r.ratio === undefined ? "" : `${r.ratio.toFixed(2)}×`} | ${r.target ?? ""} | ${r.met === undefined ? "" : r.met ? "yes" : "no"} |`
  )
]
const out = join(root, "bench", "results")
mkdirSync(out, { recursive: true })
writeFileSync(
  join(out, "latest.json"),
  `${JSON.stringify({ machine, date: new Date().toISOString(), results }, null, 2)}\n`
)
writeFileSync(join(out, "latest.md"), `${lines.join("\n")}\n`)
process.stdout.write(`${lines.join("\n")}\n`)
process.exit(0)
