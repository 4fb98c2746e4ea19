#!/usr/bin/env python3
"""PyTorch baseline of the fused dropout + residual add + LayerNorm / RMSNorm, the same
cases and byte counts as benches/cpu_add_norm.rs (CPU) and the GPU bench (CUDA).

Eager PyTorch runs the sequence as separate ops:

    s = residual + F.dropout(x + bias, p, training=True)
    z = F.layer_norm(s, (H,), gamma, beta)      (layer)
    z = F.rms_norm(s, (H,), gamma)              (rms)

    fwd: that sequence;
    bwd: torch.autograd.grad((z, s), (x, residual, bias, gamma[, beta]), (dz, ds)) on a
         graph built once (retain_graph=True), which is what a training step's backward
         runs for it;
    compile_<op> (--compile): the same under torch.compile (it needs a working Inductor
         toolchain; a failure is reported as a comment and the case skipped);
    flash_<op> (CUDA, where flash_attn imports): FlashAttention's Triton layer_norm_fn(x,
         gamma, beta, residual=residual, dropout_p=p, prenorm=True, is_rms_norm=...),
         which has no bias before the dropout (so x + bias is not in its time).

Prints one line per case:

    RESULT impl=torch op=<layer|rms>_<fwd|bwd> dtype=<f32|bf16> h=<H> n=<n> median_s=<s> gbps=<GB/s>

GB/s counts the bytes dropkit's fused op must move (benches/cpu_add_norm.rs), not what
the eager ops move: fwd 4 n S + n/8, bwd 5 n S + n/8 (S = bytes per element).

CPU timing: time.perf_counter around each call after 2 warm-up calls, median of --iters.
CUDA timing: CUDA events around each call after warm-up, median of --iters.

Usage:
    python3 benches/torch_add_norm.py --device cpu --n 2^24 --hidden 768,4096,8192
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time


def parse_n(s: str) -> int:
    s = s.strip()
    if s.startswith("2^"):
        return 1 << int(s[2:])
    return int(s)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--n", default="2^24", help="elements per tensor (2^k or a number)")
    ap.add_argument("--hidden", default="768,4096,8192")
    ap.add_argument("--dtypes", default="f32,bf16")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--p", type=float, default=0.1)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile")
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F

    dev = torch.device(args.device)
    try:
        from flash_attn.ops.triton.layer_norm import layer_norm_fn as flash_fn
    except Exception:  # not installed, or no Triton: the flash cases are left out
        flash_fn = None
    print(f"# flash_attn layer_norm_fn: {'yes' if flash_fn else 'not importable'}")
    dtypes = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
    n_req = parse_n(args.n)
    name = (torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor()
            or platform.machine())
    print(f"# device: {name}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"# n={n_req} iters={args.iters} p={args.p} statistic=median")

    def timed(call) -> float:
        for _ in range(2):
            call()
        times = []
        for _ in range(args.iters):
            if args.device == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                call()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                call()
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    for dname in args.dtypes.split(","):
        dt = dtypes[dname]
        size = torch.tensor([], dtype=dt).element_size()
        for h in (int(v) for v in args.hidden.split(",")):
            rows = n_req // h
            n = rows * h

            def leaf(*shape):
                return torch.randn(*shape, dtype=dt, device=dev).requires_grad_(True)

            x, residual = leaf(rows, h), leaf(rows, h)
            bias, gamma, beta = leaf(h), leaf(h), leaf(h)
            dz = torch.randn(rows, h, dtype=dt, device=dev)
            ds = torch.randn(rows, h, dtype=dt, device=dev)
            for norm in ("layer", "rms"):
                def seq(x, residual, bias, gamma, beta):
                    s = residual + F.dropout(x + bias, args.p, training=True)
                    if norm == "layer":
                        z = F.layer_norm(s, (h,), gamma, beta)
                    else:
                        z = F.rms_norm(s, (h,), gamma)
                    return z, s

                params = (x, residual, bias, gamma) + ((beta,) if norm == "layer" else ())
                variants = [("", seq)]
                if args.compile:
                    variants.append(("compile_", torch.compile(seq)))
                if flash_fn is not None and args.device == "cuda":
                    def flash(x, residual, bias, gamma, beta):
                        z, s = flash_fn(x, gamma, beta if norm == "layer" else None,
                                        residual=residual, dropout_p=args.p, prenorm=True,
                                        is_rms_norm=norm == "rms")
                        return z, s
                    variants.append(("flash_", flash))
                for prefix, fn in variants:
                    try:
                        with torch.no_grad():
                            fwd = timed(lambda: fn(x, residual, bias, gamma, beta))
                    except Exception as e:  # a toolchain that cannot compile: say so
                        print(f"# {prefix}{norm} dtype={dname} h={h}: failed: "
                              f"{type(e).__name__}: {e}", flush=True)
                        continue
                    print(f"RESULT impl=torch op={prefix}{norm}_fwd dtype={dname} h={h} n={n} "
                          f"median_s={fwd:.6e} gbps={(4 * n * size + n / 8) / fwd / 1e9:.3f}",
                          flush=True)
                    z, s = fn(x, residual, bias, gamma, beta)
                    used = params if prefix != "flash_" else tuple(
                        t for t in params if t is not bias)
                    try:
                        bwd = timed(lambda: torch.autograd.grad((z, s), used, (dz, ds),
                                                                retain_graph=True))
                    except Exception as e:
                        print(f"# {prefix}{norm}_bwd dtype={dname} h={h}: failed: "
                              f"{type(e).__name__}: {e}", flush=True)
                        continue
                    print(f"RESULT impl=torch op={prefix}{norm}_bwd dtype={dname} h={h} n={n} "
                          f"median_s={bwd:.6e} gbps={(5 * n * size + n / 8) / bwd / 1e9:.3f}",
                          flush=True)
                    del z, s
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
