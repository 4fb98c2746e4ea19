// device_memory.h: device memory as compute-sanitizer sees it, for the emulated driver and
// dk-emulate. Device addresses are host addresses inside one reserved region; every
// allocation starts on a page and is followed by a PROT_NONE guard page, and one shadow
// byte per device byte says whether the byte belongs to a live allocation and whether it
// was written. The kernels are compiled with -fsanitize=kernel-address, so every load and
// store they make goes through the check in device_memory.cpp: outside a live allocation
// (out of bounds, freed, or not device memory at all) stops the kernel with a report; a
// read of bytes never written is reported and the kernel goes on (as initcheck does).
// Host-side copies are checked by the driver with the same functions.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace dkemu::mem {

// Shadow states. NOT_LIVE covers guard pages, slack after an allocation's last byte,
// freed memory and memory never allocated.
enum : uint8_t { NOT_LIVE = 0, UNWRITTEN = 1, WRITTEN = 2 };

// Reserves the region for `capacity` bytes of device memory (once; later calls keep the
// first size).
void configure(uint64_t capacity);
uint64_t capacity();
uint64_t in_use();

enum class AllocResult { Ok, ZeroBytes, OutOfMemory };
AllocResult allocate(uint64_t bytes, uint64_t* ptr);
// False when `ptr` is not the start of a live allocation (a double free, a bad pointer).
bool release(uint64_t ptr);

// Checks a host-side access of [addr, addr + n): true when it lies inside one live
// allocation; else false with `why` saying where it fell.
bool live_range(uint64_t addr, uint64_t n, std::string* why);
// The first byte of [addr, addr + n) never written, or UINT64_MAX (range must be live).
uint64_t first_unwritten(uint64_t addr, uint64_t n);
void mark_written(uint64_t addr, uint64_t n);
// A device-to-device copy carries written-ness with the bytes.
void copy_shadow(uint64_t dst, uint64_t src, uint64_t n);

// Where an address falls: "allocation #7 (4096 bytes at 0x...) + 100", "4 byte(s) past
// the end of allocation #7 ...", "freed allocation #3 ...", or that it is no device memory.
std::string describe(uint64_t addr);

// A report: printed to stderr, appended to the file DKEMU_REPORT_LOG names, and counted.
// Unless DKEMU_REPORTS_FATAL=0, a process that made any report exits with status 86.
void report(const char* tool, const std::string& what);
uint64_t report_count();

// The kernel running on this thread, for reports and for stopping it on a fault. The
// engine sets it around a launch and keeps `block`/`thread` current.
struct KernelScope {
    const char* kernel = nullptr;
    unsigned block = 0;
    unsigned thread = 0;
    const char* stacks_lo = nullptr;  // the fibers' stacks: accesses there are host memory
    const char* stacks_hi = nullptr;
    bool faulted = false;           // a memory fault stopped the kernel
    uint64_t unwritten_reads = 0;   // reads of unwritten bytes reported in this launch
    void (*stop)() = nullptr;       // leaves the faulting fiber for the scheduler
};
KernelScope*& scope();

}  // namespace dkemu::mem
