// device_memory.cpp: the reserved region, the shadow bytes, allocation with guard pages,
// reports, and the load/store checks that -fsanitize=kernel-address calls from the kernels
// (the __asan_*_noabort entry points). See device_memory.h.
#include "device_memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <atomic>
#include <map>
#include <mutex>

namespace dkemu::mem {
namespace {

constexpr uint64_t PAGE = 4096;

struct Allocation {
    uint64_t bytes;
    uint64_t id;
    uint64_t base = 0;
};

// The region and its shadow. Written under `lock` (allocations come from the driver's
// calls, which it serializes); the checks read them from the kernel's thread.
struct Region {
    uint64_t capacity = 0;  // device bytes that may be live at once
    uint64_t in_use = 0;
    uint64_t base = 0;  // first address of the region
    uint64_t size = 0;  // bytes reserved (allocations + guard pages + room for next-fit)
    uint8_t* shadow = nullptr;
    uint64_t cursor = 0;  // next-fit: offset where the next search starts
    uint64_t next_id = 1;
    std::map<uint64_t, Allocation> live;   // by base address
    std::map<uint64_t, Allocation> freed;  // the last frees by free order, for reports
    uint64_t frees = 0;
};

Region g;
std::mutex g_lock;
std::atomic<uint64_t> g_reports{0};
thread_local KernelScope* t_scope = nullptr;

uint64_t round_page(uint64_t n) { return (n + PAGE - 1) / PAGE * PAGE; }

[[noreturn]] void die(const char* what) {
    std::fprintf(stderr, "dkemu: %s\n", what);
    std::_Exit(3);
}

void at_exit() {
    const uint64_t n = g_reports.load();
    if (n == 0) return;
    const char* fatal = std::getenv("DKEMU_REPORTS_FATAL");
    if (fatal && std::strcmp(fatal, "0") == 0) return;
    std::fprintf(stderr, "dkemu: %" PRIu64 " sanitizer report(s) in this process: exit 86\n", n);
    std::fflush(stderr);
    std::_Exit(86);
}

void reserve_locked(uint64_t capacity) {
    if (g.base) return;
    g.capacity = capacity;
    // Room for every live byte twice over (guard pages, page rounding) and then some, so
    // next-fit finds space without reusing freed memory soon.
    g.size = round_page(capacity) * 2 + (1ull << 30);
    void* m = mmap(nullptr, g.size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (m == MAP_FAILED) die("cannot reserve the device memory region");
    void* s = mmap(nullptr, g.size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (s == MAP_FAILED) die("cannot reserve the shadow region");
    g.base = (uint64_t)(uintptr_t)m;
    g.shadow = static_cast<uint8_t*>(s);
    std::atexit(at_exit);
}

// The live allocation holding `addr`, or live.end().
std::map<uint64_t, Allocation>::const_iterator containing(uint64_t addr) {
    auto it = g.live.upper_bound(addr);
    if (it == g.live.begin()) return g.live.end();
    --it;
    return addr < it->first + it->second.bytes ? it : g.live.end();
}

std::string hex(uint64_t v) {
    char b[32];
    std::snprintf(b, sizeof b, "0x%" PRIx64, v);
    return b;
}

std::string describe_locked(uint64_t addr) {
    if (addr - g.base >= g.size) return hex(addr) + " is not device memory";
    auto it = containing(addr);
    if (it != g.live.end()) {
        return hex(addr) + " = allocation #" + std::to_string(it->second.id) + " (" +
               std::to_string(it->second.bytes) + " bytes at " + hex(it->first) + ") + " +
               std::to_string(addr - it->first);
    }
    // Past the end of the live allocation just below (within its last page and guard page):
    // the usual overrun.
    auto below = g.live.upper_bound(addr);
    if (below != g.live.begin() &&
        addr < std::prev(below)->first + round_page(std::prev(below)->second.bytes) + PAGE) {
        --below;
        return hex(addr) + " = " + std::to_string(addr - below->first - below->second.bytes) +
               " byte(s) past the end of allocation #" + std::to_string(below->second.id) + " (" +
               std::to_string(below->second.bytes) + " bytes at " + hex(below->first) + ")";
    }
    // Freed: the latest free that covered the address.
    for (auto f = g.freed.rbegin(); f != g.freed.rend(); ++f) {
        const Allocation& a = f->second;
        if (addr >= a.base && addr < a.base + round_page(a.bytes)) {
            return hex(addr) + " = freed allocation #" + std::to_string(a.id) + " (" +
                   std::to_string(a.bytes) + " bytes at " + hex(a.base) + ") + " +
                   std::to_string(addr - a.base);
        }
    }
    return hex(addr) + " is in the device region but in no allocation";
}

}  // namespace

void configure(uint64_t capacity) {
    std::lock_guard<std::mutex> l(g_lock);
    reserve_locked(capacity);
}

uint64_t capacity() { return g.capacity; }
uint64_t in_use() {
    std::lock_guard<std::mutex> l(g_lock);
    return g.in_use;
}

AllocResult allocate(uint64_t bytes, uint64_t* ptr) {
    std::lock_guard<std::mutex> l(g_lock);
    reserve_locked(8ull << 30);
    if (bytes == 0) return AllocResult::ZeroBytes;
    if (bytes > g.capacity || g.in_use > g.capacity - bytes) return AllocResult::OutOfMemory;
    const uint64_t need = round_page(bytes) + PAGE;  // data pages + the guard page
    // Next-fit over the gaps between live allocations, from the cursor, wrapping once.
    for (int pass = 0; pass < 2; ++pass) {
        uint64_t at = pass == 0 ? g.cursor : 0;
        auto it = g.live.lower_bound(g.base + at);
        if (it != g.live.begin()) {
            auto prev = std::prev(it);
            const uint64_t prev_end = prev->first - g.base + round_page(prev->second.bytes) + PAGE;
            if (prev_end > at) at = prev_end;
        }
        for (;;) {
            const uint64_t gap_end = it == g.live.end() ? g.size : it->first - g.base;
            if (at + need <= gap_end) {
                const uint64_t base = g.base + at;
                if (mprotect((void*)(uintptr_t)base, round_page(bytes), PROT_READ | PROT_WRITE))
                    return AllocResult::OutOfMemory;
                std::memset(g.shadow + at, UNWRITTEN, bytes);
                g.live[base] = Allocation{bytes, g.next_id++, base};
                g.in_use += bytes;
                g.cursor = at + need;
                *ptr = base;
                return AllocResult::Ok;
            }
            if (it == g.live.end()) break;
            at = it->first - g.base + round_page(it->second.bytes) + PAGE;
            ++it;
        }
    }
    return AllocResult::OutOfMemory;
}

bool release(uint64_t ptr) {
    std::lock_guard<std::mutex> l(g_lock);
    auto it = g.live.find(ptr);
    if (it == g.live.end()) return false;
    const Allocation a = it->second;
    const uint64_t span = round_page(a.bytes);
    // Gives the pages back and zeroes their shadow (NOT_LIVE) in one step.
    madvise((void*)(uintptr_t)ptr, span, MADV_DONTNEED);
    mprotect((void*)(uintptr_t)ptr, span, PROT_NONE);
    madvise(g.shadow + (ptr - g.base), span, MADV_DONTNEED);
    g.in_use -= a.bytes;
    g.live.erase(it);
    g.freed[g.frees++] = a;
    if (g.freed.size() > 4096) g.freed.erase(g.freed.begin());  // the oldest
    return true;
}

bool live_range(uint64_t addr, uint64_t n, std::string* why) {
    std::lock_guard<std::mutex> l(g_lock);
    auto it = containing(addr);
    if (it == g.live.end()) {
        *why = describe_locked(addr);
        return false;
    }
    if (n > it->first + it->second.bytes - addr) {
        *why = std::to_string(n) + " bytes from " + describe_locked(addr) + " run " +
               std::to_string(n - (it->first + it->second.bytes - addr)) +
               " byte(s) past its end";
        return false;
    }
    return true;
}

uint64_t first_unwritten(uint64_t addr, uint64_t n) {
    const uint8_t* s = g.shadow + (addr - g.base);
    for (uint64_t k = 0; k < n; ++k)
        if (s[k] != WRITTEN) return addr + k;
    return UINT64_MAX;
}

void mark_written(uint64_t addr, uint64_t n) { std::memset(g.shadow + (addr - g.base), WRITTEN, n); }

void copy_shadow(uint64_t dst, uint64_t src, uint64_t n) {
    std::memmove(g.shadow + (dst - g.base), g.shadow + (src - g.base), n);
}

std::string describe(uint64_t addr) {
    std::lock_guard<std::mutex> l(g_lock);
    return describe_locked(addr);
}

void report(const char* tool, const std::string& what) {
    g_reports.fetch_add(1);
    std::string line = std::string("dkemu: [") + tool + "] " + what + "\n";
    std::fputs(line.c_str(), stderr);
    std::fflush(stderr);
    if (const char* path = std::getenv("DKEMU_REPORT_LOG")) {
        if (FILE* f = std::fopen(path, "a")) {
            std::fputs(line.c_str(), f);
            std::fclose(f);
        }
    }
}

uint64_t report_count() { return g_reports.load(); }

KernelScope*& scope() { return t_scope; }

}  // namespace dkemu::mem

// ---- the checks the instrumented kernels call --------------------------------------------
namespace {
using namespace dkemu::mem;

std::string where(const KernelScope& s) {
    return std::string("kernel ") + s.kernel + ", block " + std::to_string(s.block) +
           ", thread " + std::to_string(s.thread);
}

[[noreturn]] void fault(KernelScope& s, uintptr_t a, size_t n, bool write) {
    report("memcheck", std::string("invalid ") + (write ? "write" : "read") + " of " +
                           std::to_string(n) + " byte(s) by " + where(s) + " at " +
                           describe((uint64_t)a));
    s.faulted = true;
    s.stop();  // never returns: the fiber is abandoned
    std::abort();
}

inline void check(uintptr_t a, size_t n, bool write) {
    KernelScope* s = t_scope;
    if (!s) return;  // not inside a kernel (host code of the engine itself)
    const uint64_t off = (uint64_t)a - g.base;
    if (off < g.size && n <= g.size - off) {
        uint8_t* sh = g.shadow + off;
        for (size_t k = 0; k < n; ++k) {
            if (sh[k] == NOT_LIVE) fault(*s, a + k, n - k, write);
        }
        if (write) {
            std::memset(sh, WRITTEN, n);
        } else {
            for (size_t k = 0; k < n; ++k) {
                if (sh[k] != WRITTEN) {
                    // One report per launch: the first such read says what is wrong.
                    if (s->unwritten_reads++ == 0) {
                        report("initcheck", "read of " + std::to_string(n) +
                                                " byte(s) never written, by " + where(*s) +
                                                " at " + describe((uint64_t)a + k));
                    }
                    break;
                }
            }
        }
        return;
    }
    const char* p = reinterpret_cast<const char*>(a);
    if (p >= s->stacks_lo && p + n <= s->stacks_hi) return;  // the thread's own locals
    fault(*s, a, n, write);
}
}  // namespace

#define DKEMU_HOOKS(N)                                                                       \
    extern "C" __attribute__((visibility("hidden"))) void __asan_load##N##_noabort(uintptr_t a) { \
        check(a, N, false);                                                                  \
    }                                                                                        \
    extern "C" __attribute__((visibility("hidden"))) void __asan_store##N##_noabort(uintptr_t a) { \
        check(a, N, true);                                                                   \
    }
DKEMU_HOOKS(1)
DKEMU_HOOKS(2)
DKEMU_HOOKS(4)
DKEMU_HOOKS(8)
DKEMU_HOOKS(16)
extern "C" __attribute__((visibility("hidden"))) void __asan_loadN_noabort(uintptr_t a, size_t n) {
    check(a, n, false);
}
extern "C" __attribute__((visibility("hidden"))) void __asan_storeN_noabort(uintptr_t a, size_t n) {
    check(a, n, true);
}
extern "C" __attribute__((visibility("hidden"))) void __asan_handle_no_return() {}
