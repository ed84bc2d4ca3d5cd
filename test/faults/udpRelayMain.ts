/**
 * The UDP fault relay as a process, e.g. inside a NAT lab namespace:
 *   node --import tsx test/faults/udpRelayMain.ts '<UdpRelayOptions as JSON>'
 * Prints `{"ev":"ready","host","port"}` once listening. Reads JSON lines on stdin:
 *   {"op":"update", "lossRate"?, "delayMs"?, "jitterMs"?}  → {"ev":"updated"}
 *   {"op":"stats"}                                          → {"ev":"stats", ...UdpRelayStats}
 * Closes and exits on stdin EOF or SIGTERM.
 */
import { createInterface } from "node:readline"
import { startUdpRelay, type UdpRelayOptions } from "./udpRelay.js"

const print = (value: unknown) => process.stdout.write(`${JSON.stringify(value)}\n`)

const main = async () => {
  const options = JSON.parse(process.argv[2] ?? "{}") as UdpRelayOptions
  const relay = await startUdpRelay(options)
  const stop = () => {
    void relay.close().then(() => process.exit(0))
  }
  process.on("SIGTERM", stop)
  const input = createInterface({ input: process.stdin })
  input.on("line", (line) => {
    if (line.trim() === "") return
    try {
      const command = JSON.parse(line) as {
        op: string
        lossRate?: number
        delayMs?: number
        jitterMs?: number
      }
      if (command.op === "update") {
        const { op: _op, ...faults } = command
        relay.update(faults)
        print({ ev: "updated" })
      } else if (command.op === "stats") print({ ev: "stats", ...relay.stats() })
      else print({ ev: "error", message: `unknown op ${command.op}` })
    } catch (error) {
      print({ ev: "error", message: String(error) })
    }
  })
  input.on("close", stop)
  print({ ev: "ready", host: relay.host, port: relay.port })
}

main().catch((error) => {
  process.stderr.write(`udpRelayMain: ${error}\n`)
  process.exit(1)
})
