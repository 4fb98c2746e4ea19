#!/usr/bin/env bash
# bench-cpu.sh: dropkit's CPU benchmark (benches/cpu_dropout.rs, criterion), the PyTorch
# CPU baseline (benches/torch_baseline.py --device cpu) and candle's dropout
# (benches/candle_dropout.rs, `candle` feature), back to back on the same machine, then
# scripts/compare.py's tables with dropkit, PyTorch and candle side by side. Installs nothing.
#
# Usage: scripts/bench-cpu.sh [LOG_DIR]        (default docs/bench-logs/cpu-<date>)
#
# Environment:
#   TORCH_PYTHON          python with torch for the baseline (default python3)
#   PYTHON                python for the helper scripts (default python3; no packages needed)
#   DROPKIT_BENCH_SIZES   exponents of 2, both sides (default 16,20,24)
#   DROPKIT_BENCH_DTYPES  dtypes, both sides (default f32,bf16,f16,f64)
#   CRITERION_ARGS        criterion options, e.g. "--warm-up-time 1 --measurement-time 2"
#   TORCH_ARGS            extra torch_baseline.py options, e.g. "--iters 5"
#   SKIP_TORCH=1          no PyTorch baseline
#   SKIP_CANDLE=1         no candle baseline (it builds dropkit with the candle feature)
#   DROPKIT_CPU_SIMD      dropkit's instruction set (scalar, avx2, avx512; default: the best)
# Thread counts are the defaults of both (rayon and torch: all cores); RAYON_NUM_THREADS and
# OMP_NUM_THREADS / torch's own settings pass through if set.
#
# Writes into LOG_DIR: machine.txt, criterion.log (cargo bench output), dropkit-func.txt and
# dropkit-raw.txt (RESULT lines of each API, impl=dropkit), dropkit-all.txt (both, raw as
# impl=dropkit-raw), torch-cpu.txt, candle-cpu.txt, compare-func.md (with the ratio targets)
# and compare-raw.md (with the % of copy targets). Exits non-zero if the dropkit bench fails;
# a failing torch or candle run is reported and the tables show '-' for it.
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$script_dir")"
cd "$repo"

log_dir="${1:-docs/bench-logs/cpu-$(date +%Y-%m-%d)}"
mkdir -p "$log_dir"
python="${PYTHON:-python3}"
torch_python="${TORCH_PYTHON:-python3}"
sizes="${DROPKIT_BENCH_SIZES:-16,20,24}"
dtypes="${DROPKIT_BENCH_DTYPES:-f32,bf16,f16,f64}"
export DROPKIT_BENCH_SIZES="$sizes" DROPKIT_BENCH_DTYPES="$dtypes"
# torch_baseline.py takes sizes as 2^k.
torch_sizes="$(printf '%s' "$sizes" | tr -d ' ' | sed -E 's/([0-9]+)/2^\1/g')"

say() { printf '== %s\n' "$*" >&2; }

say "machine -> $log_dir/machine.txt"
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "git: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (dirty)')"
    echo "host: $(uname -srm)"
    lscpu 2>/dev/null | grep -E '^(Model name|CPU\(s\)|Thread|Core|Socket|L[123])' || true
    echo "simd: $(grep -m1 -ow -E 'avx2|f16c|avx512f|avx512bw|avx512vl|avx512_bf16|avx512_fp16' /proc/cpuinfo 2>/dev/null | sort -u | tr '\n' ' ')"
    echo "DROPKIT_CPU_SIMD=${DROPKIT_CPU_SIMD:-unset (best available)} DROPKIT_CPU_CACHE_MB=${DROPKIT_CPU_CACHE_MB:-unset (256)}"
    echo "nproc: $(nproc 2>/dev/null || echo '?')"
    echo "loadavg at start: $(cat /proc/loadavg 2>/dev/null || echo '?')"
    rustc --version 2>/dev/null || true
    echo "sizes: 2^{$sizes} dtypes: $dtypes criterion args: ${CRITERION_ARGS:-(defaults)}"
    echo "RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-unset} OMP_NUM_THREADS=${OMP_NUM_THREADS:-unset}"
} >"$log_dir/machine.txt"

say "dropkit: cargo bench --bench cpu_dropout -- ${CRITERION_ARGS:-} -> $log_dir/criterion.log"
stamp="$log_dir/.start"
touch "$stamp"
# shellcheck disable=SC2086  # CRITERION_ARGS is a list of options
cargo bench --bench cpu_dropout -- ${CRITERION_ARGS:-} 2>&1 | tee "$log_dir/criterion.log"
"$python" scripts/criterion_results.py --newer-than "$stamp" --api func >"$log_dir/dropkit-func.txt"
"$python" scripts/criterion_results.py --newer-than "$stamp" --api raw >"$log_dir/dropkit-raw.txt"
"$python" scripts/criterion_results.py --newer-than "$stamp" --api both >"$log_dir/dropkit-all.txt"
rm -f "$stamp"
echo "loadavg after dropkit: $(cat /proc/loadavg 2>/dev/null || echo '?')" >>"$log_dir/machine.txt"

torch_out="$log_dir/torch-cpu.txt"
if [ "${SKIP_TORCH:-0}" = 1 ]; then
    say "torch: skipped (SKIP_TORCH=1)"
    : >"$torch_out"
else
    say "torch: $torch_python benches/torch_baseline.py --device cpu --sizes $torch_sizes -> $torch_out"
    # shellcheck disable=SC2086  # TORCH_ARGS is a list of options
    if ! "$torch_python" benches/torch_baseline.py --device cpu --sizes "$torch_sizes" \
        --dtypes "$dtypes" ${TORCH_ARGS:-} 2>&1 | tee "$torch_out"; then
        say "torch baseline failed (is torch importable by $torch_python? set TORCH_PYTHON)"
    fi
    echo "loadavg after torch: $(cat /proc/loadavg 2>/dev/null || echo '?')" >>"$log_dir/machine.txt"
fi

candle_out="$log_dir/candle-cpu.txt"
if [ "${SKIP_CANDLE:-0}" = 1 ]; then
    say "candle: skipped (SKIP_CANDLE=1)"
    : >"$candle_out"
else
    say "candle: cargo bench --features candle --bench candle_dropout -> $candle_out"
    if ! cargo bench --features candle --bench candle_dropout 2>&1 | tee "$candle_out"; then
        say "candle baseline failed"
    fi
    echo "loadavg after candle: $(cat /proc/loadavg 2>/dev/null || echo '?')" >>"$log_dir/machine.txt"
fi

"$python" scripts/compare.py --targets ratios "$log_dir/dropkit-func.txt" "$torch_out" \
    "$candle_out" >"$log_dir/compare-func.md"
"$python" scripts/compare.py --targets copy "$log_dir/dropkit-raw.txt" "$torch_out" \
    "$candle_out" >"$log_dir/compare-raw.md"
echo
echo "# dropkit functional API (allocates outputs, like torch and candle) vs torch and candle, CPU"
echo "# % copy: against x.to_vec() (allocate + copy)"
cat "$log_dir/compare-func.md"
echo "# dropkit backend into preallocated buffers vs torch and candle, CPU"
echo "# % copy: against copy_from_slice into a preallocated Vec"
cat "$log_dir/compare-raw.md"
say "logs in $log_dir"
