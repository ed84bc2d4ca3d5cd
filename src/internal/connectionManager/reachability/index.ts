/**
 * The manager's reachability part: the dial-back (`dialBack.ts`) and the keeper of the class
 * (`keeper.ts`), over the port mapping of a `PortMapper` when one is in the manager's context
 * (`Node.layerWith`'s `portMapper`).
 * Making it replaces the state's `selfAddresses` with what the keeper knows.
 */
import { Effect, Option } from "effect"
import { PortMapper } from "../../../services/PortMapper.js"
import type { Records } from "../records.js"
import type { ManagerState } from "../state.js"
import * as DialBack from "./dialBack.js"
import * as Keeper from "./keeper.js"

export type { Keeper } from "./keeper.js"

export const make = (
  state: ManagerState,
  dialRecord: () => Records["dialRecord"]
): Effect.Effect<Keeper.Keeper> =>
  Effect.gen(function* () {
    const mapper = yield* Effect.serviceOption(PortMapper)
    const dialled = new Keeper.Dialled()
    const keeper = Keeper.make(state, {
      dialled,
      dialBack: DialBack.make(state, { dialRecord, dialled: () => dialled.list() }),
      portMapping: Option.match(mapper, {
        onNone: () => Effect.succeed(Option.none()),
        onSome: (m) => m.current
      }),
      ...Option.match(mapper, { onNone: () => ({}), onSome: (m) => ({ portMappingChanges: m.changes }) })
    })
    state.selfAddresses = keeper.selfAddresses
    return keeper
  })
