/**
 * RpcWire framing: a frame body that is not MessagePack (or is cut short) is refused on its
 * own and leaves the decoder fit for every later frame, from any peer.
 */
import { describe, expect, it } from "@effect/vitest"
import { decodeBody, encodeFrame, HEADER_BYTES } from "../src/internal/rpcWire.js"

const bodyOf = (message: unknown) => encodeFrame(message).frame.subarray(HEADER_BYTES)

describe("RpcWire.decodeBody", () => {
  it("refuses garbage and truncated bodies without poisoning the next frame", () => {
    const good = { _tag: "Request", id: "1", tag: "nodesPing", payload: { nonce: "x" }, headers: [] }
    const garbage = [
      Uint8Array.from([0xc1, 1, 2, 3]),
      Uint8Array.from([0xd9, 0x40, 0x61]), // str8 announcing 64 bytes, 1 present
      Uint8Array.from([0x92, 0x01]), // an array of 2 with one element
      Uint8Array.from([0xdf, 0xff, 0xff, 0xff, 0xff])
    ]
    for (const bad of garbage) {
      const refused = decodeBody(bad)
      expect((refused as { _tag: string })._tag).toBe("RpcMalformedMessageError")
      expect(decodeBody(bodyOf(good))).toEqual(good)
    }
  })
})
