#!/usr/bin/env bash
# sass-budget.sh: a static instruction budget for the kernels' main loops, without a GPU.
# Compiles every kernels/*.cu to PTX with the pinned nvcc and build.rs's flags, assembles it
# for sm_90 with ptxas, disassembles it (cuobjdump from PyPI), finds the main loop of each
# forward and backward kernel and prints instructions per element: the loop's SASS
# instructions divided by the elements one iteration handles (its 16-byte stores times
# 16 / sizeof(T)). Exits non-zero when a kernel is over its budget (table below).
#
# Why it matters: an H200 issues about 33.5 T thread-instructions/s and moves about
# 4.3 TB/s; a forward with bits moves 2*sizeof(T) + 1/8 bytes per element, so it stays
# memory-bound up to about 32 instructions per element for bf16/f16 and 62 for f32.
#
# Main loop = a loop (a backward branch and the code from its target) that holds 16-byte
# global stores; the kernels keep the scalar tail out of it, so the count is exact for the
# full-vector path. A kernel with a mask has one loop that writes bits (it holds warp
# shuffles) and one that does not (the regenerate form); each comes once for an index base
# that is a multiple of 4 and once per other remainder ("shifted": one more Philox call
# per step). The table shows the aligned loop and the dearest shifted one; the budget
# applies to all. Every kernel (each .entry of the PTX) must have a budget or be in the
# exemption list (with its reason, printed): one that is neither fails, so a new kernel
# cannot go unmeasured.
#
# Environment: NVCC as in check-ptx.sh; DROPKIT_CUDA_ARCH the PTX target (default
# compute_80: what a GPU of sm_80 or newer loads); DROPKIT_SASS_VENV where cuobjdump is
# installed (default target/.venv-sass); SASS_BUDGET_KEEP=DIR keeps the .sass listings.
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$script_dir")"
cd "$repo"

nvcc="$(bash "$script_dir/find-nvcc.sh")"
ptxas="$(dirname "$nvcc")/ptxas"

# cuobjdump from PyPI, pinned: the 13.2 wheels read the cubins of ptxas 13.0 (there are
# no 13.0 wheels of it).
venv="${DROPKIT_SASS_VENV:-$repo/target/.venv-sass}"
find_cuobjdump() {
    [ -d "$venv/lib" ] && find "$venv/lib" -type f -path '*/bin/cuobjdump' | sort | head -n 1
    return 0
}
cuobjdump="$(find_cuobjdump)"
if [ -z "$cuobjdump" ]; then
    echo "sass-budget: installing cuobjdump into $venv" >&2
    "${PYTHON:-python3}" -m venv "$venv" >&2
    "$venv/bin/python" -m pip install --quiet nvidia-cuda-cuobjdump==13.2.78 \
        nvidia-cuda-nvdisasm==13.2.78 >&2
    cuobjdump="$(find_cuobjdump)"
fi
[ -x "$cuobjdump" ] || { echo "sass-budget: no cuobjdump in $venv" >&2; exit 1; }

arch="${DROPKIT_CUDA_ARCH:-compute_80}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for cu in kernels/*.cu; do
    name="$(basename "$cu" .cu)"
    # Keep in sync with build.rs (and check-ptx.sh).
    "$nvcc" -ptx -O3 -std=c++17 --fmad=false -arch="$arch" -I kernels -o "$tmp/$name.ptx" "$cu"
    "$ptxas" -arch=sm_90 -o "$tmp/$name.cubin" "$tmp/$name.ptx"
    "$cuobjdump" -sass "$tmp/$name.cubin" >"$tmp/$name.sass"
done
if [ -n "${SASS_BUDGET_KEEP:-}" ]; then
    mkdir -p "$SASS_BUDGET_KEEP"
    cp "$tmp"/*.sass "$SASS_BUDGET_KEEP/"
fi
echo "sass-budget: $("$nvcc" --version | tail -n 1), PTX $arch, ptxas sm_90, $("$cuobjdump" --version | tail -n 1)" >&2

python3 - "$tmp"/*.sass <<'PY'
import re
import sys

# Budgets in SASS instructions per element, per (kernel without dtype, dtype). The
# forwards' limits come from issue 10 (bf16/f16 <= 32, f32 <= 48); the others are what
# was measured (PTX compute_80), rounded up a little, so that a regression shows.
BUDGET = {
    ("dropout_fwd", "bf16"): 32, ("dropout_fwd", "f16"): 32,
    ("dropout_fwd", "f32"): 48, ("dropout_fwd", "f64"): 44,
    ("dropout_bwd_bits", "bf16"): 8, ("dropout_bwd_bits", "f16"): 8,
    ("dropout_bwd_bits", "f32"): 8, ("dropout_bwd_bits", "f64"): 12,
    ("alpha_dropout_fwd", "bf16"): 34, ("alpha_dropout_fwd", "f16"): 34,
    ("alpha_dropout_fwd", "f32"): 48, ("alpha_dropout_fwd", "f64"): 48,
    # Moves 4*S + 1/8 bytes per element (x, residual, out, bits; bias stays in cache).
    ("bias_dropout_residual_fwd", "bf16"): 40, ("bias_dropout_residual_fwd", "f16"): 40,
    ("bias_dropout_residual_fwd", "f32"): 48, ("bias_dropout_residual_fwd", "f64"): 48,
    ("grouped_scale", "bf16"): 16, ("grouped_scale", "f16"): 16,
    ("grouped_scale", "f32"): 22, ("grouped_scale", "f64"): 40,
    ("grouped_alpha", "bf16"): 16, ("grouped_alpha", "f16"): 16,
    ("grouped_alpha", "f32"): 24, ("grouped_alpha", "f64"): 42,
    # A thread walks a column (elements h apart), so its loop stores one element per STG,
    # not a 16-byte vector (ELEMENT_STORES): elements per iteration = its element stores.
    # Two loops, budgeted apart: "bits in" reads the saved mask (unrolled by 4), "regen"
    # draws one Philox call per element. Measured (PTX compute_80): bits in 29.2 (bf16,
    # f16), 26.0 (f32), 25.0 (f64); regen 85 (bf16, f16), 82 (f32, f64); budgets ~10% over,
    # rounded up to even, as above. regen is compute-bound but for f64 (the bound is ~31,
    # ~62, ~125 for its 2*sizeof(T) bytes per element): the budget only stops it worsening.
    ("bias_dropout_residual_bwd", "bf16", "none (bits in)"): 32,
    ("bias_dropout_residual_bwd", "f16", "none (bits in)"): 32,
    ("bias_dropout_residual_bwd", "f32", "none (bits in)"): 28,
    ("bias_dropout_residual_bwd", "f64", "none (bits in)"): 28,
    ("bias_dropout_residual_bwd", "bf16", "none (regen)"): 94,
    ("bias_dropout_residual_bwd", "f16", "none (regen)"): 94,
    ("bias_dropout_residual_bwd", "f32", "none (regen)"): 90,
    ("bias_dropout_residual_bwd", "f64", "none (regen)"): 90,
}
# The row kernels of the fused dropout + add + norm (a warp per row): every loop that
# stores, per element ("row pass": forward pass 1 writes s, pass 3 z; backward pass 2 dx and
# dresidual; the loops without stores, the variance and the backward's sums, are not
# counted). Measured (PTX compute_80), worst variant (bias, residual, training present):
# fwd 41 (bf16, f16), 24 (rf32), 35 (f32), 37 (f64); bwd 61 (bf16, f16), 57 (rf32), 51
# (f32), 53 (f64); budgets ~10% over. Memory-bound limits (bytes as docs/PERFORMANCE.md
# counts them for this op: x, residual in; s, z out; the mask): a bf16 forward moves 8.25
# B/element, so ~64 instructions for all its passes; with pass 3 at 22 and the variance
# loop it is at that edge, where f32 (16.25 B, ~127) has room: the GPU run (issue 26)
# measures it with ncu.
for _d, _f, _b in [("f32", 39, 56), ("f64", 41, 58), ("f16", 45, 67), ("bf16", 45, 67),
                   ("f16_rf32", 27, 63), ("bf16_rf32", 27, 63)]:
    BUDGET[("dropout_add_norm_fwd", _d)] = _f
    BUDGET[("dropout_add_norm_bwd", _d)] = _b
# The fused forward from given bits (shards of any layout): a scalar grid-stride loop, a
# thread per element, so each iteration stores one element (ELEMENT_STORES). Measured
# (PTX compute_80): 46 (bf16, f16), 42 (f32, f64), against 40 / 48 for the drawing kernel's
# 16-byte vectors; budgets ~10% over. A first correct version: a vector loop is left to
# the GPU tuning (issue 26).
for _d, _b in [("bf16", 50), ("f16", 50), ("f32", 46), ("f64", 46)]:
    BUDGET[("bias_dropout_residual_bits_fwd", _d)] = _b
ELEMENT_STORES = {"bias_dropout_residual_bwd", "dropout_add_norm_fwd", "dropout_add_norm_bwd",
                  "bias_dropout_residual_bits_fwd"}
ROW_KERNELS = {"dropout_add_norm_fwd", "dropout_add_norm_bwd"}
# Kernels with no budget, and why (printed with the table). Their loops store no elements
# (16-byte vectors or single ones) to count, and none is an elementwise pass.
EXEMPT = {
    "column_sum_partial": "a column reduction: its loop is loads and f64 adds with no store"
    " (one 8-byte store per (block, column) after it), so stores count no elements",
    "column_sum_finish": "a short serial loop per column over the blocks' partial sums"
    " (rows / block_rows of them), no store in it; work h * blocks, small beside a pass",
    "add_norm_dgamma_partial": "a column reduction as column_sum_partial (loads, the product"
    " dz * y and f64 adds; one 8-byte store per (block, column) after the loop), so stores"
    " count no elements",
    "dropout_mask_bits": "one 4-byte word per 32 decisions, and decisions are few (N*C"
    " or N, not elements), so there is no per-element cost to budget",
    "dropout_mask_bits_shard": "one 4-byte word per 32 decisions, no element stored; the"
    " general-layout mask (a coordinate odometer per decision, a Philox call per four"
    " consecutive decisions), whose cost docs/PERFORMANCE.md does not claim yet",
}
SIZE = {"bf16": 2, "f16": 2, "f32": 4, "f64": 8}
# The f32-residual-stream forms of the norm kernels are counted by their input dtype.
SIZE.update({"f16_rf32": 2, "bf16_rf32": 2})
# The Philox multipliers (0xd2511f53, 0xcd9e8d57), as SASS writes them as immediates.
PHILOX_RE = re.compile(r"-0x2daee0ad|-0x326172a9|0xd2511f53|0xcd9e8d57")
# An element-wide global store per size (STG.E.U16, STG.E, STG.E.64).
ELEMENT_STG = {2: r"\bSTG\.E(\.\w+)*\.U16\b", 4: r"\bSTG\.E\s",
               8: r"\bSTG\.E(\.\w+)*\.64\b"}

line_re = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
functions = {}
entries = set()
for path in sys.argv[1:]:
    # The kernels of the module: its PTX (beside the .sass) names each .entry.
    ptx = path[: -len(".sass")] + ".ptx"
    for line in open(ptx):
        m = re.match(r"\s*(?:\.(?:visible|weak)\s+)?\.entry\s+([\w$]+)", line)
        if m:
            entries.add(m.group(1))
    name = None
    for line in open(path):
        if "Function :" in line:
            name = line.split("Function :")[1].strip()
            functions[name] = []
            continue
        m = line_re.search(line)
        if name and m:
            functions[name].append((int(m.group(1), 16), m.group(2)))


def loops(code):
    """(first, last) addresses of every innermost loop: a branch back to an earlier
    address whose range holds no other such branch and no EXIT (a branch back from
    out-of-line code after the end, such as a warp-divergence fallback, is not a loop)."""
    back = []
    for addr, text in code:
        m = re.search(r"\bBRA\b.*?(0x[0-9a-f]+)\s*$", text)
        if m and int(m.group(1), 16) < addr:
            back.append((int(m.group(1), 16), addr))
    found = []
    for lo, hi in back:
        nested = any(lo <= lo2 and hi2 < hi for lo2, hi2 in back if (lo2, hi2) != (lo, hi))
        exits = any(lo <= a <= hi and re.search(r"\bEXIT\b", t) for a, t in code)
        if not nested and not exits:
            found.append((lo, hi))
    return found


def split(fn):
    """(kernel, dtype) of a kernel name; dtype None for one without a dtype suffix."""
    for dtype in sorted(SIZE, key=len, reverse=True):
        if fn.endswith("_" + dtype):
            return fn[: -len(dtype) - 1], dtype
    return fn, None


rows, failed = [], False
# Every kernel is budgeted or exempt; none is skipped silently (nor a budget left stale).
if not entries:
    print("sass-budget: FAIL: no .entry in the PTX (nothing to check)")
    failed = True
for fn in sorted(entries - set(functions)):
    print(f"sass-budget: FAIL: {fn}: in the PTX but not in the SASS")
    failed = True
budgeted = {k[:2] for k in BUDGET}
exempt = {}
for fn in sorted(entries):
    kernel, dtype = split(fn)
    if kernel in EXEMPT:
        exempt.setdefault(kernel, []).append(dtype)
    elif (kernel, dtype) not in budgeted:
        print(f"sass-budget: FAIL: {fn}: no budget and not exempt (add it to BUDGET or EXEMPT)")
        failed = True
for key in sorted(budgeted - {split(fn) for fn in entries}):
    print(f"sass-budget: FAIL: budget for {key}, a kernel not in the cubins")
    failed = True
for kernel in sorted(set(EXEMPT) - set(exempt)):
    print(f"sass-budget: FAIL: {kernel} is exempt but not in the cubins")
    failed = True

for fn in sorted(entries & set(functions)):
    kernel, dtype = split(fn)
    if (kernel, dtype) not in budgeted:
        continue  # exempt, or failed above
    code = functions[fn]
    element = kernel in ELEMENT_STORES
    main = []
    for lo, hi in loops(code):
        body = [t for a, t in code if lo <= a <= hi]
        if element:
            stores = sum(1 for t in body if re.search(ELEMENT_STG[SIZE[dtype]], t))
            if stores == 0:
                continue
            philox = any(PHILOX_RE.search(t) for t in body)
            if kernel in ROW_KERNELS:
                # A lane's iteration is one column of a row (the spec's order forbids
                # vectors per lane); its stores are that element's outputs (s; z; dx and
                # dresidual), so elements per iteration is 1.
                main.append(("row pass", len(body), 1))
                continue
            form = "none (regen)" if philox else "none (bits in)"
            main.append((form, len(body), stores))
            continue
        stores = sum(1 for t in body if re.search(r"\bSTG\.E(\.\w+)*\.128\b", t))
        if stores == 0:
            continue  # not a full-vector loop (a tail, or a loop inside the setup)
        form = "bits" if any("SHFL" in t for t in body) else "none"
        main.append((form, len(body), stores * 16 // SIZE[dtype]))
    wanted = {k[2] for k in BUDGET if len(k) == 3 and k[:2] == (kernel, dtype)}
    if not main:
        width = "element" if element else "16-byte"
        print(f"sass-budget: FAIL: {fn}: no main loop with {width} stores found")
        failed = True
        continue
    for form in sorted(wanted - {f for f, _, _ in main}):
        print(f"sass-budget: FAIL: {fn}: no '{form}' main loop found")
        failed = True
    for form in sorted({f for f, _, _ in main}):
        budget = BUDGET.get((kernel, dtype, form), BUDGET.get((kernel, dtype)))
        if budget is None:
            print(f"sass-budget: FAIL: {fn}: a '{form}' main loop with no budget")
            failed = True
            continue
        # The cheapest loop of a form is the aligned one (index_base % 4 == 0); dearer
        # ones are the shifted instantiations (one more Philox call per step).
        # The table shows the aligned loop and the dearest shifted one; all are checked.
        variants = sorted((n / e, n, e) for f, n, e in main if f == form)
        for per, n, e in variants:
            failed |= per > budget
        if len(variants) == 1:
            shown = [("-", variants[0])]
        elif kernel in ROW_KERNELS:
            # Row passes and the compiler's copies of them (one per present input).
            shown = [("cheapest loop", variants[0]), (f"dearest of {len(variants)}", variants[-1])]
        else:
            shown = [("aligned", variants[0]), (f"worst of {len(variants) - 1} shifted", variants[-1])]
        for label, (per, n, e) in shown:
            ok = per <= budget
            failed |= not ok
            rows.append((kernel, dtype, form, label, n, e, per, budget, "ok" if ok else "OVER"))

head = ("kernel", "dtype", "mask out", "index", "instr/loop", "elem/iter", "instr/elem", "budget", "")
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
for k, d, f, lab, n, e, per, b, st in rows:
    print(f"| {k} | {d} | {f} | {lab} | {n} | {e} | {per:.1f} | {b} | {st} |")
for kernel in sorted(exempt):
    dtypes = ", ".join(sorted(d for d in exempt[kernel] if d)) or "-"
    print(f"exempt: {kernel} ({dtypes}): {EXEMPT[kernel]}")
if failed:
    print("sass-budget: FAILED (over budget, a main loop not found, or a kernel neither"
          " budgeted nor exempt)", file=sys.stderr)
    sys.exit(1)
print("sass-budget: ok", file=sys.stderr)
PY
