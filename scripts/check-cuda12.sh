#!/usr/bin/env bash
# check-cuda12.sh: the kernels build for CUDA 12.x machines. Installs NVRTC 12 and ptxas 12
# from pinned PyPI wheels into a venv of their own, compiles every kernel module with
# that NVRTC through dropkit's own run-time fallback (dropkit::cuda::nvrtc::compile_module,
# via examples/nvrtc_ptx.rs and tests/kernels.rs) for compute_80 and compute_90, prints
# each PTX's ISA version, and assembles every PTX with ptxas 12 for sm_80 and sm_90 with
# -v. Fails on a compile error, any spill or stack frame, more than 64 registers (as
# check-ptx.sh), or a PTX ISA newer than this NVRTC's CUDA release can load.
# Needs no GPU.
#
#   DROPKIT_CUDA12_VENV  venv location (default: <repo>/.venv-cuda12)
#   PYTHON               interpreter for the venv (default: python3)
#   DROPKIT_MAX_REGS     register limit (default 64)
set -euo pipefail

log() { printf 'check-cuda12: %s\n' "$*" >&2; }

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$script_dir")"
cd "$repo"
venv="${DROPKIT_CUDA12_VENV:-$repo/.venv-cuda12}"
python="${PYTHON:-python3}"
max_regs="${DROPKIT_MAX_REGS:-64}"

# Pinned, one CUDA release (12.9 Update 1) for all three. The runtime wheel is only for
# its headers: NVRTC needs cuda_fp16.h / cuda_bf16.h from an include directory.
# CUDA 12.9 emits PTX ISA 8.8; a CUDA 12.x driver loads PTX up to its own release's ISA.
wheels=(
    nvidia-cuda-nvrtc-cu12==12.9.86
    nvidia-cuda-nvcc-cu12==12.9.86
    nvidia-cuda-runtime-cu12==12.9.79
)
expected_isa="8.8"

if [ ! -x "$venv/bin/python" ]; then
    log "creating venv $venv"
    "$python" -m venv "$venv" >&2
fi
log "installing ${wheels[*]}"
"$venv/bin/python" -m pip install --quiet "${wheels[@]}" >&2
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
nvrtc_lib="$site/nvidia/cuda_nvrtc/lib"
include="$site/nvidia/cuda_runtime/include"
ptxas="$site/nvidia/cuda_nvcc/bin/ptxas"
for need in "$nvrtc_lib/libnvrtc.so.12" "$include/cuda_fp16.h" "$ptxas"; do
    [ -e "$need" ] || { log "error: $need missing after install"; exit 1; }
done
"$ptxas" --version | tail -n 2 >&2

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# A build without nvcc, as a CUDA 12 user without nvcc (or docs.rs) gets: the embedded
# sources are what the fallback compiles. Only NVRTC 12 is on the library path.
nvrtc_env=(env -u NVCC DROPKIT_NO_NVCC=1 LD_LIBRARY_PATH="$nvrtc_lib"
    DROPKIT_CUDA_INCLUDE="$include")

log "NVRTC 12: the kernel-name test (every kernel present, no FMA contraction)"
"${nvrtc_env[@]}" DROPKIT_REQUIRE_NVRTC=1 cargo test --quiet --test kernels nvrtc

log "NVRTC 12: PTX of every module for compute_80 and compute_90"
"${nvrtc_env[@]}" cargo run --quiet --example nvrtc_ptx -- "$tmp" compute_80 compute_90 |
    tee "$tmp/versions.txt"
if grep -v "\.version $expected_isa " "$tmp/versions.txt" | grep -q .; then
    log "FAIL: PTX ISA other than $expected_isa (NVRTC on the path is not 12.9?)"
    exit 1
fi

status=0
shopt -s nullglob
ptx_files=("$tmp"/*.ptx)
[ "${#ptx_files[@]}" -eq 8 ] || { log "FAIL: expected 8 PTX files, got ${#ptx_files[@]}"; exit 1; }
for ptx in "${ptx_files[@]}"; do
    base="$(basename "$ptx" .ptx)"
    for sm in sm_80 sm_90; do
        # ptxas needs sm >= the PTX target: compute_90 PTX does not assemble for sm_80.
        case "$base:$sm" in *compute_90:sm_80) continue ;; esac
        out="$tmp/$base.$sm.log"
        if ! "$ptxas" -arch="$sm" -v -o "$tmp/$base.$sm.cubin" "$ptx" >"$out" 2>&1; then
            cat "$out" >&2
            log "FAIL: ptxas -arch=$sm on $base"
            status=1
            continue
        fi
        frames="$(grep -c 'bytes stack frame' "$out" || true)"
        clean="$(grep -c ' 0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads' "$out" || true)"
        most="$(grep -o 'Used [0-9]* registers' "$out" | awk '$2 > m { m = $2 } END { print m + 0 }')"
        printf '  %-32s %s  %2d kernels, no spill/stack in %2d, most registers %d\n' \
            "$base" "$sm" "$frames" "$clean" "$most"
        if [ "$frames" -eq 0 ] || [ "$clean" -ne "$frames" ]; then
            grep 'bytes stack frame' "$out" | grep -v ' 0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads' >&2 || true
            log "FAIL: $base $sm: spills or stack"
            status=1
        fi
        if [ "$most" -gt "$max_regs" ]; then
            log "FAIL: $base $sm: $most registers > $max_regs"
            status=1
        fi
    done
done

if [ "$status" -ne 0 ]; then
    log "FAILED"
else
    log "ok"
fi
exit "$status"
