#!/usr/bin/env python3
"""PyTorch baseline timings for the same cases as dropkit's benches.

Prints one line per case to stdout:

    RESULT impl=torch op=<name> device=<cuda|cpu> dtype=<f32|bf16|f16|f64> n=<n> median_s=<float> gbps=<float>

plus comment lines starting with '#'. Feed the output to scripts/compare.py together with
dropkit's own RESULT lines.

Ops (names as printed):
    torch_F_dropout           torch.nn.functional.dropout(x, p, training=True)
    torch_native_dropout_fwd  torch.native_dropout(x, p, True)            (y and a bool mask)
    torch_native_dropout_bwd  torch.ops.aten.native_dropout_backward(grad, mask, 1/(1-p))
    copy                      y.copy_(x)
    torch_bias_dropout_residual_3pass
                              y = x + bias; z = F.dropout(y, p, True); out = residual + z
                              (three separate kernels, as PyTorch eager runs them), with x
                              and residual of shape (n / H, H) and bias of shape (H)
    torch_bias_dropout_residual_bwd
                              what eager autograd runs for the backward of that sequence:
                              dx = native_dropout_backward(grad, mask, 1/(1-p)) and
                              dbias = dx.sum(0); dresidual is grad itself (no copy)

The rest of the dropout family, against the GPU bench's cases of the same layout (flat x of
n elements seen as the shapes below; n must be a multiple of 1024 and of 64):
    torch_F_alpha_dropout     F.alpha_dropout(x, p, True)
    torch_F_dropout1d         F.dropout1d(x.view(1, n / 1024, 1024), p, True): one decision
                              per 1024 elements (dropkit's channel_* cases)
    torch_F_feature_alpha_dropout
                              F.feature_alpha_dropout on the same view
    torch_droppath            timm's drop_path: x.view(64, n / 64) * (bernoulli(q) of
                              shape (64, 1) / q), one decision per sample of 64
    torch_colsum              grad.sum(0) of a (n / H, H) gradient (dropkit's colsum case)

The two bias_dropout_residual ops run by default on cuda only (dropkit's CPU bench has no
fused cases); name them in --ops to run them on cpu. H is --hidden (default 4096, the GPU
bench's DROPKIT_GPU_BENCH_HIDDEN default); a size that is not a multiple of H is skipped.
There is no fused eager PyTorch op for this sequence to compare with; torch.compile could
fuse it, but it needs a working Inductor/Triton toolchain at run time, so it is left out.

GB/s counts only the bytes that must move (1e9 bytes per GB):
    F.dropout: read x + write y             (torch's CUDA path also writes a mask it drops;
                                             that is not counted, it is torch's overhead)
    native fwd: read x + write y + 1 B/elem mask
    native bwd: read grad + read 1 B/elem mask + write out
    copy: read x + write y
    bias_dropout_residual_3pass: read x + read residual + write out + read H bias elements:
        the bytes that dropkit's fused forward (`fused_fwd_regen`) must move, NOT what the
        three passes move, so its GB/s compares directly with dropkit's fused op
    family (alpha, dropout1d, feature alpha, drop path): read x + write y
    colsum: read grad + write H elements
    bias_dropout_residual_bwd: read grad + write dx + write dresidual + 4 * ceil(n / 32)
        mask bytes + write H bias-gradient elements: the bytes of dropkit's `fused_bwd`

GPU timing: CUDA events around batches of calls after warm-up; the batch cycles through
several independent buffer sets so that the working set (default 256 MiB) exceeds L2 and
every call sees cold inputs; median over --iters batches, divided by the batch length.
Calls are issued eagerly from Python, so for small sizes the time includes torch's
per-call dispatch cost (that is what a PyTorch user pays). --graph captures each batch in
a CUDA graph instead, which removes the CPU launch cost.

CPU timing: time.perf_counter around each call after warm-up, median over --iters runs.
torch's thread count is left at its default and printed.

Usage:
    python3 benches/torch_baseline.py --device cuda
    python3 benches/torch_baseline.py --device cpu --sizes 65536,2^20 --iters 5
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
import warnings

# torch warns at import when NumPy is absent; this script does not need NumPy.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

import torch  # noqa: E402

DTYPES = {
    "f32": torch.float32,
    "bf16": torch.bfloat16,
    "f16": torch.float16,
    "f64": torch.float64,
}
ELEMENTWISE_OPS = ["torch_F_dropout", "torch_native_dropout_fwd", "torch_native_dropout_bwd",
                   "copy"]
FAMILY_OPS = ["torch_F_alpha_dropout", "torch_F_dropout1d", "torch_F_feature_alpha_dropout",
              "torch_droppath"]
FUSED_OPS = ["torch_bias_dropout_residual_3pass", "torch_bias_dropout_residual_bwd",
             "torch_colsum"]
OPS = ELEMENTWISE_OPS + FAMILY_OPS + FUSED_OPS
DEFAULT_OPS = {"cuda": OPS, "cpu": ELEMENTWISE_OPS}
# One decision per CHANNEL_GROUP elements (channel cases), DROPPATH_SAMPLES decisions in all
# (drop path): the GPU bench's defaults.
CHANNEL_GROUP = 1024
DROPPATH_SAMPLES = 64
DEFAULT_HIDDEN = 4096
DEFAULT_SIZES = {"cuda": "2^16,2^20,2^24,2^28", "cpu": "2^16,2^20,2^24"}
DEFAULT_ITERS = {"cuda": 50, "cpu": 20}
DEFAULT_WS_MIB = {"cuda": 256, "cpu": 0}
MAX_BUFFER_SETS = 1024


def parse_size(s: str) -> int:
    s = s.strip().replace("**", "^")
    if "^" in s:
        base, exp = s.split("^", 1)
        return int(base) ** int(exp)
    if "<<" in s:
        a, b = s.split("<<", 1)
        return int(a) << int(b)
    return int(s)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def bytes_moved(op: str, n: int, elem: int, hidden: int = DEFAULT_HIDDEN) -> int:
    if op in ("torch_F_dropout", "copy") or op in FAMILY_OPS:
        return 2 * n * elem
    if op in ("torch_native_dropout_fwd", "torch_native_dropout_bwd"):
        return 2 * n * elem + n
    # The fused family counts the bytes of dropkit's fused op it stands against.
    if op == "torch_bias_dropout_residual_3pass":
        return 3 * n * elem + hidden * elem
    if op == "torch_bias_dropout_residual_bwd":
        return 3 * n * elem + 4 * ((n + 31) // 32) + hidden * elem
    if op == "torch_colsum":
        return n * elem + hidden * elem
    raise ValueError(op)


def make_call(op: str, sets: list[dict], p: float):
    """Return call(k) that runs `op` once on buffer set k % len(sets)."""
    nsets = len(sets)
    scale = 1.0 / (1.0 - p) if p < 1.0 else 0.0
    F = torch.nn.functional
    bwd = torch.ops.aten.native_dropout_backward

    if op == "torch_F_dropout":
        def call(k):
            return F.dropout(sets[k % nsets]["x"], p, training=True)
    elif op == "torch_native_dropout_fwd":
        def call(k):
            return torch.native_dropout(sets[k % nsets]["x"], p, True)
    elif op == "torch_native_dropout_bwd":
        def call(k):
            s = sets[k % nsets]
            return bwd(s["x"], s["mask"], scale)
    elif op == "copy":
        def call(k):
            s = sets[k % nsets]
            return s["y"].copy_(s["x"])
    elif op == "torch_bias_dropout_residual_3pass":
        def call(k):
            s = sets[k % nsets]
            y = s["x"] + s["bias"]
            z = F.dropout(y, p, training=True)
            return s["residual"] + z
    elif op == "torch_bias_dropout_residual_bwd":
        def call(k):
            s = sets[k % nsets]
            dx = bwd(s["x"], s["mask"], scale)
            return dx, dx.sum(0)
    elif op == "torch_F_alpha_dropout":
        def call(k):
            return F.alpha_dropout(sets[k % nsets]["x"], p, training=True)
    elif op == "torch_F_dropout1d":
        def call(k):
            return F.dropout1d(sets[k % nsets]["x"].view(1, -1, CHANNEL_GROUP), p, training=True)
    elif op == "torch_F_feature_alpha_dropout":
        def call(k):
            x = sets[k % nsets]["x"].view(1, -1, CHANNEL_GROUP)
            return F.feature_alpha_dropout(x, p, training=True)
    elif op == "torch_droppath":
        q = 1.0 - p

        def call(k):
            x = sets[k % nsets]["x"].view(DROPPATH_SAMPLES, -1)
            keep = x.new_empty((DROPPATH_SAMPLES, 1)).bernoulli_(q)
            if q > 0.0:
                keep.div_(q)
            return x * keep
    elif op == "torch_colsum":
        def call(k):
            return sets[k % nsets]["x"].sum(0)
    else:
        raise ValueError(op)
    return call


def build_sets(op: str, n: int, dtype, device: str, nsets: int, p: float,
               hidden: int = DEFAULT_HIDDEN) -> list[dict]:
    def randn(*shape):
        return torch.randn(*shape, device=device, dtype=torch.float32).to(dtype)

    fused = op in FUSED_OPS
    sets = []
    for _ in range(nsets):
        # The fused family works on (n / H, H); x is the upstream gradient of the backward.
        x = randn(n // hidden, hidden) if fused else randn(n)
        s = {"x": x}
        if op == "copy":
            s["y"] = torch.empty_like(x)
        if op in ("torch_native_dropout_bwd", "torch_bias_dropout_residual_bwd"):
            s["mask"] = torch.native_dropout(x, p, True)[1]
        if op == "torch_bias_dropout_residual_3pass":
            s["residual"] = randn(n // hidden, hidden)
            s["bias"] = randn(hidden)
        sets.append(s)
    return sets


def n_sets_for(op: str, n: int, elem: int, ws_bytes: int, hidden: int = DEFAULT_HIDDEN) -> int:
    per_set = max(1, bytes_moved(op, n, elem, hidden))
    return max(1, min(MAX_BUFFER_SETS, math.ceil(ws_bytes / per_set)))


def time_cuda(call, nsets: int, iters: int, warmup: int, graph: bool) -> tuple[float, str]:
    inner = nsets  # one batch touches every buffer set once
    stream = torch.cuda.current_stream()
    counter = [0]

    def batch():
        base = counter[0]
        for j in range(inner):
            call(base + j)
        counter[0] = base + inner

    mode = "eager"
    runner = batch
    if graph:
        try:
            # Warm up on a side stream before capture, as torch recommends.
            side = torch.cuda.Stream()
            side.wait_stream(stream)
            with torch.cuda.stream(side):
                for _ in range(max(1, warmup)):
                    batch()
            stream.wait_stream(side)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                batch()
            runner = g.replay
            mode = "graph"
        except Exception as e:  # noqa: BLE001 - fall back, but say so
            print(f"# graph capture failed ({type(e).__name__}: {e}); timing eagerly",
                  flush=True)
            torch.cuda.synchronize()
            runner = batch
    for _ in range(max(1, warmup)):
        runner()
    torch.cuda.synchronize()
    events = []
    for _ in range(iters):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record(stream)
        runner()
        end.record(stream)
        events.append((start, end))
    torch.cuda.synchronize()
    times = [s.elapsed_time(e) / 1e3 / inner for s, e in events]
    return statistics.median(times), mode


def time_cpu(call, nsets: int, iters: int, warmup: int) -> float:
    k = 0
    for _ in range(max(1, warmup)):
        call(k)
        k += 1
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        call(k)
        t1 = time.perf_counter()
        k += 1
        times.append(t1 - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description="PyTorch dropout baseline timings")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--sizes", default=None,
                    help="comma-separated element counts; 2^k and 1<<k accepted "
                         "(default cuda: 2^16,2^20,2^24,2^28; cpu: 2^16,2^20,2^24)")
    ap.add_argument("--dtypes", default="f32,bf16,f16,f64",
                    help="comma-separated subset of f32,bf16,f16,f64")
    ap.add_argument("--ops", default=None,
                    help="comma-separated subset of " + ",".join(OPS) + " (default cuda: "
                         "all; cpu: the four elementwise ones)")
    ap.add_argument("--hidden", type=int, default=DEFAULT_HIDDEN,
                    help="H, the last dimension of the bias_dropout_residual ops "
                         f"(default {DEFAULT_HIDDEN}, as DROPKIT_GPU_BENCH_HIDDEN)")
    ap.add_argument("--p", type=float, default=0.1, help="drop probability (default 0.1)")
    ap.add_argument("--iters", type=int, default=None,
                    help="timed runs per case (cuda: batches, default 50; cpu: calls, "
                         "default 20)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    ap.add_argument("--working-set-mib", type=float, default=None,
                    help="rotate among enough input buffer sets to touch this many MiB "
                         "(default cuda: 256, above H100/H200 L2; cpu: 0 = one buffer)")
    ap.add_argument("--graph", action="store_true",
                    help="cuda only: replay each batch as a CUDA graph (no CPU launch cost)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    device = args.device
    if not 0.0 <= args.p < 1.0:
        ap.error("--p must be in [0, 1) for a meaningful baseline")
    sizes = [parse_size(s) for s in (args.sizes or DEFAULT_SIZES[device]).split(",") if s.strip()]
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    for d in dtypes:
        if d not in DTYPES:
            ap.error(f"unknown dtype {d!r}; choose from {','.join(DTYPES)}")
    ops_arg = args.ops if args.ops is not None else ",".join(DEFAULT_OPS[device])
    ops = [o.strip() for o in ops_arg.split(",") if o.strip()]
    for o in ops:
        if o not in OPS:
            ap.error(f"unknown op {o!r}; choose from {','.join(OPS)}")
    if args.hidden < 1:
        ap.error("--hidden must be >= 1")
    hidden = args.hidden
    iters = args.iters if args.iters is not None else DEFAULT_ITERS[device]
    if iters < 1:
        ap.error("--iters must be >= 1")
    ws_mib = args.working_set_mib if args.working_set_mib is not None else DEFAULT_WS_MIB[device]
    ws_bytes = int(ws_mib * (1 << 20))

    if device == "cuda":
        if not torch.cuda.is_available():
            print("# error: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
            return 2
        name = torch.cuda.get_device_name()
    else:
        name = cpu_model()
    torch.manual_seed(args.seed)

    print(f"# device: {name}, torch {torch.__version__}")
    if device == "cpu":
        print(f"# threads: {torch.get_num_threads()}")
    else:
        print(f"# cuda: {torch.version.cuda}, timing: CUDA events, "
              f"{'graph replay' if args.graph else 'eager launches'}")
    print(f"# p={args.p!r} iters={iters} warmup={args.warmup} working_set_mib={ws_mib:g} "
          f"hidden={hidden} statistic=median")
    sys.stdout.flush()

    for dname in dtypes:
        dtype = DTYPES[dname]
        elem = torch.empty((), dtype=dtype).element_size()
        for n in sizes:
            for op in ops:
                if op in FUSED_OPS and n % hidden != 0:
                    print(f"# skipped op={op} device={device} dtype={dname} n={n}: "
                          f"n is not a multiple of H={hidden}", flush=True)
                    continue
                if op in FAMILY_OPS and (n % CHANNEL_GROUP or n % DROPPATH_SAMPLES):
                    print(f"# skipped op={op} device={device} dtype={dname} n={n}: n is not "
                          f"a multiple of {CHANNEL_GROUP} and {DROPPATH_SAMPLES}", flush=True)
                    continue
                nsets = n_sets_for(op, n, elem, ws_bytes, hidden) if ws_bytes > 0 else 1
                sets = None
                try:
                    sets = build_sets(op, n, dtype, device, nsets, args.p, hidden)
                    call = make_call(op, sets, args.p)
                    # One untimed probe so unsupported dtype/op combinations fail here.
                    call(0)
                    if device == "cuda":
                        torch.cuda.synchronize()
                        med, mode = time_cuda(call, nsets, iters, args.warmup, args.graph)
                    else:
                        med = time_cpu(call, nsets, iters, args.warmup)
                        mode = None
                except (RuntimeError, NotImplementedError, TypeError) as e:
                    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    print(f"# skipped op={op} device={device} dtype={dname} n={n}: "
                          f"{type(e).__name__}: {msg}", flush=True)
                    continue
                finally:
                    sets = None
                    call = None
                    if device == "cuda":
                        torch.cuda.synchronize()
                        torch.cuda.empty_cache()
                gbps = bytes_moved(op, n, elem, hidden) / med / 1e9 if med > 0 else float("inf")
                extra = f" # sets={nsets}" + (f" mode={mode}" if mode else "")
                line = (f"RESULT impl=torch op={op} device={device} dtype={dname} n={n} "
                        f"median_s={med:.6e} gbps={gbps:.3f}")
                print(line, flush=True)
                if nsets > 1 or mode == "graph":
                    print(f"#   {extra.strip(' #')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
