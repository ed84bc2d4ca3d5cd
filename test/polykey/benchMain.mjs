/**
 * A Polykey agent that times its own calls, for bench/polykey.ts: agentMain.mjs (the same
 * flags, the same ready line, the same stop) plus a command channel. The calls are made by the
 * agent's own NodeConnectionManager and agent RPC client, inside the agent's process, so that
 * a Polykey caller is timed the way the bench times a quicmesh caller in its own process (no
 * client service, no CLI process in the figures).
 *
 * Each command is one JSON line on stdin, answered (in order) by one JSON line on stdout:
 * `{"bench":<id>,"ok":<result>}` or `{"bench":<id>,"error":"<message>"}`. Peers and targets are
 * NodeIdEncoded; every call is `nodesClosestLocalNodesGet`, its answer read to its end, made as
 * Polykey's NodeManager makes it (`withConnF` on the held connection), `timeoutMs` its timer.
 *
 *   {"id","op":"connected","peer"}                    → whether a connection to peer is held
 *   {"id","op":"drop","peer"}                          → null: its connections destroyed (forced)
 *   {"id","op":"cold","peer","host","port","target","timeoutMs"}
 *        → {ms,contacts}: from the start of `createConnection` to the end of the first answer
 *   {"id","op":"warm","peer","target","count","timeoutMs"} → {ms:[…]}: `count` calls in turn
 *   {"id","op":"rate","peer","target","callers","perCaller","timeoutMs","windowMs"}
 *        → {perSecond,failed,unfinished}: `callers` callers at once, each making `perCaller` calls
 *          in turn, until all have ended or `windowMs` has passed: calls answered per second
 *          (failed calls not counted), calls failed, calls still running at the end
 *   {"id","op":"flood","peer","target","calls","timeoutMs"}
 *        → {answered,unanswered,failures}: `calls` calls started at once; those without a whole
 *          answer `timeoutMs` after the start are unanswered (`failures`: their errors by name)
 */
import { createRequire } from "node:module"
import { join, resolve } from "node:path"
import { parseArgs } from "node:util"

const { values: flags } = parseArgs({ options: { harness: { type: "string" } }, strict: false })
const { agent } = await import("./agentMain.mjs")
const require = createRequire(join(resolve(flags.harness), "package.json"))
const nodesUtils = require("polykey/dist/nodes/utils")

const ncm = agent.nodeConnectionManager

const idOf = (text) => {
  const id = nodesUtils.decodeNodeId(text)
  if (id === undefined) throw new Error(`bad NodeId "${text}"`)
  return id
}

/** One call on the held connection to `peer`: how many contacts it answered. */
const call = (peer, target, timer) =>
  ncm.withConnF(peer, async (conn) => {
    const answers = await conn.rpcClient.methods.nodesClosestLocalNodesGet(
      { nodeIdEncoded: target },
      { timer }
    )
    let contacts = 0
    for await (const _ of answers) contacts++
    return contacts
  })

const held = (peer) => {
  if (!ncm.hasConnection(peer)) throw new Error("no connection to the peer")
}

const ops = {
  connected: async ({ peer }) => ncm.hasConnection(idOf(peer)),
  drop: async ({ peer }) => {
    await ncm.destroyConnection(idOf(peer), true)
    return null
  },
  cold: async ({ peer, host, port, target, timeoutMs }) => {
    const id = idOf(peer)
    if (ncm.hasConnection(id)) throw new Error("a connection to the peer is held already")
    const t0 = performance.now()
    await ncm.createConnection([id], host, port, { timer: timeoutMs })
    const contacts = await call(id, target, timeoutMs)
    return { ms: performance.now() - t0, contacts }
  },
  warm: async ({ peer, target, count, timeoutMs }) => {
    const id = idOf(peer)
    held(id)
    const ms = []
    for (let i = 0; i < count; i++) {
      const t0 = performance.now()
      await call(id, target, timeoutMs)
      ms.push(performance.now() - t0)
    }
    return { ms }
  },
  rate: async ({ peer, target, callers, perCaller, timeoutMs, windowMs }) => {
    const id = idOf(peer)
    held(id)
    let answered = 0
    let failed = 0
    const caller = async () => {
      for (let i = 0; i < perCaller; i++)
        await call(id, target, timeoutMs).then(
          () => answered++,
          () => failed++
        )
    }
    const t0 = performance.now()
    await Promise.race([
      Promise.all(Array.from({ length: callers }, caller)),
      new Promise((r) => setTimeout(r, windowMs))
    ])
    const seconds = (performance.now() - t0) / 1000
    return { perSecond: answered / seconds, failed, unfinished: callers * perCaller - answered - failed }
  },
  flood: async ({ peer, target, calls, timeoutMs }) => {
    const id = idOf(peer)
    held(id)
    const t0 = performance.now()
    let answered = 0
    const failures = {}
    const one = () =>
      call(id, target, timeoutMs).then(
        () => {
          if (performance.now() - t0 <= timeoutMs) answered++
        },
        (e) => {
          const name = e?.name ?? "Error"
          failures[name] = (failures[name] ?? 0) + 1
        }
      )
    // Calls still running 2 s after their timers should have ended them count as unanswered.
    await Promise.race([
      Promise.all(Array.from({ length: calls }, one)),
      new Promise((r) => setTimeout(r, timeoutMs + 2000))
    ])
    return { answered, unanswered: calls - answered, failures }
  }
}

const answer = (id, body) => process.stdout.write(`${JSON.stringify({ bench: id, ...body })}\n`)

// Commands run one at a time, in the order they arrive.
let queue = Promise.resolve()
let pending = ""
process.stdin.on("data", (chunk) => {
  pending += chunk.toString()
  const lines = pending.split("\n")
  pending = lines.pop()
  for (const line of lines) {
    if (line.trim() === "") continue
    queue = queue.then(async () => {
      let request
      try {
        request = JSON.parse(line)
        const op = ops[request.op]
        if (op === undefined) throw new Error(`unknown op "${request.op}"`)
        answer(request.id, { ok: await op(request) })
      } catch (e) {
        answer(request?.id ?? null, { error: `${e?.name ?? "Error"}: ${e?.message ?? e}` })
      }
    })
  }
})
