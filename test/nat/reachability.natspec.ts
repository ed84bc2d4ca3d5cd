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
import { describeLab } from "./describeLab.js"
import { NatLab } from "./lab.js"
import { classify, status, WORLD_HOSTS } from "./world.js"

describeLab("Reachability (agents)", () => {
  layer(
    NatLab.layer({
      nats: [
        { kind: "restricted", hosts: ["r"] },
        { kind: "symmetric", hosts: ["y"] }
      ],
      publicHosts: [...WORLD_HOSTS, "p"]
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
