/**
 * Every public module (src/services, src/layers) is exported from exactly one entry point
 * ("quicmesh", "quicmesh/node" or "quicmesh/testing"), as a namespace of its own name.
 */
import { readdirSync, readFileSync } from "node:fs"
import { join } from "node:path"
import { describe, expect, it } from "vitest"

const src = join(import.meta.dirname, "..", "..", "src")
const ENTRIES = ["index.ts", "node.ts", "testing.ts"]

/** `export * as Name from "./folder/Module.js"` lines of an entry, as [Name, "folder/Module"]. */
const exportsOf = (entry: string) =>
  [...readFileSync(join(src, entry), "utf8").matchAll(/^export \* as (\w+) from "\.\/(.+)\.js"$/gm)].map(
    ([, name, path]) => [name!, path!] as const
  )

const modulesIn = (folder: string) =>
  readdirSync(join(src, folder))
    .filter((f) => f.endsWith(".ts"))
    .map((f) => `${folder}/${f.slice(0, -3)}`)

describe("entry points", () => {
  it("export each public module once, under its own name", () => {
    const all = ENTRIES.flatMap(exportsOf)
    const paths = all.map(([, path]) => path)
    expect(all.filter(([name, path]) => path.split("/").pop() !== name)).toEqual([])
    expect(paths.filter((p, i) => paths.indexOf(p) !== i)).toEqual([])
    expect([...modulesIn("services"), ...modulesIn("layers")].filter((m) => !paths.includes(m))).toEqual([])
    expect(paths.filter((p) => p.startsWith("internal/"))).toEqual([])
  })
})
