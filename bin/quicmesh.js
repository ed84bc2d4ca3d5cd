#!/usr/bin/env node
// The bundled program (npm run build: tsc, then scripts/bundle.mjs) when it is at least as new
// as the tsc output; otherwise the tsc output itself.
import { spawn } from "node:child_process"
import { statSync } from "node:fs"
import { fileURLToPath } from "node:url"

// `quicmesh sim` makes short-lived objects by the million. In V8's default young generation
// (16 MiB semi-spaces) many of them are still alive at a scavenge, so they are copied and
// promoted before they die. With 64 MiB semi-spaces 4,000 nodes took 201 s instead of 257 s
// at the same peak memory; with 128 MiB, 10,000 nodes spend 71 s in scavenges instead of 88 s,
// for 3% more peak memory. V8 takes that size only from its command line, so the simulation
// runs in a child node started with it.
const SEMI_SPACE = "--max-semi-space-size=128"
const command = process.argv.slice(2).find((a) => !a.startsWith("-"))
const tuned = process.execArgv.some((a) => a.startsWith("--max-semi-space-size"))

if (command === "sim" && !tuned) {
  const child = spawn(
    process.execPath,
    [...process.execArgv, SEMI_SPACE, fileURLToPath(import.meta.url), ...process.argv.slice(2)],
    { stdio: "inherit" }
  )
  // A signal sent to this process alone (not to the terminal's whole group) reaches the child too.
  const forward = (signal) => () => child.kill(signal)
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) process.on(signal, forward(signal))
  child.on("error", (error) => {
    console.error(`quicmesh: could not start the simulation: ${error.message}`)
    process.exit(1)
  })
  child.on("exit", (code, signal) => {
    if (signal === null) process.exit(code ?? 1)
    // Stop the same way the child did.
    process.removeAllListeners(signal)
    process.kill(process.pid, signal)
  })
} else {
  const mtime = (path) => {
    try {
      return statSync(new URL(path, import.meta.url)).mtimeMs
    } catch {
      return -1
    }
  }
  const bundled = mtime("../dist/bundle/main.js") >= mtime("../dist/programs/main.js")
  await import(bundled ? "../dist/bundle/main.js" : "../dist/programs/main.js")
}
