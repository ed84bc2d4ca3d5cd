/**
 * One Polykey agent in this process: `PolykeyAgent.createPolykeyAgent` from the harness folder
 * (test/polykey/install.mjs), started with the options Polykey-CLI's `polykey agent start`
 * passes, from flags named as that command's. test/polykey/agents.ts runs it as a child process
 * and says why there is a launcher at all. Prints one JSON line on stdout once the agent is live:
 * `{"nodeId","publicKey","agentHost","agentPort","clientHost","clientPort","pid"}`.
 * SIGTERM or SIGINT stop the agent and exit 0; so does the end of stdin (the parent went away).
 *
 *   node agentMain.mjs --harness DIR --node-path DIR --password-file FILE
 *     [--agent-host H] [--agent-port P] [--client-host H] [--client-port P]
 *     [--seed-nodes 'nodeId@host:port;…'] [--private-key-hex HEX] [--workers N]
 *     [--mdns-port P] [--verbose]
 */
import { randomBytes } from "node:crypto"
import { readFileSync } from "node:fs"
import { createRequire } from "node:module"
import { join, resolve } from "node:path"
import { parseArgs } from "node:util"

const { values: flags } = parseArgs({
  options: {
    harness: { type: "string" },
    "node-path": { type: "string" },
    "password-file": { type: "string" },
    "agent-host": { type: "string", default: "127.0.0.1" },
    "agent-port": { type: "string", default: "0" },
    "client-host": { type: "string", default: "127.0.0.1" },
    "client-port": { type: "string", default: "0" },
    "seed-nodes": { type: "string", default: "" },
    "private-key-hex": { type: "string" },
    workers: { type: "string" },
    "mdns-port": { type: "string" },
    verbose: { type: "boolean", default: false }
  }
})

const die = (why) => {
  process.stderr.write(`polykey agent: ${why}\n`)
  process.exit(1)
}
if (!flags.harness || !flags["node-path"] || !flags["password-file"]) {
  die("--harness, --node-path and --password-file are required")
}

const require = createRequire(join(resolve(flags.harness), "package.json"))
const polykeyRequire = createRequire(require.resolve("polykey/package.json"))
// `threads` (Polykey's worker pool) exits the process on SIGINT/SIGTERM as soon as it loads,
// before Polykey could stop: load it first and drop its handlers, as Polykey-CLI does.
polykeyRequire("threads")
process.removeAllListeners("SIGINT")
process.removeAllListeners("SIGTERM")
const { default: PolykeyAgent } = require("polykey/dist/PolykeyAgent")
const keysUtils = require("polykey/dist/keys/utils")
const nodesUtils = require("polykey/dist/nodes/utils")
const { default: Logger, LogLevel, StreamHandler } = polykeyRequire("@matrixai/logger")

/** `nodeId@host:port;…` (Polykey-CLI's `--seed-nodes`, without its `<defaults>`) as SeedNodes. */
const seedNodes = Object.fromEntries(
  flags["seed-nodes"]
    .split(";")
    .filter((s) => s !== "")
    .map((s) => {
      const m = /^([^@]+)@(.+):(\d+)$/.exec(s)
      if (m === null) die(`bad seed node "${s}": expected nodeId@host:port`)
      return [m[1], [m[2], Number(m[3])]]
    })
)

const logger = new Logger("PolykeyAgent", flags.verbose ? LogLevel.INFO : LogLevel.WARN, [
  new StreamHandler()
])

const password = readFileSync(flags["password-file"], "utf8").trim()
// Exported for test/polykey/benchMain.mjs, which runs this launcher and times the agent's calls.
export const agent = await PolykeyAgent.createPolykeyAgent({
  password,
  options: {
    nodePath: flags["node-path"],
    agentServiceHost: flags["agent-host"],
    agentServicePort: Number(flags["agent-port"]),
    clientServiceHost: flags["client-host"],
    clientServicePort: Number(flags["client-port"]),
    seedNodes,
    ...(flags.workers === undefined ? {} : { workers: Number(flags.workers) }),
    // Polykey always runs MDNS (multicast on every interface, default port 64023); agents on
    // different ports do not hear each other.
    ...(flags["mdns-port"] === undefined ? {} : { mdns: { port: Number(flags["mdns-port"]) } }),
    keys: {
      // Polykey's own tests' settings: the cheapest password hash, no locked memory, and a given
      // Ed25519 seed instead of a recovery code (whose BIP-39 key derivation costs start-up time).
      passwordOpsLimit: keysUtils.passwordOpsLimits.min,
      passwordMemLimit: keysUtils.passwordMemLimits.min,
      strictMemoryLock: false,
      privateKey: flags["private-key-hex"] ? Buffer.from(flags["private-key-hex"], "hex") : randomBytes(32)
    }
  },
  logger
})

let stopping = false
const stop = () => {
  if (stopping) return
  stopping = true
  agent.stop().then(
    () => process.exit(0),
    (e) => die(`stop failed: ${e?.message ?? e}`)
  )
}
process.on("SIGTERM", stop)
process.on("SIGINT", stop)
process.stdin.on("end", stop)
process.stdin.resume()

const nodeId = agent.keyRing.getNodeId()
process.stdout.write(
  `${JSON.stringify({
    nodeId: nodesUtils.encodeNodeId(nodeId),
    publicKey: Buffer.from(agent.keyRing.keyPair.publicKey).toString("hex"),
    agentHost: agent.nodeConnectionManager.host,
    agentPort: agent.nodeConnectionManager.port,
    clientHost: agent.clientService.host,
    clientPort: agent.clientService.port,
    pid: process.pid
  })}\n`
)
