#!/usr/bin/env bash
# run.sh of the dropkit GPU bundle (scripts/gpu-bundle.sh copies this file into
# gpu-bundle/): one run on a GPU host (CUDA 13.0+ driver, no Rust needed) that returns
# everything the first GPU session can tell us, in at most 8 files at the top of $OUT.
#
# Usage: OUT=./out bash gpu-bundle/run.sh
#
# The host returns only a few files of limited size and names, so the work happens in a
# scratch folder and, after EVERY step (and before each, marking it as running), the results
# are packed into $OUT. A step killed by its timeout, or the whole script killed from
# outside, still leaves everything the earlier steps produced:
#   summary.txt      first: host, driver, CUDA version, GPU, glibc; every step's exit code
#                    and seconds ("running" for a step cut off from outside)
#   gpu-bench.txt    the GPU bench's RESULT lines, then its tables and comments
#   torch-baseline.txt  benches/torch_baseline.py --device cuda
#   compare.md       scripts/compare.py on both
#   tests.log        test, quickstart and sanitizer logs, failed steps first (each with
#                    its failures section at the top)
#   ncu.txt          Nsight Compute per kernel family (dropout, alpha, grouped, fused,
#                    column sum): per-launch DRAM throughput, achieved occupancy, time,
#                    instructions, then the per-kernel summary of each report
#   logs.tar.gz      every raw log, the ncu reports (.ncu-rep) while they fit
#
# Order, most information per minute first: nvidia-smi and ldd --version; the quickstart
# (must run on CUDA: fails fast when the PTX does not load); the CUDA test binaries only
# (the CPU tests run in CI), each capped near 90 s, with DROPKIT_REQUIRE_CUDA=1; the CUDA
# parity tests again with the grid capped at 1, 2 and 3 blocks (DROPKIT_CUDA_MAX_BLOCKS) so
# every grid-stride loop runs several passes; the GPU bench, the torch baseline and the
# compare tables; ncu on every kernel family; compute-sanitizer memcheck and initcheck last.
# Racecheck runs only when gpu-bundle.sh found a kernel that declares __shared__ memory
# (it writes shared-memory-kernels.txt into the bundle then): racecheck looks for hazards
# on shared memory only, and when this script was written no kernel in kernels/ used any.
# No CPU criterion bench: CI and scripts/bench-cpu.sh measure the CPU.
#
# Without a GPU (or with an empty or fake bundle) every step still runs or is marked
# skipped, so the packing is checked anywhere: CI runs
#   OUT=$(mktemp -d) BUDGET_S=60 bash scripts/gpu-bundle-run.sh
# on the source tree (no bin/: every binary step is "skipped (no ...)").
#
# Settings (environment):
#   OUT          output folder (default ./out); only the 8 names above are written
#   BUDGET_S     seconds for all steps (default 420, so that a second run fits the session)
#   STEPS        groups to run, comma-separated (default all): info, quickstart, tests,
#                maxblocks, bench, torch, compare, ncu, sanitizer
#   TEST_CAP_S   cap per CUDA test binary run, grid-capped reruns too (default 90)
#   PYTHON       python with torch (default python3)
#   BENCH_SIZES  exponents for the GPU bench and torch (default 20,24,28)
#   NCU_DTYPES   dtypes profiled by ncu (default f32,bf16)
#   KEEP_SCRATCH=1  keep the scratch folder (its path is in summary.txt)
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# gpu-bundle.sh ships the binaries packed (bin.tar.xz): unpack them once.
if [ ! -d "$here/bin" ] && [ -f "$here/bin.tar.xz" ]; then
    tar -C "$here" -xJf "$here/bin.tar.xz"
fi
out="${OUT:-./out}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
budget="${BUDGET_S:-420}"
python="${PYTHON:-python3}"
steps="${STEPS:-info,quickstart,tests,maxblocks,bench,torch,compare,ncu,sanitizer}"
test_cap="${TEST_CAP_S:-90}"
bench_sizes="${BENCH_SIZES:-20,24,28}"
ncu_dtypes="${NCU_DTYPES:-f32,bf16}"
# The host keeps at most 16 MiB per file; stay below it.
max_file=$((15 * 1024 * 1024))
# Everything this script writes to OUT (the host returns at most 8 files).
out_names=(summary.txt gpu-bench.txt torch-baseline.txt compare.md tests.log ncu.txt logs.tar.gz)

scratch="$(mktemp -d "${TMPDIR:-/tmp}/dropkit-gpu-run.XXXXXX")"
logs="$scratch/logs"
mkdir -p "$logs"
cleanup() { [ "${KEEP_SCRATCH:-0}" = 1 ] || rm -rf "$scratch"; }
trap cleanup EXIT
for f in "${out_names[@]}"; do rm -f "$out/$f"; done

export DROPKIT_REQUIRE_CUDA=1
export DROPKIT_TEST_DATA="$here/data"
export RUST_BACKTRACE=1
# Modes may not survive the copy to the host.
chmod +x "$here"/bin/* 2>/dev/null || true

# One line per finished step: name, exit code (or "skipped"), seconds, log, group.
table="$scratch/steps.tsv"
: >"$table"
running=""
say() { printf '== %s\n' "$*" >&2; }
wants() { [[ ",$steps," == *",$1,"* ]]; }

# --- Packing -------------------------------------------------------------------------

# Atomically puts $1 (a scratch file) at $out/$2, cut to the size limit.
publish() {
    local src="$1" name="$2"
    [ -f "$src" ] || return 0
    if [ "$(stat -c %s "$src")" -gt "$max_file" ]; then
        { head -c $((max_file - 4096)) "$src"; printf '\n[... cut at %d bytes]\n' "$max_file"; } \
            >"$src.cut"
        mv -f "$src.cut" "$src"
    fi
    cp -f "$src" "$out/.$name.tmp" && mv -f "$out/.$name.tmp" "$out/$name"
}

host_info() {
    echo "dropkit GPU bundle run"
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host: $(uname -srm), $(nproc 2>/dev/null || echo '?') cpus"
    grep -m1 'model name' /proc/cpuinfo 2>/dev/null || true
    echo "glibc: $(ldd --version 2>/dev/null | head -n 1 || echo unknown)"
    if command -v nvidia-smi >/dev/null 2>&1; then
        echo "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap \
            --format=csv,noheader 2>/dev/null | head -n 4 | paste -sd ';')"
        echo "driver CUDA version: $(nvidia-smi 2>/dev/null | grep -o 'CUDA Version: *[0-9.]*' \
            | head -n 1 | sed 's/.*: *//')"
    else
        echo "gpu: nvidia-smi not found"
    fi
    if command -v nvcc >/dev/null 2>&1; then
        echo "nvcc: $(nvcc --version 2>/dev/null | tail -n 1)"
    fi
    echo "budget: ${budget}s, steps: $steps, scratch: $scratch"
    if [ -f "$here/MANIFEST.txt" ]; then
        sed -n '2,7p' "$here/MANIFEST.txt" | sed 's/^/bundle /'
    else
        echo "bundle: no MANIFEST.txt in $here (not a built bundle)"
    fi
}

write_summary() {
    local s="$scratch/summary.txt"
    {
        host_info
        echo
        echo "exit: 0 ok, 124 or 137 killed by the step's timeout, 99 sanitizer errors, 101 test failures"
        printf '%-34s %8s %6s  %s\n' step exit secs log
        awk -F'\t' '{ printf "%-34s %8s %6s  %s\n", $1, $2, $3, $4 }' "$table"
        if [ -n "$running" ]; then
            printf '%-34s %8s %6s  %s\n' "$running" running "$((SECONDS - running_t0))" \
                "(cut off here if nothing follows)"
        fi
        echo "elapsed ${SECONDS}s of ${budget}s"
        local failed
        failed="$(awk -F'\t' '$2 != "0" && $2 != "skipped"' "$table" | cut -f1 | paste -sd ' ')"
        echo "failed steps: ${failed:-none}"
        # The test harness's failing test names, and the sanitizers' verdicts.
        grep -h -E '^test .* FAILED$|^    [a-z_0-9:]+$|ERROR SUMMARY' "$logs"/test-*.log \
            "$logs"/maxblocks-*.log "$logs"/memcheck-*.log "$logs"/initcheck-*.log \
            "$logs"/racecheck-*.log 2>/dev/null | sort -u | head -n 60 | sed 's/^/  /'
    } >"$s"
    publish "$s" summary.txt
}

# Test-like logs, failed steps first, each led by its failures section.
write_tests_log() {
    local t="$scratch/tests.log" pass name rc secs log group
    : >"$t"
    for pass in failed passed; do
        while IFS=$'\t' read -r name rc secs log group; do
            case "$group" in test | sanitizer) ;; *) continue ;; esac
            [ "$rc" = skipped ] && continue
            if [ "$pass" = failed ] && [ "$rc" = 0 ]; then continue; fi
            if [ "$pass" = passed ] && [ "$rc" != 0 ]; then continue; fi
            [ -f "$logs/$log" ] || continue
            {
                echo "################ $name: exit $rc, ${secs}s ($log)"
                if [ "$rc" != 0 ]; then
                    # cargo test prints the failures' output after "failures:".
                    awk '/^failures:$/ { on = 1 } on' "$logs/$log" | head -n 300
                    echo "---------------- full log"
                fi
                # Head and tail of a long log; the whole log is in logs.tar.gz.
                if [ "$(wc -l <"$logs/$log")" -gt 4000 ]; then
                    head -n 2000 "$logs/$log"
                    echo "[... $(($(wc -l <"$logs/$log") - 4000)) lines, see logs.tar.gz]"
                    tail -n 2000 "$logs/$log"
                else
                    cat "$logs/$log"
                fi
                echo
            } >>"$t"
        done <"$table"
    done
    [ -s "$t" ] || echo "no test step has run yet" >"$t"
    publish "$t" tests.log
}

write_archive() {
    local a="$scratch/logs.tar.gz"
    tar -C "$scratch" -czf "$a" logs 2>/dev/null
    if [ "$(stat -c %s "$a")" -gt "$max_file" ]; then
        # Too big: without the ncu reports (their text is in ncu.txt), logs cut to 1 MiB.
        rm -rf "$scratch/logs-cut"
        mkdir -p "$scratch/logs-cut"
        local f
        for f in "$logs"/*; do
            case "$f" in *.ncu-rep) continue ;; esac
            head -c $((1024 * 1024)) "$f" >"$scratch/logs-cut/$(basename "$f")"
        done
        tar -C "$scratch" -czf "$a" logs-cut 2>/dev/null
    fi
    publish "$a" logs.tar.gz
}

pack() {
    write_summary
    write_tests_log
    [ -f "$scratch/gpu-bench.txt" ] && publish "$scratch/gpu-bench.txt" gpu-bench.txt
    [ -f "$logs/torch-baseline.log" ] && publish "$logs/torch-baseline.log" torch-baseline.txt
    [ -f "$logs/compare.log" ] && publish "$logs/compare.log" compare.md
    [ -f "$scratch/ncu.txt" ] && publish "$scratch/ncu.txt" ncu.txt
    write_archive
}

# --- Steps ---------------------------------------------------------------------------

record() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >>"$table"; }

skip() {
    record "$1" skipped 0 "($2)" "${3:-other}"
    say "$1: skipped ($2)"
    pack
}

# step NAME GROUP CAP MIN LOG -- command...: runs the command in the scratch folder with a
# timeout of min(CAP, time left), output to logs/LOG; skipped when less than MIN is left.
step() {
    local name="$1" group="$2" cap="$3" min="$4" log="$5"
    shift 6
    local left=$((budget - SECONDS))
    if [ "$left" -lt "$min" ]; then
        skip "$name" "time budget: ${left}s left" "$group"
        return 0
    fi
    local limit=$((cap < left ? cap : left)) rc
    say "$name (timeout ${limit}s) -> logs/$log"
    running="$name" running_t0=$SECONDS
    pack
    (cd "$scratch" && timeout --kill-after=5 "$limit" "$@") >"$logs/$log" 2>&1
    rc=$?
    running=""
    record "$name" "$rc" $((SECONDS - running_t0)) "$log" "$group"
    tail -n 2 "$logs/$log" >&2
    pack
}

# The executable bin/NAME, or nothing (and the step is marked skipped).
binary() {
    if [ -x "$here/bin/$1" ]; then
        echo "$here/bin/$1"
    else
        return 1
    fi
}

find_tool() {
    local name="$1" c
    if command -v "$name" >/dev/null 2>&1; then
        command -v "$name"
        return 0
    fi
    for c in "${CUDA_HOME:-/usr/local/cuda}/bin/$name" /usr/local/cuda/bin/"$name" \
        /usr/local/cuda-*/bin/"$name" /opt/nvidia/nsight-compute/*/"$name" \
        /usr/local/cuda/nsight-compute*/"$name"; do
        if [ -x "$c" ]; then
            echo "$c"
            return 0
        fi
    done
    return 1
}

# The CUDA test binaries: every test target in the bundle (gpu-bundle.sh packs only those).
cuda_tests=()
for t in "$here"/bin/test-*; do
    [ -f "$t" ] && cuda_tests+=("$(basename "$t")")
done
# The parity tests rerun with a capped grid (the out-of-memory test gains nothing there).
parity_tests=()
for t in "${cuda_tests[@]}"; do
    [ "$t" = test-cuda_oom ] || parity_tests+=("$t")
done

pack

if wants info; then
    if smi="$(find_tool nvidia-smi)"; then
        step nvidia-smi info 30 3 nvidia-smi.log -- "$smi"
        step nvidia-smi-query info 30 3 nvidia-smi-query.log -- "$smi" -q
    else
        skip nvidia-smi "not found" info
    fi
    step ldd-version info 10 1 ldd-version.log -- ldd --version
fi

if wants quickstart; then
    if qs="$(binary quickstart)"; then
        # best_available() falls back to the CPU: on this host that is a failure.
        step quickstart test 60 5 quickstart.log -- bash -c \
            'o="$("$1" 2>&1)"; rc=$?; echo "$o"; [ "$rc" = 0 ] || exit "$rc"
             grep -q "^ran on: cuda" <<<"$o" || { echo "quickstart did not run on CUDA"; exit 1; }' \
            _ "$qs"
    else
        skip quickstart "no bin/quickstart" test
    fi
    if cg="$(binary 06-cuda-graph)"; then
        step 06-cuda-graph test 60 5 06-cuda-graph.log -- bash -c \
            'o="$("$1" 2>&1)"; rc=$?; echo "$o"; [ "$rc" = 0 ] || exit "$rc"
             grep -q "^replay 4: .*matches eager calls: true" <<<"$o" ||
                 { echo "06-cuda-graph did not replay on CUDA"; exit 1; }' \
            _ "$cg"
    else
        skip 06-cuda-graph "no bin/06-cuda-graph" test
    fi
fi

if wants tests; then
    if [ "${#cuda_tests[@]}" -eq 0 ]; then
        skip cuda-tests "no bin/test-* binaries" test
    fi
    for t in "${cuda_tests[@]}"; do
        step "$t" test "$test_cap" 10 "$t.log" -- "$here/bin/$t"
    done
fi

if wants maxblocks; then
    # DROPKIT_CUDA_MAX_BLOCKS caps every launch's grid: the grid-stride loops then take
    # several passes even on small inputs, and must give the same bits.
    for blocks in 1 2 3; do
        for t in "${parity_tests[@]}"; do
            step "maxblocks-$blocks-$t" test "$test_cap" 10 "maxblocks-$blocks-$t.log" -- \
                env DROPKIT_CUDA_MAX_BLOCKS="$blocks" "$here/bin/$t"
        done
    done
fi

if wants bench; then
    if bench="$(binary gpu_dropout)"; then
        step gpu_dropout bench 170 30 gpu_dropout.log -- env DROPKIT_GPU_BENCH_SIZES="$bench_sizes" \
            "$bench"
        # RESULT lines first, then the tables and comments.
        { grep '^RESULT ' "$logs/gpu_dropout.log"; grep -v '^RESULT ' "$logs/gpu_dropout.log"; } \
            >"$scratch/gpu-bench.txt"
        pack
    else
        skip gpu_dropout "no bin/gpu_dropout" bench
    fi
fi

if wants torch; then
    torch_sizes="$(echo "$bench_sizes" | sed 's/\([0-9][0-9]*\)/2^\1/g')"
    if ! [ -f "$here/torch_baseline.py" ]; then
        skip torch-baseline "no torch_baseline.py" bench
    elif "$python" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
        >/dev/null 2>&1; then
        step torch-baseline bench 100 30 torch-baseline.log -- "$python" -u \
            "$here/torch_baseline.py" --device cuda --sizes "$torch_sizes"
    else
        skip torch-baseline "$python cannot import torch with CUDA" bench
    fi
    # The fused dropout + add + norm against PyTorch eager, torch.compile and, where it
    # imports, FlashAttention's Triton layer_norm_fn (logs/torch-add-norm.log, in the
    # tarball; dropkit's side is the gpu_dropout bench's norm_* cases).
    if [ -f "$here/torch_add_norm.py" ]; then
        step torch-add-norm bench 150 30 torch-add-norm.log -- "$python" -u \
            "$here/torch_add_norm.py" --device cuda --n 2^24 --hidden 768,4096,8192 --compile
    fi
fi

if wants compare; then
    inputs=()
    for f in "$logs/gpu_dropout.log" "$logs/torch-baseline.log"; do
        [ -s "$f" ] && grep -q '^RESULT ' "$f" && inputs+=("$f")
    done
    if [ "${#inputs[@]}" -gt 0 ] && [ -f "$here/compare.py" ]; then
        step compare bench 30 2 compare.log -- "$python" "$here/compare.py" "${inputs[@]}"
    else
        skip compare "no RESULT lines to compare" bench
    fi
fi

if wants ncu; then
    if ! ncu="$(find_tool ncu)"; then
        skip ncu "not found" ncu
    elif ! bench="$(binary gpu_dropout)"; then
        skip ncu "no bin/gpu_dropout" ncu
    else
        # Achieved occupancy is sm__warps_active over its peak; DRAM throughput against peak
        # and in bytes; thread instructions for the per-element budget of docs/PERFORMANCE.md.
        metrics=gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed
        metrics+=,dram__bytes_read.sum,dram__bytes_write.sum,dram__bytes.sum.per_second
        metrics+=,sm__warps_active.avg.pct_of_peak_sustained_active
        metrics+=,sm__throughput.avg.pct_of_peak_sustained_elapsed
        metrics+=,smsp__thread_inst_executed.sum,smsp__inst_executed.sum
        metrics+=,launch__grid_size,launch__block_size,launch__registers_per_thread
        : >"$scratch/ncu.txt"
        # family|bench ops (profile mode: each case once at 2^24)|kernel name regex
        for spec in \
            "dropout|fwd_bits,fwd_regen,bwd_bits,bwd_regen|^dropout_(fwd|bwd)" \
            "alpha|alpha_fwd_bits,alpha_fwd_regen|^alpha" \
            "grouped|channel_fwd_bits,channel_fwd_regen,channel_bwd_bits,feature_alpha_fwd_bits,droppath_fwd_bits,droppath_bwd_bits|^(grouped|dropout_mask_bits)" \
            "fused|fused_fwd_bits,fused_fwd_regen,fused_bwd|^bias_dropout_residual" \
            "column_sum|colsum|^column_sum"; do
            IFS='|' read -r family ops regex <<<"$spec"
            step "ncu-$family" ncu 75 15 "ncu-$family.log" -- env DROPKIT_GPU_BENCH_PROFILE=1 \
                DROPKIT_GPU_BENCH_SIZES=24 DROPKIT_BENCH_DTYPES="$ncu_dtypes" \
                DROPKIT_GPU_BENCH_OPS="$ops" \
                "$ncu" --clock-control none --metrics "$metrics" -k "regex:$regex" -c 40 \
                --export "$logs/ncu-$family" --force-overwrite "$bench"
            {
                echo "################ ncu $family (ops $ops, kernels /$regex/, 2^24, $ncu_dtypes)"
                cat "$logs/ncu-$family.log" 2>/dev/null
                if [ -f "$logs/ncu-$family.ncu-rep" ]; then
                    echo "---------------- per-kernel summary"
                    timeout 60 "$ncu" --import "$logs/ncu-$family.ncu-rep" \
                        --print-summary per-kernel 2>&1
                fi
                echo
            } >>"$scratch/ncu.txt"
            pack
        done
    fi
fi

if wants sanitizer; then
    if ! sanitizer="$(find_tool compute-sanitizer)"; then
        skip compute-sanitizer "not found" sanitizer
    else
        tools=(memcheck initcheck)
        if [ -s "$here/shared-memory-kernels.txt" ]; then
            tools+=(racecheck)
        fi
        for tool in "${tools[@]}"; do
            # Filters keep each run short: 4-byte and 2-byte paths, empty tensors, edges
            # (in dropout and family they also pick the cheap CPU runs of errors and shards).
            for spec in "test-cuda_edges|" "test-dropout|_f32 _bf16 errors" \
                "test-family|_f32 _bf16 shards"; do
                IFS='|' read -r t filter <<<"$spec"
                [ -x "$here/bin/$t" ] || continue
                read -r -a filters <<<"$filter"
                step "$tool-$t" sanitizer 60 15 "$tool-$t.log" -- "$sanitizer" --tool "$tool" \
                    --error-exitcode 99 --print-limit 50 "$here/bin/$t" "${filters[@]}"
            done
        done
    fi
fi

pack
# The host returns at most 8 files with plain names: say so here if that ever breaks.
count="$(find "$out" -mindepth 1 | wc -l)"
bad="$(find "$out" -mindepth 1 | sed "s|^$out/||" | grep -v -E '^[A-Za-z0-9._-]+$' || true)"
cat "$out/summary.txt" >&2
echo "results in $out: $count files" >&2
if [ "$count" -gt 8 ] || [ -n "$bad" ]; then
    echo "error: $out holds $count entries (at most 8) or odd names: $bad" >&2
    exit 3
fi
exit 0
