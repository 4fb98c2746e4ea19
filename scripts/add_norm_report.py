#!/usr/bin/env python3
"""Tables and plots for the fused dropout + add + norm bench from RESULT lines.

Reads the RESULT lines of benches/cpu_add_norm.rs (impl=dropkit and impl=copy) and of
benches/torch_add_norm.py (impl=torch) from the files given, and writes into OUT_DIR:

    compare.md          per (op, dtype, H): dropkit's and PyTorch's median seconds and GB/s,
                        dropkit / PyTorch (the speed-up), dropkit / copy (the fraction of
                        the copy rate measured in the same run, bytes as the bench counts)
    add_norm_<dtype>.svg  GB/s against H, one line per implementation and op

    python3 scripts/add_norm_report.py OUT_DIR dropkit-cpu.txt torch-cpu.txt

No plotting library: the SVG is written by hand (a few polylines and labels).
"""

from __future__ import annotations

import os
import sys


def parse(paths):
    rows = []
    for path in paths:
        for line in open(path):
            if not line.startswith("RESULT "):
                continue
            fields = dict(w.split("=", 1) for w in line.split()[1:])
            fields["h"] = int(fields["h"])
            fields["median_s"] = float(fields["median_s"])
            fields["gbps"] = float(fields["gbps"])
            rows.append(fields)
    return rows


def table(rows, targets):
    by = {(r["impl"], r["op"], r["dtype"], r["h"]): r for r in rows}
    lines = [
        "| op | dtype | H | dropkit ms | dropkit GB/s | torch ms | dropkit / torch | target"
        " | copy GB/s | dropkit / copy |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["op"], r["dtype"], r["h"]) for r in rows if r["impl"] == "dropkit"})
    for op, dtype, h in keys:
        d = by[("dropkit", op, dtype, h)]
        t = by.get(("torch", op, dtype, h))
        c = by.get(("copy", "copy", dtype, h))
        torch_ms = f"{t['median_s'] * 1e3:.1f}" if t else "-"
        speed = f"{t['median_s'] / d['median_s']:.1f}x" if t else "-"
        copy = f"{c['gbps']:.1f}" if c else "-"
        frac = f"{d['gbps'] / c['gbps']:.0%}" if c else "-"
        target = targets.get(op.split("_")[-1], "")
        lines.append(f"| {op} | {dtype} | {h} | {d['median_s'] * 1e3:.2f} | {d['gbps']:.2f} | "
                     f"{torch_ms} | {speed} | {target} | {copy} | {frac} |")
    return lines


def svg(rows, dtype, path):
    series = {}
    for r in rows:
        if r["dtype"] != dtype:
            continue
        name = "copy" if r["impl"] == "copy" else f"{r['impl']} {r['op']}"
        series.setdefault(name, []).append((r["h"], r["gbps"]))
    if not series:
        return
    hs = sorted({h for pts in series.values() for h, _ in pts})
    top = max(g for pts in series.values() for _, g in pts) * 1.1
    w, ht, left, bottom, pad = 720, 420, 70, 50, 20
    plot_w, plot_h = w - left - 220, ht - bottom - pad
    def x(h):
        k = hs.index(h)
        return left + (plot_w * k / max(1, len(hs) - 1))
    def y(g):
        return pad + plot_h * (1 - g / top)
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf",
              "#7f7f7f", "#bcbd22", "#e377c2"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{ht}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{ht}" fill="white"/>',
           f'<text x="{left}" y="14">fused dropout + add + norm, {dtype}, CPU: GB/s '
           '(bytes the fused op must move) against H</text>',
           f'<line x1="{left}" y1="{pad + plot_h}" x2="{left + plot_w}" y2="{pad + plot_h}" '
           'stroke="black"/>',
           f'<line x1="{left}" y1="{pad}" x2="{left}" y2="{pad + plot_h}" stroke="black"/>']
    for k in range(6):
        g = top * k / 5
        out.append(f'<text x="{left - 8}" y="{y(g) + 4:.1f}" text-anchor="end">{g:.0f}</text>')
        out.append(f'<line x1="{left}" y1="{y(g):.1f}" x2="{left + plot_w}" y2="{y(g):.1f}" '
                   'stroke="#ddd"/>')
    for h in hs:
        out.append(f'<text x="{x(h):.1f}" y="{pad + plot_h + 18}" text-anchor="middle">{h}</text>')
    out.append(f'<text x="{left + plot_w / 2}" y="{ht - 8}" text-anchor="middle">H</text>')
    for i, (name, pts) in enumerate(sorted(series.items())):
        pts = sorted(pts)
        col = colors[i % len(colors)]
        dash = ' stroke-dasharray="5,3"' if name.startswith("torch") else ""
        poly = " ".join(f"{x(h):.1f},{y(g):.1f}" for h, g in pts)
        out.append(f'<polyline points="{poly}" fill="none" stroke="{col}" stroke-width="2"{dash}/>')
        for h, g in pts:
            out.append(f'<circle cx="{x(h):.1f}" cy="{y(g):.1f}" r="3" fill="{col}"/>')
        ly = pad + 14 * i
        out.append(f'<line x1="{left + plot_w + 15}" y1="{ly + 6}" x2="{left + plot_w + 35}" '
                   f'y2="{ly + 6}" stroke="{col}" stroke-width="2"{dash}/>')
        out.append(f'<text x="{left + plot_w + 40}" y="{ly + 10}">{name}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__)
        return 2
    out_dir, paths = sys.argv[1], sys.argv[2:]
    rows = parse(paths)
    targets = {"fwd": ">= 10x", "bwd": ">= 2x"}
    lines = ["# Fused dropout + add + norm, CPU", "",
             "Medians from " + ", ".join(os.path.basename(p) for p in paths)
             + "; ratios from the same run (scripts/add_norm_report.py). Targets (issue 22):"
             " forward >= 10x PyTorch eager, backward >= 2x, both >= 50% of the copy.", ""]
    lines += table(rows, targets)
    with open(os.path.join(out_dir, "compare.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    for dtype in sorted({r["dtype"] for r in rows}):
        svg(rows, dtype, os.path.join(out_dir, f"add_norm_{dtype}.svg"))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
