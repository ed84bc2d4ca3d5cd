/**
 * The port mapper (PortMapperLive over PCP and NAT-PMP) against a gateway of our own on
 * loopback (test/fixtures/natGateway.ts): the requests on the wire, the fallback from PCP to
 * NAT-PMP, renewal at half the lifetime and deletion on close (TestClock), answers that do not
 * parse as typed errors that leave the mapping held, and a silent gateway given up on after a
 * bounded number of requests.
 */
import { createSocket } from "node:dgram"
import { describe, expect, it } from "@effect/vitest"
import {
  Chunk,
  Duration,
  Effect,
  Exit,
  Fiber,
  Logger,
  LogLevel,
  Option,
  Scope,
  Stream,
  TestClock
} from "effect"
import { openGatewayChannel } from "../src/internal/gatewayChannel.js"
import { parseDefaultGateway, parseGateway } from "../src/internal/gatewayRoute.js"
import { natPmpProtocol } from "../src/internal/natPmp.js"
import { pcpProtocol } from "../src/internal/pcp.js"
import { upnpProtocol } from "../src/internal/upnp.js"
import * as PortMapperLive from "../src/layers/PortMapperLive.js"
import * as PortMapper from "../src/services/PortMapper.js"
import { type Answer, type NatGateway, startNatGateway } from "./fixtures/natGateway.js"
import { describeDevice, startUpnpGateway, type UpnpGateway } from "./fixtures/upnpGateway.js"

const gatewayOf = (settings: Parameters<typeof startNatGateway>[0] = {}) =>
  Effect.acquireRelease(
    Effect.promise(() => startNatGateway(settings)),
    (g) => Effect.promise(() => g.close())
  )

/** One turn of the real event loop (datagrams in flight arrive; the Effect clock does not move). */
const tick = Effect.promise(() => new Promise<void>((resolve) => setTimeout(resolve, 5)))

/** Ticks the event loop until `condition` holds (fails the test after ~4 s of real time). */
const until = (condition: () => boolean, what: string) =>
  Effect.gen(function* () {
    for (let i = 0; i < 800 && !condition(); i++) yield* tick
    if (!condition()) return yield* Effect.die(`never happened: ${what}`)
  })

/** Moves the test clock by `total` in `step`s, letting real I/O run after each. */
const advance = (total: Duration.DurationInput, step: Duration.DurationInput = "50 millis") =>
  Effect.gen(function* () {
    const steps = Math.ceil(Duration.toMillis(total) / Duration.toMillis(step))
    for (let i = 0; i < steps; i++) {
      yield* TestClock.adjust(step)
      yield* tick
    }
  })

const mapperFor = (gw: NatGateway, options: Partial<PortMapperLive.PortMapperOptions> = {}) =>
  PortMapperLive.make(
    { host: "127.0.0.1", port: 4321 },
    { gateway: `127.0.0.1:${gw.port}`, protocols: ["pcp", "nat-pmp"], ...options }
  )

const nextMapping = (
  mapper: PortMapper.PortMapperService,
  where: (m: PortMapper.PortMapping) => boolean = () => true
) =>
  mapper.changes.pipe(
    Stream.filterMap((m) => Option.filter(m, where)),
    Stream.runHead,
    Effect.map(Option.getOrThrow)
  )

describe("PortMapper over PCP and NAT-PMP (a gateway on loopback)", () => {
  it.scoped("PCP: a MAP request for the UDP port; the grant is the current value and a change", () =>
    Effect.gen(function* () {
      const gw = yield* gatewayOf()
      const mapper = yield* mapperFor(gw, { lifetime: Duration.hours(1) })
      const mapping = yield* nextMapping(mapper)
      expect(mapping).toEqual({ host: "198.51.100.7", port: 14321, protocol: "pcp", expiresAt: 3_600_000 })
      expect(yield* mapper.current).toEqual(Option.some(mapping))
      const request = gw.requests[0]!.bytes
      expect(request.length).toBe(60)
      expect([request[0], request[1]]).toEqual([2, 1]) // version 2, MAP
      expect(request.readUInt32BE(4)).toBe(3600)
      expect([...request.subarray(8, 24)]).toEqual([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 255, 127, 0, 0, 1])
      expect(request[36]).toBe(17) // UDP
      expect(request.readUInt16BE(40)).toBe(4321)
      expect(gw.mappings.get("127.0.0.1:4321")).toMatchObject({ protocol: "pcp", externalPort: 14321 })
    })
  )

  it.scoped(
    "NAT-PMP: a gateway answering PCP with 'unsupported version' gets NAT-PMP; closing deletes it",
    () =>
      Effect.gen(function* () {
        const gw = yield* gatewayOf({ settings: { pcp: false } })
        const scope = yield* Scope.make()
        const mapper = yield* Scope.extend(mapperFor(gw), scope)
        expect(yield* nextMapping(mapper)).toMatchObject({
          host: "198.51.100.7",
          port: 14321,
          protocol: "nat-pmp"
        })
        expect(gw.requests.map((r) => [r.bytes[0], r.bytes[1], r.bytes.length])).toEqual([
          [2, 1, 60], // PCP MAP, answered "unsupported version"
          [0, 0, 2], // NAT-PMP external address
          [0, 1, 12] // NAT-PMP map UDP
        ])
        expect(gw.mappings.size).toBe(1)
        yield* Scope.close(scope, Exit.void)
        const last = gw.requests.at(-1)!.bytes
        expect([last[0], last[1], last.readUInt16BE(4), last.readUInt32BE(8)]).toEqual([0, 1, 4321, 0])
        expect(gw.mappings.size).toBe(0)
        expect(yield* mapper.current).toEqual(Option.none())
      })
  )

  it.scoped("renews at half the granted lifetime with the same nonce; a moved port is a change", () =>
    Effect.gen(function* () {
      const gw = yield* gatewayOf({ settings: { maxLifetime: 60 } })
      const mapper = yield* mapperFor(gw)
      const first = yield* nextMapping(mapper)
      expect(first.expiresAt).toBe(60_000)
      yield* advance("29 seconds", "1 second")
      expect(gw.requests.length).toBe(1)
      gw.settings.externalPort = () => 20000
      const moved = yield* Effect.fork(nextMapping(mapper, (m) => m.port === 20000))
      yield* advance("1 second", "1 second")
      yield* until(() => gw.requests.length === 2, "the renewal")
      const [a, b] = gw.requests.map((r) => r.bytes)
      expect(b!.subarray(24, 36)).toEqual(a!.subarray(24, 36)) // same nonce: the same mapping
      expect(b!.readUInt16BE(42)).toBe(14321) // suggests the port it holds
      expect(yield* Fiber.join(moved)).toEqual({ ...first, port: 20000, expiresAt: 90_000 })
    })
  )

  it.scoped("a renewal answered with garbage leaves the mapping held until it expires", () =>
    Effect.gen(function* () {
      const gw = yield* gatewayOf({ settings: { maxLifetime: 60 } })
      const mapper = yield* mapperFor(gw, { rounds: 1 })
      const first = yield* nextMapping(mapper)
      gw.answer = () => Buffer.alloc(1200, 2) // oversized, version 2
      yield* advance("50 seconds", "1 second")
      expect(gw.requests.length).toBeGreaterThan(2) // renewals tried and rejected
      expect(yield* mapper.current).toEqual(Option.some(first))
      yield* advance("11 seconds", "1 second")
      expect(yield* mapper.current).toEqual(Option.none())
    })
  )

  it.scoped("a silent gateway: bounded requests, then one log line, then nothing", () =>
    Effect.gen(function* () {
      const gw = yield* gatewayOf()
      gw.answer = () => undefined
      const lines: Array<string> = []
      const capture = Logger.make(({ logLevel, message }) => {
        if (LogLevel.greaterThanEqual(logLevel, LogLevel.Info)) lines.push(String(message))
      })
      const mapper = yield* mapperFor(gw, {
        requestAttempts: 2,
        firstWait: Duration.millis(100),
        rounds: 2,
        backoff: Duration.seconds(1)
      }).pipe(Effect.provide(Logger.replace(Logger.defaultLogger, capture)))
      yield* advance("5 seconds")
      // 2 rounds x (PCP 2 sends + NAT-PMP's first request 2 sends)
      expect(gw.requests.length).toBe(8)
      expect(lines.filter((l) => l.includes("not trying again"))).toHaveLength(1)
      yield* advance("1 hour", "10 minutes")
      expect(gw.requests.length).toBe(8)
      expect(yield* mapper.current).toEqual(Option.none())
    })
  )

  it.scoped("disabled: no packet, never a mapping", () =>
    Effect.gen(function* () {
      const gw = yield* gatewayOf()
      const mapper = yield* mapperFor(gw, { enabled: false })
      yield* advance("1 second")
      expect(gw.requests).toEqual([])
      expect(yield* mapper.current).toEqual(Option.none())
    })
  )
})

/** Rewrites the well-behaved answer to a request. */
const mangle =
  (gw: NatGateway, change: (answer: Buffer, request: Buffer) => Buffer): Answer =>
  (request) => {
    const answer = gw.wellBehaved(request)
    return answer === undefined ? undefined : change(Buffer.from(answer), request.bytes)
  }

const set = (index: number, value: number) => (b: Buffer) => {
  b[index] = value
  return b
}

describe("bad answers are typed errors", () => {
  const once = { attempts: 1, firstWait: Duration.seconds(1) }
  const mapWith = (protocol: "pcp" | "nat-pmp", change: (answer: Buffer, request: Buffer) => Buffer) =>
    Effect.gen(function* () {
      const gw = yield* gatewayOf()
      gw.answer = mangle(gw, change)
      const channel = yield* openGatewayChannel({ host: "127.0.0.1", port: gw.port })
      const client = protocol === "pcp" ? pcpProtocol(channel, once) : natPmpProtocol(channel, once)
      return yield* Effect.flip(client.map({ internalPort: 4321, suggestedPort: 0, lifetimeSeconds: 60 }))
    })

  const pcpCases: ReadonlyArray<readonly [string, (a: Buffer, r: Buffer) => Buffer, object]> = [
    ["3 bytes", (a) => a.subarray(0, 3), { _tag: "PortMapMalformedAnswer", reason: "length" }],
    [
      "1200 bytes",
      (a) => Buffer.concat([a, Buffer.alloc(1140)]),
      { _tag: "PortMapMalformedAnswer", reason: "length" }
    ],
    [
      "62 bytes",
      (a) => Buffer.concat([a, Buffer.alloc(2)]),
      { _tag: "PortMapMalformedAnswer", reason: "length" }
    ],
    ["40 bytes", (a) => a.subarray(0, 40), { _tag: "PortMapMalformedAnswer", reason: "length" }],
    ["version 3", set(0, 3), { _tag: "PortMapMalformedAnswer", reason: "version" }],
    ["version 0", set(0, 0), { _tag: "PortMapUnsupportedVersion", gatewayVersion: 0 }],
    ["opcode PEER", set(1, 0x82), { _tag: "PortMapMalformedAnswer", reason: "opcode" }],
    ["no response bit", set(1, 0x01), { _tag: "PortMapMalformedAnswer", reason: "opcode" }],
    ["result NOT_AUTHORIZED", set(3, 2), { _tag: "PortMapRefused", resultCode: 2 }],
    ["another nonce", (a) => set(30, a[30]! ^ 1)(a), { _tag: "PortMapMalformedAnswer", reason: "nonce" }],
    ["another internal port", set(41, 0), { _tag: "PortMapMalformedAnswer", reason: "mapping" }],
    ["protocol TCP", set(36, 6), { _tag: "PortMapMalformedAnswer", reason: "mapping" }],
    ["an IPv6 external address", set(54, 0x20), { _tag: "PortMapMalformedAnswer", reason: "mapping" }]
  ]
  for (const [name, change, expected] of pcpCases)
    it.scoped(`PCP: ${name}`, () =>
      Effect.map(mapWith("pcp", change), (e) => expect(e).toMatchObject(expected))
    )

  const natPmpCases: ReadonlyArray<readonly [string, (a: Buffer, r: Buffer) => Buffer, object]> = [
    ["4 bytes", (a) => a.subarray(0, 4), { _tag: "PortMapMalformedAnswer", reason: "length" }],
    [
      "20 bytes",
      (a) => Buffer.concat([a, Buffer.alloc(8)]),
      { _tag: "PortMapMalformedAnswer", reason: "length" }
    ],
    ["version 2", set(0, 2), { _tag: "PortMapMalformedAnswer", reason: "version" }],
    ["opcode 130", set(1, 130), { _tag: "PortMapMalformedAnswer", reason: "opcode" }],
    ["result 'out of resources'", (a) => set(3, 4)(a), { _tag: "PortMapRefused", resultCode: 4 }],
    [
      "another internal port",
      (a, r) => (r.length === 12 ? set(9, 0)(a) : a),
      { _tag: "PortMapMalformedAnswer", reason: "mapping" }
    ],
    [
      "a map answer cut to 12 bytes",
      (a, r) => (r.length === 12 ? a.subarray(0, 12) : a),
      { _tag: "PortMapMalformedAnswer", reason: "length" }
    ]
  ]
  for (const [name, change, expected] of natPmpCases)
    it.scoped(`NAT-PMP: ${name}`, () =>
      Effect.map(mapWith("nat-pmp", change), (e) => expect(e).toMatchObject(expected))
    )

  it.scoped(
    "a well-behaved answer to the same client is a grant (the cases above fail only by their change)",
    () =>
      Effect.gen(function* () {
        const granted = yield* Effect.flip(mapWith("pcp", (a) => a))
        expect(granted).toEqual({ host: "198.51.100.7", port: 14321, lifetimeSeconds: 60 })
        const viaNatPmp = yield* Effect.flip(mapWith("nat-pmp", (a) => a))
        expect(viaNatPmp).toEqual({ host: "198.51.100.7", port: 14321, lifetimeSeconds: 60 })
      })
  )
})

describe("gateway discovery and options", () => {
  it("the default route's gateway from /proc/net/route (lowest metric, up, through a gateway)", () => {
    const table = [
      "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT",
      "eth1\t00000000\t0202A8C0\t0003\t0\t0\t200\t00000000\t0\t0\t0",
      "eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0",
      "eth2\t00000000\t0303A8C0\t0002\t0\t0\t0\t00000000\t0\t0\t0", // down
      "eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0" // on-link, not default
    ].join("\n")
    expect(parseDefaultGateway(table)).toEqual(Option.some("192.168.1.1"))
    expect(
      parseDefaultGateway(table.split("\n").slice(0, 1).concat(table.split("\n").slice(3)).join("\n"))
    ).toEqual(Option.none())
  })

  it("the gateway option: an IPv4 address, optionally with a port", () => {
    expect(parseGateway("10.0.0.1")).toEqual({ host: "10.0.0.1", port: 5351 })
    expect(parseGateway("10.0.0.1:9999")).toEqual({ host: "10.0.0.1", port: 9999 })
    for (const bad of ["", "router", "10.0.0.1:0", "10.0.0.1:70000", "::1", "10.0.0.1:1:2"])
      expect(parseGateway(bad)).toMatch(/^invalid gateway/)
  })

  it.effect("layerNoop never maps", () =>
    Effect.gen(function* () {
      const mapper = yield* PortMapper.PortMapper
      expect(yield* mapper.current).toEqual(Option.none())
      expect(Chunk.toArray(yield* Stream.runCollect(mapper.changes))).toEqual([Option.none()])
    }).pipe(Effect.provide(PortMapper.layerNoop))
  )
})

/** A loopback UDP port nobody listens on (its PCP/NAT-PMP requests meet "port unreachable"). */
const closedPort = Effect.promise(
  () =>
    new Promise<number>((resolve) => {
      const s = createSocket("udp4")
      s.bind(0, "127.0.0.1", () => {
        const { port } = s.address()
        s.close(() => resolve(port))
      })
    })
)

const upnpOf = Effect.acquireRelease(
  Effect.promise(() => startUpnpGateway()),
  (g) => Effect.promise(() => g.close())
)

describe("UPnP IGD (a gateway of our own on loopback, without PCP or NAT-PMP)", () => {
  const upnpMapper = (igd: UpnpGateway, pcpPort: number) =>
    PortMapperLive.make(
      { host: "127.0.0.1", port: 4321 },
      { gateway: `127.0.0.1:${pcpPort}`, ssdpPort: igd.ssdpPort, lifetime: Duration.hours(1) }
    )

  it.scoped("PCP and NAT-PMP unreachable: AddPortMapping through UPnP; closing deletes it", () =>
    Effect.gen(function* () {
      const igd = yield* upnpOf
      const scope = yield* Scope.make()
      const mapper = yield* Scope.extend(upnpMapper(igd, yield* closedPort), scope)
      expect(yield* nextMapping(mapper)).toEqual({
        host: "198.51.100.9",
        port: 4321,
        protocol: "upnp",
        expiresAt: 3_600_000
      })
      expect(igd.calls.map((c) => c.action)).toEqual(["AddPortMapping", "GetExternalIPAddress"])
      expect(igd.calls[0]!.args).toEqual({
        NewRemoteHost: "",
        NewExternalPort: "4321",
        NewProtocol: "UDP",
        NewInternalPort: "4321",
        NewInternalClient: "127.0.0.1",
        NewEnabled: "1",
        NewPortMappingDescription: "quicmesh 4321",
        NewLeaseDuration: "3600"
      })
      yield* Scope.close(scope, Exit.void)
      expect(igd.calls.at(-1)).toEqual({
        action: "DeletePortMapping",
        args: { NewRemoteHost: "", NewExternalPort: "4321", NewProtocol: "UDP" }
      })
      expect(igd.mappings.size).toBe(0)
    })
  )

  it.scoped("a gateway that takes only permanent leases (725) is asked again with lease 0", () =>
    Effect.gen(function* () {
      const igd = yield* upnpOf
      igd.onlyPermanent = true
      const mapper = yield* upnpMapper(igd, yield* closedPort)
      expect(yield* nextMapping(mapper)).toMatchObject({ protocol: "upnp", port: 4321 })
      expect(
        igd.calls.filter((c) => c.action === "AddPortMapping").map((c) => c.args.NewLeaseDuration)
      ).toEqual(["3600", "0"])
    })
  )

  const upnpError = (change: (igd: UpnpGateway) => void) =>
    Effect.gen(function* () {
      const igd = yield* upnpOf
      change(igd)
      const ssdp = yield* openGatewayChannel({ host: "127.0.0.1", port: igd.ssdpPort })
      const client = upnpProtocol(ssdp, "127.0.0.1", { attempts: 1, firstWait: Duration.seconds(1) }, 2000)
      return yield* Effect.flip(client.map({ internalPort: 4321, suggestedPort: 0, lifetimeSeconds: 60 }))
    })

  const cases: ReadonlyArray<readonly [string, (igd: UpnpGateway) => void, object]> = [
    [
      "a LOCATION on another host",
      (igd) => {
        igd.location = `http://127.0.0.2:${igd.httpPort}/rootDesc.xml`
      },
      { _tag: "PortMapMalformedAnswer", reason: "mapping" }
    ],
    [
      "a description without a WAN connection service",
      (igd) => {
        igd.description = igd.description.replaceAll("WANIPConnection", "WANFooConnection")
      },
      { _tag: "PortMapMalformedAnswer", reason: "mapping" }
    ],
    [
      "a control URL on another host",
      (igd) => {
        igd.description = describeDevice("http://192.0.2.1/ctl")
      },
      { _tag: "PortMapMalformedAnswer", reason: "mapping" }
    ],
    [
      "a 100 KiB description",
      (igd) => {
        igd.description = `${igd.description}${" ".repeat(100 * 1024)}`
      },
      { _tag: "PortMapMalformedAnswer", reason: "length" }
    ],
    [
      "a SOAP fault (718 ConflictInMappingEntry)",
      (igd) => {
        igd.fault = 718
      },
      { _tag: "PortMapRefused", protocol: "upnp", resultCode: 718 }
    ],
    [
      "an external address that is not one",
      (igd) => {
        igd.externalAddress = "<script>"
      },
      { _tag: "PortMapMalformedAnswer", reason: "mapping" }
    ]
  ]
  for (const [name, change, expected] of cases)
    it.scoped(`UPnP: ${name}`, () => Effect.map(upnpError(change), (e) => expect(e).toMatchObject(expected)))
})
