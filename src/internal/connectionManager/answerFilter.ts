/**
 * answerFilter: what a lookup takes from a peer's answer to a closest-nodes query. A peer may
 * be hostile, so every contact is checked before it is dialled or kept:
 *
 * - dropped: our own NodeId, the answering peer's own (we hold a proven address for it),
 *   a NodeId that does not decode, a port outside 1–65535, a host that is neither an IP
 *   address nor a host name, a second contact for a NodeId already taken;
 * - capped: at most `limit` (k) contacts per answer, and with an IP-diversity limit at most
 *   `maxPerGroup` contacts of one public IP group (`ipDiversity.ts`), the target excepted.
 *
 * The work is bounded by the answer's length, which the query caps at k as it reads.
 */
import { Either } from "effect"
import * as Address from "../../services/Address.js"
import type { Contact, WireContact } from "../../services/Contact.js"
import type { IpDiversity } from "../../services/NodeGraph.js"
import * as NodeId from "../../services/NodeId.js"
import { groupOf } from "../ipDiversity.js"
import * as RelayHints from "./relayHints.js"

/** A contact taken from an answer: its NodeId in both forms and its (normalised) address. */
export interface HeardContact {
  readonly key: string
  readonly nodeId: NodeId.NodeId
  readonly address: Address.Address
  /** The external addresses the node confirmed for itself, as the answer carries them (well formed, other than `address`). */
  readonly confirmed: ReadonlyArray<Address.Address>
  /** The relays the answer says the node is reachable through (`relayHints.fromWire`). */
  readonly relays: ReadonlyArray<Contact>
  /** The answer named relays and no confirmed address of the node's own. */
  readonly relayOnly: boolean
}

export interface AnswerContext {
  /** Our own NodeId, encoded. */
  readonly selfKey: string
  /** The answering peer's NodeId, encoded. */
  readonly answererKey: string
  /** The NodeId looked up, encoded (exempt from the IP-group cap). */
  readonly targetKey: string
  /** Most contacts taken from one answer (k). */
  readonly limit: number
  readonly ipDiversity: IpDiversity | undefined
}

/** Longest host text looked at (a host name is at most 253 characters). */
const MAX_HOST_LENGTH = 253

/** The contact's host, normalised, if the contact is well formed (a string id, a port, a host). */
const hostOf = (c: WireContact): string | undefined => {
  if (
    typeof c.nodeIdEncoded !== "string" ||
    typeof c.port !== "number" ||
    !Address.isPort(c.port) ||
    typeof c.host !== "string" ||
    c.host.length > MAX_HOST_LENGTH
  )
    return undefined
  const host = Address.normalizeHost(c.host)
  return Address.isHost(host) ? host : undefined
}

/** The contacts of `answer` a lookup may use, in the answer's order. */
export const filterAnswer = (
  answer: ReadonlyArray<WireContact>,
  context: AnswerContext
): Array<HeardContact> => {
  const { selfKey, answererKey, targetKey, limit, ipDiversity } = context
  const out: Array<HeardContact> = []
  const taken = new Set<string>()
  const perGroup = new Map<string, number>()
  for (const c of answer) {
    if (out.length >= limit) break
    const key = c.nodeIdEncoded
    if (key === selfKey || key === answererKey || taken.has(key)) continue
    const host = hostOf(c)
    if (host === undefined) continue
    const id = NodeId.decode(key)
    if (Either.isLeft(id)) continue
    if (ipDiversity !== undefined && key !== targetKey) {
      const group = groupOf(host, ipDiversity)
      if (group !== undefined) {
        const n = perGroup.get(group) ?? 0
        if (n >= ipDiversity.maxPerGroup) continue
        perGroup.set(group, n + 1)
      }
    }
    taken.add(key)
    const relays = RelayHints.fromWire(c.relays, key)
    const confirmed: Array<Address.Address> = []
    for (const a of c.addresses ?? []) {
      if (typeof a.host !== "string" || a.host.length > MAX_HOST_LENGTH || !Address.isPort(a.port)) continue
      const at = { host: Address.normalizeHost(a.host), port: a.port }
      if (Address.ipVersion(at.host) === 0) continue
      if (at.host === host && at.port === c.port) continue
      if (!confirmed.some((b) => Address.equals(b, at))) confirmed.push(at)
    }
    const relayOnly = relays.length > 0 && (c.addresses?.length ?? 0) === 0
    out.push({ key, nodeId: id.right, address: { host, port: c.port }, confirmed, relays, relayOnly })
  }
  return out
}
