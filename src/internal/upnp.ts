/**
 * UPnP IGD (the WANIPConnection or WANPPPConnection service, versions 1 and 2): a UDP port
 * mapping asked of a gateway that speaks neither PCP nor NAT-PMP.
 *
 * Discovery: an SSDP M-SEARCH for an InternetGatewayDevice sent to the gateway's SSDP port
 * (unicast, over a gateway channel); the answer's LOCATION must be an http URL on the gateway's
 * own address. The device description found there (at most 64 KiB) names the service's control
 * URL. Then SOAP over HTTP: AddPortMapping (the suggested external port, else the internal one;
 * the lease in seconds, or 0 — permanent — for a gateway that takes only that, renewed all the
 * same), GetExternalIPAddress, and DeletePortMapping. A SOAP fault is a refusal with its UPnP
 * error code; anything else that is not the expected answer is a malformed answer.
 */
import { Effect, Either } from "effect"
import {
  PortMapMalformedAnswer,
  PortMapRefused,
  PortMapSocketError,
  PortMapTimeout
} from "../services/PortMapper.js"
import type { GatewayChannel, RetryPolicy } from "./gatewayChannel.js"
import type { MapProtocol } from "./portMapProtocol.js"

const MAX_BODY = 64 * 1024
const SERVICE = /urn:schemas-upnp-org:service:WAN(?:IP|PPP)Connection:[12]/
/** UPnP's OnlyPermanentLeasesSupported. */
const ONLY_PERMANENT = 725

const malformed = (reason: PortMapMalformedAnswer["reason"], detail: string) =>
  Either.left(new PortMapMalformedAnswer({ protocol: "upnp", reason, detail }))

export const encodeSearch = (): Uint8Array =>
  new TextEncoder().encode(
    [
      "M-SEARCH * HTTP/1.1",
      "HOST: 239.255.255.250:1900",
      'MAN: "ssdp:discover"',
      "MX: 1",
      "ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1",
      "",
      ""
    ].join("\r\n")
  )

/** The description URL in an SSDP answer, which must be on `gatewayHost`. */
export const decodeSearchAnswer = (
  bytes: Uint8Array,
  gatewayHost: string
): Either.Either<URL, PortMapMalformedAnswer> => {
  if (bytes.length > 2048) return malformed("length", `${bytes.length} bytes`)
  const lines = new TextDecoder().decode(bytes).split("\r\n")
  if (!/^HTTP\/1\.[01] 200\b/.test(lines[0] ?? ""))
    return malformed("opcode", `status line ${JSON.stringify(lines[0])}`)
  const location = lines
    .find((l) => /^location:/i.test(l))
    ?.slice("location:".length)
    .trim()
  const url = location === undefined || !URL.canParse(location) ? undefined : new URL(location)
  if (url === undefined || url.protocol !== "http:")
    return malformed("mapping", `no http LOCATION (${location})`)
  if (url.hostname !== gatewayHost) return malformed("mapping", `LOCATION ${location} is not on the gateway`)
  return Either.right(url)
}

/** The first WAN*Connection service in a device description: its type and control URL. */
export const findService = (
  description: string,
  base: URL
): Either.Either<{ readonly serviceType: string; readonly controlUrl: URL }, PortMapMalformedAnswer> => {
  for (const [, body = ""] of description.matchAll(/<service>([\s\S]*?)<\/service>/g)) {
    const serviceType = /<serviceType>\s*([^<\s]+)\s*<\/serviceType>/.exec(body)?.[1]
    const control = /<controlURL>\s*([^<\s]+)\s*<\/controlURL>/.exec(body)?.[1]
    if (serviceType === undefined || control === undefined || !SERVICE.test(serviceType)) continue
    const controlUrl = URL.canParse(control, base.href) ? new URL(control, base) : undefined
    if (controlUrl === undefined || controlUrl.hostname !== base.hostname)
      return malformed("mapping", `control URL ${control} is not on the gateway`)
    return Either.right({ serviceType, controlUrl })
  }
  return malformed("mapping", "the description names no WANIPConnection or WANPPPConnection service")
}

const escapeXml = (text: string) => text.replace(/[<>&'"]/g, (c) => `&#${c.charCodeAt(0)};`)

export const encodeSoap = (serviceType: string, action: string, args: Record<string, string | number>) =>
  `<?xml version="1.0"?>\r\n<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" s:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/"><s:Body><u:${action} xmlns:u="${serviceType}">${Object.entries(
    args
  )
    .map(([k, v]) => `<${k}>${escapeXml(String(v))}</${k}>`)
    .join("")}</u:${action}></s:Body></s:Envelope>\r\n`

/** A SOAP answer's output arguments (`<NewX>value</NewX>`), or its fault as a refusal. */
export const decodeSoap = (
  status: number,
  body: string,
  action: string
): Either.Either<Record<string, string>, PortMapMalformedAnswer | PortMapRefused> => {
  if (status === 500) {
    const code = /<errorCode>\s*(\d+)\s*<\/errorCode>/.exec(body)?.[1]
    if (code === undefined) return malformed("opcode", `${action}: HTTP 500 without a UPnP error code`)
    const detail = /<errorDescription>([^<]*)<\/errorDescription>/.exec(body)?.[1] ?? "UPnP error"
    return Either.left(
      new PortMapRefused({ protocol: "upnp", resultCode: Number(code), detail: `${action}: ${detail}` })
    )
  }
  if (status !== 200) return malformed("opcode", `${action}: HTTP ${status}`)
  if (!body.includes(`${action}Response`)) return malformed("opcode", `${action}: not a ${action}Response`)
  const args: Record<string, string> = {}
  for (const [, name = "", value = ""] of body.matchAll(/<(New\w+)>([^<]*)<\/\1>/g)) args[name] = value
  return Either.right(args)
}

/** An HTTP exchange with a body of at most 64 KiB. */
const http = (url: URL, gateway: string, init: RequestInit, timeoutMs: number) =>
  Effect.tryPromise({
    try: async (signal) => {
      const response = await fetch(url, {
        ...init,
        signal: AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)])
      })
      const text = await response.text()
      return { status: response.status, text }
    },
    catch: (cause) =>
      cause instanceof Error && cause.name === "TimeoutError"
        ? new PortMapTimeout({ protocol: "upnp", gateway: url.host, attempts: 1 })
        : new PortMapSocketError({ gateway, detail: `HTTP ${url}: ${String(cause)}`, cause })
  }).pipe(
    Effect.filterOrElse(
      (r) => r.text.length <= MAX_BODY,
      (r) =>
        Effect.fail(
          new PortMapMalformedAnswer({
            protocol: "upnp",
            reason: "length",
            detail: `${r.text.length}-character HTTP body`
          })
        )
    )
  )

/** UPnP IGD over `ssdp` (a channel to the gateway's SSDP port) and HTTP to the gateway. */
export const upnpProtocol = (
  ssdp: GatewayChannel,
  gatewayHost: string,
  retry: RetryPolicy,
  httpTimeoutMs: number
): MapProtocol => {
  let service: { readonly serviceType: string; readonly controlUrl: URL } | undefined
  let mappedPort: number | undefined
  const discover = Effect.gen(function* () {
    if (service !== undefined) return service
    const location = yield* decodeSearchAnswer(
      yield* ssdp.request("upnp", encodeSearch(), retry),
      gatewayHost
    )
    const description = yield* http(location, ssdp.gateway, {}, httpTimeoutMs)
    if (description.status !== 200)
      return yield* malformed("opcode", `description: HTTP ${description.status}`)
    service = yield* findService(description.text, location)
    return service
  })
  const call = (action: string, args: Record<string, string | number>) =>
    Effect.gen(function* () {
      const { serviceType, controlUrl } = yield* discover
      const answer = yield* http(
        controlUrl,
        ssdp.gateway,
        {
          method: "POST",
          headers: { "Content-Type": 'text/xml; charset="utf-8"', SOAPAction: `"${serviceType}#${action}"` },
          body: encodeSoap(serviceType, action, args)
        },
        httpTimeoutMs
      )
      return yield* decodeSoap(answer.status, answer.text, action)
    })
  const add = (externalPort: number, internalPort: number, lease: number) =>
    call("AddPortMapping", {
      NewRemoteHost: "",
      NewExternalPort: externalPort,
      NewProtocol: "UDP",
      NewInternalPort: internalPort,
      NewInternalClient: ssdp.localAddress,
      NewEnabled: 1,
      NewPortMappingDescription: `quicmesh ${internalPort}`,
      NewLeaseDuration: lease
    })
  return {
    protocol: "upnp",
    map: ({ internalPort, suggestedPort, lifetimeSeconds }) =>
      Effect.gen(function* () {
        const externalPort = suggestedPort === 0 ? internalPort : suggestedPort
        yield* add(externalPort, internalPort, lifetimeSeconds).pipe(
          Effect.catchTag("PortMapRefused", (e) =>
            e.resultCode === ONLY_PERMANENT ? add(externalPort, internalPort, 0) : Effect.fail(e)
          )
        )
        mappedPort = externalPort
        const external = (yield* call("GetExternalIPAddress", {})).NewExternalIPAddress ?? ""
        if (!/^\d{1,3}(\.\d{1,3}){3}$/.test(external))
          return yield* malformed("mapping", `external address ${JSON.stringify(external)}`)
        return { host: external, port: externalPort, lifetimeSeconds }
      }),
    unmap: () =>
      mappedPort === undefined
        ? Effect.void
        : call("DeletePortMapping", {
            NewRemoteHost: "",
            NewExternalPort: mappedPort,
            NewProtocol: "UDP"
          }).pipe(Effect.asVoid)
  }
}
