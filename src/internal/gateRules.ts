/**
 * gateRules: the connection gate's rules as data (`GateRules`: deny and allow lists of entry
 * texts, and the allow-only switch), the changes made to them, and their compiled form that
 * answers, without allocating when there are no rules, whether a connection is refused.
 *
 * The verdict: a connection is refused when its NodeId is denied or its address lies in a
 * denied range; in allow-only mode it is also refused unless its NodeId is allowed or its
 * address lies in an allowed range. Deny wins over allow. Asked without an address (before a
 * lookup, or in the TLS check that only sees the certificate) the verdict leaves out what
 * needs one: it refuses only what the NodeId alone decides.
 */
import { Either, Predicate, Schema } from "effect"
import {
  ConnectionDenied,
  type GateEntry,
  type GateRules,
  InvalidGateEntry
} from "../services/ConnectionGater.js"
import * as NodeId from "../services/NodeId.js"
import { type Cidr, contains, formatCidr, parseCidr, parseIp } from "./cidr.js"

/** The text of a NodeId or a CIDR (a bare IP address is a range of one) as an entry. */
export const parseEntry = (input: string): Either.Either<GateEntry, InvalidGateEntry> => {
  const text = input.trim()
  const fail = (detail: string) => Either.left(new InvalidGateEntry({ input, detail }))
  if (text.length === 0) return fail("empty")
  const nodeId = NodeId.decode(text)
  if (Either.isRight(nodeId)) return Either.right({ _tag: "NodeId", text: NodeId.encode(nodeId.right) })
  // Anything with a "." or ":" or "/" was meant as an address; anything else as a NodeId.
  if (!/[.:/]/.test(text)) return fail(`not a NodeId (${nodeId.left.message}) nor an IP range`)
  const cidr = parseCidr(text)
  return Predicate.isString(cidr)
    ? fail(`not a CIDR: ${cidr}`)
    : Either.right({ _tag: "Cidr", text: formatCidr(cidr), cidr })
}

export const emptyRules: GateRules = { allowOnly: false, deny: [], allow: [] }

const without = (list: ReadonlyArray<string>, text: string) => list.filter((t) => t !== text)
const adding = (list: ReadonlyArray<string>, text: string) => (list.includes(text) ? list : [...list, text])

/** `entry` on the deny list (and off the allow list). */
export const denying = (rules: GateRules, entry: GateEntry): GateRules => ({
  ...rules,
  deny: adding(rules.deny, entry.text),
  allow: without(rules.allow, entry.text)
})

/** `entry` on the allow list (and off the deny list). */
export const allowing = (rules: GateRules, entry: GateEntry): GateRules => ({
  ...rules,
  deny: without(rules.deny, entry.text),
  allow: adding(rules.allow, entry.text)
})

/** `entry` on neither list. */
export const removing = (rules: GateRules, entry: GateEntry): GateRules => ({
  ...rules,
  deny: without(rules.deny, entry.text),
  allow: without(rules.allow, entry.text)
})

export const sameRules = (a: GateRules, b: GateRules): boolean =>
  a.allowOnly === b.allowOnly &&
  a.deny.length === b.deny.length &&
  a.allow.length === b.allow.length &&
  a.deny.every((t, i) => b.deny[i] === t) &&
  a.allow.every((t, i) => b.allow[i] === t)

/** One list compiled: its NodeIds (encoded) and its ranges. */
interface CompiledList {
  readonly nodes: ReadonlySet<string>
  readonly ranges: ReadonlyArray<{ readonly text: string; readonly cidr: Cidr }>
}

const compileList = (texts: ReadonlyArray<string>): CompiledList => {
  const nodes = new Set<string>()
  const ranges: Array<{ text: string; cidr: Cidr }> = []
  for (const text of texts) {
    const entry = parseEntry(text)
    if (Either.isLeft(entry)) continue
    if (Predicate.isTagged(entry.right, "Cidr")) ranges.push({ text, cidr: entry.right.cidr })
    else nodes.add(entry.right.text)
  }
  return { nodes, ranges }
}

const rangeOf = (list: CompiledList, address: Uint8Array | undefined) =>
  address === undefined ? undefined : list.ranges.find((r) => contains(r.cidr, address))

/** Rules ready to answer `refusal` quickly. */
export class CompiledRules {
  private readonly none: boolean
  private readonly deny: CompiledList
  private readonly allow: CompiledList
  private readonly allowOnly: boolean
  private readonly anyRange: boolean
  constructor(readonly rules: GateRules) {
    this.deny = compileList(rules.deny)
    this.allow = compileList(rules.allow)
    this.allowOnly = rules.allowOnly
    this.none = !rules.allowOnly && rules.deny.length === 0
    this.anyRange = this.deny.ranges.length > 0 || this.allow.ranges.length > 0
  }

  /** Why a connection with `nodeId` (at `host`, if known) is refused, or undefined. */
  refusal(nodeId: NodeId.NodeId, host?: string): ConnectionDenied | undefined {
    if (this.none) return undefined
    const key = NodeId.encode(nodeId) as string
    const deny = (detail: string) => new ConnectionDenied({ nodeId: key, host, detail })
    if (this.deny.nodes.has(key)) return deny(`NodeId ${key} is denied`)
    const address = host === undefined || !this.anyRange ? undefined : parseIp(host)
    const denied = rangeOf(this.deny, address)
    if (denied !== undefined) return deny(`address ${host} is in the denied range ${denied.text}`)
    if (!this.allowOnly || this.allow.nodes.has(key)) return undefined
    if (rangeOf(this.allow, address) !== undefined) return undefined
    // Without an address, an allowed range may still let it in: decided once the address is known.
    if (host === undefined && this.allow.ranges.length > 0) return undefined
    return deny(
      host === undefined
        ? `allow-only mode, and NodeId ${key} is not allowed`
        : `allow-only mode, and neither NodeId ${key} nor address ${host} is allowed`
    )
  }
}

const canonicalList = (
  list: ReadonlyArray<string>
): Either.Either<ReadonlyArray<string>, InvalidGateEntry> => {
  const out: Array<string> = []
  for (const text of list) {
    const entry = parseEntry(text)
    if (Either.isLeft(entry)) return Either.left(entry.left)
    if (!out.includes(entry.right.text)) out.push(entry.right.text)
  }
  return Either.right(out)
}

/** Rules with every entry in its canonical text and each once; the first bad entry otherwise. */
export const canonicalRules = (rules: GateRules): Either.Either<GateRules, InvalidGateEntry> =>
  Either.gen(function* () {
    const deny = yield* canonicalList(rules.deny)
    const allow = yield* canonicalList(rules.allow)
    return { allowOnly: rules.allowOnly, deny, allow: allow.filter((t) => !deny.includes(t)) }
  })

/** The gating file's contents. */
const RulesFile = Schema.Struct({
  version: Schema.Literal(1),
  allowOnly: Schema.Boolean,
  deny: Schema.Array(Schema.String),
  allow: Schema.Array(Schema.String)
})

/** Rules as the gating file holds them (JSON text). */
export const encodeRules = (rules: GateRules): string =>
  `${JSON.stringify({ version: 1, allowOnly: rules.allowOnly, deny: rules.deny, allow: rules.allow }, null, 2)}\n`

/** The gating file's text as rules; otherwise a one-line reason. */
export const decodeRules = (text: string): Either.Either<GateRules, string> => {
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (e) {
    return Either.left(`not JSON (${(e as Error).message})`)
  }
  const file = Schema.decodeUnknownEither(RulesFile)(json, { onExcessProperty: "error" })
  if (Either.isLeft(file))
    return Either.left(
      `expected { "version": 1, "allowOnly": boolean, "deny": [entries], "allow": [entries] } (${file.left.message.replace(/\s+/g, " ")})`
    )
  return Either.mapLeft(canonicalRules(file.right), (e) => e.message)
}
