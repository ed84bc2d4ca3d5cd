/**
 * `describe` for suites that need the NAT lab. Without root the suite says why and registers
 * no tests (the NAT config passes with none); as root with `ip netns` or iptables unusable the
 * tests run and fail with the reason, so CI cannot pass them silently.
 */
import { describe } from "@effect/vitest"
import { labAvailability } from "./lab.js"

const availability = labAvailability()
let warned = false

export const describeLab = (name: string, body: () => void): void => {
  if (!availability.ok && availability.notRoot) {
    if (!warned) console.warn(`NAT lab suites not run: ${availability.reason}`)
    warned = true
    return
  }
  describe(name, body)
}
