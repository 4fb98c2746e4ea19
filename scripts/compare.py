#!/usr/bin/env python3
"""Compare dropkit bench results with the PyTorch baseline as markdown tables.

Reads RESULT lines from the files given (or stdin when none, or for '-'):

    RESULT impl=<dropkit|torch> op=<name> device=<dev> dtype=<dt> n=<n> median_s=<s> gbps=<g>

Anything else (comments, cargo noise) is ignored. For each device it prints a table with
one row per (dtype, n, dropkit op):

    dtype | n | op | time | GB/s | % copy | torch op | torch time | torch GB/s | torch % copy | torch/ours

"% copy" is the op's GB/s over the copy GB/s that the SAME impl measured for the same
device, dtype and n (ours against our copy, torch's against torch's copy). torch/ours is
torch_time / our_time, so > 1 means dropkit is faster. Missing values show '-'.

Op mapping: fwd_bits -> torch_native_dropout_fwd, fwd_regen -> torch_F_dropout,
bwd_bits and bwd_regen -> torch_native_dropout_bwd; the fused bias + dropout + residual
forwards fused_fwd_bits and fused_fwd_regen, and dropkit's own three-pass reference
threepass_fwd_bits / threepass_fwd_regen -> torch_bias_dropout_residual_3pass (PyTorch
eager: x + bias, F.dropout, residual + z); fused_bwd -> torch_bias_dropout_residual_bwd. The rest of the family: alpha_* ->
torch_F_alpha_dropout, channel_fwd_* -> torch_F_dropout1d, feature_alpha_fwd_bits ->
torch_F_feature_alpha_dropout, droppath_fwd_* -> torch_droppath, channel_bwd_bits and
droppath_bwd_bits -> torch_native_dropout_bwd (torch's backward of any of them is that
elementwise multiply), colsum -> torch_colsum.
The fused family's lines on both sides count the bytes the fused op must move, so their
GB/s compare directly. The CPU bench's layer_fwd (Dropout::forward) and fwd_inplace map to
torch_F_dropout.

candle (benches/candle_dropout.rs, RESULT impl=candle op=candle_dropout_fwd): when a
device has such lines, the main table gets two more columns, candle's time for the
forwards and candle/ours (> 1: dropkit is faster).

--targets adds a table of the CPU issue's targets for f32, bf16 and f16: `--targets
ratios` (for the functional API's results): every forward at least TARGET_RATIO (20) times
faster than torch's F.dropout (native_dropout for fwd_bits) and than candle's dropout, and
bwd_bits than native_dropout_backward; `--targets copy` (for the raw API's results): the
forwards into existing buffers (fwd_regen, fwd_bits, fwd_inplace) at least COPY_TARGET
(85) % of copy's GB/s, with the raw bench's mask_only row (Philox and the compare alone,
counted in the tensor's bytes) beside them as the ceiling of a regenerating forward.

After the main table, a device with fused forward results gets a second table for the
issue's target: the fused forward at least FUSED_TARGET (1.5) times faster than PyTorch's
eager three passes measured in the same run (torch 3-pass time / fused time), with
dropkit's own three-pass reference beside it when present.

Usage:
    cargo bench ... | tee ours.txt
    python3 benches/torch_baseline.py --device cuda > torch.txt
    python3 scripts/compare.py ours.txt torch.txt
"""

from __future__ import annotations

import argparse
import sys
from collections import OrderedDict

OUR_IMPL = "dropkit"
TORCH_IMPL = "torch"
TORCH_3PASS = "torch_bias_dropout_residual_3pass"
OUR_OPS = ["fwd_bits", "fwd_regen", "bwd_bits", "bwd_regen",
           "fused_fwd_bits", "fused_fwd_regen", "threepass_fwd_bits", "threepass_fwd_regen",
           "fused_bwd",
           "alpha_fwd_bits", "alpha_fwd_regen", "channel_fwd_bits", "channel_fwd_regen",
           "channel_bwd_bits", "feature_alpha_fwd_bits", "droppath_fwd_bits",
           "droppath_fwd_regen", "droppath_bwd_bits", "colsum"]
TORCH_FOR = {
    "fwd_bits": "torch_native_dropout_fwd",
    "fwd_regen": "torch_F_dropout",
    "bwd_bits": "torch_native_dropout_bwd",
    "bwd_regen": "torch_native_dropout_bwd",
    "fused_fwd_bits": TORCH_3PASS,
    "fused_fwd_regen": TORCH_3PASS,
    "threepass_fwd_bits": TORCH_3PASS,
    "threepass_fwd_regen": TORCH_3PASS,
    "fused_bwd": "torch_bias_dropout_residual_bwd",
    "layer_fwd": "torch_F_dropout",
    "fwd_inplace": "torch_F_dropout",
    "mask_only": "-",
    "alpha_fwd_bits": "torch_F_alpha_dropout",
    "alpha_fwd_regen": "torch_F_alpha_dropout",
    "channel_fwd_bits": "torch_F_dropout1d",
    "channel_fwd_regen": "torch_F_dropout1d",
    "channel_bwd_bits": "torch_native_dropout_bwd",
    "feature_alpha_fwd_bits": "torch_F_feature_alpha_dropout",
    "droppath_fwd_bits": "torch_droppath",
    "droppath_fwd_regen": "torch_droppath",
    "droppath_bwd_bits": "torch_native_dropout_bwd",
    "colsum": "torch_colsum",
}
OUR_OPS[2:2] = ["layer_fwd", "fwd_inplace", "mask_only"]
# candle's training forward, beside each of our forwards.
CANDLE_IMPL = "candle"
CANDLE_OP = "candle_dropout_fwd"
CANDLE_FOR = {"fwd_bits", "fwd_regen", "layer_fwd", "fwd_inplace"}
# The CPU issue's targets (--targets).
TARGET_DTYPES = ("f32", "bf16", "f16")
TARGET_RATIO = 20.0
COPY_TARGET = 85.0
# The fused forwards held to the issue's target, and dropkit's own three passes for each.
FUSED_FWD = {"fused_fwd_bits": "threepass_fwd_bits", "fused_fwd_regen": "threepass_fwd_regen"}
FUSED_TARGET = 1.5
# References that get no "(missing)" row when dropkit did not run them.
# The family cases too: dropkit's CPU bench has none, yet torch's CPU run has the
# native backward they map to.
OPTIONAL_OPS = set(FUSED_FWD.values()) | {
    "alpha_fwd_bits", "alpha_fwd_regen", "channel_fwd_bits", "channel_fwd_regen",
    "channel_bwd_bits", "feature_alpha_fwd_bits", "droppath_fwd_bits", "droppath_fwd_regen",
    "droppath_bwd_bits", "colsum"}
# Ops that one API of the CPU bench runs and the other does not (layer_fwd: func,
# fwd_inplace: raw).
OPTIONAL_OPS |= {"layer_fwd", "fwd_inplace", "mask_only"}
# The raw bench's Philox-alone row (no torch counterpart): its % of copy bounds any
# forward that regenerates the mask, so the copy targets print it beside them.
MASK_ONLY = "mask_only"
COPY_OP = "copy"
DTYPE_ORDER = {"f32": 0, "bf16": 1, "f16": 2, "f64": 3}
REQUIRED = ("impl", "op", "device", "dtype", "n", "median_s", "gbps")


def parse_line(line: str):
    line = line.strip()
    if not line.startswith("RESULT"):
        return None
    fields = {}
    for tok in line.split()[1:]:
        if tok.startswith("#"):
            break
        if "=" in tok:
            k, v = tok.split("=", 1)
            fields[k] = v
    if any(k not in fields for k in REQUIRED):
        return None
    try:
        return {
            "impl": fields["impl"],
            "op": fields["op"],
            "device": fields["device"],
            "dtype": fields["dtype"],
            "n": int(fields["n"]),
            "median_s": float(fields["median_s"]),
            "gbps": float(fields["gbps"]),
        }
    except ValueError:
        return None


def read_results(paths: list[str]) -> dict:
    """{(impl, op, device, dtype, n): record}; a repeated key keeps the last one read."""
    results = OrderedDict()
    sources = paths or ["-"]
    for path in sources:
        f = sys.stdin if path == "-" else open(path, encoding="utf-8", errors="replace")
        try:
            for lineno, line in enumerate(f, 1):
                r = parse_line(line)
                if r is None:
                    if line.strip().startswith("RESULT"):
                        print(f"warning: {path}:{lineno}: malformed RESULT line ignored",
                              file=sys.stderr)
                    continue
                key = (r["impl"], r["op"], r["device"], r["dtype"], r["n"])
                if key in results:
                    print(f"warning: {path}:{lineno}: duplicate result for "
                          f"{' '.join(map(str, key))}; keeping the last", file=sys.stderr)
                results[key] = r
        finally:
            if f is not sys.stdin:
                f.close()
    return results


def fmt_time(s) -> str:
    if s is None:
        return "-"
    if s >= 1.0:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3f} ms"
    if s >= 1e-6:
        return f"{s * 1e6:.2f} us"
    return f"{s * 1e9:.1f} ns"


def fmt_num(x, spec: str) -> str:
    if x is None:
        return "-"
    if spec == ".1f" and abs(x) < 10:
        spec = ".2f"  # keep slow (CPU) bandwidths readable
    return format(x, spec)


def fmt_n(n: int) -> str:
    if n > 0 and n & (n - 1) == 0:
        return f"2^{n.bit_length() - 1}"
    return str(n)


def pct_of_copy(results, impl, device, dtype, n, gbps):
    if gbps is None:
        return None
    c = results.get((impl, COPY_OP, device, dtype, n))
    if c is None or c["gbps"] <= 0:
        return None
    return 100.0 * gbps / c["gbps"]


def dtype_key(d: str):
    return (DTYPE_ORDER.get(d, len(DTYPE_ORDER)), d)


def render(results: dict) -> str:
    out = []
    devices = sorted({k[2] for k in results})
    if not devices:
        return "no RESULT lines found\n"
    for device in devices:
        pairs = sorted({(k[3], k[4]) for k in results if k[2] == device},
                       key=lambda dn: (dtype_key(dn[0]), dn[1]))
        out.append(f"## device: {device}\n")
        has_candle = any(k[0] == CANDLE_IMPL and k[2] == device for k in results)
        extra_head = " candle time | candle/ours |" if has_candle else ""
        extra_rule = "---:|---:|" if has_candle else ""
        out.append("| dtype | n | op | time | GB/s | % copy | torch op | torch time | "
                   "torch GB/s | torch % copy | torch/ours |" + extra_head)
        out.append("|---|---:|---|---:|---:|---:|---|---:|---:|---:|---:|" + extra_rule)
        rows = 0
        for dtype, n in pairs:
            for op in OUR_OPS:
                ours = results.get((OUR_IMPL, op, device, dtype, n))
                top = TORCH_FOR[op]
                theirs = results.get((TORCH_IMPL, top, device, dtype, n))
                if ours is None and (theirs is None or op in OPTIONAL_OPS):
                    continue
                o_t = ours["median_s"] if ours else None
                o_g = ours["gbps"] if ours else None
                t_t = theirs["median_s"] if theirs else None
                t_g = theirs["gbps"] if theirs else None
                o_pct = pct_of_copy(results, OUR_IMPL, device, dtype, n, o_g)
                t_pct = pct_of_copy(results, TORCH_IMPL, device, dtype, n, t_g)
                ratio = t_t / o_t if (o_t and t_t is not None and o_t > 0) else None
                out.append(
                    f"| {dtype} | {fmt_n(n)} | {op if ours else op + ' (missing)'} | "
                    f"{fmt_time(o_t)} | {fmt_num(o_g, '.1f')} | {fmt_num(o_pct, '.1f')} | "
                    f"{top if theirs else '-'} | {fmt_time(t_t)} | {fmt_num(t_g, '.1f')} | "
                    f"{fmt_num(t_pct, '.1f')} | {fmt_num(ratio, '.2f')} |"
                    + (candle_cells(results, op, device, dtype, n, o_t) if has_candle else ""))
                rows += 1
        if rows == 0:
            out.append("| - | - | - | - | - | - | - | - | - | - | - |")
        out.extend(render_fused(results, device, pairs))
        # Copy bandwidth of each impl, the denominator of the % columns.
        copies = [(d, n) for d, n in pairs
                  if (OUR_IMPL, COPY_OP, device, d, n) in results
                  or (TORCH_IMPL, COPY_OP, device, d, n) in results]
        if copies:
            out.append("")
            out.append(f"Copy bandwidth on {device} (denominator of % copy):\n")
            out.append("| dtype | n | dropkit copy GB/s | torch copy GB/s |")
            out.append("|---|---:|---:|---:|")
            for d, n in copies:
                oc = results.get((OUR_IMPL, COPY_OP, device, d, n))
                tc = results.get((TORCH_IMPL, COPY_OP, device, d, n))
                out.append(f"| {d} | {fmt_n(n)} | {fmt_num(oc['gbps'] if oc else None, '.1f')} "
                           f"| {fmt_num(tc['gbps'] if tc else None, '.1f')} |")
        out.append("")
    return "\n".join(out) + "\n"


def candle_time(results, device, dtype, n):
    c = results.get((CANDLE_IMPL, CANDLE_OP, device, dtype, n))
    return c["median_s"] if c else None


def candle_cells(results, op, device, dtype, n, our_time) -> str:
    """The candle columns of one row: candle's forward time and candle/ours."""
    c_t = candle_time(results, device, dtype, n) if op in CANDLE_FOR else None
    ratio = c_t / our_time if (c_t is not None and our_time) else None
    return f" {fmt_time(c_t)} | {fmt_num(ratio, '.2f')} |"


def render_targets(results: dict, kind: str) -> str:
    """The CPU issue's targets: ratios to torch and candle, or % of copy."""
    title = (f">= {TARGET_RATIO:g}x torch and candle" if kind == "ratios"
             else f">= {COPY_TARGET:g}% of copy")
    out = [f"## Targets: {title}\n",
           "| device | dtype | n | op | against | ratio or % | target | met |",
           "|---|---|---:|---|---|---:|---:|---|"]
    met = total = 0
    for (impl, op, device, dtype, n), r in sorted(
            results.items(), key=lambda kv: (kv[0][2], dtype_key(kv[0][3]), kv[0][4],
                                             OUR_OPS.index(kv[0][1])
                                             if kv[0][1] in OUR_OPS else 99)):
        if impl != OUR_IMPL or dtype not in TARGET_DTYPES or op not in OUR_OPS:
            continue
        checks = []
        if kind == "ratios" and op in ("fwd_regen", "fwd_bits", "layer_fwd", "bwd_bits"):
            torch = results.get((TORCH_IMPL, TORCH_FOR[op], device, dtype, n))
            if torch:
                checks.append((TORCH_FOR[op], torch["median_s"] / r["median_s"], TARGET_RATIO))
            c_t = candle_time(results, device, dtype, n) if op in CANDLE_FOR else None
            if c_t is not None:
                checks.append(("candle " + CANDLE_OP, c_t / r["median_s"], TARGET_RATIO))
        if kind == "copy" and op in ("fwd_regen", "fwd_bits", "fwd_inplace"):
            pct = pct_of_copy(results, OUR_IMPL, device, dtype, n, r["gbps"])
            if pct is not None:
                checks.append(("% of copy", pct, COPY_TARGET))
        if kind == "copy" and op == MASK_ONLY:
            pct = pct_of_copy(results, OUR_IMPL, device, dtype, n, r["gbps"])
            out.append(f"| {device} | {dtype} | {fmt_n(n)} | {op} | ceiling: Philox alone, "
                       f"% of copy | {fmt_num(pct, '.1f')} | - | - |")
        for against, value, target in checks:
            ok = value >= target
            total += 1
            met += ok
            out.append(f"| {device} | {dtype} | {fmt_n(n)} | {op} | {against} | "
                       f"{fmt_num(value, '.1f')} | {target:g} | {'yes' if ok else '**no**'} |")
    out.append("")
    out.append(f"Met in {met} of {total} checks.")
    return "\n".join(out) + "\n"


def render_fused(results: dict, device: str, pairs) -> list[str]:
    """The fused forward against PyTorch's eager three passes (the issue's 1.5x target)."""
    rows = []
    met = total = 0
    for dtype, n in pairs:
        for op, own3 in FUSED_FWD.items():
            ours = results.get((OUR_IMPL, op, device, dtype, n))
            if ours is None:
                continue
            torch3 = results.get((TORCH_IMPL, TORCH_3PASS, device, dtype, n))
            mine3 = results.get((OUR_IMPL, own3, device, dtype, n))
            o_t = ours["median_s"]
            t_t = torch3["median_s"] if torch3 else None
            m_t = mine3["median_s"] if mine3 else None
            ratio = t_t / o_t if (t_t is not None and o_t > 0) else None
            own_ratio = m_t / o_t if (m_t is not None and o_t > 0) else None
            if ratio is None:
                verdict = "-"
            else:
                total += 1
                ok = ratio >= FUSED_TARGET
                met += ok
                verdict = "yes" if ok else "**no**"
            rows.append(
                f"| {dtype} | {fmt_n(n)} | {op} | {fmt_time(o_t)} | {fmt_time(t_t)} | "
                f"{fmt_num(ratio, '.2f')} | {verdict} | {fmt_time(m_t)} | "
                f"{fmt_num(own_ratio, '.2f')} |")
    if not rows:
        return []
    out = ["", f"Fused bias + dropout + residual forward on {device} against three separate "
               f"passes (target: torch 3-pass / fused >= {FUSED_TARGET}):\n",
           "| dtype | n | fused op | fused time | torch 3-pass time | torch 3-pass / fused | "
           f">= {FUSED_TARGET} | dropkit 3-pass time | dropkit 3-pass / fused |",
           "|---|---:|---|---:|---:|---:|---|---:|---:|"]
    out.extend(rows)
    out.append("")
    if total:
        out.append(f"Target met in {met} of {total} cases with a torch 3-pass time.")
    else:
        out.append(f"No {TORCH_3PASS} results to hold the fused forward to the target.")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description="markdown comparison of dropkit vs torch RESULT lines")
    ap.add_argument("files", nargs="*", help="files with RESULT lines ('-' or none: stdin)")
    ap.add_argument("--targets", choices=("ratios", "copy"),
                    help="also print the CPU issue's targets: ratios to torch and candle, "
                         "or %% of copy")
    args = ap.parse_args()
    results = read_results(args.files)
    sys.stdout.write(render(results))
    if args.targets:
        sys.stdout.write("\n" + render_targets(results, args.targets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
