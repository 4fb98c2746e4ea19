#!/usr/bin/env bash
# check-ptx.sh: compiles every kernels/*.cu to PTX exactly as build.rs does (for its
# default target and for compute_80), assembles each PTX with ptxas for sm_80 and sm_90
# (the portable one for its own sm_XY too), prints register use, and fails on any compile
# error, register spill, non-zero stack frame, or kernel using more than 64 registers
# on sm_80 or sm_90 (DROPKIT_MAX_REGS overrides the limit). It also fails when it checked
# nothing: a PTX with no .entry, or a ptxas log without exactly one register report and
# one stack-frame report per .entry of its PTX (so a silent ptxas cannot pass). 64 is the most a 1024-thread
# block can have (both give a block at most 64K 32-bit registers); above it a launch with
# 1024 threads fails with CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES, so the limit keeps every
# block size up to 1024 launchable (src/cuda launches 256 today). Needs no GPU.
#
# nvcc: $NVCC, else $CUDA_HOME/bin/nvcc, else nvcc on PATH, else scripts/install-nvcc.sh.
# ptxas is taken from beside that nvcc. PTX and cubins go to a temporary directory.
# DROPKIT_CUDA_ARCH overrides the virtual architecture, as in build.rs (whose default is
# the lowest one nvcc lists: compute_75 for the pinned CUDA 13.0).
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$script_dir")"
cd "$repo"

nvcc="$(bash "$script_dir/find-nvcc.sh")"
ptxas="$(dirname "$nvcc")/ptxas"
if [ ! -x "$ptxas" ]; then
    ptxas="$(command -v ptxas || true)"
fi
if [ -z "$ptxas" ]; then
    echo "check-ptx: no ptxas beside $nvcc or on PATH" >&2
    exit 1
fi
echo "check-ptx: nvcc  $nvcc" >&2
echo "check-ptx: ptxas $ptxas" >&2

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

shopt -s nullglob
sources=(kernels/*.cu)
if [ "${#sources[@]}" -eq 0 ]; then
    echo "check-ptx: no kernels/*.cu" >&2
    exit 1
fi

max_regs="${DROPKIT_MAX_REGS:-64}"

status=0
# What was checked, so that a run that checked nothing fails instead of passing.
n_logs=0
n_reports=0
# Two PTX targets: the portable one (build.rs's default) and compute_80, whose code paths
# differ (hardware bf16/f16 pair conversions behind __CUDA_ARCH__ >= 800) and which GPUs of
# sm_80 or newer should load.
ptx_archs=("${DROPKIT_CUDA_ARCH:-compute_75}")
if [ "${ptx_archs[0]}" != compute_80 ]; then
    ptx_archs+=(compute_80)
fi
for cu in "${sources[@]}"; do
  name="$(basename "$cu" .cu)"
  for ptx_arch in "${ptx_archs[@]}"; do
    ptx="$tmp/$name.$ptx_arch.ptx"
    echo "== $cu ($ptx_arch)"
    # Keep in sync with build.rs: the same flags, so that what passes here is what ships.
    if ! "$nvcc" -ptx -O3 -std=c++17 --fmad=false -arch="$ptx_arch" \
        -I kernels -o "$ptx" "$cu"; then
        echo "check-ptx: FAIL: nvcc on $cu" >&2
        status=1
        continue
    fi
    # The portable PTX also for its own architecture (sm_75 by default): the oldest GPUs
    # that load it.
    real_archs=(sm_80 sm_90)
    if [ "$ptx_arch" = "${ptx_archs[0]}" ] && [ "${ptx_arch#compute_}" -lt 80 ]; then
        real_archs=("sm_${ptx_arch#compute_}" "${real_archs[@]}")
    fi
    for arch in "${real_archs[@]}"; do
        log="$tmp/$name.$ptx_arch.$arch.log"
        if ! "$ptxas" -arch="$arch" -v -o "$tmp/$name.$arch.cubin" "$ptx" >"$log" 2>&1; then
            cat "$log"
            echo "check-ptx: FAIL: ptxas -arch=$arch on $ptx" >&2
            status=1
            continue
        fi
        # ptxas -v prints, per function:
        #   ptxas info : Function properties for NAME
        #       S bytes stack frame, SS bytes spill stores, SL bytes spill loads
        #   ptxas info : Used R registers, ...
        # The PTX is read first for its kernels (.entry lines): each must get exactly one
        # report of each kind, and there must be no more reports than kernels (an empty or
        # truncated log, or one of another module, checks nothing and must not pass).
        if ! awk -v arch="$arch" -v max_regs="$max_regs" -v mod="$cu ($ptx_arch)" '
            FNR == NR {
                if ($0 ~ /^[ \t]*(\.(visible|weak)[ \t]+)?\.entry[ \t]/) {
                    name = $0
                    sub(/^.*\.entry[ \t]+/, "", name)
                    sub(/[^A-Za-z0-9_$].*$/, "", name)
                    entries[name] = 1
                    n_entries++
                }
                next
            }
            /Function properties for/ { fn = $NF; next }
            /bytes stack frame/ {
                n_frame++
                frame[fn]++
                stack = $1; stores = $5; loads = $9
                if (stack != 0 || stores != 0 || loads != 0) {
                    printf "check-ptx: FAIL: %s %s: %s\n", arch, fn, $0
                    bad = 1
                }
                next
            }
            /Used [0-9]+ registers/ {
                n_used++
                used[fn]++
                sub(/^.*Used/, "Used")
                printf "  %s %-28s %s\n", arch, fn, $0
                regs = $2 + 0
                if (regs > max_regs) {
                    printf "check-ptx: FAIL: %s %s: %d registers > %d (no 1024-thread blocks)\n", \
                        arch, fn, regs, max_regs
                    bad = 1
                }
            }
            END {
                if (n_entries == 0) {
                    printf "check-ptx: FAIL: %s %s: no .entry in the PTX (nothing to check)\n", \
                        arch, mod
                    bad = 1
                }
                for (e in entries) {
                    if (used[e] != 1 || frame[e] != 1) {
                        printf "check-ptx: FAIL: %s %s: %d register, %d stack-frame reports (want 1)\n", \
                            arch, e, used[e], frame[e]
                        bad = 1
                    }
                }
                if (n_used + 0 != n_entries || n_frame + 0 != n_entries) {
                    printf "check-ptx: FAIL: %s %s: %d .entry, %d register, %d stack-frame reports\n", \
                        arch, mod, n_entries, n_used, n_frame
                    bad = 1
                }
                exit bad
            }
        ' "$ptx" "$log"; then
            status=1
        fi
        n_logs=$((n_logs + 1))
        n_reports=$((n_reports + $(grep -cE 'Used [0-9]+ registers' "$log" || true)))
    done
  done
done

if [ "$n_logs" -eq 0 ] || [ "$n_reports" -eq 0 ]; then
    echo "check-ptx: FAIL: nothing checked ($n_logs ptxas logs, $n_reports kernel reports)" >&2
    status=1
fi
if [ "$status" -ne 0 ]; then
    echo "check-ptx: FAILED" >&2
else
    echo "check-ptx: ok ($n_logs ptxas logs, $n_reports kernel reports)" >&2
fi
exit "$status"
