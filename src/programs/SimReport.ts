/**
 * Presenting a simulation report: plain text for the terminal, and a self-contained HTML page
 * (inline SVG charts, no scripts, no external resources) for `quicmesh sim --report FILE`.
 */
import { reachabilityLine } from "../internal/simulation/reachability.js"
import { NAT_TYPES, type NatPairFigure, punchable, type SimReport, type Summary } from "./Simulation.js"

const pct = (x: number) => `${(x * 100).toFixed(x === 1 ? 0 : 2)}%`
const ms = (x: number) => (x >= 10_000 ? `${(x / 1000).toFixed(1)} s` : `${Math.round(x)} ms`)
const num = (x: number) => (Number.isInteger(x) ? String(x) : x.toFixed(2))
const summaryLine = (s: Summary, unit: (x: number) => string = num) =>
  s.count === 0
    ? "n/a"
    : `median ${unit(s.median)}, p95 ${unit(s.p95)}, p99 ${unit(s.p99)}, max ${unit(s.max)} (mean ${unit(s.mean)})`

const PATH_COLUMNS = ["direct", "punched", "relayed", "failed"]

/** "12 direct, 7 punched, 21 relayed, 0 failed": every lookup by what it left the origin with. */
const pathsLine = (pairs: ReadonlyArray<NatPairFigure>) => {
  const sum = (f: (p: NatPairFigure) => number) => pairs.reduce((s, p) => s + f(p), 0)
  return `${sum((p) => p.direct)} direct, ${sum((p) => p.punched)} punched, ${sum((p) => p.relayed)} relayed, ${sum((p) => p.failed)} failed`
}

export const renderText = (r: SimReport, replay: string): string => {
  const o = r.options
  const lines = [
    `simulation: ${o.nodes} nodes (${o.seeds} seeds), ${o.lookups} lookups, seed ${o.seed}`,
    `  alpha ${o.alpha}, k ${o.k}, latency ${o.latency} ms ± ${o.jitter} ms, loss ${pct(o.loss)}, crashed ${r.crashed} (${pct(o.crash)}), NAT ${o.nat}, RPC ${o.rpc}, ${o.joinConcurrency} join(s) at a time`,
    `joined:        ${r.joined}/${o.nodes}${r.joinFailures > 0 ? ` (${r.joinFailures} failed)` : ""}`,
    `lookups:       ${r.lookups.succeeded}/${r.lookups.total} found (${pct(r.lookups.successRate)})`,
    `paths:         ${pathsLine(r.natPairs)} (the origin's connection to the target after each lookup; seeds ${o.relays ? "relay" : "do not relay"})`,
    `rounds:        ${summaryLine(r.rounds)}`,
    `RPC queries:   ${summaryLine(r.queries)}`,
    `lookup time:   ${summaryLine(r.lookupVirtualMs, ms)} (virtual; ${r.alreadyConnected} lookup(s) of an already connected target left out, 0 ms each)`,
    `connections:   ${summaryLine(r.connectionsPerNode)} per live node`,
    ...(r.reachability !== undefined && r.reachability.length > 0 ? [reachabilityLine(r.reachability)] : []),
    `virtual time:  build ${ms(r.virtualMs.build)}, lookups ${ms(r.virtualMs.lookups)}`,
    `wall time:     build ${ms(r.wallMs.build)}, lookups ${ms(r.wallMs.lookups)}, total ${ms(r.wallMs.total)}; peak RSS ${r.peakRssMiB} MiB`,
    `trace:         ${r.network.traceEvents} events, sha256 ${r.traceHash}`
  ]
  if (r.natPairs.some((p) => p.from !== "none" || p.to !== "none")) {
    lines.push(
      `connection to the target by NAT pair (origin → target; relays ${o.relays ? "on" : "off"}):`,
      `  ${"".padEnd(26)} ${"connected".padStart(9)}  ${"".padStart(7)}  ${PATH_COLUMNS.map((c) => c.padStart(8)).join("")}`
    )
    for (const p of r.natPairs) {
      const connected = p.attempts - p.failed
      const counts = [p.direct, p.punched, p.relayed, p.failed].map((n) => String(n).padStart(8)).join("")
      // Without relays, failures between pairs no hole punch can join do not fail the run.
      const excused =
        !o.relays && p.failed > 0 && !punchable(p.from, p.to) ? "  (no hole punch joins these)" : ""
      lines.push(
        `  ${`${p.from} → ${p.to}`.padEnd(26)} ${`${connected}/${p.attempts}`.padStart(9)}  ${pct(connected / p.attempts).padStart(7)}  ${counts}${excused}`
      )
    }
  }
  lines.push(`replay:        ${replay}`)
  return lines.join("\n")
}

// ---- HTML ------------------------------------------------------------------------------

const escapeHtml = (s: string) =>
  s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]!)

/** Vertical bars, one per (label, value). */
const barChart = (
  bars: ReadonlyArray<{ readonly label: string; readonly value: number; readonly color?: string }>,
  options: { readonly title: string; readonly xLabel: string; readonly yLabel: string }
) => {
  const width = 560
  const height = 260
  const left = 50
  const bottom = 40
  const top = 20
  const plotW = width - left - 10
  const plotH = height - top - bottom
  const max = Math.max(1, ...bars.map((b) => b.value))
  const slot = bars.length === 0 ? plotW : plotW / bars.length
  const barW = Math.max(2, slot * 0.7)
  const parts: string[] = []
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4
    const y = top + plotH - (plotH * i) / 4
    parts.push(
      `<line x1="${left}" x2="${left + plotW}" y1="${y}" y2="${y}" stroke="#ddd"/>`,
      `<text x="${left - 6}" y="${y + 4}" text-anchor="end" font-size="11">${num(Math.round(v * 100) / 100)}</text>`
    )
  }
  bars.forEach((b, i) => {
    const h = (plotH * b.value) / max
    const x = left + i * slot + (slot - barW) / 2
    const y = top + plotH - h
    parts.push(
      `<rect x="${x.toFixed(1)}" y="${y.toFixed(1)}" width="${barW.toFixed(1)}" height="${h.toFixed(1)}" fill="${b.color ?? "#4a7fb5"}"><title>${escapeHtml(b.label)}: ${num(b.value)}</title></rect>`,
      `<text x="${(x + barW / 2).toFixed(1)}" y="${top + plotH + 14}" text-anchor="middle" font-size="11">${escapeHtml(b.label)}</text>`,
      `<text x="${(x + barW / 2).toFixed(1)}" y="${(y - 3).toFixed(1)}" text-anchor="middle" font-size="10">${num(b.value)}</text>`
    )
  })
  parts.push(
    `<text x="${left + plotW / 2}" y="${height - 6}" text-anchor="middle" font-size="12">${escapeHtml(options.xLabel)}</text>`,
    `<text x="12" y="${top + plotH / 2}" text-anchor="middle" font-size="12" transform="rotate(-90 12 ${top + plotH / 2})">${escapeHtml(options.yLabel)}</text>`
  )
  return `<figure><figcaption>${escapeHtml(options.title)}</figcaption><svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" role="img" aria-label="${escapeHtml(options.title)}">${parts.join("")}</svg></figure>`
}

/** A grid of NAT pairs, each cell coloured by its success rate. */
const natGrid = (pairs: ReadonlyArray<NatPairFigure>) => {
  const cell = 92
  const left = 90
  const top = 40
  const size = NAT_TYPES.length
  const width = left + size * cell + 10
  const height = top + size * cell + 30
  const parts: string[] = []
  NAT_TYPES.forEach((to, j) => {
    parts.push(
      `<text x="${left + j * cell + cell / 2}" y="${top - 8}" text-anchor="middle" font-size="12">${to}</text>`
    )
  })
  NAT_TYPES.forEach((from, i) => {
    parts.push(
      `<text x="${left - 8}" y="${top + i * cell + cell / 2 + 4}" text-anchor="end" font-size="12">${from}</text>`
    )
    NAT_TYPES.forEach((to, j) => {
      const p = pairs.find((x) => x.from === from && x.to === to)
      const x = left + j * cell
      const y = top + i * cell
      if (p === undefined) {
        parts.push(
          `<rect x="${x}" y="${y}" width="${cell - 2}" height="${cell - 2}" fill="#f3f3f3"/>`,
          `<text x="${x + cell / 2}" y="${y + cell / 2 + 4}" text-anchor="middle" font-size="11" fill="#999">no lookups</text>`
        )
        return
      }
      const connected = p.attempts - p.failed
      const rate = connected / p.attempts
      const hue = Math.round(rate * 120)
      parts.push(
        `<rect x="${x}" y="${y}" width="${cell - 2}" height="${cell - 2}" fill="hsl(${hue},60%,70%)"><title>${from} → ${to}: ${connected}/${p.attempts} connected (${p.direct} direct, ${p.punched} punched, ${p.relayed} relayed, ${p.failed} failed)</title></rect>`,
        `<text x="${x + cell / 2}" y="${y + cell / 2 - 10}" text-anchor="middle" font-size="14" font-weight="bold">${pct(rate)}</text>`,
        `<text x="${x + cell / 2}" y="${y + cell / 2 + 8}" text-anchor="middle" font-size="11">${connected}/${p.attempts}</text>`,
        `<text x="${x + cell / 2}" y="${y + cell / 2 + 24}" text-anchor="middle" font-size="10">${p.direct}d ${p.punched}p ${p.relayed}r</text>`
      )
    })
  })
  parts.push(
    `<text x="${left + (size * cell) / 2}" y="14" text-anchor="middle" font-size="12">target NAT</text>`,
    `<text x="${left + (size * cell) / 2}" y="${height - 8}" text-anchor="middle" font-size="11">rows: origin NAT</text>`
  )
  return `<figure><figcaption>Lookups that connected to their target, by NAT pair (origin → target; d direct, p punched, r relayed)</figcaption><svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" role="img" aria-label="success by NAT pair">${parts.join("")}</svg></figure>`
}

const row = (name: string, s: Summary, unit: (x: number) => string = num) =>
  `<tr><th>${escapeHtml(name)}</th><td>${unit(s.median)}</td><td>${unit(s.p95)}</td><td>${unit(s.p99)}</td><td>${unit(s.max)}</td><td>${unit(s.mean)}</td></tr>`

export const renderHtml = (r: SimReport, replay: string, verdict: ReadonlyArray<string>): string => {
  const o = r.options
  const hops = barChart(
    r.roundsHistogram.map((b) => ({ label: String(b.rounds), value: b.count })),
    { title: "Successful lookups by rounds (hops)", xLabel: "rounds", yLabel: "lookups" }
  )
  const time = barChart(
    (() => {
      const xs = r.lookupVirtualMs
      return [
        { label: "median", value: xs.median },
        { label: "p95", value: xs.p95 },
        { label: "p99", value: xs.p99 },
        { label: "max", value: xs.max }
      ]
    })(),
    { title: "Virtual time per networked lookup (ms)", xLabel: "", yLabel: "ms" }
  )
  const status =
    verdict.length === 0
      ? `<p class="ok">PASS: every lookup a healthy network should answer was answered.</p>`
      : `<p class="fail">FAIL: ${verdict.map(escapeHtml).join("; ")}</p>`
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>quicmesh simulation: ${o.nodes} nodes, seed ${o.seed}</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:980px;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f6f6f6;text-align:left}figure{display:inline-block;margin:1em 1em 1em 0;vertical-align:top}
figcaption{font-weight:600;margin-bottom:.3em}code{background:#f3f3f3;padding:2px 4px}
.ok{color:#1a7f37;font-weight:600}.fail{color:#b42318;font-weight:600}
</style></head><body>
<h1>quicmesh network simulation</h1>
${status}
<p>${o.nodes} nodes (${o.seeds} seeds), ${o.lookups} lookups, seed ${o.seed}; alpha ${o.alpha}, k ${o.k};
latency ${o.latency} ms ± ${o.jitter} ms, loss ${pct(o.loss)}; ${r.crashed} nodes crashed (${pct(o.crash)}); NAT mix <code>${escapeHtml(o.nat)}</code>; RPC ${o.rpc}; ${o.joinConcurrency} join(s) at a time.</p>
<p>Replay: <code>${escapeHtml(replay)}</code></p>
<table>
<tr><th>joined</th><td>${r.joined}/${o.nodes}</td></tr>
<tr><th>lookups found</th><td>${r.lookups.succeeded}/${r.lookups.total} (${pct(r.lookups.successRate)})</td></tr>
<tr><th>paths</th><td>${pathsLine(r.natPairs)} (relays ${o.relays ? "on" : "off"})</td></tr>
<tr><th>virtual time</th><td>build ${ms(r.virtualMs.build)}, lookups ${ms(r.virtualMs.lookups)}</td></tr>
<tr><th>wall time</th><td>${ms(r.wallMs.total)} (build ${ms(r.wallMs.build)}, lookups ${ms(r.wallMs.lookups)})</td></tr>
<tr><th>peak RSS</th><td>${r.peakRssMiB} MiB</td></tr>
<tr><th>trace</th><td>${r.network.traceEvents} events, sha256 <code>${r.traceHash}</code></td></tr>
</table>
<table>
<tr><th></th><th>median</th><th>p95</th><th>p99</th><th>max</th><th>mean</th></tr>
${row("rounds per lookup", r.rounds)}
${row("RPC queries per lookup", r.queries)}
${row(`virtual ms per lookup (${r.alreadyConnected} of an already connected target left out)`, r.lookupVirtualMs, (x) => String(Math.round(x)))}
${row("connections per live node", r.connectionsPerNode)}
</table>
${hops}
${time}
${natGrid(r.natPairs)}
</body></html>
`
}
