#!/usr/bin/env python3
"""Turn criterion results of benches/cpu_dropout.rs into RESULT lines for scripts/compare.py.

Reads every <criterion-dir>/<group>/<op>/<n>/new/{benchmark.json,estimates.json} whose group
is `cpu_<api>_<dtype>` (as the bench names them) and prints, one line per benchmark:

    RESULT impl=<impl> op=<op> device=cpu dtype=<dtype> n=<n> median_s=<float> gbps=<float>

median_s is criterion's median point estimate of the time per call; gbps is the bench's
Throughput::Bytes (the bytes that must move) over median_s, in 1e9 bytes per second.

--api func (default) prints the functional-API results (outputs allocated per call, like
PyTorch) as impl=dropkit; --api raw prints the backend-into-preallocated-buffers results
as impl=dropkit; --api both prints func as impl=dropkit and raw as impl=dropkit-raw (for
logs: compare.py reads only impl=dropkit). --newer-than FILE skips results older than
FILE's modification time, so a run's leftovers from earlier runs are not reported.

Usage:
    python3 scripts/criterion_results.py [--criterion-dir target/criterion] [--api func]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

DTYPE_ORDER = {"f32": 0, "bf16": 1, "f16": 2, "f64": 3}
OP_ORDER = {"fwd_bits": 0, "fwd_regen": 1, "layer_fwd": 2, "fwd_inplace": 3, "bwd_bits": 4, "bwd_regen": 5,
            "copy": 6}
APIS = ("func", "raw")


def collect(root: str, newer_than: float | None):
    """Yield (api, dtype, op, n, median_s, bytes) for each result found under root."""
    if not os.path.isdir(root):
        return
    for group in sorted(os.listdir(root)):
        parts = group.split("_")
        if len(parts) != 3 or parts[0] != "cpu" or parts[1] not in APIS:
            continue
        api, dtype = parts[1], parts[2]
        gdir = os.path.join(root, group)
        for op in sorted(os.listdir(gdir)):
            odir = os.path.join(gdir, op)
            if not os.path.isdir(odir) or op == "report":
                continue
            for param in sorted(os.listdir(odir)):
                new = os.path.join(odir, param, "new")
                bench_file = os.path.join(new, "benchmark.json")
                est_file = os.path.join(new, "estimates.json")
                if not (os.path.isfile(bench_file) and os.path.isfile(est_file)):
                    continue
                if newer_than is not None and os.path.getmtime(est_file) < newer_than:
                    continue
                with open(bench_file, encoding="utf-8") as f:
                    bench = json.load(f)
                with open(est_file, encoding="utf-8") as f:
                    est = json.load(f)
                try:
                    n = int(bench["value_str"])
                    nbytes = int((bench.get("throughput") or {})["Bytes"])
                    median_s = float(est["median"]["point_estimate"]) / 1e9
                except (KeyError, TypeError, ValueError) as e:
                    print(f"warning: {new}: unreadable result ({e})", file=sys.stderr)
                    continue
                yield api, dtype, bench.get("function_id") or op, n, median_s, nbytes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--criterion-dir", default="target/criterion")
    ap.add_argument("--api", choices=["func", "raw", "both"], default="func")
    ap.add_argument("--newer-than", metavar="FILE",
                    help="ignore results last written before FILE's modification time")
    args = ap.parse_args()
    newer = os.path.getmtime(args.newer_than) if args.newer_than else None

    rows = []
    for api, dtype, op, n, median_s, nbytes in collect(args.criterion_dir, newer):
        if args.api != "both" and api != args.api:
            continue
        impl = "dropkit" if (args.api != "both" or api == "func") else "dropkit-raw"
        gbps = nbytes / median_s / 1e9 if median_s > 0 else float("inf")
        rows.append(((impl, DTYPE_ORDER.get(dtype, 9), dtype, n, OP_ORDER.get(op, 9), op),
                     f"RESULT impl={impl} op={op} device=cpu dtype={dtype} n={n} "
                     f"median_s={median_s:.6e} gbps={gbps:.3f}"))
    if not rows:
        print(f"warning: no cpu_dropout results under {args.criterion_dir}", file=sys.stderr)
        return 1
    for _, line in sorted(rows):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
