/**
 * Bundles the compiled CLI (dist/programs/main.js) into dist/bundle/ with esbuild, so that
 * `quicmesh` loads a few files instead of hundreds of modules (about 3x less start-up CPU per
 * command). Packages with native code or load-order needs stay external. bin/quicmesh.js
 * uses the bundle when it is at least as new as the tsc output, else dist/programs/main.js.
 * Without esbuild installed this prints a note and leaves the unbundled program in use.
 */
import { rmSync } from "node:fs"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"

const root = join(dirname(fileURLToPath(import.meta.url)), "..")
const outdir = join(root, "dist/bundle")

let esbuild
try {
  esbuild = await import("esbuild")
} catch {
  console.error("scripts/bundle.mjs: esbuild not installed; quicmesh runs unbundled from dist/programs")
  process.exit(0)
}

rmSync(outdir, { recursive: true, force: true })
await esbuild.build({
  entryPoints: [join(root, "dist/programs/main.js")],
  outdir,
  bundle: true,
  splitting: true,
  format: "esm",
  platform: "node",
  target: "node20",
  // Native addons, and x509 with the reflect-metadata polyfill it needs loaded first.
  external: ["lmdb", "@matrixai/quic", "@peculiar/x509", "reflect-metadata"],
  // Some bundled CommonJS dependencies call require() for Node built-ins.
  banner: {
    js: 'import { createRequire as __quicmeshCreateRequire } from "node:module"; const require = __quicmeshCreateRequire(import.meta.url);'
  },
  logLevel: "warning"
})
