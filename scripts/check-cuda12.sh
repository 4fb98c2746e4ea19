#!/usr/bin/env bash
# check-cuda12.sh: the kernels build for CUDA 12.x machines. Installs NVRTC 12 and ptxas 12
# from pinned PyPI wheels into a venv of their own, compiles every kernel module with
# that NVRTC through dropkit's own run-time fallback (dropkit::cuda::nvrtc::compile_module,
# via examples/nvrtc_ptx.rs and tests/kernels.rs) for compute_80 and compute_90, prints
# each PTX's ISA version, and assembles every PTX with ptxas 12 for sm_80 and sm_90 with
# -v. Fails on a compile error, any spill or stack frame, more than 64 registers (as
# check-ptx.sh), or a PTX ISA newer than this NVRTC's CUDA release can load.
# Then a stand-in libcuda.so.1 (C, gcc) that answers every call cudarc binds but runs no
# kernel: the parity tests must fail under it. Last, with NVCC set, the CUDA 12 driver on
# the emulated one (scripts/cuda-emulated.sh cuda12): a CUDA 12.4 personality rejects the
# embedded nvcc 13 PTX, so every CUDA test runs through NVRTC 12.9 cubins, and every
# driver call made must be one that CUDA 12.0's headers have (per the #[cfg] on cudarc's
# own bindings). Needs no GPU.
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
# One PTX per kernels/*.cu for each of compute_80 and compute_90.
sources=(kernels/*.cu)
expected=$((2 * ${#sources[@]}))
[ "${#ptx_files[@]}" -eq "$expected" ] ||
    { log "FAIL: expected $expected PTX files, got ${#ptx_files[@]}"; exit 1; }
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

# A driver that answers every call but runs no kernel: the parity tests must fail under it,
# or they would not be checking what the kernels compute.
log "a stand-in libcuda that runs no kernel: the parity tests must fail"
cudarc_dir="$(cargo metadata --format-version 1 --locked |
    "$venv/bin/python" -c 'import json, os, sys
pkgs = json.load(sys.stdin)["packages"]
print(os.path.dirname(next(p["manifest_path"] for p in pkgs if p["name"] == "cudarc")))')"
stub="$tmp/stub"
mkdir -p "$stub"
"$venv/bin/python" - "$cudarc_dir/src/driver/sys/mod.rs" "$stub" <<'PY'
# Writes stub.c (every cudarc driver binding, answering as one sm_90 GPU would, running
# nothing) and cuda12.txt (the bindings CUDA 12.0's headers have: no #[cfg], or a #[cfg]
# naming cuda-12000).
import re, sys
source, out = sys.argv[1], sys.argv[2]
names, cuda12, cfg = set(), set(), None
for line in open(source):
    if line.startswith("#[cfg("):
        cfg = line
        continue
    m = re.match(r"pub unsafe fn (cu\w+)\(", line)
    if m and "dynamic-loading" not in (cfg or ""):
        names.add(m.group(1))
        if cfg is None or '"cuda-12000"' in cfg:
            cuda12.add(m.group(1))
    cfg = None
# (parameters, body) of the calls whose outputs cudarc reads; device memory is host memory.
answers = {
    "cuDeviceGetCount": ("int *c", "*c = 1;"),
    "cuDeviceGet": ("int *d, int o", "*d = 0;"),
    # compute capability 9.0, 132 SMs, memory pools supported, anything else 1
    "cuDeviceGetAttribute": ("int *v, int a, int d",
                             "*v = a == 75 ? 9 : a == 76 ? 0 : a == 16 ? 132 : 1;"),
    "cuDevicePrimaryCtxRetain": ("void **c, int d", "*c = &handles[0];"),
    "cuCtxGetCurrent": ("void **c", "*c = current;"),
    "cuCtxSetCurrent": ("void *c", "current = c;"),
    "cuStreamCreate": ("void **s, unsigned f", "*s = &handles[1];"),
    "cuDeviceGetName": ("char *n, int len, int d", "strncpy(n, \"stub\", len);"),
    "cuMemAllocAsync": ("uint64_t *p, size_t b, void *s",
                        "*p = (uint64_t)(uintptr_t)calloc(1, b ? b : 1);"),
    "cuMemAlloc_v2": ("uint64_t *p, size_t b", "*p = (uint64_t)(uintptr_t)calloc(1, b ? b : 1);"),
    "cuMemcpyHtoDAsync_v2": ("uint64_t d, const void *s, size_t b, void *st",
                             "memcpy((void *)(uintptr_t)d, s, b);"),
    "cuMemcpyDtoHAsync_v2": ("void *d, uint64_t s, size_t b, void *st",
                             "memcpy(d, (void *)(uintptr_t)s, b);"),
    "cuMemcpyDtoDAsync_v2": ("uint64_t d, uint64_t s, size_t b, void *st",
                             "memcpy((void *)(uintptr_t)d, (void *)(uintptr_t)s, b);"),
    "cuModuleLoadData": ("void **m, const void *img", "*m = &handles[2];"),
    "cuModuleGetFunction": ("void **f, void *m, const char *n", "*f = &handles[3];"),
    "cuEventCreate": ("void **e, unsigned f", "*e = &handles[4];"),
    # not capturing (CU_STREAM_CAPTURE_STATUS_NONE): dropkit asks before it queues work
    "cuStreamIsCapturing": ("void *st, int *s", "*s = 0;"),
    "cuGetErrorString": ("int e, const char **s", "*s = \"stub\";"),
    "cuGetErrorName": ("int e, const char **s", "*s = \"stub\";"),
    # NVRTC asks the driver for an export table; "not supported" sends it its own way.
    "cuGetExportTable": ("const void **t, const void *id", "*t = 0; return 801;"),
}
lines = ["#include <stdint.h>", "#include <stdlib.h>", "#include <string.h>",
         "static char handles[8]; static void *current;"]
for name in sorted(names):
    params, body = answers.get(name, ("void", ""))
    lines.append(f"int {name}({params}) {{ {body} return 0; }}")
open(f"{out}/stub.c", "w").write("\n".join(lines) + "\n")
open(f"{out}/cuda12.txt", "w").write("\n".join(sorted(cuda12)) + "\n")
PY
gcc -shared -fPIC -O1 -w -o "$stub/libcuda.so.1" "$stub/stub.c"
ln -sf libcuda.so.1 "$stub/libcuda.so"
for t in dropout family; do
    if "${nvrtc_env[@]}" LD_LIBRARY_PATH="$stub:$nvrtc_lib" DROPKIT_REQUIRE_CUDA=1 \
        cargo test --quiet --test "$t" >"$tmp/stub-$t.log" 2>&1; then
        log "FAIL: $t passed under a driver that runs no kernel (its checks see nothing)"
        status=1
    elif grep -q 'assertion `left == right` failed' "$tmp/stub-$t.log"; then
        log "  $t fails under the stand-in, as it must ($(grep -Eo '[0-9]+ failed' "$tmp/stub-$t.log" | tail -n 1))"
    else
        tail -n 20 "$tmp/stub-$t.log" >&2
        log "FAIL: $t under the stand-in did not fail on a value check"
        status=1
    fi
done

# The CUDA 12 driver for real, on the emulated one: every CUDA test, the doctests and the
# examples with DKEMU_DRIVER=12.4, which rejects the embedded nvcc 13 PTX (ISA 9.0) as a
# CUDA 12 driver does, so the NVRTC 12.9 cubin fallback compiles and runs every kernel.
# Every driver call made is logged; each must be one CUDA 12.0's headers have.
if [ -n "${NVCC:-}" ]; then
    log "CUDA 12.4 on the emulated driver: embedded PTX rejected, NVRTC 12.9 cubins run"
    calls="$tmp/calls.txt"
    if ! DKEMU_CALL_LOG="$calls" DROPKIT_NVRTC_LIB="$nvrtc_lib" DROPKIT_CUDA_INCLUDE="$include" \
        bash scripts/cuda-emulated.sh cuda12; then
        log "FAIL: the CUDA tests under the CUDA 12.4 personality"
        status=1
    fi
    sort -u "$calls" -o "$calls"
    printf '  driver calls made (%d): %s\n' "$(wc -l <"$calls")" "$(tr '\n' ' ' <"$calls")"
    for need in cuModuleLoadData cuLaunchKernel; do
        grep -qx "$need" "$calls" || { log "FAIL: no $need reached the driver"; status=1; }
    done
    missing="$(comm -23 "$calls" <(sort "$stub/cuda12.txt"))"
    if [ -n "$missing" ]; then
        log "FAIL: driver calls missing from CUDA 12.0: $missing"
        status=1
    fi
else
    log "CUDA 12.4 personality: skipped (NVCC is not set, so no PTX is embedded to reject)"
fi

if [ "$status" -ne 0 ]; then
    log "FAILED"
else
    log "ok"
fi
exit "$status"
