#!/usr/bin/env bash
# cuda-emulated.sh: dropkit's whole CUDA path on the CPU. Builds the emulated CUDA driver
# (scripts/emulated-driver.sh), puts it on LD_LIBRARY_PATH as libcuda.so, and runs with
# DROPKIT_REQUIRE_CUDA=1 (so a test that cannot get the device fails instead of skipping):
# every CUDA test binary (each tests/*.rs that calls cuda_or_skip, generates per-device
# tests with test_device! or uses dropkit::cuda),
# the doctests, and the
# examples quickstart (which must say it ran on cuda), 02-tensor-parallel (CUDA shards
# against the CPU) and 03-cudarc-interop. Fails on a failed test, on any line saying
# "skipped", and on any sanitizer report of the driver; prints how many tests passed.
#
#   bash scripts/cuda-emulated.sh PERSONALITY...
#
#   sm90    compute capability 9.0, CUDA 13.0, memory pools (the compute_80 PTX loads)
#   sm75    compute capability 7.5, no memory pools (the portable PTX, cuMemAlloc/cuMemFree)
#   cuda12  a CUDA 12.4 driver: the embedded PTX (ISA 9.0) is rejected, so the NVRTC
#           fallback compiles a cubin; needs DROPKIT_NVRTC_LIB (the folder of an NVRTC 12
#           libnvrtc) and DROPKIT_CUDA_INCLUDE (check-cuda12.sh sets both)
#   blocks  sm90 with DROPKIT_CUDA_MAX_BLOCKS at 1, 2 and 3: the binaries of the parity
#           tests only (dropout, family, cuda_edges; all of each, CPU runs included)
#
# With NVCC set (CI), NVRTC 13 from beside it is on the path too, so the NVRTC tests of
# tests/kernels.rs run instead of skipping.
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$script_dir")"
cd "$repo"
log() { printf 'cuda-emulated: %s\n' "$*" >&2; }
[ "$#" -gt 0 ] || { log "usage: cuda-emulated.sh sm90|sm75|cuda12|blocks..."; exit 2; }

driver="$(bash scripts/emulated-driver.sh | tail -n 1)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
reports="$work/reports.log"
: >"$reports"

# The CUDA test binaries: every test file that asks for the GPU through tests/common
# (cuda_or_skip, or test_device!, whose <name>_cuda tests call it) or uses dropkit::cuda
# directly.
# tests/candle.rs is left out: its CUDA half is candle's CUDA backend (feature candle-cuda,
# cuBLAS and candle's own kernels), which this driver does not run (docs/CANDLE.md).
mapfile -t cuda_tests < <(grep -lE '(^|[^a-z_])(cuda_or_skip\(|test_device!)|dropkit::cuda::' tests/*.rs |
    grep -v '^tests/candle\.rs$' | xargs -n1 basename | sed 's/\.rs$//' | sort)
parity_tests=(dropout family cuda_edges add_norm shards shards_fused cuda_graph)
log "CUDA test binaries: ${cuda_tests[*]}"

nvrtc_path=""
if [ -n "${NVCC:-}" ]; then
    cuda_root="$(dirname "$(dirname "$NVCC")")"
    nvrtc_path="$cuda_root/lib"
    export DROPKIT_CUDA_INCLUDE="${DROPKIT_CUDA_INCLUDE:-$cuda_root/include}"
fi

passed=0
runs=0
status=0
# run NAME CMD...: one command under the driver; its output is kept and checked.
run() {
    local name="$1"
    shift
    local out="$work/run-$runs.log"
    runs=$((runs + 1))
    local rc=0
    "$@" >"$out" 2>&1 || rc=$?
    local n
    n="$( (grep -Eo 'test result: ok\. [0-9]+ passed' "$out" || true) | awk '{ s += $4 } END { print s + 0 }')"
    passed=$((passed + n))
    if [ "$rc" -ne 0 ]; then
        tail -n 60 "$out" >&2
        log "FAIL: $name (exit $rc)"
        status=1
    elif grep -Eq '(^|[^a-z_])skipped' "$out"; then
        grep -E '(^|[^a-z_])skipped' "$out" | head -n 20 >&2
        log "FAIL: $name: something skipped"
        status=1
    else
        printf '  %-58s ok, %4d tests passed\n' "$name" "$n"
    fi
    : # the caller checks example output itself
    last_output="$out"
}

# personality NAME: the driver's environment for that personality, as `env` arguments.
personality_env() {
    local lib="$driver${nvrtc_path:+:$nvrtc_path}"
    case "$1" in
        sm90) echo "DKEMU_CC=9.0 DKEMU_DRIVER=13.0 DKEMU_POOLS=1 LD_LIBRARY_PATH=$lib" ;;
        sm75) echo "DKEMU_CC=7.5 DKEMU_DRIVER=13.0 DKEMU_POOLS=0 LD_LIBRARY_PATH=$lib" ;;
        cuda12)
            [ -n "${DROPKIT_NVRTC_LIB:-}" ] ||
                { log "cuda12 needs DROPKIT_NVRTC_LIB (an NVRTC 12 library folder)"; exit 2; }
            echo "DKEMU_CC=9.0 DKEMU_DRIVER=12.4 DKEMU_POOLS=1 LD_LIBRARY_PATH=$driver:$DROPKIT_NVRTC_LIB" ;;
        *) log "unknown personality $1"; exit 2 ;;
    esac
}

for p in "$@"; do
    base="sm90"
    [ "$p" = "blocks" ] || base="$p"
    # shellcheck disable=SC2206
    penv=($(personality_env "$base") DROPKIT_REQUIRE_CUDA=1 DKEMU_REPORT_LOG="$reports")
    log "personality $p: ${penv[*]}"
    if [ "$p" = "blocks" ]; then
        for k in 1 2 3; do
            for t in "${parity_tests[@]}"; do
                run "$p: $t, DROPKIT_CUDA_MAX_BLOCKS=$k" \
                    env "${penv[@]}" DROPKIT_CUDA_MAX_BLOCKS="$k" cargo test --quiet --test "$t"
            done
        done
        continue
    fi
    for t in "${cuda_tests[@]}"; do
        run "$p: $t" env "${penv[@]}" cargo test --quiet --test "$t"
    done
    run "$p: doctests" env "${penv[@]}" cargo test --quiet --doc
    run "$p: example quickstart" env "${penv[@]}" cargo run --quiet --example quickstart
    if ! grep -q '^ran on: cuda' "$last_output"; then
        log "FAIL: $p: quickstart did not run on cuda"
        status=1
    fi
    run "$p: example 02-tensor-parallel" env "${penv[@]}" cargo run --quiet --example 02-tensor-parallel
    if ! grep -q 'on cuda' "$last_output"; then
        log "FAIL: $p: 02-tensor-parallel had no CUDA shard"
        status=1
    fi
    run "$p: example 05-model-parallel" env "${penv[@]}" cargo run --quiet --example 05-model-parallel
    run "$p: example 03-cudarc-interop" env "${penv[@]}" cargo run --quiet --example 03-cudarc-interop
    run "$p: example 06-cuda-graph" env "${penv[@]}" cargo run --quiet --example 06-cuda-graph
    if ! grep -q '^replay 4: .*matches eager calls: true' "$last_output"; then
        log "FAIL: $p: 06-cuda-graph did not replay on cuda"
        status=1
    fi
done

if [ -s "$reports" ]; then
    log "FAIL: the emulated driver reported:"
    head -n 40 "$reports" >&2
    status=1
fi
log "$runs runs, $passed CUDA tests passed on the emulated driver ($*)"
[ "$status" -eq 0 ] && log "ok" || log "FAILED"
exit "$status"
