/**
 * A few of Polykey-CLI's commands against a running agent, through Polykey's own client
 * (`PolykeyClient` from the harness folder: the agent's client service, a WebSocket RPC on
 * `clientHost:clientPort`, authenticated with the agent's password), as `polykey <command>
 * --format json` does: the agent is found through `<node-path>/status.json`, the output is the
 * JSON that command prints, and a failed ping or find exits 1 as the CLI does.
 *
 *   node clientMain.mjs --harness DIR --node-path DIR --password-file FILE <command…>
 *     agent status
 *     nodes ping <nodeId>                 → {"success":bool}             (exit 1 when false)
 *     nodes find <nodeId>                 → {"nodeAddress":[host,port],"nodeContactAddressData":{…}}
 *     nodes connections                   → [{"host","hostname","nodeIdEncoded","port","timeout","usageCount"}]
 *     nodes add <nodeId> <host> <port> [--force] [--no-ping]  → {}
 *     keys renew                          → {"nodeIdEncoded"} (a new key pair, its certificate
 *                                           issued by the old key: a two-certificate chain)
 *
 * Any other failure prints one line on stderr and exits 1 (2 for bad usage).
 */
import { createRequire } from "node:module"
import { join, resolve } from "node:path"
import { parseArgs } from "node:util"

const { values: flags, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    harness: { type: "string" },
    "node-path": { type: "string" },
    "password-file": { type: "string" },
    force: { type: "boolean", default: false },
    "no-ping": { type: "boolean", default: false },
    // Accepted for the CLI's sake: the output is always JSON.
    format: { type: "string", default: "json" }
  }
})

const fail = (code, why) => {
  process.stderr.write(`polykey ${positionals.join(" ")}: ${why}\n`)
  process.exit(code)
}
if (!flags.harness || !flags["node-path"] || !flags["password-file"]) {
  fail(2, "--harness, --node-path and --password-file are required")
}

const require = createRequire(join(resolve(flags.harness), "package.json"))
const { default: PolykeyClient } = require("polykey/dist/PolykeyClient")
const { default: Status } = require("polykey/dist/status/Status")
const clientUtils = require("polykey/dist/client/utils")
const nodesUtils = require("polykey/dist/nodes/utils")
const { default: Logger, LogLevel } = require(
  createRequire(require.resolve("polykey/package.json")).resolve("@matrixai/logger")
)
const { readFile } = await import("node:fs/promises")

const nodePath = flags["node-path"]
const logger = new Logger("polykey", LogLevel.ERROR, [])
const status = new Status({
  statusPath: join(nodePath, "status.json"),
  statusLockPath: join(nodePath, "status.lock"),
  fs: require("node:fs"),
  logger
})
const info = await status.readStatus()
if (info === undefined || info.status !== "LIVE") fail(1, `agent at ${nodePath} is not live`)
const password = (await readFile(flags["password-file"], "utf8")).trim()
const metadata = { authorization: clientUtils.encodeAuthFromPassword(password) }

const nodeIdArg = (i) => {
  const text = positionals[i]
  if (text === undefined || nodesUtils.decodeNodeId(text) === undefined) fail(2, `bad NodeId "${text}"`)
  return text
}

const client = await PolykeyClient.createPolykeyClient({
  nodeId: info.data.nodeId,
  host: info.data.clientHost,
  port: info.data.clientPort,
  options: { nodePath },
  logger
})
const rpc = client.rpcClient.methods
let out
let code = 0
try {
  const command = positionals.slice(0, 2).join(" ")
  switch (command) {
    case "agent status": {
      const s = await rpc.agentStatus({ metadata })
      out = { status: "LIVE", ...s, type: undefined, metadata: undefined }
      break
    }
    case "nodes ping": {
      const r = await rpc.nodesPing({ metadata, nodeIdEncoded: nodeIdArg(2) })
      out = { success: r.success }
      if (!r.success) code = 1
      break
    }
    case "nodes find": {
      try {
        const r = await rpc.nodesFind({ metadata, nodeIdEncoded: nodeIdArg(2) })
        out = { nodeAddress: r.nodeAddress, nodeContactAddressData: r.nodeContactAddressData }
      } catch (e) {
        if (e?.cause?.name !== "ErrorNodeGraphNodeIdNotFound") throw e
        fail(1, `Failed to find node ${positionals[2]}`)
      }
      break
    }
    case "nodes connections": {
      out = []
      for await (const c of await rpc.nodesListConnections({ metadata })) {
        const { host, hostname, nodeIdEncoded, port, timeout, usageCount } = c
        out.push({ host, hostname, nodeIdEncoded, port, timeout, usageCount })
      }
      break
    }
    case "nodes add": {
      const port = Number(positionals[4])
      if (positionals[3] === undefined || !Number.isInteger(port))
        fail(2, "usage: nodes add <nodeId> <host> <port>")
      await rpc.nodesAdd({
        metadata,
        nodeIdEncoded: nodeIdArg(2),
        host: positionals[3],
        port,
        force: flags.force,
        ping: !flags["no-ping"]
      })
      out = {}
      break
    }
    case "keys renew": {
      // The agent's KeysKeyPairRenew (Polykey-CLI's `keys renew`), keeping the password.
      await rpc.keysKeyPairRenew({ metadata, password })
      out = { nodeIdEncoded: (await rpc.agentStatus({ metadata })).nodeIdEncoded }
      break
    }
    default:
      fail(2, "unknown command (agent status, nodes ping|find|connections|add, keys renew)")
  }
} catch (e) {
  const cause = e?.cause?.message ? ` (${e.cause.name}: ${e.cause.message})` : ""
  await client.stop({ force: true })
  fail(1, `${e?.name ?? "Error"}: ${e?.message ?? e}${cause}`)
}
await client.stop()
process.stdout.write(`${JSON.stringify(out)}\n`)
process.exit(code)
