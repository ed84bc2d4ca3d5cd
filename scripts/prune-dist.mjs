/**
 * Removes from dist/ what tsc left there from sources that no longer exist (a module moved
 * or renamed keeps its old output otherwise, and `npm pack` would ship it). Runs after tsc in
 * `npm run build`; dist/bundle (scripts/bundle.mjs) is left alone.
 */
import { existsSync, readdirSync, rmSync } from "node:fs"
import { dirname, join, relative } from "node:path"
import { fileURLToPath } from "node:url"

const root = join(dirname(fileURLToPath(import.meta.url)), "..")
const dist = join(root, "dist")
const src = join(root, "src")

// What tsc emits for src/x.ts: x.js, x.d.ts and their maps.
const OUTPUT = /(\.d\.ts|\.js)(\.map)?$/

const prune = (dir) => {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) {
      if (path === join(dist, "bundle")) continue
      prune(path)
      if (readdirSync(path).length === 0) rmSync(path, { recursive: true })
    } else if (OUTPUT.test(entry.name)) {
      const source = join(src, relative(dist, path)).replace(OUTPUT, ".ts")
      if (!existsSync(source)) rmSync(path)
    }
  }
}

if (existsSync(dist)) prune(dist)
