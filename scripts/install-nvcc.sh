#!/usr/bin/env bash
# install-nvcc.sh: installs a pinned CUDA 13.0 nvcc from PyPI wheels into a venv, so the
# kernels can be compiled to PTX on machines with no CUDA toolkit (and no GPU).
#
# Usage: scripts/install-nvcc.sh
#   DROPKIT_NVCC_VENV  venv location (default: <repo>/.venv-nvcc)
#   PYTHON             interpreter for the venv (default: python3)
# Progress goes to stderr. The LAST line on stdout is the absolute path of the real nvcc,
# e.g. <venv>/lib/python3.11/site-packages/nvidia/cu13/bin/nvcc; ptxas is beside it.
#
# Why pinned: a newer nvcc emits a PTX ISA version that a CUDA 13.0 driver rejects, and
# the wheels must agree with each other. Keep all the versions together.
#
# No extra environment is needed: the wheels unpack into one tree (nvidia/cu13/{bin,
# include,nvvm,lib}) and bin/nvcc.profile points nvcc at nvvm/bin/cicc, nvvm/libdevice,
# include/ (runtime + crt headers) and include/cccl relative to nvcc's own location.
# The smoke test below checks that with an empty environment (`env -i`) so that a
# missing piece fails here, not in build.rs. nvcc -ptx still runs the host preprocessor,
# so a host C++ compiler (g++) must be on PATH.
set -euo pipefail

log() { printf 'install-nvcc: %s\n' "$*" >&2; }

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$script_dir")"
venv="${DROPKIT_NVCC_VENV:-$repo/.venv-nvcc}"
python="${PYTHON:-python3}"

# Pinned: see the header.
wheels=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-crt==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-cccl==13.0.85
    # NVRTC (lib/libnvrtc.so.13): the run-time compiler dropkit falls back to when it was
    # built without nvcc; CI tests that path with it.
    nvidia-cuda-nvrtc==13.0.88
)

# Prints the real nvcc under the venv's site-packages, or nothing. Found, not assumed:
# the wheel layout (nvidia/cu13/bin) has changed between CUDA major versions.
find_nvcc() {
    [ -x "$venv/bin/python" ] || return 0
    local site
    site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    [ -d "$site/nvidia" ] || return 0
    find "$site/nvidia" -type f -path '*/bin/nvcc' | sort | head -n 1
}

# Smoke test: nvcc runs, and compiles a kernel using the fp16/bf16 runtime headers to
# PTX (what build.rs does), with no help from the caller's environment.
works() {
    local nvcc="$1" tmp ok=1
    [ -n "$nvcc" ] && [ -x "$nvcc" ] || return 1
    [ -x "$(dirname "$nvcc")/ptxas" ] || return 1
    tmp="$(mktemp -d)"
    printf '%s\n' '#include <stdint.h>' '#include <cuda_fp16.h>' '#include <cuda_bf16.h>' \
        'extern "C" __global__ void k(float* p) { p[threadIdx.x] = __half2float(__float2half_rn(1.0f)) + __bfloat162float(__float2bfloat16_rn(2.0f)); }' \
        >"$tmp/t.cu"
    if env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="${HOME:-/tmp}" "$nvcc" --version >/dev/null 2>&1 &&
        env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="${HOME:-/tmp}" \
            "$nvcc" -ptx -O3 -std=c++17 --fmad=false -arch=compute_75 -o "$tmp/t.ptx" "$tmp/t.cu" >&2 &&
        "$(dirname "$nvcc")/ptxas" -arch=sm_80 -o "$tmp/t.cubin" "$tmp/t.ptx" >&2; then
        ok=0
    fi
    rm -rf "$tmp"
    return "$ok"
}

nvcc="$(find_nvcc)"
if works "$nvcc" && [ -e "$(dirname "$nvcc")/../lib/libnvrtc.so.13" ]; then
    log "nvcc already installed in $venv"
    echo "$nvcc"
    exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
    log "creating venv $venv"
    "$python" -m venv "$venv" >&2
fi
log "installing ${wheels[*]}"
"$venv/bin/python" -m pip install --quiet "${wheels[@]}" >&2

nvcc="$(find_nvcc)"
if [ -z "$nvcc" ]; then
    log "error: no bin/nvcc found in $venv after install"
    exit 1
fi
log "nvcc: $nvcc"
"$nvcc" --version >&2
if ! works "$nvcc"; then
    log "error: $nvcc cannot compile a test kernel to PTX"
    exit 1
fi
log "ok"
echo "$nvcc"
