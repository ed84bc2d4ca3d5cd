/**
 * The connection gate from the command line, through a running agent:
 *
 *     quicmesh nodes deny <NODEID|CIDR>          refuse a node or an address range
 *     quicmesh nodes allow <NODEID|CIDR>         allow one (taking it off the deny list)
 *     quicmesh nodes gates                       list the entries and the mode
 *     quicmesh nodes gates remove <NODEID|CIDR>  take an entry off its list
 *     quicmesh nodes gates allow-only on|off     only allowed nodes and ranges may connect
 *
 * A bad NodeId, CIDR or mode is a usage error (exit 2), found before the agent is asked.
 */
import { Args, Command } from "@effect/cli"
import { Effect, Either } from "effect"
import { type GateEntry, parseEntry } from "../../services/ConnectionGater.js"
import type { GateChangeJson } from "../control/gates.js"
import { OperationError, UsageError } from "../Input.js"
import {
  type ControlClient,
  checkFormat,
  format,
  nodePath,
  print,
  resolveNodePath,
  table,
  withAgent
} from "./shared.js"

const entryArg = Args.text({ name: "NODEID|CIDR" }).pipe(
  Args.withDescription(
    "A NodeId (v…), or an IP range such as 203.0.113.0/24 or 2001:db8::/32 (a bare IP: that address)"
  )
)

const checkEntry = (text: string): Effect.Effect<GateEntry, UsageError> =>
  Either.match(parseEntry(text), {
    onLeft: (e) => Effect.fail(new UsageError({ message: e.message })),
    onRight: Effect.succeed
  })

const closedText = (closed: number) => (closed === 0 ? "" : ` (closed ${closed} connection(s))`)

const options = { nodePath, format, entry: entryArg } as const

type Change = typeof GateChangeJson.Type

/** A command changing the gate for one entry: `ask` calls the agent, `say` words its answer. */
const entryCommand = (
  name: string,
  description: string,
  ask: (client: ControlClient, entry: string) => Effect.Effect<Change, unknown>,
  say: (entry: GateEntry, change: Change) => Effect.Effect<string, OperationError>
) =>
  Command.make(name, options, (o) =>
    Effect.gen(function* () {
      const fmt = yield* checkFormat(o.format)
      const entry = yield* checkEntry(o.entry)
      const change = yield* withAgent(resolveNodePath(o.nodePath), (c) => ask(c, entry.text))
      yield* print(fmt, change, yield* say(entry, change))
    })
  ).pipe(Command.withDescription(description))

/** "denied X (…)" for a change, "X was already denied" for none. */
const saying =
  (done: string, already: string, note: (change: Change) => string) => (entry: GateEntry, change: Change) =>
    Effect.succeed(change.changed ? `${done} ${entry.text}${note(change)}` : `${entry.text} ${already}`)

const offNote = " (allow-only mode is off: it matters once it is on)"

const nodesDeny = entryCommand(
  "deny",
  "Refuse connections from and dials to a node or an address range",
  (c, entry) => c.gatesDeny({ entry }),
  saying("denied", "was already denied", (r) => closedText(r.closed))
)

const nodesAllow = entryCommand(
  "allow",
  "Allow a node or an address range (taking it off the deny list)",
  (c, entry) => c.gatesAllow({ entry }),
  saying("allowed", "was already allowed", (r) => (r.gates.allowOnly ? "" : offNote))
)

const gatesRemove = entryCommand(
  "remove",
  "Take a NodeId or range off the deny or allow list",
  (c, entry) => c.gatesRemove({ entry }),
  (entry, r) =>
    r.changed
      ? Effect.succeed(`removed ${entry.text}`)
      : Effect.fail(new OperationError({ message: `${entry.text} is on neither list` }))
)

const gatesAllowOnly = Command.make(
  "allow-only",
  { nodePath, format, mode: Args.text({ name: "on|off" }) },
  (o) =>
    Effect.gen(function* () {
      const fmt = yield* checkFormat(o.format)
      const mode = o.mode.trim().toLowerCase()
      if (mode !== "on" && mode !== "off")
        return yield* Effect.fail(
          new UsageError({ message: `invalid allow-only mode "${o.mode}": must be on or off` })
        )
      const r = yield* withAgent(resolveNodePath(o.nodePath), (c) => c.gatesAllowOnly({ on: mode === "on" }))
      yield* print(
        fmt,
        r,
        mode === "on"
          ? `allow-only mode on: only the ${r.gates.allow.length} allowed entr${r.gates.allow.length === 1 ? "y" : "ies"} may connect${closedText(r.closed)}`
          : "allow-only mode off: every node that is not denied may connect"
      )
    })
).pipe(Command.withDescription("Switch allow-only mode on or off"))

const nodesGates = Command.make("gates", { nodePath, format }, (o) =>
  Effect.gen(function* () {
    const fmt = yield* checkFormat(o.format)
    const gates = yield* withAgent(resolveNodePath(o.nodePath), (c) => c.gatesList())
    const rows = [
      ...gates.deny.map((text) => ({ list: "deny", text })),
      ...gates.allow.map((text) => ({ list: "allow", text }))
    ]
    const none = gates.allowOnly ? "no entries: no node may connect" : "no entries: every node may connect"
    yield* print(
      fmt,
      gates,
      `allow-only mode: ${gates.allowOnly ? "on" : "off"}\n${table(
        rows,
        [
          ["LIST", (r) => r.list],
          ["ENTRY", (r) => r.text]
        ],
        none
      )}`
    )
  })
).pipe(
  Command.withDescription("List the connection gate's entries; remove one; switch allow-only mode"),
  Command.withSubcommands([gatesRemove, gatesAllowOnly])
)

/** The `nodes` subcommands of the connection gate. */
export const gateCommands = [nodesDeny, nodesAllow, nodesGates] as const
