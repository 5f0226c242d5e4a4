#!/usr/bin/env python3
"""Turns scripts/bench.sh's results.jsonl into a markdown table and an SVG chart.

    bench_report.py RESULTS.jsonl OUTDIR [--note TEXT]

Writes OUTDIR/table.md and OUTDIR/chart.svg and prints the table. Each row is one cell and
mode; each broker column shows, at full speed, delivered msg/s with the broker's CPU µs per
delivered message and peak RSS; at the fixed rate, p50 / p99 latency; for conn, connections
per second and RSS per connection. The last column is shardmq against the best other broker.
"""
import json
import sys
from html import escape


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def si(v):
    if v >= 1e6:
        return f"{v / 1e6:.2f} M"
    if v >= 1e3:
        return f"{v / 1e3:.0f} k"
    return f"{v:.0f}"


def ms(us):
    return f"{us / 1000:.2f}" if us < 10000 else f"{us / 1000:.0f}"


def cell_text(r, mode):
    run = r["run"]
    if run is None:
        return "failed to run"
    b = run.get("broker") or {}
    flag = "" if run["ok"] else " ⚠"
    if run["failed_clients"]:
        flag += f" ({run['failed_clients']} clients failed)"
    if run["scenario"] == "conn":
        per = b.get("rss_per_conn")
        per = f" · {per / 1024:.2f} KiB/conn" if per is not None else ""
        lat = run["latency"]
        if mode == "full":
            return f"{si(run['msgs_per_s'])} conn/s{per}{flag}"
        return f"handshake p50 {ms(lat['p50_us'])} / p99 {ms(lat['p99_us'])} ms{per}{flag}"
    lost = f", lost {run['lost']}" if run["lost"] else ""
    rss = f", {b['rss_peak'] / 1048576:.0f} MiB" if b else ""
    if mode == "full":
        cpu = f" ({b['cpu_us_per_msg']:.2f} µs)" if b else ""
        return f"{si(run['msgs_per_s'])}{cpu}{rss}{lost}{flag}"
    lat = run["latency"]
    return f"p50 {ms(lat['p50_us'])} / p99 {ms(lat['p99_us'])} ms{rss}{lost}{flag}"


def ratio(rows_by_broker, mode):
    me = rows_by_broker.get("shardmq")
    others = [r for n, r in rows_by_broker.items() if n != "shardmq" and r["run"]]
    if not me or not me["run"] or not others:
        return ""
    run = me["run"]
    if mode == "full":
        best = max(others, key=lambda r: r["run"]["msgs_per_s"])
        x = run["msgs_per_s"] / max(best["run"]["msgs_per_s"], 1e-9)
        text = f"{x:.2f}× {best['broker']}"
        b, ob = run.get("broker"), best["run"].get("broker")
        if run["scenario"] != "conn" and b and ob:
            text += f", CPU/msg {b['cpu_us_per_msg'] / max(ob['cpu_us_per_msg'], 1e-9):.2f}×"
        return text
    key = lambda r: r["run"]["latency"]["p99_us"]
    best = min(others, key=key)
    return f"p99 {key(me) / max(key(best), 1e-9):.2f}× {best['broker']}"


def main():
    args = sys.argv[1:]
    note = ""
    if "--note" in args:
        i = args.index("--note")
        note = args[i + 1]
        del args[i : i + 2]
    results, outdir = args
    rows = load(results)
    brokers = []
    for r in rows:
        if r["broker"] not in brokers:
            brokers.append(r["broker"])
    keys = []
    grid = {}
    for r in rows:
        k = (r["cell"], r["mode"])
        if k not in grid:
            keys.append(k)
            grid[k] = {}
        grid[k][r["broker"]] = r
    lines = []
    if note:
        lines.append(f"{note}\n")
    lines.append(
        "Full speed: delivered msg/s (broker CPU µs per delivered message, peak RSS). "
        "Fixed rate: latency p50 / p99. conn: connections per second, RSS per idle connection.\n"
    )
    lines.append("| cell | mode | " + " | ".join(brokers) + " | shardmq vs best other |")
    lines.append("|---|---|" + "---|" * len(brokers) + "---|")
    for cell, mode in keys:
        by = grid[(cell, mode)]
        rate = ""
        if mode == "fixed":
            any_run = next((r["run"] for r in by.values() if r["run"]), None)
            if any_run and any_run.get("rate"):
                rate = f" {si(any_run['rate'])}/s"
        cols = [cell_text(by[b], mode) if b in by else "–" for b in brokers]
        lines.append(f"| {cell} | {mode}{rate} | " + " | ".join(cols) + f" | {ratio(by, mode)} |")
    table = "\n".join(lines) + "\n"
    with open(f"{outdir}/table.md", "w") as f:
        f.write(table)
    with open(f"{outdir}/chart.svg", "w") as f:
        f.write(chart(keys, grid, brokers, note))
    print(table)


COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]


def chart(keys, grid, brokers, note):
    """Grouped horizontal bars: full-speed msg/s (conn/s for conn) per cell, scaled per cell."""
    full = [k for k in keys if k[1] == "full"]
    bar, gap, left, width = 16, 18, 190, 520
    height = 60 + len(full) * (len(brokers) * bar + gap) + 20 * len(brokers)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 150}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        f'<text x="10" y="20" font-size="14" font-weight="bold">Delivered per second at full speed '
        "(bars scaled per cell)</text>",
        f'<text x="10" y="38" fill="#555">{escape(note)}</text>',
    ]
    y = 55
    for cell, _ in full:
        by = grid[(cell, "full")]
        vals = {b: (by[b]["run"]["msgs_per_s"] if b in by and by[b]["run"] else 0) for b in brokers}
        top = max(vals.values()) or 1
        out.append(f'<text x="10" y="{y + len(brokers) * bar / 2 + 4}">{escape(cell)}</text>')
        for i, b in enumerate(brokers):
            w = width * vals[b] / top
            out.append(
                f'<rect x="{left}" y="{y + i * bar}" width="{w:.1f}" height="{bar - 3}" '
                f'fill="{COLOURS[i % len(COLOURS)]}"/>'
            )
            unit = " conn/s" if cell.startswith("conn") else "/s"
            out.append(
                f'<text x="{left + w + 5:.1f}" y="{y + i * bar + bar - 5}">{si(vals[b])}{unit}</text>'
            )
        y += len(brokers) * bar + gap
    for i, b in enumerate(brokers):
        out.append(
            f'<rect x="10" y="{y + i * 20}" width="12" height="12" fill="{COLOURS[i % len(COLOURS)]}"/>'
            f'<text x="28" y="{y + i * 20 + 11}">{escape(b)}</text>'
        )
    out.append("</svg>\n")
    return "\n".join(out)


if __name__ == "__main__":
    main()
