#!/usr/bin/env bash
# gpu-bundle.sh: builds what one GPU run needs, for a host with a driver but no Rust, into
# gpu-bundle/ (ignored by git), and nothing else (the CPU tests and the CPU bench run in CI):
#
#   gpu-bundle/run.sh              the script to run there (from scripts/gpu-bundle-run.sh)
#   gpu-bundle/bin/test-<name>     the CUDA test binaries (tests/*.rs calling cuda_or_skip
#                                  or test_device!)
#   gpu-bundle/bin/gpu_dropout     benches/gpu_dropout.rs
#   gpu-bundle/bin/quickstart      examples/quickstart.rs
#   gpu-bundle/bin/06-cuda-graph   examples/06-cuda-graph.rs (a captured step, replayed)
#   gpu-bundle/data/               tests/data (run.sh points DROPKIT_TEST_DATA at it)
#   gpu-bundle/*.py                torch_baseline.py, torch_add_norm.py, compare.py
#   gpu-bundle/shared-memory-kernels.txt  only when a kernel declares __shared__ memory:
#                                  run.sh then adds compute-sanitizer's racecheck
#   gpu-bundle/MANIFEST.txt        what was built from which commit, with sizes
#
# Everything is built in one cargo call with the nvtx feature (NVTX ranges for ncu and
# nsys; harmless without libnvToolsExt), so the library compiles once. The binaries are
# stripped of debug info (function symbols stay, for panic backtraces); the bundle must
# stay under 48 MiB, as it travels with the tree (64 MiB in all).
#
# The kernels are compiled to PTX and embedded, so nvcc is required: $NVCC, else
# scripts/install-nvcc.sh (DROPKIT_NVCC_VENV picks its venv). The build uses its own target
# directory (DROPKIT_BUNDLE_TARGET, default target/gpu-bundle), leaving target/release alone.
#
# Usage: scripts/gpu-bundle.sh        then copy gpu-bundle/ to the GPU host and run
#        OUT=./out bash gpu-bundle/run.sh   (see that script for its settings)
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$script_dir")"
cd "$repo"
python="${PYTHON:-python3}"
bundle="$repo/gpu-bundle"
max_mib=48

say() { printf 'gpu-bundle: %s\n' "$*" >&2; }

if [ -z "${NVCC:-}" ]; then
    NVCC="$(bash scripts/install-nvcc.sh | tail -n 1)"
fi
export NVCC
say "nvcc: $NVCC"
unset DROPKIT_NO_NVCC

export CARGO_TARGET_DIR="${DROPKIT_BUNDLE_TARGET:-$repo/target/gpu-bundle}"
export CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=debuginfo

# The CUDA test targets: every tests/*.rs that asks for the GPU through tests/common's
# cuda_or_skip, directly or through test_device! (the rule of scripts/cuda-emulated.sh,
# without tests/kernels.rs, which needs no GPU, and tests/candle.rs, whose CUDA half is
# candle-cuda's).
test_args=()
for t in $(grep -lE '(^|[^a-z_])(cuda_or_skip\(|test_device!)' tests/*.rs | grep -v '^tests/candle\.rs$'); do
    test_args+=(--test "$(basename "$t" .rs)")
done

json="$(mktemp -d)"
trap 'rm -rf "$json"' EXIT

say "building ${#test_args[@]} CUDA test binaries, the GPU bench and the quickstart (release, nvtx)"
t0=$SECONDS
cargo build --release --features nvtx "${test_args[@]}" --bench gpu_dropout \
    --example quickstart --example 06-cuda-graph --message-format=json >"$json/build.json"
say "built in $((SECONDS - t0)) s"

rm -rf "$bundle"
mkdir -p "$bundle/bin"

# Executables of the build: "<kind> <name> <path>" per line.
"$python" - "$json/build.json" >"$json/list" <<'EOF'
import json, sys
with open(sys.argv[1], encoding="utf-8") as f:
    for line in f:
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
            continue
        target = msg["target"]
        print(target["kind"][0], target["name"], msg["executable"])
EOF

while read -r kind name exe; do
    case "$kind" in
        test) dest="test-$name" ;;
        bench | example) dest="$name" ;;
        *) continue ;;
    esac
    cp "$exe" "$bundle/bin/$dest"
    say "  bin/$dest  <- $exe"
done <"$json/list"

for need in test-dropout test-family test-cuda_edges test-cuda_oom test-cuda_graph gpu_dropout \
    quickstart 06-cuda-graph; do
    if [ ! -x "$bundle/bin/$need" ]; then
        say "error: bin/$need was not built"
        exit 1
    fi
done
# The PTX must be embedded (a build without nvcc would only skip on the GPU host).
for exe in "$bundle"/bin/*; do
    if ! grep -aq '.entry dropout_fwd_f32' "$exe"; then
        say "error: $exe has no embedded PTX (was nvcc found?)"
        exit 1
    fi
done

cp -r tests/data "$bundle/data"
cp benches/torch_baseline.py benches/torch_add_norm.py scripts/compare.py "$bundle/"
cp scripts/gpu-bundle-run.sh "$bundle/run.sh"
chmod +x "$bundle/run.sh" "$bundle"/bin/*
# compute-sanitizer's racecheck checks shared memory only: run.sh adds it when this lists
# a kernel source that declares some.
if grep -l '__shared__' kernels/*.cu kernels/*.cuh >"$bundle/shared-memory-kernels.txt"; then
    say "kernels with __shared__ (run.sh adds racecheck): $(paste -sd ' ' "$bundle/shared-memory-kernels.txt")"
else
    rm -f "$bundle/shared-memory-kernels.txt"
fi

{
    echo "dropkit GPU bundle"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -srm), $(ldd --version | head -n 1)"
    # The newest glibc symbol version the binaries link against: the host needs at least it.
    echo "needs: $(objdump -T "$bundle"/bin/* 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -uV \
        | tail -n 1 | sed 's/_/ >= /') (objdump), a CUDA 13.0+ driver"
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (dirty tree)')"
    echo "rustc: $(rustc --version)"
    echo "nvcc: $("$NVCC" --version | tail -n 1)"
    echo "ptx targets: compute_80 and ${DROPKIT_CUDA_ARCH:-the lowest nvcc lists} (nvcc 13.0 PTX needs a CUDA 13.0+ driver; older drivers fall back to NVRTC)"
    echo
    echo "run: OUT=./out bash run.sh   (at most 8 files in OUT, summary.txt first)"
    echo
    (cd "$bundle" && find . -type f ! -name MANIFEST.txt -printf '%10s  %p\n' | sort -k2)
} >"$bundle/MANIFEST.txt"

# The binaries each embed every module's PTX (about 3.6 MB) and repeat most of their
# code, so they compress about 10x: they travel as bin.tar.xz, which run.sh unpacks.
tar -C "$bundle" -cJf "$bundle/bin.tar.xz" bin
rm -rf "$bundle/bin"
say "bin/ packed: bin.tar.xz, $(du -sb "$bundle/bin.tar.xz" | cut -f1) bytes"

total="$(du -sb "$bundle" | cut -f1)"
say "bundle: $bundle, $total bytes ($((total / 1024 / 1024)) MiB)"
if [ "$total" -gt $((max_mib * 1024 * 1024)) ]; then
    say "error: the bundle is over $max_mib MiB"
    exit 1
fi
