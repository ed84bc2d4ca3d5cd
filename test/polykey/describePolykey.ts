/**
 * `describe` for suites that run real Polykey agents. Where the harness folder is absent the
 * suite is skipped, saying why and how to install it, except under CI (`CI` set), where it runs
 * and fails with that reason: .ci/run installs the harness first, so CI never skips it. A folder
 * that is there but wrong fails the tests with the reason too (test/polykey/agents.ts).
 */
import { existsSync } from "node:fs"
import { describe } from "@effect/vitest"
import { harnessDir } from "./agents.js"

const absent = !existsSync(harnessDir) && !process.env.CI
let warned = false

export const describePolykey = (name: string, body: () => void): void => {
  if (absent && !warned) {
    console.warn(
      `Polykey interop suites skipped: no Polykey harness in ${harnessDir}. Install it with \`npm run polykey:install\` (or set QUICMESH_POLYKEY_DIR).`
    )
    warned = true
  }
  describe.skipIf(absent)(name, body)
}
