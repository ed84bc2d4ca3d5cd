/**
 * `describe` for suites that run real Polykey agents. They need the harness folder
 * (`npm run polykey:install`; .ci/run installs it first): where it is absent or wrong, each test
 * fails with the reason and how to install it (test/polykey/agents.ts), never skips.
 */
import { describe } from "@effect/vitest"

export const describePolykey = (name: string, body: () => void): void => {
  describe(name, body)
}
