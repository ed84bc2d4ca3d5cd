/**
 * CircuitDatagrams on a stand-in UDP socket that records what is sent, with a clock of the
 * test's: which datagrams a relay forwards (only between a circuit's two ends, exactly), which
 * a circuit's end takes (only from its relay), the byte rate, and the end of a forwarding.
 */
import type { RemoteInfo, Socket as UdpSocket } from "node:dgram"
import { describe, expect, it } from "@effect/vitest"
import { CircuitDatagrams, HEADER_BYTES } from "../src/internal/circuitDatagrams.js"
import type { ForwardOptions } from "../src/services/QuicTransport.js"

interface Sent {
  readonly data: Uint8Array
  readonly host: string
  readonly port: number
}

const fakeSocket = (family: "IPv4" | "IPv6" = "IPv4") => {
  const sent: Array<Sent> = []
  const udp = {
    send: (data: Uint8Array, port: number, host: string) =>
      void sent.push({ data: Uint8Array.from(data), host, port }),
    address: () => ({ address: "0.0.0.0", family, port: 4000 })
  } as unknown as UdpSocket
  return { udp, sent }
}

const info = (address: string, port: number): RemoteInfo => ({ address, port, family: "IPv4", size: 0 })

const datagram = (id: Uint8Array, body: ReadonlyArray<number>) => Buffer.from([0, ...id, ...body])

const A = { host: "10.0.0.1", port: 1111 }
const B = { host: "10.0.0.2", port: 2222 }

const forwardOptions = (overrides: Partial<ForwardOptions> = {}) => {
  const counted = { bytes: 0 }
  const options: ForwardOptions = {
    bytesPerSecond: Number.POSITIVE_INFINITY,
    forwarded: (bytes) => {
      counted.bytes += bytes
    },
    ...overrides
  }
  return { options, counted }
}

describe("CircuitDatagrams", () => {
  it("a relay forwards a circuit's datagrams from one end to the other, unchanged, both ways", () => {
    const { udp, sent } = fakeSocket()
    const datagrams = new CircuitDatagrams(udp, () => 1000)
    const { options, counted } = forwardOptions()
    const { forwarding } = datagrams.forward(A, B, options)
    const ab = datagram(forwarding.id, [1, 2, 3])
    const ba = datagram(forwarding.id, [4, 5])
    datagrams.onMessage(ab, info(A.host, A.port))
    datagrams.onMessage(ba, info(B.host, B.port))
    expect(sent).toEqual([
      { data: Uint8Array.from(ab), host: B.host, port: B.port },
      { data: Uint8Array.from(ba), host: A.host, port: A.port }
    ])
    expect(counted.bytes).toBe(ab.length + ba.length)
    expect(forwarding.id.length).toBe(HEADER_BYTES - 1)
  })

  it("drops what is not from a circuit's end exactly, has an unknown id, or is not a circuit datagram", () => {
    const { udp, sent } = fakeSocket()
    const datagrams = new CircuitDatagrams(udp, () => 1000)
    const { forwarding } = datagrams.forward(A, B, forwardOptions().options)
    const other = Uint8Array.from(forwarding.id)
    other[0] = other[0]! ^ 0xff
    datagrams.onMessage(datagram(forwarding.id, [1]), info(A.host, A.port + 1)) // another port of A's host
    datagrams.onMessage(datagram(forwarding.id, [1]), info("10.0.0.3", A.port)) // another host
    datagrams.onMessage(datagram(other, [1]), info(A.host, A.port)) // another id
    datagrams.onMessage(Buffer.from([0, ...forwarding.id]), info(A.host, A.port)) // no packet
    expect(sent).toEqual([])
    expect(datagrams.dropped).toBe(4)
    // A QUIC packet (fixed bit set) is not ours: neither forwarded nor counted as dropped.
    datagrams.onMessage(Buffer.from([0x40, ...forwarding.id, 1]), info(A.host, A.port))
    expect(datagrams.dropped).toBe(4)
  })

  it("an IPv4 end sent to from a dual-stack socket is IPv4-mapped, and its mapped address is the same end", () => {
    const { udp, sent } = fakeSocket("IPv6")
    const datagrams = new CircuitDatagrams(udp, () => 1000)
    const { forwarding } = datagrams.forward(A, B, forwardOptions().options)
    datagrams.onMessage(datagram(forwarding.id, [9]), info(`::ffff:${A.host}`, A.port))
    expect(sent.map((s) => s.host)).toEqual([`::ffff:${B.host}`])
  })

  it("over a circuit's byte rate a datagram is dropped; after a pause they pass again", () => {
    const { udp, sent } = fakeSocket()
    let now = 1000
    const datagrams = new CircuitDatagrams(udp, () => now)
    // 10,000 B/s: 100 ms of burst is 1,000 bytes, in 100-byte datagrams (9 of header).
    const { forwarding } = datagrams.forward(A, B, forwardOptions({ bytesPerSecond: 10_000 }).options)
    const packet = datagram(forwarding.id, new Array(91).fill(7))
    for (let i = 0; i < 15; i++) datagrams.onMessage(packet, info(A.host, A.port))
    // Ten pass at once (the 100 ms burst); the rest are dropped.
    expect(sent.length).toBe(10)
    expect(datagrams.dropped).toBe(5)
    now += 50 // 500 bytes' worth of time: five more
    for (let i = 0; i < 8; i++) datagrams.onMessage(packet, info(A.host, A.port))
    expect(sent.length).toBe(15)
  })

  it("the time a datagram last passed is the forwarding's lastActive", () => {
    const { udp } = fakeSocket()
    let now = 1000
    const datagrams = new CircuitDatagrams(udp, () => now)
    const { forwarding } = datagrams.forward(A, B, forwardOptions().options)
    expect(forwarding.lastActive()).toBe(1000)
    now = 4000
    datagrams.onMessage(datagram(forwarding.id, [1]), info(B.host, B.port))
    expect(forwarding.lastActive()).toBe(4000)
  })

  it("a stopped forwarding forwards nothing; ids are unique", () => {
    const { udp, sent } = fakeSocket()
    const datagrams = new CircuitDatagrams(udp, () => 1000)
    const first = datagrams.forward(A, B, forwardOptions().options)
    const second = datagrams.forward(A, B, forwardOptions().options)
    expect(Buffer.from(first.forwarding.id).equals(Buffer.from(second.forwarding.id))).toBe(false)
    first.stop()
    datagrams.onMessage(datagram(first.forwarding.id, [1]), info(A.host, A.port))
    datagrams.onMessage(datagram(second.forwarding.id, [2]), info(A.host, A.port))
    expect(sent.filter((s) => s.data[0] === 0).map((s) => s.data.at(-1))).toEqual([2])
    expect(datagrams.sizes).toEqual({ forwarded: 1, ends: 0 })
  })

  it("a circuit's end takes its datagrams from its relay only, without the header, and sends with it", () => {
    const { udp, sent } = fakeSocket()
    const datagrams = new CircuitDatagrams(udp, () => 1000)
    const relay = { host: "10.0.0.9", port: 9999 }
    const id = Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8])
    const delivered: Array<Uint8Array> = []
    const remove = datagrams.addEnd(
      id,
      relay,
      (packet) => void delivered.push(Uint8Array.from(packet)),
      () => {}
    )
    datagrams.onMessage(datagram(id, [0xc0, 1]), info(relay.host, relay.port))
    datagrams.onMessage(datagram(id, [0xc0, 2]), info(A.host, A.port)) // not the relay
    expect(delivered).toEqual([Uint8Array.from([0xc0, 1])])
    datagrams.send(id, relay, Uint8Array.from([0x40, 3]))
    expect(sent).toEqual([{ data: Uint8Array.from([0, ...id, 0x40, 3]), host: relay.host, port: relay.port }])
    remove()
    datagrams.onMessage(datagram(id, [0xc0, 4]), info(relay.host, relay.port))
    expect(delivered.length).toBe(1)
  })

  it("END: from an end to the relay it is reported; stopping a forwarding sends END to both ends", () => {
    const { udp, sent } = fakeSocket()
    const datagrams = new CircuitDatagrams(udp, () => 1000)
    let ended = 0
    const { forwarding, stop } = datagrams.forward(
      A,
      B,
      forwardOptions({
        ended: () => {
          ended++
        }
      }).options
    )
    const end = Buffer.from([1, ...forwarding.id])
    datagrams.onMessage(end, info("10.0.0.3", 3333)) // not an end of the circuit
    expect(ended).toBe(0)
    datagrams.onMessage(end, info(B.host, B.port))
    expect(ended).toBe(1)
    expect(sent).toEqual([])
    stop()
    expect(sent).toEqual([
      { data: Uint8Array.from(end), host: A.host, port: A.port },
      { data: Uint8Array.from(end), host: B.host, port: B.port }
    ])
    stop() // once only
    expect(sent.length).toBe(2)
  })

  it("END: at an end, from its relay only, it ends the circuit once; sendEnd tells the relay", () => {
    const { udp, sent } = fakeSocket()
    const datagrams = new CircuitDatagrams(udp, () => 1000)
    const relay = { host: "10.0.0.9", port: 9999 }
    const id = Uint8Array.from([8, 7, 6, 5, 4, 3, 2, 1])
    let ended = 0
    datagrams.addEnd(
      id,
      relay,
      () => {},
      () => {
        ended++
      }
    )
    const end = Buffer.from([1, ...id])
    datagrams.onMessage(end, info(A.host, A.port))
    expect(ended).toBe(0)
    datagrams.onMessage(end, info(relay.host, relay.port))
    datagrams.onMessage(end, info(relay.host, relay.port))
    expect(ended).toBe(1)
    expect(datagrams.sizes.ends).toBe(0)
    datagrams.sendEnd(id, relay)
    expect(sent).toEqual([{ data: Uint8Array.from(end), host: relay.host, port: relay.port }])
  })
})
