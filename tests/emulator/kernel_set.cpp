// kernel_set.cpp: kernels/*.cu compiled unchanged for one emulated architecture
// (-D__CUDA_ARCH__=A), their table (name and parameters, from the C++ signatures), and the
// block scheduler that runs a grid under cuda_shim.h's execution model. Exports
// dkemu_kernels_smA() (engine.h). Built with -fsanitize=kernel-address so that every
// access the kernels make is checked (device_memory.h); the scheduler is DKEMU_HOST.
//
// The emulated driver links two architectures into one library, so the shim and the
// kernels sit in a namespace of their own per architecture (DKEMU_NS): their inline
// functions, which differ between architectures, then never merge at link time (the
// extern "C" kernel names are made local to the object by emulator-build.sh). The system
// headers come first, outside it.
#include <stdint.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "device_memory.h"
#include "engine.h"

#define DKEMU_NS_OF(arch) DKEMU_CAT(dkemu_sm, arch)
#define DKEMU_NS DKEMU_NS_OF(__CUDA_ARCH__)

namespace DKEMU_NS {
#include "cuda_shim.h"

// The kernels, compiled unchanged: every module of kernels/kernels.list
// (emulator-build.sh writes kernel_sources.inc from it).
#include "kernel_sources.inc"
}  // namespace DKEMU_NS

namespace DKEMU_NS {
namespace {
using ::dkemu::ParamDesc;
using ::dkemu::ParamKind;

template <typename A>
constexpr ParamDesc describe_param() {
    if constexpr (std::is_pointer_v<A>) {
        return {ParamKind::Pointer, sizeof(A), sizeof(std::remove_pointer_t<A>)};
    } else if constexpr (std::is_same_v<A, uint64_t>) {
        return {ParamKind::U64, sizeof(A), 0};
    } else if constexpr (std::is_same_v<A, float>) {
        return {ParamKind::F32, sizeof(A), 0};
    } else if constexpr (std::is_same_v<A, double>) {
        return {ParamKind::F64, sizeof(A), 0};
    } else if constexpr (std::is_same_v<A, DkDraw>) {
        return {ParamKind::Draw, sizeof(A), 0};
    } else if constexpr (std::is_class_v<A> && std::is_trivially_copyable_v<A>) {
        // A kernel's argument struct (pointers inside are checked as every access is).
        return {ParamKind::Struct, sizeof(A), 0};
    } else {
        static_assert(sizeof(A) == 0, "a kernel parameter type the engine does not know");
        return {};
    }
}

// A kernel's row of the table: its parameters, and one thread's call of it with the
// parameters copied out of `args` by the types of its signature (host memory, so the copy
// is not instrumented; the kernel body is).
using Invoke = void (*)(void* const* args);

template <typename Sig>
struct Entry;

template <typename... A>
struct Entry<void (*)(A...)> {
    static std::vector<ParamDesc> params() { return {describe_param<A>()...}; }

    template <void (*F)(A...), size_t... I>
    DKEMU_HOST static void call(void* const* args, std::index_sequence<I...>) {
        F(*static_cast<A*>(args[I])...);
    }
    template <void (*F)(A...)>
    DKEMU_HOST static void run(void* const* args) {
        call<F>(args, std::index_sequence_for<A...>{});
    }
};

struct Row {
    const char* name;
    std::vector<ParamDesc> params;
    Invoke invoke;
};

#define DK_KERNEL(f) Row{#f, Entry<decltype(&f)>::params(), &Entry<decltype(&f)>::run<&f>}
#define DK_PER_DTYPE(op) DK_KERNEL(op##_f32), DK_KERNEL(op##_f64), DK_KERNEL(op##_f16), DK_KERNEL(op##_bf16)
#define DK_PER_RESIDUAL_DTYPE(op) DK_PER_DTYPE(op), DK_KERNEL(op##_f16_rf32), DK_KERNEL(op##_bf16_rf32)

// Every kernel of kernels/kernels.list (emulator-build.sh writes kernel_rows.inc from it:
// one DK_PER_DTYPE or DK_KERNEL per line). A kernel missing here does not compile, and the
// emulated driver refuses a module with an entry that has no row.
const std::vector<Row>& rows() {
    static const std::vector<Row> table = {
#include "kernel_rows.inc"
    };
    return table;
}

// ---- the scheduler --------------------------------------------------------------------------
// One launch at a time per OS thread: the fibers of the block being run, and where a
// faulting fiber goes back to.
struct Running {
    Invoke invoke = nullptr;
    void* const* args = nullptr;
    bool stopped = false;  // a memory fault abandoned the block
};
thread_local Running t_run;

DKEMU_HOST void fiber_entry() {
    t_run.invoke(t_run.args);
    dkemu::Block& b = *dkemu::g_block;
    dkemu::g_fiber->done = true;
    --b.live;
    // Threads that exit stop counting at __syncthreads (as on sm_70+).
    if (b.barrier_arrived > 0 && b.barrier_arrived == b.live) {
        b.barrier_arrived = 0;
        ++b.barrier_gen;
    }
}  // returns to uc_link: the scheduler

DKEMU_HOST bool runnable(const dkemu::Block& b, const dkemu::Fiber& f) {
    switch (f.wait) {
        case dkemu::AT_WARP:
            return b.warps[f.tid.x / 32].gen != f.wait_gen;
        case dkemu::AT_BLOCK:
            return b.barrier_gen != f.wait_gen;
        default:
            return true;
    }
}

// Called by device_memory.cpp's check on a fault, on the faulting fiber: back to the
// scheduler for good (the fiber's stack is simply reused by the next block or launch).
DKEMU_HOST void stop_fiber() {
    t_run.stopped = true;
    dkemu::yield_to_scheduler();
    dkemu::fail("a stopped fiber was resumed");
}

// Fiber stacks: one lazily committed mapping per OS thread, grown to the largest block.
constexpr size_t STACK_BYTES = 64 * 1024;

struct Stacks {
    char* base = nullptr;
    unsigned threads = 0;
};
thread_local Stacks t_stacks;

DKEMU_HOST char* stacks_for(unsigned block_dim) {
    if (t_stacks.threads < block_dim) {
        if (t_stacks.base) munmap(t_stacks.base, STACK_BYTES * t_stacks.threads);
        void* m = mmap(nullptr, STACK_BYTES * block_dim, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) dkemu::fail("mmap of fiber stacks failed");
        t_stacks.base = static_cast<char*>(m);
        t_stacks.threads = block_dim;
    }
    return t_stacks.base;
}

// Runs one block; false when a memory fault stopped it.
DKEMU_HOST bool run_block(dkemu::Block& b, char* stacks, unsigned block_dim,
                          ::dkemu::mem::KernelScope& scope) {
    b.fibers.assign(block_dim, dkemu::Fiber{});
    b.warps.assign(block_dim / 32, dkemu::Warp{});
    b.live = (int)block_dim;
    b.barrier_arrived = 0;
    for (unsigned t = 0; t < block_dim; ++t) {
        dkemu::Fiber& f = b.fibers[t];
        f.tid.x = t;
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = stacks + (size_t)t * STACK_BYTES;
        f.ctx.uc_stack.ss_size = STACK_BYTES;
        f.ctx.uc_link = &b.scheduler;
        makecontext(&f.ctx, fiber_entry, 0);
    }
    while (b.live > 0) {
        bool progressed = false;
        for (dkemu::Fiber& f : b.fibers) {
            if (f.done || !runnable(b, f)) continue;
            dkemu::g_fiber = &f;
            scope.thread = f.tid.x;
            // Checks are on only while kernel code runs: the scheduler's own containers
            // are instrumented too, and are host memory.
            ::dkemu::mem::scope() = &scope;
            swapcontext(&b.scheduler, &f.ctx);
            ::dkemu::mem::scope() = nullptr;
            if (t_run.stopped) return false;
            progressed = true;
        }
        if (!progressed) {
            for (const dkemu::Warp& w : b.warps) {
                if (w.arrived > 0) {
                    std::fprintf(stderr,
                                 "emulator: block %u: %s reached by %d of 32 lanes of a warp "
                                 "(the others exited or wait elsewhere)\n",
                                 dkemu::g_block_idx.x, w.kind, w.arrived);
                }
            }
            dkemu::fail("deadlock");
        }
    }
    return true;
}

DKEMU_HOST ::dkemu::LaunchStatus launch(size_t index, unsigned grid, unsigned block,
                                      void* const* args) {
    const Row& row = rows().at(index);
    char* stacks = stacks_for(block);
    ::dkemu::mem::KernelScope scope;
    scope.kernel = row.name;
    scope.stacks_lo = stacks;
    scope.stacks_hi = stacks + STACK_BYTES * block;
    scope.stop = stop_fiber;
    t_run = Running{row.invoke, args, false};
    dkemu::Block b;
    dkemu::g_block = &b;
    dkemu::g_grid_dim = dkemu::Dim3{grid, 1, 1};
    dkemu::g_block_dim = dkemu::Dim3{block, 1, 1};
    bool ok = true;
    // Last block first: nothing may depend on the order blocks run in.
    for (unsigned bx = grid; ok && bx-- > 0;) {
        dkemu::g_block_idx = dkemu::Dim3{bx, 1, 1};
        scope.block = bx;
        ok = run_block(b, stacks, block, scope);
    }
    dkemu::g_block = nullptr;
    dkemu::g_fiber = nullptr;
    return ok ? ::dkemu::LaunchStatus::Ok : ::dkemu::LaunchStatus::MemoryFault;
}

}  // namespace
}  // namespace DKEMU_NS

extern "C" __attribute__((visibility("default"))) const ::dkemu::KernelSet* DKEMU_SET_FN(
    __CUDA_ARCH__)() {
    static const ::dkemu::KernelSet set = [] {
        ::dkemu::KernelSet s;
        s.arch = __CUDA_ARCH__;
        for (const auto& r : DKEMU_NS::rows())
            s.kernels.push_back(::dkemu::KernelDesc{r.name, r.params});
        s.launch = DKEMU_NS::launch;
        return s;
    }();
    return &set;
}
