/**
 * A network-namespace NAT lab for tests (Linux, root only). Everything lives in namespaces this
 * module creates; no interface is added to the root namespace and nothing routes off the machine.
 *
 *                        qm-<id>-pub   (bridge br0, 203.0.113.1/24: the "internet")
 *          ┌──────────────┬───────────┴──────┬──────────────────┐
 *     qm-<id>-seed    qm-<id>-c        qm-<id>-nat1        qm-<id>-nat2      public side, TEST-NET-3
 *     203.0.113.10    203.0.113.11     wan 203.0.113.101   wan 203.0.113.102
 *                                      lan 10.77.1.1/24    lan 10.77.2.1/24
 *                                           │                    │
 *                                      qm-<id>-a            qm-<id>-b         private LANs
 *                                      10.77.1.10           10.77.2.10
 *
 * The public side's /24 is `publicPrefix` when given (a public-looking range for daemons that refuse
 * reserved addresses; it too is only routed inside the lab's namespaces).
 *
 * Each NAT router MASQUERADEs its LAN out of `wan` ("restricted": plain MASQUERADE, i.e. Linux
 * conntrack's endpoint-independent mapping with the source port kept when free, and
 * endpoint-dependent filtering; "symmetric": `MASQUERADE --random-fully`, a fresh random port per
 * destination). Its filter table is a home router's: the LAN may go out, only conntrack
 * ESTABLISHED/RELATED traffic comes in, and unsolicited packets to the router itself are dropped
 * (which also keeps them from creating conntrack entries that would clash with a later hole punch).
 * The pub namespace only switches: it does not forward, so nobody on the public side can reach a
 * private address.
 *
 * Namespaces are named `qm-<pid>-<rand>-<node>`; `makeLab` first deletes the namespaces of earlier
 * runs whose process is gone, and deletes its own when its scope closes, on process exit and on
 * SIGINT/SIGTERM. The processes spawned inside the lab are killed first.
 */
import { type ChildProcess, execFile, execFileSync, spawn as spawnChild } from "node:child_process"
import { randomBytes } from "node:crypto"
import { Context, Data, Duration, Effect, Exit, Layer, Scope } from "effect"

export type NatKind = "restricted" | "symmetric"

export interface NatSpec {
  /** Default "restricted". */
  readonly kind?: NatKind
  /** Logical names of the hosts on this NAT's LAN (default: "a" for the first NAT, "b", "d", ... next). */
  readonly hosts?: ReadonlyArray<string>
  /** If set, both conntrack UDP timeouts (unreplied and stream) of this router, in seconds. */
  readonly udpTimeoutSec?: number
}

export interface LabOptions {
  /** NAT routers `nat1`, `nat2`, ... (default: two restricted NATs with hosts "a" and "b"). */
  readonly nats?: ReadonlyArray<NatSpec>
  /** Hosts on the public side (default ["seed", "c"]). */
  readonly publicHosts?: ReadonlyArray<string>
  /**
   * The public side's /24 as its first three octets (default "203.0.113", TEST-NET-3). A daemon
   * that refuses reserved external addresses (miniupnpd) needs a public-looking one; it is only
   * ever routed inside the lab's namespaces, which have no link out of them.
   */
  readonly publicPrefix?: string
}

export type LabRole = "public" | "private" | "nat"

export interface LabNode {
  /** Logical name: "seed", "c", "a", "nat1", ... */
  readonly name: string
  /** The network namespace. */
  readonly ns: string
  readonly role: LabRole
  /** The node's own address: private for LAN hosts, the WAN address for NAT routers. */
  readonly ip: string
  /** The address the public side sees: the NAT's WAN address for LAN hosts, `ip` otherwise. */
  readonly publicIp: string
  /** LAN hosts: the logical name of their NAT router. */
  readonly nat?: string
  /** NAT routers: their kind and LAN address. */
  readonly natKind?: NatKind
  readonly lanIp?: string
}

export interface ExecResult {
  readonly stdout: string
  readonly stderr: string
}

export interface SpawnOptions {
  readonly env?: NodeJS.ProcessEnv
  readonly cwd?: string
  /** Signal sent when the scope closes (default SIGTERM; SIGKILL follows after 2 s). */
  readonly killSignal?: NodeJS.Signals
}

/** A process running in a lab namespace; killed when the scope it was spawned in closes. */
export interface LabProcess {
  readonly pid: number
  readonly child: ChildProcess
  /** Every complete stdout line so far. */
  readonly lines: () => ReadonlyArray<string>
  /** stderr so far (for failure messages). */
  readonly stderr: () => string
  /** The first stdout line (past or future) satisfying `predicate`; fails after `timeout` or if the process exits first. */
  readonly waitForLine: (
    predicate: (line: string) => boolean,
    timeout?: Duration.DurationInput
  ) => Effect.Effect<string, LabError>
  /** Writes `line` + "\n" to stdin. */
  readonly writeLine: (line: string) => Effect.Effect<void, LabError>
  readonly kill: (signal?: NodeJS.Signals) => Effect.Effect<void>
  /** Exit code (or the signal name) once the process has exited. */
  readonly exited: Effect.Effect<number | string>
}

export interface Lab {
  /** `<pid>-<rand>`, part of every namespace name. */
  readonly id: string
  readonly nodes: ReadonlyMap<string, LabNode>
  /** A node by logical name; dies on an unknown name (a test bug). */
  readonly node: (name: string) => LabNode
  /** Runs `cmd args` inside the node's namespace; fails with its stderr on a non-zero exit. */
  readonly exec: (
    name: string,
    cmd: string,
    args?: ReadonlyArray<string>,
    options?: { readonly input?: string; readonly timeout?: Duration.DurationInput }
  ) => Effect.Effect<ExecResult, LabError>
  /** Starts `cmd args` inside the node's namespace for the life of the current scope. */
  readonly spawn: (
    name: string,
    cmd: string,
    args?: ReadonlyArray<string>,
    options?: SpawnOptions
  ) => Effect.Effect<LabProcess, LabError, Scope.Scope>
  /** Sets both conntrack UDP timeouts of a NAT router (applies to entries on their next packet). */
  readonly setUdpTimeout: (nat: string, seconds: number) => Effect.Effect<void, LabError>
  /** The router's UDP conntrack entries, one `/proc/net/nf_conntrack` line each. */
  readonly conntrackUdp: (nat: string) => Effect.Effect<ReadonlyArray<string>, LabError>
  /** Kills the lab's processes and deletes its namespaces (also run when the scope closes); idempotent. */
  readonly teardown: Effect.Effect<void>
}

export class LabError extends Data.TaggedError("LabError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

// ---------------------------------------------------------------------------------------------
// Availability

export type LabAvailability =
  | { readonly ok: true }
  | { readonly ok: false; readonly reason: string; readonly notRoot: boolean }

/** Whether the lab can run here: root, `ip netns` and `iptables` usable. */
export const labAvailability = (): LabAvailability => {
  if (typeof process.getuid !== "function" || process.getuid() !== 0)
    return { ok: false, notRoot: true, reason: "the NAT lab needs root (network namespaces, iptables)" }
  try {
    execFileSync("ip", ["netns", "list"], { stdio: "pipe" })
  } catch (e) {
    return { ok: false, notRoot: false, reason: `\`ip netns\` is unavailable (install iproute2): ${e}` }
  }
  try {
    execFileSync("iptables", ["--version"], { stdio: "pipe" })
  } catch (e) {
    return { ok: false, notRoot: false, reason: `\`iptables\` is unavailable (install iptables): ${e}` }
  }
  return { ok: true }
}

// ---------------------------------------------------------------------------------------------
// Commands

const describeCommand = (cmd: string, args: ReadonlyArray<string>) => {
  const text = `${cmd} ${args.join(" ")}`.replaceAll("\n", "; ")
  return text.length > 200 ? `${text.slice(0, 200)}…` : text
}

const run = (
  cmd: string,
  args: ReadonlyArray<string>,
  options: { readonly input?: string; readonly timeout?: Duration.DurationInput } = {}
): Effect.Effect<ExecResult, LabError> =>
  Effect.async<ExecResult, LabError>((resume) => {
    const child = execFile(
      cmd,
      [...args],
      { encoding: "utf8", maxBuffer: 16 * 1024 * 1024 },
      (error, stdout, stderr) => {
        if (error)
          resume(
            Effect.fail(
              new LabError({
                message: `\`${describeCommand(cmd, args)}\` failed: ${stderr.trim() || error.message}`,
                cause: error
              })
            )
          )
        else resume(Effect.succeed({ stdout, stderr }))
      }
    )
    if (options.input !== undefined) child.stdin?.end(options.input)
    return Effect.sync(() => child.kill("SIGKILL"))
  }).pipe(
    Effect.timeoutFail({
      duration: options.timeout ?? Duration.seconds(20),
      onTimeout: () => new LabError({ message: `\`${describeCommand(cmd, args)}\` timed out` })
    })
  )

const ip = (...args: ReadonlyArray<string>) => run("ip", args)

// ---------------------------------------------------------------------------------------------
// Cleanup: registry of live labs, exit/signal handlers, stale namespaces

interface LiveLab {
  readonly namespaces: Array<string>
  readonly pids: Set<number>
}

const liveLabs = new Map<string, LiveLab>()

const syncCleanup = (lab: LiveLab) => {
  for (const pid of lab.pids) {
    try {
      process.kill(pid, "SIGKILL")
    } catch {}
  }
  lab.pids.clear()
  for (const ns of lab.namespaces) {
    try {
      execFileSync("ip", ["netns", "del", ns], { stdio: "ignore" })
    } catch {}
  }
  lab.namespaces.length = 0
}

let handlersInstalled = false
const installExitHandlers = () => {
  if (handlersInstalled) return
  handlersInstalled = true
  const cleanupAll = () => {
    for (const lab of liveLabs.values()) syncCleanup(lab)
    liveLabs.clear()
  }
  process.on("exit", cleanupAll)
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    const handler = () => {
      cleanupAll()
      process.removeListener(signal, handler)
      // Keep the default behaviour (die by the signal) unless someone else handles it.
      if (process.listenerCount(signal) === 0) process.kill(process.pid, signal)
    }
    process.on(signal, handler)
  }
}

const NAME_PATTERN = /^qm-(\d+)-[0-9a-f]+-/

const pidAlive = (pid: number) => {
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM"
  }
}

const listNamespaces = ip("netns", "list").pipe(
  Effect.map(({ stdout }) =>
    stdout
      .split("\n")
      .map((line) => line.trim().split(/\s+/)[0] ?? "")
      .filter((name) => name !== "")
  )
)

/**
 * Deletes lab namespaces (`qm-<pid>-...`) whose creating process is gone, killing whatever still
 * runs inside them. Returns the deleted names.
 */
export const cleanupStaleLabs: Effect.Effect<ReadonlyArray<string>, LabError> = Effect.gen(function* () {
  const stale = (yield* listNamespaces).filter((ns) => {
    const match = NAME_PATTERN.exec(ns)
    return match !== null && Number(match[1]) !== process.pid && !pidAlive(Number(match[1]))
  })
  for (const ns of stale) {
    const pids = yield* ip("netns", "pids", ns).pipe(
      Effect.map(({ stdout }) => stdout.split("\n").filter((p) => p.trim() !== "")),
      Effect.orElseSucceed(() => [])
    )
    for (const pid of pids) {
      try {
        process.kill(Number(pid), "SIGKILL")
      } catch {}
    }
    yield* ip("netns", "del", ns).pipe(Effect.ignore)
  }
  return stale
})

// ---------------------------------------------------------------------------------------------
// Topology

const PUBLIC_PREFIX = "203.0.113"
const DEFAULT_LAN_HOSTS = ["a", "b", "d", "e", "f", "g", "h"]

interface Plan {
  /** The pub bridge's address: every public host's and router's default gateway. */
  readonly publicGateway: string
  readonly nodes: Map<string, LabNode>
  readonly nats: ReadonlyArray<{ readonly node: LabNode; readonly spec: NatSpec; readonly index: number }>
  readonly lanHosts: ReadonlyArray<{
    readonly node: LabNode
    readonly natIndex: number
    readonly index: number
  }>
  readonly publicHosts: ReadonlyArray<LabNode>
}

const plan = (id: string, options: LabOptions): Plan => {
  const nsName = (name: string) => `qm-${id}-${name}`
  const nodes = new Map<string, LabNode>()
  const add = (node: LabNode) => {
    if (!/^[a-z][a-z0-9]{0,9}$/.test(node.name) || node.name === "pub")
      throw new LabError({
        message: `invalid lab node name ${JSON.stringify(node.name)} (a-z0-9, ≤10 chars)`
      })
    if (nodes.has(node.name)) throw new LabError({ message: `duplicate lab node name ${node.name}` })
    nodes.set(node.name, node)
    return node
  }
  const prefix = options.publicPrefix ?? PUBLIC_PREFIX
  if (!/^(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.test(prefix) || prefix.split(".").some((o) => Number(o) > 255))
    throw new LabError({ message: `invalid public prefix ${JSON.stringify(prefix)} (three octets)` })
  const publicHosts = (options.publicHosts ?? ["seed", "c"]).map((name, i) => {
    const address = `${prefix}.${10 + i}`
    return add({ name, ns: nsName(name), role: "public", ip: address, publicIp: address })
  })
  const specs = options.nats ?? [{}, {}]
  if (specs.length > 50) throw new LabError({ message: "at most 50 NATs" })
  const nats: Array<Plan["nats"][number]> = []
  const lanHosts: Array<Plan["lanHosts"][number]> = []
  specs.forEach((spec, i) => {
    const index = i + 1
    const wan = `${prefix}.${100 + index}`
    const kind = spec.kind ?? "restricted"
    const natName = `nat${index}`
    const node = add({
      name: natName,
      ns: nsName(natName),
      role: "nat",
      ip: wan,
      publicIp: wan,
      natKind: kind,
      lanIp: `10.77.${index}.1`
    })
    nats.push({ node, spec, index })
    const hosts = spec.hosts ?? [DEFAULT_LAN_HOSTS[i] ?? `h${index}`]
    if (hosts.length > 100) throw new LabError({ message: "at most 100 hosts per LAN" })
    hosts.forEach((name, j) => {
      const host = add({
        name,
        ns: nsName(name),
        role: "private",
        ip: `10.77.${index}.${10 + j}`,
        publicIp: wan,
        nat: natName
      })
      lanHosts.push({ node: host, natIndex: index, index: j })
    })
  })
  return { publicGateway: `${prefix}.1`, nodes, nats, lanHosts, publicHosts }
}

const natRules = (kind: NatKind, index: number) =>
  [
    "*nat",
    ":PREROUTING ACCEPT [0:0]",
    ":INPUT ACCEPT [0:0]",
    ":OUTPUT ACCEPT [0:0]",
    ":POSTROUTING ACCEPT [0:0]",
    `-A POSTROUTING -s 10.77.${index}.0/24 -o wan -j MASQUERADE${kind === "symmetric" ? " --random-fully" : ""}`,
    "COMMIT",
    "*filter",
    ":INPUT ACCEPT [0:0]",
    ":FORWARD DROP [0:0]",
    ":OUTPUT ACCEPT [0:0]",
    "-A INPUT -i wan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
    "-A INPUT -i wan -j DROP",
    "-A FORWARD -i lan -o wan -j ACCEPT",
    "-A FORWARD -i wan -o lan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
    "COMMIT",
    ""
  ].join("\n")

const udpTimeoutSysctls = (seconds: number) => [
  `net.netfilter.nf_conntrack_udp_timeout=${seconds}`,
  `net.netfilter.nf_conntrack_udp_timeout_stream=${seconds}`
]

const shellQuote = (arg: string) => (/^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", "'\\''")}'`)

/**
 * The whole topology as one `sh -e` script (one process instead of ~70 `ip` spawns). Every
 * namespace is registered for teardown before the script runs.
 */
const buildScript = (
  p: Plan,
  pubNs: string
): { readonly script: string; readonly namespaces: Array<string> } => {
  const lines: Array<string> = []
  const namespaces: Array<string> = []
  const cmd = (...args: ReadonlyArray<string>) => lines.push(args.map(shellQuote).join(" "))
  const addNs = (ns: string) => {
    namespaces.push(ns)
    cmd("ip", "netns", "add", ns)
    cmd("ip", "-n", ns, "link", "set", "lo", "up")
  }
  /** A veth pair with each end created directly in its namespace (nothing in the root namespace). */
  const veth = (nsA: string, nameA: string, nsB: string, nameB: string) =>
    cmd("ip", "link", "add", "name", nameA, "netns", nsA, "type", "veth", "peer", "name", nameB, "netns", nsB)
  const attachToPub = (ns: string, ifName: string, pubPort: string, address: string) => {
    veth(ns, ifName, pubNs, pubPort)
    cmd("ip", "-n", pubNs, "link", "set", pubPort, "master", "br0", "up")
    cmd("ip", "-n", ns, "addr", "add", `${address}/24`, "dev", ifName)
    cmd("ip", "-n", ns, "link", "set", ifName, "up")
    cmd("ip", "-n", ns, "route", "add", "default", "via", p.publicGateway)
  }

  // The "internet": a bridge in the pub namespace, which does not forward between networks.
  addNs(pubNs)
  cmd("ip", "-n", pubNs, "link", "add", "br0", "type", "bridge")
  cmd("ip", "-n", pubNs, "addr", "add", `${p.publicGateway}/24`, "dev", "br0")
  cmd("ip", "-n", pubNs, "link", "set", "br0", "up")
  cmd("ip", "netns", "exec", pubNs, "sysctl", "-qw", "net.ipv4.ip_forward=0")
  for (const [i, host] of p.publicHosts.entries()) {
    addNs(host.ns)
    attachToPub(host.ns, "eth0", `p${i}`, host.ip)
  }
  for (const { node, spec, index } of p.nats) {
    addNs(node.ns)
    attachToPub(node.ns, "wan", `n${index}`, node.ip)
    cmd("ip", "-n", node.ns, "link", "add", "lan", "type", "bridge")
    cmd("ip", "-n", node.ns, "addr", "add", `${node.lanIp}/24`, "dev", "lan")
    cmd("ip", "-n", node.ns, "link", "set", "lan", "up")
    cmd(
      "ip",
      "netns",
      "exec",
      node.ns,
      "sysctl",
      "-qw",
      "net.ipv4.ip_forward=1",
      ...(spec.udpTimeoutSec !== undefined ? udpTimeoutSysctls(spec.udpTimeoutSec) : [])
    )
    lines.push(
      `ip netns exec ${shellQuote(node.ns)} iptables-restore <<'QM_RULES'\n${natRules(node.natKind ?? "restricted", index)}QM_RULES`
    )
  }
  for (const { node, natIndex, index } of p.lanHosts) {
    const router = p.nats[natIndex - 1]!.node
    addNs(node.ns)
    veth(node.ns, "eth0", router.ns, `h${index}`)
    cmd("ip", "-n", router.ns, "link", "set", `h${index}`, "master", "lan", "up")
    cmd("ip", "-n", node.ns, "addr", "add", `${node.ip}/24`, "dev", "eth0")
    cmd("ip", "-n", node.ns, "link", "set", "eth0", "up")
    cmd("ip", "-n", node.ns, "route", "add", "default", "via", router.lanIp!)
  }
  return { script: `set -eu\n${lines.join("\n")}\n`, namespaces }
}

const build = (p: Plan, pubNs: string, live: LiveLab) =>
  Effect.gen(function* () {
    const { script, namespaces } = buildScript(p, pubNs)
    live.namespaces.push(...namespaces)
    yield* run("sh", ["-c", script], { timeout: Duration.seconds(60) })
  })

// ---------------------------------------------------------------------------------------------
// Processes

const spawnIn = (
  ns: string,
  live: LiveLab,
  cmd: string,
  args: ReadonlyArray<string>,
  options: SpawnOptions
): Effect.Effect<LabProcess, LabError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.async<LabProcess, LabError>((resume) => {
      const child = spawnChild("ip", ["netns", "exec", ns, cmd, ...args], {
        env: options.env ?? process.env,
        ...(options.cwd !== undefined ? { cwd: options.cwd } : {}),
        stdio: ["pipe", "pipe", "pipe"]
      })
      const lines: Array<string> = []
      let partial = ""
      let stderr = ""
      let exit: number | string | undefined
      const listeners = new Set<() => void>()
      const notify = () => {
        for (const listener of [...listeners]) listener()
      }
      child.stdout.setEncoding("utf8")
      child.stdout.on("data", (chunk: string) => {
        const parts = (partial + chunk).split("\n")
        partial = parts.pop() ?? ""
        lines.push(...parts)
        notify()
      })
      child.stderr.setEncoding("utf8")
      child.stderr.on("data", (chunk: string) => {
        if (stderr.length < 64 * 1024) stderr += chunk
      })
      child.stdin.on("error", () => {})
      child.on("exit", (code, signal) => {
        exit = code ?? signal ?? "unknown"
        if (child.pid !== undefined) live.pids.delete(child.pid)
        if (partial !== "") lines.push(partial)
        partial = ""
        notify()
      })
      child.once("error", (cause) => {
        exit = exit ?? "spawn-error"
        notify()
        resume(Effect.fail(new LabError({ message: `cannot spawn ${cmd} in ${ns}`, cause })))
      })
      child.once("spawn", () => {
        const pid = child.pid!
        live.pids.add(pid)
        const waitForLine: LabProcess["waitForLine"] = (predicate, timeout = Duration.seconds(10)) =>
          Effect.async<string, LabError>((resumeLine) => {
            const check = () => {
              const found = lines.find(predicate)
              if (found !== undefined) {
                listeners.delete(check)
                resumeLine(Effect.succeed(found))
              } else if (exit !== undefined) {
                listeners.delete(check)
                resumeLine(
                  Effect.fail(
                    new LabError({
                      message: `${cmd} in ${ns} exited (${exit}) before the expected line; stderr: ${stderr.trim()}`
                    })
                  )
                )
              }
            }
            listeners.add(check)
            check()
            return Effect.sync(() => listeners.delete(check))
          }).pipe(
            Effect.timeoutFail({
              duration: timeout,
              onTimeout: () =>
                new LabError({
                  message: `timed out waiting for a line from ${cmd} in ${ns}; stdout: ${lines
                    .slice(-5)
                    .join(" | ")}; stderr: ${stderr.trim().slice(-500)}`
                })
            })
          )
        const exited = Effect.async<number | string>((resumeExit) => {
          const check = () => {
            if (exit !== undefined) {
              listeners.delete(check)
              resumeExit(Effect.succeed(exit))
            }
          }
          listeners.add(check)
          check()
          return Effect.sync(() => listeners.delete(check))
        })
        resume(
          Effect.succeed({
            pid,
            child,
            lines: () => [...lines],
            stderr: () => stderr,
            waitForLine,
            writeLine: (line) =>
              Effect.async<void, LabError>((resumeWrite) => {
                if (exit !== undefined || child.stdin.destroyed) {
                  resumeWrite(Effect.fail(new LabError({ message: `${cmd} in ${ns} has exited` })))
                  return
                }
                child.stdin.write(`${line}\n`, (error) =>
                  resumeWrite(
                    error
                      ? Effect.fail(
                          new LabError({ message: `write to ${cmd} in ${ns} failed`, cause: error })
                        )
                      : Effect.void
                  )
                )
              }),
            kill: (signal = "SIGTERM") =>
              Effect.sync(() => {
                if (exit === undefined) child.kill(signal)
              }),
            exited
          } satisfies LabProcess)
        )
      })
    }),
    (proc) =>
      Effect.gen(function* () {
        yield* proc.kill(options.killSignal ?? "SIGTERM")
        const done = yield* proc.exited.pipe(Effect.timeout("2 seconds"), Effect.option)
        if (done._tag === "None") {
          yield* proc.kill("SIGKILL")
          yield* proc.exited.pipe(Effect.timeout("2 seconds"), Effect.ignore)
        }
      })
  )

// ---------------------------------------------------------------------------------------------
// The lab

/**
 * Builds the lab for the life of the current scope (torn down when it closes, even on failure or
 * interruption). Deletes stale namespaces of crashed earlier runs first.
 */
export const makeLab = (options: LabOptions = {}): Effect.Effect<Lab, LabError, Scope.Scope> =>
  Effect.gen(function* () {
    const availability = labAvailability()
    if (!availability.ok) return yield* new LabError({ message: availability.reason })
    yield* cleanupStaleLabs
    installExitHandlers()
    const id = `${process.pid}-${randomBytes(2).toString("hex")}`
    const p = yield* Effect.try({
      try: () => plan(id, options),
      catch: (e) => (e instanceof LabError ? e : new LabError({ message: String(e), cause: e }))
    })
    const live: LiveLab = { namespaces: [], pids: new Set() }
    liveLabs.set(id, live)

    const teardown = Effect.gen(function* () {
      for (const pid of live.pids) {
        try {
          process.kill(pid, "SIGKILL")
        } catch {}
      }
      live.pids.clear()
      // Children first, then routers, then the switch (order does not matter to the kernel).
      for (const ns of [...live.namespaces].reverse()) yield* ip("netns", "del", ns).pipe(Effect.ignore)
      live.namespaces.length = 0
      liveLabs.delete(id)
    })

    yield* Effect.acquireRelease(build(p, `qm-${id}-pub`, live), () => teardown).pipe(
      Effect.onError(() => teardown)
    )

    const node = (name: string): LabNode => {
      const found = p.nodes.get(name)
      if (found === undefined) throw new Error(`no lab node named ${JSON.stringify(name)}`)
      return found
    }
    const natNode = (name: string) =>
      Effect.gen(function* () {
        const found = p.nodes.get(name)
        if (found?.role !== "nat") return yield* new LabError({ message: `${name} is not a NAT router` })
        return found
      })

    const lab: Lab = {
      id,
      nodes: p.nodes,
      node,
      exec: (name, cmd, args = [], execOptions = {}) =>
        Effect.suspend(() => run("ip", ["netns", "exec", node(name).ns, cmd, ...args], execOptions)),
      spawn: (name, cmd, args = [], spawnOptions = {}) =>
        Effect.suspend(() => spawnIn(node(name).ns, live, cmd, args, spawnOptions)),
      setUdpTimeout: (nat, seconds) =>
        Effect.gen(function* () {
          const router = yield* natNode(nat)
          yield* run("ip", ["netns", "exec", router.ns, "sysctl", "-qw", ...udpTimeoutSysctls(seconds)])
        }),
      conntrackUdp: (nat) =>
        Effect.gen(function* () {
          const router = yield* natNode(nat)
          const { stdout } = yield* run("ip", ["netns", "exec", router.ns, "cat", "/proc/net/nf_conntrack"])
          return stdout.split("\n").filter((line) => /\budp\b/.test(line))
        }),
      teardown
    }
    return lab
  })

/** The lab as a service, for `layer(NatLab.layer(options), { excludeTestServices: true })(...)`. */
export class NatLab extends Context.Tag("test/NatLab")<NatLab, Lab>() {
  static readonly layer = (options: LabOptions = {}): Layer.Layer<NatLab, LabError> =>
    Layer.scoped(NatLab, makeLab(options))
}

/** Promise-style: builds a lab, runs `f`, always tears the lab down. */
export const withLab = async <A>(options: LabOptions, f: (lab: Lab) => Promise<A>): Promise<A> => {
  const scope = Effect.runSync(Scope.make())
  try {
    const lab = await Effect.runPromise(Scope.extend(makeLab(options), scope))
    return await f(lab)
  } finally {
    await Effect.runPromise(Scope.close(scope, Exit.void))
  }
}
