/**
 * NAT classification with real agents (the built program) in the NAT lab, read through the CLI
 * (`agent status --format json`). Two public seeds on two IPs observe each node; a public helper
 * connected to one seed (and never to the node) is the dial-back's helper. A node on the public
 * side classifies itself `public`; behind the restricted router (port-preserving MASQUERADE)
 * `cone` (the helper's dial-back is filtered); behind the symmetric router (random ports) `symmetric`.
 * Each test prints the seconds from the agent's start to its classification.
 *
 * Root only: `npm run build && npm run test:nat`.
 */
import { expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import { type AgentInfo, cli, control, poll, startAgent } from "./agents.js"
import { describeLab } from "./describeLab.js"
import { type Lab, NatLab } from "./lab.js"

interface StatusJson {
  readonly reachability?: {
    readonly nat: string
    readonly addresses: ReadonlyArray<{ readonly host: string; readonly port: number }>
    readonly observers: number
  }
}

const status = (agent: AgentInfo) => cli<StatusJson>(agent, ["agent", "status"])

/**
 * Two seeds and a helper: the helper has no seeds and is in touch with seed 1 alone (added and
 * pinged through its control API), so no node under test ever learns of it or contacts it.
 */
const world = (lab: Lab, base: number) =>
  Effect.gen(function* () {
    const s1 = yield* startAgent(lab, "s1", { port: base })
    const s2 = yield* startAgent(lab, "s2", { port: base + 1 })
    const helper = yield* startAgent(lab, "h", { port: base + 2 })
    const inTouch = () =>
      control(helper, (c) =>
        c
          .nodesAdd({ nodeId: s1.nodeId, host: lab.node("s1").ip, port: s1.port })
          .pipe(Effect.zipRight(c.nodesPing({ nodeId: s1.nodeId, timeout: 5000 })))
      )
    return { seeds: [s1, s2], inTouch }
  })

/** Starts `name` joined to the seeds, then the helper's touch; polls its status until `nat`. */
const classify = (lab: Lab, name: string, base: number, nat: string) =>
  Effect.gen(function* () {
    const { seeds, inTouch } = yield* world(lab, base)
    const started = Date.now()
    const node = yield* startAgent(lab, name, { port: base + 3, seeds })
    // Only once the node has joined (its lookup must not meet the helper).
    yield* poll(
      Effect.sync(() => node.proc.stderr()),
      (log) => log.includes("joined the network"),
      120
    )
    expect((yield* inTouch()).success).toBe(true)
    const json = yield* poll(status(node), (s) => s.reachability?.nat === nat, 240)
    const seconds = (Date.now() - started) / 1000
    console.log(`reachability ${name}: ${nat} ${seconds.toFixed(1)} s after start`)
    return { node, json }
  })

describeLab("Reachability (agents)", () => {
  layer(
    NatLab.layer({
      nats: [
        { kind: "restricted", hosts: ["r"] },
        { kind: "symmetric", hosts: ["y"] }
      ],
      publicHosts: ["s1", "s2", "h", "p"]
    }),
    { timeout: "150 seconds", excludeTestServices: true }
  )((it) => {
    it.scoped(
      "a node on the public side classifies itself public (a helper it never contacted dialled it)",
      () =>
        Effect.gen(function* () {
          const lab = yield* NatLab
          const { node, json } = yield* classify(lab, "p", 7700, "public")
          expect(json.reachability).toMatchObject({
            addresses: [{ host: lab.node("p").ip, port: node.port }],
            observers: expect.any(Number)
          })
        })
    )

    it.scoped(
      "behind the restricted router: cone at the router's address, and still cone after the dial-back",
      () =>
        Effect.gen(function* () {
          const lab = yield* NatLab
          const { json, node } = yield* classify(lab, "r", 7710, "cone")
          // Port-preserving MASQUERADE: both seeds saw the router's address with the node's port.
          expect(json.reachability!.addresses).toEqual([{ host: lab.node("r").publicIp, port: node.port }])
          // The helper's dial-back (5 s) is filtered: the class stays cone.
          yield* Effect.sleep("12 seconds")
          expect((yield* status(node)).reachability!.nat).toBe("cone")
        })
    )

    it.scoped("behind the symmetric router: symmetric, with no confirmed address", () =>
      Effect.gen(function* () {
        const lab = yield* NatLab
        const { json } = yield* classify(lab, "y", 7720, "symmetric")
        expect(json.reachability).toMatchObject({ addresses: [], observers: 2 })
      })
    )
  })
})
