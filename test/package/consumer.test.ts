/**
 * quicmesh as a user gets it: `npm pack`, then an empty project that installs the tarball with
 * the README's install command, type-checks the README's library example (examples/library.ts)
 * with its own strict NodeNext tsc, runs it, runs the installed `quicmesh --version`, and
 * imports each entry point with a resolve hook that records every module loaded.
 *
 * The tarball is packed from the built dist/ (`npm test` builds first); if a source is newer
 * than the build, the test builds once itself.
 */
import { execFileSync } from "node:child_process"
import {
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync
} from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"

const root = join(import.meta.dirname, "..", "..")
const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as {
  readonly version: string
  readonly devDependencies: Record<string, string>
}
const readme = readFileSync(join(root, "README.md"), "utf8")
const example = readFileSync(join(root, "examples", "library.ts"), "utf8")

/** Packages the main entry must not load: the live layers' libraries (QUIC, lmdb, X.509) and the CLI. */
const NOT_IN_MAIN = ["@effect/cli", "@matrixai/quic", "lmdb", "@peculiar/x509", "reflect-metadata"]

// npm run sets npm_* variables (the repository's prefix among them); the nested npm must not see them.
const env = Object.fromEntries(
  Object.entries(process.env).filter(
    ([k]) =>
      !k.startsWith("npm_") ||
      ["npm_config_registry", "npm_config_cache", "npm_config_userconfig"].includes(k)
  )
)

/** Runs a command to its end; a failure's message carries what the command printed. */
const run = (command: string, args: ReadonlyArray<string>, cwd: string, timeout = 120_000) => {
  try {
    return execFileSync(command, args, {
      cwd,
      env,
      encoding: "utf8",
      timeout,
      stdio: ["ignore", "pipe", "pipe"]
    })
  } catch (error) {
    const { stdout, stderr } = error as { readonly stdout?: string; readonly stderr?: string }
    throw new Error(`${command} ${args.join(" ")} failed:\n${stdout ?? ""}${stderr ?? ""}`, { cause: error })
  }
}

const newestMtime = (dir: string): number =>
  Math.max(
    0,
    ...readdirSync(dir, { withFileTypes: true }).map((e) =>
      e.isDirectory() ? newestMtime(join(dir, e.name)) : statSync(join(dir, e.name)).mtimeMs
    )
  )

const mtimeOr = (path: string, fallback: number) => {
  try {
    return statSync(path).mtimeMs
  } catch {
    return fallback
  }
}

/** The install command from the README's "Install as a library" section. */
const readmeInstall = (): ReadonlyArray<string> => {
  const line = readme.split("\n").find((l) => l.startsWith("npm install quicmesh "))
  if (line === undefined) throw new Error("README has no `npm install quicmesh …` line")
  return line.trim().split(/\s+/).slice(2)
}

let dir: string
let project: string
let packed: { readonly filename: string; readonly files: ReadonlyArray<{ readonly path: string }> }

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "quicmesh-consumer-"))
  if (mtimeOr(join(root, "dist", "index.js"), 0) < newestMtime(join(root, "src"))) {
    run("npm", ["run", "build"], root)
  }
  // The build is done: pack it as it is (npm pack would run `prepare`, the build, again).
  const out = run("npm", ["pack", "--ignore-scripts", "--json", "--pack-destination", dir], root)
  packed = (JSON.parse(out) as ReadonlyArray<typeof packed>)[0]!

  project = join(dir, "app")
  mkdirSync(project)
  writeFileSync(
    join(project, "package.json"),
    JSON.stringify({ name: "quicmesh-consumer", private: true, type: "module" }, null, 2)
  )
  writeFileSync(
    join(project, "tsconfig.json"),
    JSON.stringify(
      {
        compilerOptions: {
          target: "ES2022",
          module: "NodeNext",
          moduleResolution: "NodeNext",
          lib: ["ES2022"],
          types: ["node"],
          strict: true,
          exactOptionalPropertyTypes: true,
          verbatimModuleSyntax: true,
          skipLibCheck: true,
          outDir: "out"
        },
        include: ["*.ts"]
      },
      null,
      2
    )
  )
  const tarball = join(dir, packed.filename)
  const [, ...peers] = readmeInstall()
  run(
    "npm",
    [
      "install",
      "--prefer-offline",
      "--no-audit",
      "--no-fund",
      tarball,
      ...peers,
      `typescript@${pkg.devDependencies.typescript}`,
      `@types/node@${pkg.devDependencies["@types/node"]}`
    ],
    project,
    180_000
  )
}, 240_000)

afterAll(() => {
  if (dir !== undefined) rmSync(dir, { recursive: true, force: true })
})

describe("the packed tarball", () => {
  it("carries the built library, the bundled CLI and bin, and no tests, benchmarks or sources", () => {
    const files = packed.files.map((f) => f.path)
    for (const file of [
      "package.json",
      "README.md",
      "bin/quicmesh.js",
      "dist/index.js",
      "dist/index.d.ts",
      "dist/node.js",
      "dist/node.d.ts",
      "dist/testing.js",
      "dist/testing.d.ts",
      "dist/bundle/main.js",
      "dist/programs/main.js"
    ]) {
      expect(files).toContain(file)
    }
    expect(files.filter((f) => /^(test|bench|src|examples|scripts)\//.test(f) || f.endsWith(".map"))).toEqual(
      []
    )
  })

  it("installed in an empty project: the README's example type-checks, runs and exits by itself", () => {
    copyFileSync(join(root, "examples", "library.ts"), join(project, "library.ts"))
    run(join(project, "node_modules", ".bin", "tsc"), ["-p", "."], project)
    const output = run(process.execPath, [join(project, "out", "library.js")], project, 60_000)
    const b = /^node B: v[0-9a-v]{52} on 127\.0\.0\.1:(\d+)$/m.exec(output)
    expect(output).toMatch(/^node A: v[0-9a-v]{52} on 127\.0\.0\.1:\d+$/m)
    expect(b).not.toBeNull()
    expect(output).toContain("B joined through A: connected")
    expect(output).toContain("B pinged A: alive")
    expect(output).toContain(`A looked up B: 127.0.0.1:${b![1]}`)
  }, 90_000)

  it("installed: `quicmesh --version` prints the package's version", () => {
    const output = run(join(project, "node_modules", ".bin", "quicmesh"), ["--version"], project, 30_000)
    expect(output.trim()).toBe(pkg.version)
  }, 60_000)

  it("installed: the main entry loads no CLI, QUIC, lmdb or X.509 code; one copy of effect; internals are hidden", () => {
    writeFileSync(
      join(project, "log-resolve.mjs"),
      [
        'import { appendFileSync } from "node:fs"',
        "export const resolve = async (specifier, context, next) => {",
        "  const result = await next(specifier, context)",
        '  appendFileSync(process.env.RESOLVE_LOG, result.url + "\\n")',
        "  return result",
        "}"
      ].join("\n")
    )
    writeFileSync(
      join(project, "register.mjs"),
      'import { register } from "node:module"\nregister("./log-resolve.mjs", import.meta.url)\n'
    )
    writeFileSync(
      join(project, "imports.mjs"),
      [
        'import { appendFileSync } from "node:fs"',
        'const mark = (text) => appendFileSync(process.env.RESOLVE_LOG, "--- " + text + "\\n")',
        'const main = await import("quicmesh")',
        'mark("main " + Object.keys(main).join(","))',
        'const testing = await import("quicmesh/testing")',
        'mark("testing " + Object.keys(testing).join(","))',
        'const node = await import("quicmesh/node")',
        'mark("node " + Object.keys(node).join(","))',
        'for (const path of ["quicmesh/internal/connectionMap.js", "quicmesh/dist/layers/Node.js"]) {',
        '  await import(path).then(() => mark("importable " + path), (e) => mark(e.code + " " + path))',
        "}"
      ].join("\n")
    )
    const log = join(project, "resolved.log")
    writeFileSync(log, "")
    execFileSync(process.execPath, ["--import", "./register.mjs", "imports.mjs"], {
      cwd: project,
      env: { ...env, RESOLVE_LOG: log },
      timeout: 60_000
    })
    const lines = readFileSync(log, "utf8").trim().split("\n")
    const at = (prefix: string) => lines.findIndex((l) => l.startsWith(`--- ${prefix}`))
    const loadedBy = (from: number, to: number) => lines.slice(from, to).filter((l) => !l.startsWith("---"))
    const uses = (urls: ReadonlyArray<string>, name: string) =>
      urls.some((url) => url.includes(`/node_modules/${name}/`))

    const main = loadedBy(0, at("main"))
    expect(main.some((url) => url.endsWith("/node_modules/quicmesh/dist/index.js"))).toBe(true)
    expect(NOT_IN_MAIN.filter((name) => uses(main, name))).toEqual([])
    expect(lines[at("main")]).toContain("ConnectionManager")

    expect(uses(loadedBy(at("main"), at("testing")), "@effect/cli")).toBe(false)
    expect(lines[at("testing")]).toContain("SimWorld")
    expect(lines[at("node")]).toContain("NodeLive")

    // effect, shared with the user's program: resolved from the project, never from a copy under quicmesh.
    expect(lines.filter((url) => url.includes("/node_modules/quicmesh/node_modules/"))).toEqual([])
    expect(lines.filter((l) => l.startsWith("--- importable"))).toEqual([])
    expect(lines).toContain("--- ERR_PACKAGE_PATH_NOT_EXPORTED quicmesh/internal/connectionMap.js")
  }, 60_000)
})

describe("README", () => {
  it("quotes examples/library.ts whole as its library quickstart", () => {
    const fence = "```"
    expect(readme).toContain(`${fence}ts\n${example}${fence}\n`)
  })

  it("imports only from the entry points, never from dist/ paths", () => {
    expect(readme).not.toMatch(/quicmesh\/dist\//)
  })
})
