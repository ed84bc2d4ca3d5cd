#!/usr/bin/env node
// The bundled program (npm run build: tsc, then scripts/bundle.mjs) when it is at least as new
// as the tsc output; otherwise the tsc output itself.
import { statSync } from "node:fs"

const mtime = (path) => {
  try {
    return statSync(new URL(path, import.meta.url)).mtimeMs
  } catch {
    return -1
  }
}
const bundled = mtime("../dist/bundle/main.js") >= mtime("../dist/programs/main.js")
await import(bundled ? "../dist/bundle/main.js" : "../dist/programs/main.js")
