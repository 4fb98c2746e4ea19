# emulator-build.sh: the compiler settings of the kernel engine (tests/emulator), sourced by
# emulate-kernels.sh (dk-emulate) and emulated-driver.sh (libcuda.so), so both build the
# same engine the same way. Defines $cxx, emu_flags, emu_compile and emu_kernel_object.

cxx="${CXX:-g++}"
# -ffp-contract=off: no FMA anywhere (SPEC); -fno-strict-aliasing: the kernels reinterpret
# element arrays as 16-byte pieces, which is fine on the GPU and must stay fine here.
emu_flags=(-std=c++17 -O2 -pthread -fPIC -ffp-contract=off -fno-strict-aliasing -Wall
    -Wno-unknown-pragmas -I tests/emulator/include -I tests/emulator)
# Every load and store of the kernels becomes a call of device_memory.cpp's check (no
# shadow arithmetic inline, no stack or global instrumentation: only device memory counts).
emu_sanitize=(-fsanitize=kernel-address --param asan-instrumentation-with-call-threshold=0
    --param asan-stack=0 --param asan-globals=0)

# emu_compile OUT SRC [FLAGS...]: one object, rebuilt when older than its sources.
emu_compile() {
    local out="$1" src="$2"
    shift 2
    local newest
    newest="$( (ls -t "$src" tests/emulator/*.h tests/emulator/include/*.h kernels/* \
        "$BASH_SOURCE" "$(dirname "$out")"/kernel_*.inc 2>/dev/null || true) | head -n 1)"
    if [ -e "$out" ] && [ "$out" -nt "$newest" ]; then return 0; fi
    "$cxx" "${emu_flags[@]}" "$@" -c -o "$out" "$src"
}

# emu_kernel_object ARCH OUT: kernels/*.cu and the scheduler for __CUDA_ARCH__=ARCH. The
# C++ side is in a namespace per architecture (kernel_set.cpp); the extern "C" kernel names
# are made local here, so several architectures link into one library and only
# dkemu_kernels_smARCH is seen from outside.
emu_kernel_object() {
    local arch="$1" out="$2"
    local dir
    dir="$(dirname "$out")"
    # The table of kernels from kernels/kernels.list, the one list of kernel names.
    awk '{ sub(/#.*/, "") } NF == 3 && $3 == "per-dtype" { print "DK_PER_DTYPE(" $2 ")," }
         NF == 3 && $3 == "per-residual-dtype" { print "DK_PER_RESIDUAL_DTYPE(" $2 ")," }
         NF == 3 && $3 == "single" { print "DK_KERNEL(" $2 ")," }' kernels/kernels.list \
        >"$dir/kernel_rows.inc.new"
    if ! cmp -s "$dir/kernel_rows.inc.new" "$dir/kernel_rows.inc"; then
        mv "$dir/kernel_rows.inc.new" "$dir/kernel_rows.inc"
    fi
    # ... and the kernel sources to compile: each module kernels.list names, once.
    awk '{ sub(/#.*/, "") } NF == 3 && !seen[$1]++ { print $1 }' kernels/kernels.list |
        sort | while read -r module; do
            printf '#include "%s/kernels/%s.cu"\n' "$PWD" "$module"
        done >"$dir/kernel_sources.inc.new"
    if ! cmp -s "$dir/kernel_sources.inc.new" "$dir/kernel_sources.inc"; then
        mv "$dir/kernel_sources.inc.new" "$dir/kernel_sources.inc"
    fi
    emu_compile "$out.tmp.o" tests/emulator/kernel_set.cpp -D__CUDA_ARCH__="$arch" \
        -I "$dir" "${emu_sanitize[@]}"
    if [ ! -e "$out" ] || [ "$out.tmp.o" -nt "$out" ]; then
        nm --defined-only -g "$out.tmp.o" |
            awk '$2 == "T" && $3 !~ /^_Z/ && $3 !~ /^dkemu_kernels_sm/ { print $3 }' >"$out.local"
        objcopy --localize-symbols="$out.local" "$out.tmp.o" "$out"
    fi
}
