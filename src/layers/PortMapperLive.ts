/**
 * `PortMapper` on Node.js: PCP, then NAT-PMP, over UDP to the gateway (node:dgram), then UPnP IGD
 * (SSDP to the gateway, SOAP over HTTP).
 *
 * The gateway is the default route's (Linux `/proc/net/route`) unless `gateway` names one
 * ("HOST" or "HOST:PORT", port 5351 unless given). With the default route's gateway the node
 * maps its port only when the address it reaches the gateway from is private (10/8, 172.16/12,
 * 192.168/16, 100.64/10, …): a node with a public address has nothing to map, nor has one that
 * listens on loopback. A gateway named in the options is always asked. The node's IPv4 listening
 * address is the one mapped (any: the route to the gateway picks it); a node listening on one IPv6
 * address maps nothing.
 *
 * Everything runs in a fiber of the layer's scope: building the layer costs nothing, and closing
 * it deletes the mapping (a lifetime-0 request, `unmapAttempts` tries) before the socket closes.
 */
import { isIPv4 } from "node:net"
import { Duration, Effect, Layer, Option, type Scope, SubscriptionRef } from "effect"
import { openGatewayChannel } from "../internal/gatewayChannel.js"
import { defaultGateway, GATEWAY_PORT, parseGateway } from "../internal/gatewayRoute.js"
import { natPmpProtocol } from "../internal/natPmp.js"
import { pcpProtocol } from "../internal/pcp.js"
import { runSession } from "../internal/portMapSession.js"
import { upnpProtocol } from "../internal/upnp.js"
import { isLocalHost } from "../services/Address.js"
import {
  fromRef,
  type PortMapProtocol,
  PortMapper,
  type PortMapperService,
  type PortMapping
} from "../services/PortMapper.js"
import { QuicTransport } from "../services/QuicTransport.js"

export interface PortMapperOptions {
  /** Off: never a mapping, no packet sent. */
  readonly enabled: boolean
  /** "HOST" or "HOST:PORT" (IPv4); the default route's gateway when absent. */
  readonly gateway: string | undefined
  /** The lifetime asked for; the gateway may grant another. */
  readonly lifetime: Duration.Duration
  /** Tried in this order. */
  readonly protocols: ReadonlyArray<PortMapProtocol>
  /** The gateway's SSDP port (UPnP discovery). */
  readonly ssdpPort: number
  /** The limit on each UPnP HTTP exchange. */
  readonly httpTimeout: Duration.Duration
  /** Sends of one request before it times out; the wait for an answer doubles from `firstWait`. */
  readonly requestAttempts: number
  readonly firstWait: Duration.Duration
  /** Rounds of asking every protocol before giving up, and the wait after the first (doubling). */
  readonly rounds: number
  readonly backoff: Duration.Duration
  /** Sends of the delete when the layer closes. */
  readonly unmapAttempts: number
}

export const defaults: PortMapperOptions = {
  enabled: true,
  gateway: undefined,
  lifetime: Duration.hours(2),
  protocols: ["pcp", "nat-pmp", "upnp"],
  ssdpPort: 1900,
  httpTimeout: Duration.seconds(2),
  requestAttempts: 4,
  firstWait: Duration.millis(250),
  rounds: 3,
  backoff: Duration.seconds(5),
  unmapAttempts: 2
}

const session = (
  target: { readonly host: string; readonly port: number },
  options: PortMapperOptions,
  ref: SubscriptionRef.SubscriptionRef<Option.Option<PortMapping>>
) =>
  Effect.gen(function* () {
    const given = options.gateway === undefined ? undefined : parseGateway(options.gateway)
    if (typeof given === "string") return yield* Effect.logWarning(`port mapping off: ${given}`)
    const gateway =
      given ??
      Option.getOrUndefined(Option.map(yield* defaultGateway(), (host) => ({ host, port: GATEWAY_PORT })))
    if (gateway === undefined) return yield* Effect.logDebug("port mapping: no default gateway")
    const anyAddress = target.host === "::" || target.host === "0.0.0.0"
    if (!anyAddress && !isIPv4(target.host))
      return yield* Effect.logDebug(`port mapping: ${target.host} is not an IPv4 address`)
    const channel = yield* openGatewayChannel({
      ...gateway,
      ...(anyAddress ? {} : { bindHost: target.host })
    })
    if (
      given === undefined &&
      (!isLocalHost(channel.localAddress) || channel.localAddress.startsWith("127."))
    )
      return yield* Effect.logDebug(`port mapping: nothing to map from ${channel.localAddress}`)
    const retry = { attempts: options.requestAttempts, firstWait: options.firstWait }
    const bindHost = anyAddress ? {} : { bindHost: target.host }
    const protocols = yield* Effect.forEach(options.protocols, (p) =>
      p === "pcp"
        ? Effect.succeed(pcpProtocol(channel, retry))
        : p === "nat-pmp"
          ? Effect.succeed(natPmpProtocol(channel, retry))
          : Effect.map(
              openGatewayChannel({ host: gateway.host, port: options.ssdpPort, ...bindHost }),
              (ssdp) => upnpProtocol(ssdp, gateway.host, retry, Duration.toMillis(options.httpTimeout))
            )
    )
    yield* runSession(protocols, ref, {
      internalPort: target.port,
      lifetimeSeconds: Math.round(Duration.toSeconds(options.lifetime)),
      rounds: options.rounds,
      backoff: options.backoff,
      unmapRetry: { attempts: options.unmapAttempts, firstWait: options.firstWait },
      gateway: channel.gateway
    })
  }).pipe(
    Effect.catchAll((e) => Effect.logInfo(`port mapping off: ${e.message}`)),
    Effect.scoped
  )

/** Maps UDP port `target.port` of `target.host` in the background of the scope. */
export const make = (
  target: { readonly host: string; readonly port: number },
  options: Partial<PortMapperOptions> = {}
): Effect.Effect<PortMapperService, never, Scope.Scope> =>
  Effect.gen(function* () {
    const ref = yield* SubscriptionRef.make(Option.none<PortMapping>())
    const o = { ...defaults, ...options }
    if (o.enabled) yield* Effect.forkScoped(session(target, o, ref))
    return fromRef(ref)
  })

/** Maps the QUIC transport's port. */
export const layer = (
  options: Partial<PortMapperOptions> = {}
): Layer.Layer<PortMapper, never, QuicTransport> =>
  Layer.scoped(
    PortMapper,
    Effect.flatMap(QuicTransport, (t) => make({ host: t.host, port: t.port }, options))
  )

/** Maps `target`'s port (a socket of your own). */
export const layerFor = (
  target: { readonly host: string; readonly port: number },
  options: Partial<PortMapperOptions> = {}
): Layer.Layer<PortMapper> => Layer.scoped(PortMapper, make(target, options))
