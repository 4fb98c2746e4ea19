#!/usr/bin/env bash
# emulate-kernels.sh: builds the CPU emulator of the CUDA kernels (tests/emulator: g++
# compiles kernels/*.cu unchanged against a model of the CUDA execution model) twice, as
# the portable code path (below sm_80) and the sm_90 one, and runs the Rust test that
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
cxx="${CXX:-g++}"
# -ffp-contract=off: no FMA anywhere (SPEC); -fno-strict-aliasing: the kernels reinterpret
# element arrays as 16-byte pieces, which is fine on the GPU and must stay fine here.
flags=(-std=c++17 -O2 -pthread -ffp-contract=off -fno-strict-aliasing -Wall -Wno-unknown-pragmas
       -I tests/emulator/include -I tests/emulator)

emulators=()
for arch in 750 900; do
    bin="$out/dk-emulate-sm$arch"
    "$cxx" "${flags[@]}" -D__CUDA_ARCH__="$arch" -o "$bin" tests/emulator/emulate.cpp
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
