#!/usr/bin/env bash
# emulate-kernels.sh: builds the CPU emulator of the CUDA kernels (tests/emulator: g++
# compiles kernels/*.cu unchanged against a model of the CUDA execution model, with every
# memory access checked as device memory) twice, as the portable code path (below sm_80)
# and the sm_80+ one, and runs the Rust test that
# compares every kernel with the CPU reference bit for bit (tests/kernels_emulated.rs).
# Needs g++ and cargo; no GPU, no CUDA toolkit.
#
#   bash scripts/emulate-kernels.sh            build, then run the test
#   bash scripts/emulate-kernels.sh --build    build only; prints the DROPKIT_EMULATOR value
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$script_dir")"
cd "$repo"

out="${CARGO_TARGET_DIR:-target}/emulator"
mkdir -p "$out"
# shellcheck source=scripts/emulator-build.sh
source "$script_dir/emulator-build.sh"

emulators=()
for arch in 750 800; do
    bin="$out/dk-emulate-sm$arch"
    emu_kernel_object "$arch" "$out/kernels-sm$arch.o"
    emu_compile "$out/device_memory.o" tests/emulator/device_memory.cpp
    "$cxx" "${emu_flags[@]}" -DDKEMU_ARCH="$arch" -o "$bin" tests/emulator/emulate.cpp \
        "$out/kernels-sm$arch.o" "$out/device_memory.o"
    emulators+=("$(readlink -f "$bin")")
done
list="$(IFS=:; echo "${emulators[*]}")"
echo "emulate-kernels: built $list" >&2

if [ "${1:-}" = "--build" ]; then
    echo "$list"
    exit 0
fi

DROPKIT_EMULATOR="$list" DROPKIT_REQUIRE_EMULATOR=1 \
    cargo test --test kernels_emulated -- --nocapture
