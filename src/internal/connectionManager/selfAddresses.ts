/**
 * The node's own addresses as the world sees them: what each peer observed for us on its
 * connection, and the external addresses confirmed by peers on different IP addresses.
 * Hole-punch signalling signs these (`holePunch.ts`); the observed-address exchange and the
 * NAT classification keep them (`reachability/`).
 */
import type * as Address from "../../services/Address.js"
import type * as NodeId from "../../services/NodeId.js"
import type { NatClass } from "../../services/Reachability.js"

export interface SelfAddresses {
  /** The address `peer` observed for us on our connection to it, if it told us. */
  readonly observedBy: (peer: NodeId.NodeId) => Address.Address | undefined
  /** Our external addresses confirmed by at least two peers on different IP addresses. */
  readonly confirmed: () => ReadonlyArray<Address.Address>
  /** Our NAT class now (`Reachability`). */
  readonly nat: () => NatClass
}

/** True when our address may not be reachable from anywhere: the class is neither public nor cone. */
export const mayBeUnreachable = (self: SelfAddresses): boolean => {
  const nat = self.nat()
  return nat !== "public" && nat !== "cone"
}

/** Knows nothing yet: no peer has told us what it sees. */
export const unknown: SelfAddresses = {
  observedBy: () => undefined,
  confirmed: () => [],
  nat: () => "unknown"
}
