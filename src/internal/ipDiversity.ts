/**
 * ipDiversity: the IP groups of the buckets' diversity limit (`NodeGraph.IpDiversity`) and
 * the per-bucket counts a table keeps of them.
 *
 * A public IPv4 address belongs to the group of its `/ipv4Prefix`, a public IPv6 one to that
 * of its `/ipv6Prefix`; a host name to that of its last two labels (a name is not resolved:
 * many names under one domain are one group). Local addresses (`Address.isLocalHost`:
 * loopback, private, link-local, ULA) and one-label names belong to no group: labs and tests
 * on one host or one LAN are not limited.
 */
import { Config, ConfigError, Either } from "effect"
import * as Address from "../services/Address.js"
import { DEFAULT_IP_DIVERSITY, type IpDiversity } from "../services/NodeGraph.js"

/** What a user may give: `false` turns the limit off, a partial object overrides the defaults. */
export type IpDiversityOption = Partial<IpDiversity> | false

const checkInt = (name: string, value: number, min: number, max: number): number => {
  if (!Number.isInteger(value) || value < min || value > max)
    throw new RangeError(`ipDiversity.${name} must be an integer in ${min}–${max}, got ${value}`)
  return value
}

/** The limit a table enforces (the defaults when `option` is undefined; undefined when off). */
export const resolve = (option: IpDiversityOption | undefined): IpDiversity | undefined => {
  if (option === false) return undefined
  const d = { ...DEFAULT_IP_DIVERSITY, ...option }
  return {
    maxPerGroup: checkInt("maxPerGroup", d.maxPerGroup, 1, Number.MAX_SAFE_INTEGER),
    ipv4Prefix: checkInt("ipv4Prefix", d.ipv4Prefix, 1, 32),
    ipv6Prefix: checkInt("ipv6Prefix", d.ipv6Prefix, 1, 128)
  }
}

const CONFIG_RANGES = [
  ["maxPerGroup", "ipDiversityMaxPerGroup", 0, Number.MAX_SAFE_INTEGER],
  ["ipv4Prefix", "ipDiversityIpv4Prefix", 1, 32],
  ["ipv6Prefix", "ipDiversityIpv6Prefix", 1, 128]
] as const

/**
 * The limit from the current ConfigProvider: `ipDiversityMaxPerGroup` (0 turns it off),
 * `ipDiversityIpv4Prefix`, `ipDiversityIpv6Prefix`, each defaulting to `DEFAULT_IP_DIVERSITY`
 * (the agent reads them as QUICMESH_IP_DIVERSITY_MAX_PER_GROUP, …). A value out of range is
 * refused with a message naming it.
 */
export const config: Config.Config<IpDiversityOption> = Config.all({
  maxPerGroup: Config.integer("ipDiversityMaxPerGroup").pipe(
    Config.withDefault(DEFAULT_IP_DIVERSITY.maxPerGroup)
  ),
  ipv4Prefix: Config.integer("ipDiversityIpv4Prefix").pipe(
    Config.withDefault(DEFAULT_IP_DIVERSITY.ipv4Prefix)
  ),
  ipv6Prefix: Config.integer("ipDiversityIpv6Prefix").pipe(
    Config.withDefault(DEFAULT_IP_DIVERSITY.ipv6Prefix)
  )
}).pipe(
  Config.mapOrFail((o): Either.Either<IpDiversityOption, ConfigError.ConfigError> => {
    if (o.maxPerGroup === 0) return Either.right(false)
    for (const [key, name, min, max] of CONFIG_RANGES) {
      const value = o[key]
      if (value < min || value > max)
        return Either.left(ConfigError.InvalidData([name], `${value} is not in ${min}–${max}`))
    }
    return Either.right(o)
  })
)

/** The first `bits` bits of `bytes` as hex text (the rest zero). */
const prefixText = (bytes: Uint8Array, bits: number): string => {
  let text = ""
  for (let i = 0; i * 8 < bits; i++) {
    const keep = Math.min(8, bits - i * 8)
    text += (bytes[i]! & ((0xff << (8 - keep)) & 0xff)).toString(16).padStart(2, "0")
  }
  return text
}

/** The IP group of `host` ("v4:c0000200/24", "v6:20010db80001/48", "name:example.org"), or undefined if none. */
export const groupOf = (host: string, diversity: IpDiversity): string | undefined => {
  if (Address.isLocalHost(host)) return undefined
  const bytes = Address.ipBytes(host)
  if (bytes === undefined) {
    const labels = Address.normalizeHost(host).replace(/\.$/, "").split(".")
    return labels.length < 2 ? undefined : `name:${labels.slice(-2).join(".")}`
  }
  return bytes.length === 4
    ? `v4:${prefixText(bytes, diversity.ipv4Prefix)}/${diversity.ipv4Prefix}`
    : `v6:${prefixText(bytes, diversity.ipv6Prefix)}/${diversity.ipv6Prefix}`
}

/** How many nodes of each IP group every bucket holds. */
export class BucketGroups {
  readonly #counts: Array<Map<string, number> | undefined> = []

  clear(): void {
    this.#counts.length = 0
  }

  count(index: number, group: string): number {
    return this.#counts[index]?.get(group) ?? 0
  }

  add(index: number, group: string | undefined, delta: 1 | -1): void {
    if (group === undefined) return
    let counts = this.#counts[index]
    if (counts === undefined) {
      counts = new Map()
      this.#counts[index] = counts
    }
    const n = (counts.get(group) ?? 0) + delta
    if (n > 0) counts.set(group, n)
    else counts.delete(group)
  }
}
