#!/usr/bin/env bash
# find-nvcc.sh: prints the absolute path of the nvcc the kernel scripts use, the same
# lookup order as build.rs: $NVCC, else $CUDA_HOME/bin/nvcc, else nvcc on PATH, else the
# pinned one scripts/install-nvcc.sh installs. Symlinks are resolved, so ptxas is found
# beside the printed path. Shared by check-ptx.sh and sass-budget.sh.
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [ -n "${NVCC:-}" ]; then
    nvcc="$NVCC"
elif [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then
    nvcc="$CUDA_HOME/bin/nvcc"
elif command -v nvcc >/dev/null 2>&1; then
    nvcc="$(command -v nvcc)"
else
    nvcc="$(bash "$script_dir/install-nvcc.sh" | tail -n 1)"
fi
readlink -f "$(command -v "$nvcc")"
