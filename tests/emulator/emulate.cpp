// emulate.cpp: runs one kernel of kernels/*.cu on the CPU, under the execution model of
// cuda_shim.h, on inputs read from files, and writes its outputs back to files. The Rust
// test tests/kernels_emulated.rs drives it; scripts/emulate-kernels.sh builds it.
//
//   dk-emulate KERNEL GRID BLOCK ARG...
//
// one ARG per kernel parameter, in order, parsed by the parameter's C++ type:
//   pointer   in:PATH[@OFF]        file contents, placed OFF elements into the buffer
//             inout:PATH[@OFF]     the same, written back to PATH after the launch
//             out:PATH:COUNT[@OFF] COUNT poisoned elements, written to PATH after
//             alias:K              the same address as (pointer) parameter K, 0-based
//             null                 a null pointer
//   uint64_t  a number (decimal or 0x hex)
//   float     0x + the 8 hex digits of its bits, or a decimal
//   double    0x + the 16 hex digits of its bits, or a decimal
//   DkDraw    SEED,OFFSET,INDEX_BASE,THRESHOLD
//
// Every buffer ends 0..15 bytes before a PROT_NONE page, so a read or write far past the
// end faults; the bytes around the data are poisoned and checked after the launch, so a
// stray write next to it is reported. Exit status: 0 ok, 2 bad usage, 3 a fault the model
// detected (deadlocked or divergent collective), 4 out-of-bounds access.
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <string>
#include <type_traits>
#include <utility>

#include "cuda_shim.h"

// The kernels, compiled unchanged.
#include "../../kernels/alpha_dropout.cu"
#include "../../kernels/bias_dropout_residual.cu"
#include "../../kernels/bias_dropout_residual_bwd.cu"
#include "../../kernels/dropout.cu"
#include "../../kernels/grouped_dropout.cu"

namespace {

constexpr unsigned char POISON = 0xA5;
constexpr size_t GUARD_BYTES = 64;

[[noreturn]] void usage(const std::string& what) {
    std::fprintf(stderr, "dk-emulate: %s\n", what.c_str());
    std::_Exit(2);
}

struct Buffer {
    std::string path;
    bool write_back = false;
    unsigned char* map = nullptr;  // first byte of the mapping (the guard before)
    size_t map_len = 0;            // up to, not including, the PROT_NONE page
    unsigned char* data = nullptr;
    size_t bytes = 0;
};

std::vector<unsigned char> read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) usage("cannot read " + path);
    return std::vector<unsigned char>(std::istreambuf_iterator<char>(f), {});
}

// A buffer of `bytes` at `off_bytes` into a 16-byte aligned region that ends (rounded up
// to 16) at a PROT_NONE page.
Buffer make_buffer(size_t off_bytes, size_t bytes) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    const size_t region = (off_bytes + bytes + 15) / 16 * 16;
    const size_t before = (GUARD_BYTES + region + page - 1) / page * page;
    void* m = mmap(nullptr, before + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    if (m == MAP_FAILED) usage("mmap failed");
    auto* map = static_cast<unsigned char*>(m);
    if (mprotect(map + before, page, PROT_NONE) != 0) usage("mprotect failed");
    std::memset(map, POISON, before);
    Buffer b;
    b.map = map;
    b.map_len = before;
    b.data = map + before - region + off_bytes;
    b.bytes = bytes;
    return b;
}

bool guards_intact(const Buffer& b) {
    for (unsigned char* p = b.map; p < b.data; ++p)
        if (*p != POISON) return false;
    for (unsigned char* p = b.data + b.bytes; p < b.map + b.map_len; ++p)
        if (*p != POISON) return false;
    return true;
}

struct Launch {
    std::vector<Buffer> buffers;
    std::vector<std::vector<unsigned char>> values;  // storage of each argument
    std::map<int, void*> pointer_of;                 // parameter index -> device address
};

std::pair<std::string, size_t> split_offset(const std::string& s) {
    const size_t at = s.rfind('@');
    if (at == std::string::npos) return {s, 0};
    return {s.substr(0, at), std::stoull(s.substr(at + 1))};
}

template <typename T>
void store(Launch& L, T v) {
    std::vector<unsigned char> bytes(sizeof(T));
    std::memcpy(bytes.data(), &v, sizeof(T));
    L.values.push_back(std::move(bytes));
}

template <typename A>
void parse_arg(Launch& L, int index, const std::string& s) {
    if constexpr (std::is_pointer_v<A>) {
        using E = std::remove_cv_t<std::remove_pointer_t<A>>;
        void* ptr = nullptr;
        if (s == "null") {
        } else if (s.rfind("alias:", 0) == 0) {
            const int k = std::stoi(s.substr(6));
            if (!L.pointer_of.count(k)) usage("alias of a parameter that is not a buffer: " + s);
            ptr = L.pointer_of[k];
        } else if (s.rfind("in:", 0) == 0 || s.rfind("inout:", 0) == 0) {
            const bool inout = s[2] == 'o';
            auto [path, off] = split_offset(s.substr(inout ? 6 : 3));
            const auto content = read_file(path);
            if (content.size() % sizeof(E)) usage(path + ": not a whole number of elements");
            Buffer b = make_buffer(off * sizeof(E), content.size());
            std::memcpy(b.data, content.data(), content.size());
            b.path = path;
            b.write_back = inout;
            ptr = b.data;
            L.buffers.push_back(std::move(b));
        } else if (s.rfind("out:", 0) == 0) {
            auto [spec, off] = split_offset(s.substr(4));
            const size_t colon = spec.rfind(':');
            if (colon == std::string::npos) usage("out:PATH:COUNT expected, got " + s);
            const size_t count = std::stoull(spec.substr(colon + 1));
            Buffer b = make_buffer(off * sizeof(E), count * sizeof(E));
            b.path = spec.substr(0, colon);
            b.write_back = true;
            ptr = b.data;
            L.buffers.push_back(std::move(b));
        } else {
            usage("bad buffer argument " + s);
        }
        L.pointer_of[index] = ptr;
        store(L, (A)ptr);
    } else if constexpr (std::is_same_v<A, uint64_t>) {
        store(L, (uint64_t)std::stoull(s, nullptr, 0));
    } else if constexpr (std::is_same_v<A, float>) {
        if (s.rfind("0x", 0) == 0) {
            store(L, dkemu::from_word<float>(std::stoull(s, nullptr, 16)));
        } else {
            store(L, std::stof(s));
        }
    } else if constexpr (std::is_same_v<A, double>) {
        if (s.rfind("0x", 0) == 0) {
            store(L, dkemu::from_word<double>(std::stoull(s, nullptr, 16)));
        } else {
            store(L, std::stod(s));
        }
    } else if constexpr (std::is_same_v<A, DkDraw>) {
        DkDraw d;
        uint64_t* f[4] = {&d.seed, &d.offset, &d.index_base, &d.threshold};
        size_t start = 0;
        for (int k = 0; k < 4; ++k) {
            const size_t comma = s.find(',', start);
            if ((k < 3) != (comma != std::string::npos)) usage("DkDraw needs 4 numbers: " + s);
            *f[k] = std::stoull(s.substr(start, comma - start), nullptr, 0);
            start = comma + 1;
        }
        store(L, d);
    } else {
        static_assert(sizeof(A) == 0, "a parameter type the driver cannot parse");
    }
}

// A kernel as the driver sees it: how many parameters, and a launcher from strings.
struct Kernel {
    size_t arity;
    std::function<void(Launch&, const std::vector<std::string>&)> parse;
    std::function<void(Launch&)> run_thread;  // one thread's call of the kernel body
};

template <typename... A, size_t... I>
void call(void (*f)(A...), Launch& L, std::index_sequence<I...>) {
    f(*reinterpret_cast<std::remove_reference_t<A>*>(L.values[I].data())...);
}

template <typename... A, size_t... I>
void parse_all(Launch& L, const std::vector<std::string>& args, std::index_sequence<I...>) {
    (parse_arg<A>(L, (int)I, args[I]), ...);
}

template <typename... A>
Kernel kernel(void (*f)(A...)) {
    Kernel k;
    k.arity = sizeof...(A);
    k.parse = [](Launch& L, const std::vector<std::string>& args) {
        parse_all<A...>(L, args, std::index_sequence_for<A...>{});
    };
    k.run_thread = [f](Launch& L) { call(f, L, std::index_sequence_for<A...>{}); };
    return k;
}

#define DK_PER_DTYPE(op)                                                              \
    {#op "_f32", kernel(&op##_f32)}, {#op "_f64", kernel(&op##_f64)},                \
        {#op "_f16", kernel(&op##_f16)}, {#op "_bf16", kernel(&op##_bf16)}

const std::map<std::string, Kernel>& kernels() {
    static const std::map<std::string, Kernel> table = {
        DK_PER_DTYPE(dropout_fwd),
        DK_PER_DTYPE(dropout_bwd_bits),
        DK_PER_DTYPE(alpha_dropout_fwd),
        DK_PER_DTYPE(grouped_scale),
        DK_PER_DTYPE(grouped_alpha),
        DK_PER_DTYPE(bias_dropout_residual_fwd),
        DK_PER_DTYPE(column_sum_partial),
        DK_PER_DTYPE(column_sum_finish),
        DK_PER_DTYPE(bias_dropout_residual_bwd),
        {"dropout_mask_bits", kernel(&dropout_mask_bits)},
    };
    return table;
}

// Fiber bodies: the thread entry runs the kernel for the fiber the scheduler switched to.
Launch* g_launch = nullptr;
const Kernel* g_kernel = nullptr;

void fiber_entry() {
    g_kernel->run_thread(*g_launch);
    dkemu::Block& b = *dkemu::g_block;
    dkemu::g_fiber->done = true;
    --b.live;
    // Threads that exit stop counting at __syncthreads (as on sm_70+).
    if (b.barrier_arrived > 0 && b.barrier_arrived == b.live) {
        b.barrier_arrived = 0;
        ++b.barrier_gen;
    }
}  // returns to uc_link: the scheduler

bool runnable(const dkemu::Block& b, const dkemu::Fiber& f) {
    switch (f.wait) {
        case dkemu::AT_WARP:
            return b.warps[f.tid.x / 32].gen != f.wait_gen;
        case dkemu::AT_BLOCK:
            return b.barrier_gen != f.wait_gen;
        default:
            return true;
    }
}

// Fiber stacks: one lazily committed mapping (only the pages a fiber touches are backed).
constexpr size_t STACK_BYTES = 64 * 1024;

char* map_stacks(unsigned block_dim) {
    void* m = mmap(nullptr, STACK_BYTES * block_dim, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) usage("mmap of fiber stacks failed");
    return static_cast<char*>(m);
}

void run_block(dkemu::Block& b, char* stacks, unsigned block_dim) {
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
            swapcontext(&b.scheduler, &f.ctx);
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
}

void on_fault(int) {
    const char msg[] = "emulator: out-of-bounds access (guard page)\n";
    if (write(2, msg, sizeof msg - 1)) {}
    _exit(4);
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 4) usage("usage: dk-emulate KERNEL GRID BLOCK ARG...");
    const auto it = kernels().find(argv[1]);
    if (it == kernels().end()) usage(std::string("unknown kernel ") + argv[1]);
    const unsigned grid = (unsigned)std::stoul(argv[2]);
    const unsigned block = (unsigned)std::stoul(argv[3]);
    if (grid == 0 || block == 0 || block % 32 != 0 || block > 1024)
        usage("GRID > 0 and BLOCK a multiple of 32 up to 1024");
    std::vector<std::string> args(argv + 4, argv + argc);
    if (args.size() != it->second.arity)
        usage(std::string(argv[1]) + " takes " + std::to_string(it->second.arity) + " arguments");

    // Faults on a fiber's stack need a stack of their own to be reported.
    static std::vector<char> alt(1 << 16);
    stack_t ss{};
    ss.ss_sp = alt.data();
    ss.ss_size = alt.size();
    sigaltstack(&ss, nullptr);
    struct sigaction sa{};
    sa.sa_handler = on_fault;
    sa.sa_flags = SA_ONSTACK;
    sigaction(SIGSEGV, &sa, nullptr);
    sigaction(SIGBUS, &sa, nullptr);

    Launch launch;
    it->second.parse(launch, args);
    g_launch = &launch;
    g_kernel = &it->second;

    char* stacks = map_stacks(block);
    dkemu::Block b;
    dkemu::g_block = &b;
    dkemu::g_grid_dim.x = grid;
    dkemu::g_block_dim.x = block;
    // Last block first: nothing may depend on the order blocks run in.
    for (unsigned bx = grid; bx-- > 0;) {
        dkemu::g_block_idx.x = bx;
        run_block(b, stacks, block);
    }

    int status = 0;
    for (size_t k = 0; k < launch.buffers.size(); ++k) {
        const Buffer& buf = launch.buffers[k];
        if (!guards_intact(buf)) {
            std::fprintf(stderr, "emulator: a write next to buffer %s\n", buf.path.c_str());
            status = 4;
        }
        if (buf.write_back) {
            std::ofstream f(buf.path, std::ios::binary | std::ios::trunc);
            f.write(reinterpret_cast<const char*>(buf.data), (std::streamsize)buf.bytes);
            if (!f) usage("cannot write " + buf.path);
        }
    }
    return status;
}
