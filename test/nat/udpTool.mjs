// A tiny UDP endpoint driven over stdio, run inside lab namespaces by the NAT specs.
//   node udpTool.mjs [port] [--echo]
// Binds 0.0.0.0:port (0 = ephemeral) and prints JSON lines:
//   {"ev":"ready","port":N}
//   {"ev":"recv","from":"ADDR","port":P,"data":"..."}   for every datagram received
// With --echo it answers each datagram to its sender with "echo:<data>|<ADDR>:<P>" (the source it saw).
// Reads JSON lines on stdin: {"op":"send","host":"ADDR","port":P,"data":"..."}; exits on stdin EOF.
import { createSocket } from "node:dgram"
import { createInterface } from "node:readline"

const port = Number(process.argv[2] ?? 0)
const echo = process.argv.includes("--echo")
const socket = createSocket("udp4")
const print = (value) => process.stdout.write(`${JSON.stringify(value)}\n`)

socket.on("error", (error) => print({ ev: "error", message: String(error) }))
socket.on("message", (msg, rinfo) => {
  const data = msg.toString()
  print({ ev: "recv", from: rinfo.address, port: rinfo.port, data })
  if (echo) socket.send(`echo:${data}|${rinfo.address}:${rinfo.port}`, rinfo.port, rinfo.address)
})
socket.bind(port, "0.0.0.0", () => {
  print({ ev: "ready", port: socket.address().port })
  const input = createInterface({ input: process.stdin })
  input.on("line", (line) => {
    if (line.trim() === "") return
    const command = JSON.parse(line)
    if (command.op === "send") {
      socket.send(String(command.data), command.port, command.host, (error) =>
        print({ ev: "sent", data: command.data, error: error ? String(error) : null })
      )
    }
  })
  input.on("close", () => socket.close(() => process.exit(0)))
})
