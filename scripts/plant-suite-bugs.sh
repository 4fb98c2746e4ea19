#!/usr/bin/env bash
# plant-suite-bugs.sh: plants, one at a time in a scratch copy of the repository (never in
# the checkout), a bug that each strengthened check of the suite must catch, runs that
# check, and prints whether it failed as it must:
#   host-panic        a panic in the CUDA launch code: check-cuda12.sh (the stand-in step
#                     and the CUDA 12.4 run on the emulated driver) must fail
#   ptxas-silent      ptxas run without -v (an empty log): check-ptx.sh must fail
#   stream-past-end   the AVX-512 streaming loop stores a group past the output's end:
#                     the library's streaming_trigger_every_dtype test must fail
#   avx512-skipped    has_avx512() says no: the AVX-512 tests must fail (not skip) under
#                     DROPKIT_REQUIRE_SIMD=avx512
#
#   NVCC=... bash scripts/plant-suite-bugs.sh [NAME...]     (all four by default)
set -uo pipefail
src="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ -n "${NVCC:-}" ] || { echo "plant-suite-bugs: set NVCC (scripts/install-nvcc.sh)" >&2; exit 2; }
scratch="$(mktemp -d)"
tmp="$(mktemp -d)"
trap 'rm -rf "$scratch" "$tmp"' EXIT
(cd "$src" && git ls-files -z | xargs -0 -I{} cp --parents {} "$scratch")
# A target directory of the scratch copies' own: dropkit built from planted sources gets
# the same artifact names as the checkout's, so sharing the checkout's target would let a
# cargo run in the checkout execute a planted binary (or a plant run the checkout's).
export CARGO_TARGET_DIR="${DROPKIT_PLANT_TARGET:-$src/target/plant}"
# check-cuda12.sh in the scratch copy reuses the checkout's venv of CUDA 12 wheels.
export DROPKIT_CUDA12_VENV="${DROPKIT_CUDA12_VENV:-$src/.venv-cuda12}"
status=0

# plant NAME FILE OLD NEW CMD...: replaces OLD (exactly once) by NEW in FILE, runs CMD in
# the scratch copy, restores FILE. The plant is caught when CMD fails.
plant() {
    local name="$1" file="$2" old="$3" new="$4"
    shift 4
    cp "$scratch/$file" "$tmp/orig"
    if ! python3 - "$scratch/$file" "$old" "$new" <<'PY'; then
import sys
p, old, new = sys.argv[1:]
s = open(p).read()
if s.count(old) != 1:
    sys.exit(1)
open(p, "w").write(s.replace(old, new))
PY
        echo "=== $name: the text to replace is not in $file (the plant is stale)"
        status=1
        return
    fi
    echo "=== $name ($file)"
    (cd "$scratch" && diff -u "$tmp/orig" "$file" | tail -n +3)
    local rc=0
    (cd "$scratch" && "$@") >"$tmp/$name.log" 2>&1 || rc=$?
    grep -E 'FAIL|panicked at|assertion|test result|DROPKIT_REQUIRE_SIMD' "$tmp/$name.log" | head -n 8 | cut -c1-240
    if [ "$rc" -ne 0 ]; then
        echo "  => caught (exit $rc)"
    else
        echo "  => NOT caught"
        status=1
    fi
    cp "$tmp/orig" "$scratch/$file"
}

want() { [ "$#" -eq 0 ] || [[ " $* " == *" $name "* ]]; }
names=("$@")
name=host-panic
want "${names[@]}" && plant "$name" src/cuda/launch.rs \
    '    unsafe { args.launch(dev.launch_config(items, PER_THREAD)) }' \
    '    assert!(items == 0, "planted host panic in {name}");
    unsafe { args.launch(dev.launch_config(items, PER_THREAD)) }' \
    bash scripts/check-cuda12.sh
name=ptxas-silent
want "${names[@]}" && plant "$name" scripts/check-ptx.sh \
    'if ! "$ptxas" -arch="$arch" -v -o' 'if ! "$ptxas" -arch="$arch" -o' \
    bash scripts/check-ptx.sh
name=stream-past-end
want "${names[@]}" && plant "$name" src/cpu/avx512/stream.rs \
    'let known = (128 * (g + 1)).min(n);' 'let known = (128 * (g + 1)).min(n + 16);' \
    cargo test --quiet --lib streaming_trigger
name=avx512-skipped
want "${names[@]}" && plant "$name" src/host/simd.rs \
    '        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")' \
    '        false && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")' \
    env DROPKIT_REQUIRE_SIMD=avx512 cargo test --quiet --lib avx512
exit "$status"
