#!/usr/bin/env bash
# run.sh of the dropkit GPU bundle (built by scripts/gpu-bundle.sh, which copies this file
# into gpu-bundle/). Runs on a GPU host with a CUDA 13.0+ driver; needs no Rust.
#
# Usage: OUT=./out bash run.sh
#
# Steps, each with its own timeout, continuing after a failure; every exit code goes to
# $OUT/summary.txt ("skipped" when a tool is missing or the time budget is spent):
#   nvidia-smi; every test binary (DROPKIT_REQUIRE_CUDA=1: a missing GPU fails); the
#   quickstart; the GPU bench (all ops, the fused bias + dropout + residual cases included);
#   torch_baseline.py --device cuda (if torch imports; all ops, its eager three-pass
#   bias + dropout + residual included, with the bench's H) and compare.py on both (its
#   second table holds the fused forward to the 1.5x target against torch's three passes);
#   then, time allowing and the tools present: compute-sanitizer
#   memcheck and racecheck on the *_cuda test binaries (filtered), ncu on a short GPU bench
#   run, and a short CPU bench with the torch CPU baseline.
#
# Settings (environment):
#   OUT                 output directory (default ./out)
#   BUDGET_S            total seconds for all steps (default 470, about 8 minutes)
#   PYTHON              python with torch for the baseline (default python3)
#   SANITIZER_FILTER    test filters for the sanitizer runs (default: f32, f16, errors)
#   TORCH_ARGS          extra torch_baseline.py options (default none)
#   DROPKIT_GPU_BENCH_HIDDEN  H of the fused cases, both benches (default 4096)
#
# Memory: the largest fused case, f64 at 2^28 elements, holds x, residual and out (3 x 2 GiB)
# plus the three-pass reference's intermediates; the GPU bench budgets about 18 GiB for it
# and torch about 11 GiB, both well inside an 80 GB H100. Where a case does not fit, each
# bench prints a "# skipped ..." line for it and goes on.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${OUT:-./out}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
budget="${BUDGET_S:-470}"
python="${PYTHON:-python3}"
summary="$out/summary.txt"
cd "$here"

export DROPKIT_REQUIRE_CUDA=1
export DROPKIT_TEST_DATA="$here/data"
export RUST_BACKTRACE=1
# Criterion's output (cpu bench) goes under OUT, not into the bundle.
export CRITERION_HOME="$out/criterion"

: >"$summary"
printf '%-28s %8s %6s  %s\n' step exit secs log >>"$summary"

# step NAME CAP_SECONDS MIN_SECONDS LOG -- command...: runs the command with a timeout of
# min(CAP, time left), logging stdout and stderr; skips when less than MIN is left.
step() {
    local name="$1" cap="$2" min="$3" log="$4"
    shift 5
    local left=$((budget - SECONDS))
    if [ "$left" -lt "$min" ]; then
        printf '%-28s %8s %6s  %s\n' "$name" skipped 0 "(time budget: ${left}s left)" >>"$summary"
        echo "== $name: skipped, ${left}s left" >&2
        return 0
    fi
    local limit=$((cap < left ? cap : left))
    echo "== $name (timeout ${limit}s) -> $log" >&2
    local t0=$SECONDS rc
    timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
    rc=$?
    printf '%-28s %8s %6s  %s\n' "$name" "$rc" $((SECONDS - t0)) "$(basename "$log")" >>"$summary"
    tail -n 3 "$log" >&2
    return 0
}

skip() {
    printf '%-28s %8s %6s  %s\n' "$1" skipped 0 "($2)" >>"$summary"
    echo "== $1: skipped ($2)" >&2
}

find_tool() {
    local name="$1" c
    if command -v "$name" >/dev/null 2>&1; then
        command -v "$name"
        return 0
    fi
    for c in "${CUDA_HOME:-/usr/local/cuda}/bin/$name" /usr/local/cuda/bin/"$name" \
        /opt/nvidia/nsight-compute/*/"$name" /usr/local/cuda/nsight-compute*/"$name"; do
        if [ -x "$c" ]; then
            echo "$c"
            return 0
        fi
    done
    return 1
}

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host: $(uname -srm), $(nproc) cpus"
    grep -m1 'model name' /proc/cpuinfo 2>/dev/null || true
    cat "$here/MANIFEST.txt" 2>/dev/null | head -n 6
} >"$out/host.txt"

step nvidia-smi 30 5 "$out/nvidia-smi.txt" -- nvidia-smi

# Every test binary; the CPU ones too (they check the same build).
for t in "$here"/bin/test-*; do
    name="$(basename "$t")"
    step "$name" 180 20 "$out/$name.log" -- "$t"
done

step quickstart 60 10 "$out/quickstart.log" -- "$here/bin/quickstart"

step gpu_dropout 200 30 "$out/gpu_dropout.txt" -- "$here/bin/gpu_dropout"

if "$python" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
    >/dev/null 2>&1; then
    # shellcheck disable=SC2086  # TORCH_ARGS is a list of options
    step torch_baseline_cuda 200 30 "$out/torch-cuda.txt" -- \
        "$python" "$here/torch_baseline.py" --device cuda \
        --hidden "${DROPKIT_GPU_BENCH_HIDDEN:-4096}" ${TORCH_ARGS:-}
else
    skip torch_baseline_cuda "$python cannot import torch with CUDA"
fi
results=()
for f in "$out/gpu_dropout.txt" "$out/torch-cuda.txt"; do
    [ -s "$f" ] && results+=("$f")
done
if [ "${#results[@]}" -gt 0 ]; then
    step compare_cuda 30 2 "$out/compare-cuda.md" -- "$python" "$here/compare.py" "${results[@]}"
else
    skip compare_cuda "no GPU results"
fi

# Sanitizers on the CUDA test binaries, on a filter that keeps them within the budget:
# 4-byte and 2-byte kernel paths (every length, probability and alignment of the test) and
# the error paths.
read -r -a filters <<<"${SANITIZER_FILTER:-cuda_matches_cpu_f32 cuda_matches_cpu_f16 errors}"
if sanitizer="$(find_tool compute-sanitizer)"; then
    for t in "$here"/bin/test-*_cuda; do
        [ -x "$t" ] || continue
        name="$(basename "$t")"
        for tool in memcheck racecheck; do
            step "$tool-$name" 150 40 "$out/$tool-$name.log" -- \
                "$sanitizer" --tool "$tool" --error-exitcode 99 "$t" "${filters[@]}"
        done
    done
else
    skip compute-sanitizer "not found"
fi

# Nsight Compute on a short GPU bench run: every elementwise case once at 2^24 (profile
# mode), so each dropout kernel of each dtype is profiled (24 launches, the -c bound). The
# op list is pinned: the fused cases also launch dropout_* kernels and would shift the count.
if ncu="$(find_tool ncu)"; then
    step ncu 150 40 "$out/ncu.log" -- env DROPKIT_GPU_BENCH_PROFILE=1 \
        DROPKIT_GPU_BENCH_SIZES=24 DROPKIT_GPU_BENCH_OPS=copy,fwd_bits,fwd_regen,bwd_bits,bwd_regen \
        "$ncu" --clock-control none -k 'regex:^dropout_' -c 24 \
        --export "$out/ncu-gpu_dropout" --force-overwrite "$here/bin/gpu_dropout"
    if [ -f "$out/ncu-gpu_dropout.ncu-rep" ]; then
        step ncu_details 60 10 "$out/ncu-details.txt" -- \
            "$ncu" --import "$out/ncu-gpu_dropout.ncu-rep" --page details
    fi
else
    skip ncu "not found"
fi

# A short CPU run on this host's cores (the lead's full CPU numbers come from
# scripts/bench-cpu.sh): two sizes, two dtypes, short criterion times.
step cpu_dropout 200 120 "$out/cpu_dropout.log" -- env DROPKIT_BENCH_SIZES=20,24 \
    DROPKIT_BENCH_DTYPES=f32,bf16 "$here/bin/cpu_dropout" --bench \
    --warm-up-time 1 --measurement-time 2
if [ -d "$out/criterion" ]; then
    step cpu_results 30 2 "$out/dropkit-cpu.txt" -- \
        "$python" "$here/criterion_results.py" --criterion-dir "$out/criterion" --api func
    if "$python" -c 'import torch' >/dev/null 2>&1; then
        step torch_baseline_cpu 120 60 "$out/torch-cpu.txt" -- \
            "$python" "$here/torch_baseline.py" --device cpu --sizes '2^20,2^24' \
            --dtypes f32,bf16 --iters 10
        step compare_cpu 30 2 "$out/compare-cpu.md" -- \
            "$python" "$here/compare.py" "$out/dropkit-cpu.txt" "$out/torch-cpu.txt"
    fi
fi

echo "total ${SECONDS}s" >>"$summary"
echo >&2
cat "$summary" >&2
echo "results in $out" >&2
