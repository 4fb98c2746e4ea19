#!/usr/bin/env bash
# gpu-bundle.sh: builds everything a GPU host with a driver but no Rust needs to run
# dropkit's tests, quickstart and benchmarks, into gpu-bundle/ (ignored by git):
#
#   gpu-bundle/run.sh                 the script to run there (from scripts/gpu-bundle-run.sh)
#   gpu-bundle/bin/test-<name>        every test binary (cargo test --release --no-run;
#                                     test-unit is the library's own unit tests)
#   gpu-bundle/bin/gpu_dropout        benches/gpu_dropout.rs (with the nvtx feature)
#   gpu-bundle/bin/cpu_dropout        benches/cpu_dropout.rs (criterion)
#   gpu-bundle/bin/quickstart         examples/quickstart.rs
#   gpu-bundle/data/                  tests/data (run.sh points DROPKIT_TEST_DATA at it)
#   gpu-bundle/*.py                   torch_baseline.py, compare.py, criterion_results.py
#   gpu-bundle/MANIFEST.txt           what was built from which commit, with sizes
#
# The kernels are compiled to PTX and embedded, so nvcc is required: $NVCC, else
# scripts/install-nvcc.sh (DROPKIT_NVCC_VENV picks its venv). The build uses its own target
# directory (DROPKIT_BUNDLE_TARGET, default target/gpu-bundle) without debug info, so the
# bundle stays small and the usual target/release is left alone.
#
# Usage: scripts/gpu-bundle.sh        then copy gpu-bundle/ to the GPU host and run
#        OUT=./out bash gpu-bundle/run.sh   (see that script for its settings)
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$script_dir")"
cd "$repo"
python="${PYTHON:-python3}"
bundle="$repo/gpu-bundle"

say() { printf 'gpu-bundle: %s\n' "$*" >&2; }

if [ -z "${NVCC:-}" ]; then
    NVCC="$(bash scripts/install-nvcc.sh | tail -n 1)"
fi
export NVCC
say "nvcc: $NVCC"
unset DROPKIT_NO_NVCC

export CARGO_TARGET_DIR="${DROPKIT_BUNDLE_TARGET:-$repo/target/gpu-bundle}"
# No debug info (the crate's release profile has debug = 1); symbols stay for backtraces.
export CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=debuginfo
export CARGO_PROFILE_BENCH_DEBUG=0 CARGO_PROFILE_BENCH_STRIP=debuginfo

json="$(mktemp -d)"
trap 'rm -rf "$json"' EXIT

say "building test binaries"
cargo test --release --no-run --message-format=json >"$json/tests.json"
say "building bench binaries (gpu_dropout with nvtx ranges, cpu_dropout)"
cargo bench --no-run --features nvtx --bench gpu_dropout --bench cpu_dropout \
    --message-format=json >"$json/benches.json"
say "building the quickstart example"
cargo build --release --example quickstart --message-format=json >"$json/example.json"

rm -rf "$bundle"
mkdir -p "$bundle/bin"

# Executables of the build: "<kind> <name> <path>" per line.
"$python" - "$json/tests.json" "$json/benches.json" "$json/example.json" >"$json/list" <<'EOF'
import json, sys
for path in sys.argv[1:]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
                continue
            target = msg["target"]
            kind = target["kind"][0]
            print(kind, target["name"], msg["executable"])
EOF

while read -r kind name exe; do
    case "$kind" in
        lib) dest="test-unit" ;;
        test) dest="test-$name" ;;
        bench | example) dest="$name" ;;
        *) continue ;;
    esac
    cp "$exe" "$bundle/bin/$dest"
    say "  bin/$dest  <- $exe"
done <"$json/list"

for need in test-dropout_cuda gpu_dropout cpu_dropout quickstart; do
    if [ ! -x "$bundle/bin/$need" ]; then
        say "error: bin/$need was not built"
        exit 1
    fi
done
# The PTX must be embedded (a build without nvcc would only skip on the GPU host).
for exe in test-dropout_cuda gpu_dropout quickstart; do
    if ! grep -aq '.entry dropout_fwd_f32' "$bundle/bin/$exe"; then
        say "error: bin/$exe has no embedded PTX (was nvcc found?)"
        exit 1
    fi
done

cp -r tests/data "$bundle/data"
cp benches/torch_baseline.py scripts/compare.py scripts/criterion_results.py "$bundle/"
cp scripts/gpu-bundle-run.sh "$bundle/run.sh"
chmod +x "$bundle/run.sh" "$bundle"/bin/*

{
    echo "dropkit GPU bundle"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -srm)"
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (dirty tree)')"
    echo "rustc: $(rustc --version)"
    echo "nvcc: $("$NVCC" --version | tail -n 1)"
    echo "ptx target: ${DROPKIT_CUDA_ARCH:-lowest listed by nvcc} (needs a CUDA 13.0+ driver)"
    echo
    echo "run: OUT=./out bash run.sh   (results and logs in OUT, exit codes in OUT/summary.txt)"
    echo
    (cd "$bundle" && find . -type f ! -name MANIFEST.txt -printf '%10s  %p\n' | sort -k2)
} >"$bundle/MANIFEST.txt"

total="$(du -sb "$bundle" | cut -f1)"
say "bundle: $bundle, $((total / 1024 / 1024)) MiB"
if [ "$total" -gt $((60 * 1024 * 1024)) ]; then
    say "warning: the bundle is over 60 MiB"
fi
