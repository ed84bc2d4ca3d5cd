/**
 * The manager's reachability part: the dial-back (`dialBack.ts`), the keeper of the class
 * (`keeper.ts`) and the record of whom the node contacted (`contacts.ts`), over the port
 * mapping of a `PortMapper` when one is in the manager's context (`Node.layerWith`'s
 * `portMapper`). Making it replaces the state's `selfAddresses` with what the keeper knows.
 */
import { Effect, Option } from "effect"
import { PortMapper } from "../../../services/PortMapper.js"
import type { QuicTransportService } from "../../../services/QuicTransport.js"
import type { Records } from "../records.js"
import type { ManagerState } from "../state.js"
import { Contacts, watchSends } from "./contacts.js"
import * as DialBack from "./dialBack.js"
import * as Keeper from "./keeper.js"

export interface Reachability extends Keeper.Keeper {
  /**
   * `transport` with its dials and datagrams recorded as contacts: the manager dials and
   * punches through it, so that no node it sent a packet to can prove it reachable.
   */
  readonly watchSends: (transport: QuicTransportService) => QuicTransportService
}

export const make = (
  state: ManagerState,
  dialRecord: () => Records["dialRecord"]
): Effect.Effect<Reachability> =>
  Effect.gen(function* () {
    const mapper = yield* Effect.serviceOption(PortMapper)
    const contacts = new Contacts()
    const keeper = Keeper.make(state, {
      contacts,
      dialBack: DialBack.make(state, { dialRecord, contacts }),
      portMapping: Option.match(mapper, {
        onNone: () => Effect.succeed(Option.none()),
        onSome: (m) => m.current
      }),
      ...Option.match(mapper, { onNone: () => ({}), onSome: (m) => ({ portMappingChanges: m.changes }) })
    })
    state.selfAddresses = keeper.selfAddresses
    return { ...keeper, watchSends: (transport) => watchSends(transport, contacts) }
  })
