import { defineConfig } from "vitest/config"

// Interop with real Polykey agents (child processes from the harness folder, see
// test/polykey/agents.ts). Kept out of the default suite: vitest.config.ts only matches `*.test.ts`.
export default defineConfig({
  test: {
    include: ["test/polykey/**/*.pkspec.ts"],
    testTimeout: 120_000,
    hookTimeout: 60_000,
    pool: "forks",
    fileParallelism: false,
    sequence: { concurrent: false }
  }
})
