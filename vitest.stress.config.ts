import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/stress/**/*.stress.ts"],
    testTimeout: 900_000,
    hookTimeout: 60_000,
    pool: "forks",
    sequence: { concurrent: false }
  }
})
