import { defineConfig } from "vitest/config"

// The NAT lab suite (root only; network namespaces + iptables). Kept out of the default suite:
// vitest.config.ts only matches `*.test.ts`.
export default defineConfig({
  test: {
    include: ["test/nat/**/*.natspec.ts"],
    // Without root the suites register nothing (test/nat/describeLab.ts says why).
    passWithNoTests: true,
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: "forks",
    fileParallelism: false,
    sequence: { concurrent: false }
  }
})
