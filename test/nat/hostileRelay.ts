/**
 * A relay that misbehaves, for the NAT lab's signed hole-punch spec: a quicmesh node (the
 * test fixture's, real QUIC) listening on `host`, driven over stdio. Run in a lab namespace:
 *   node --import tsx test/nat/hostileRelay.ts HOST
 * Prints {"ev":"ready","nodeId":…,"port":…}. Each stdin line {"target":NODEID,"request":{…},
 * "observed":{host,port}|null} (nonce and signature as arrays of bytes) is passed to the
 * target over the connection the relay holds, exactly as given; the answer is printed as
 * {"ev":"result","ok":true} or {"ev":"result","tag":…,"reason":…} (the target's typed refusal).
 */
import { createInterface } from "node:readline"
import { Effect, Either, Predicate, Queue } from "effect"
import * as NodeId from "../../src/services/NodeId.js"
import { makeNode } from "../fixtures/cmNode.js"

const print = (value: unknown) => process.stdout.write(`${JSON.stringify(value)}\n`)

const program = Effect.gen(function* () {
  const relay = yield* makeNode("lab/hostile-relay", { host: process.argv[2]! })
  print({ ev: "ready", nodeId: NodeId.encode(relay.nodeId), port: relay.address.port })
  const queue = yield* Queue.unbounded<string>()
  createInterface({ input: process.stdin }).on("line", (line) => Queue.unsafeOffer(queue, line))
  while (true) {
    const line = yield* Queue.take(queue)
    if (line.trim() === "") continue
    const command = JSON.parse(line)
    const target = Either.getOrThrow(NodeId.decode(command.target))
    const request = {
      ...command.request,
      nonce: Uint8Array.from(command.request.nonce),
      signature: Uint8Array.from(command.request.signature)
    }
    const message = command.observed ? { request, observed: command.observed } : { request }
    const result = yield* relay.cm
      .withConnection(target, (h) => h.client.holePunchSignal(message))
      .pipe(Effect.either)
    if (Either.isRight(result)) print({ ev: "result", ok: true })
    else {
      const cause = (result.left as { cause?: unknown }).cause
      print(
        Predicate.isTagged(cause, "HolePunchRefused")
          ? { ev: "result", tag: "HolePunchRefused", reason: (cause as unknown as { reason: string }).reason }
          : { ev: "result", tag: result.left._tag, detail: result.left.message }
      )
    }
  }
})

Effect.runPromise(Effect.scoped(program)).then(
  () => process.exit(0),
  (e) => {
    process.stderr.write(`${String(e)}\n`)
    process.exit(1)
  }
)
