// emulate.cpp: dk-emulate, the command-line front of the kernel engine (engine.h): runs
// one kernel of kernels/*.cu on the CPU on inputs read from files, and writes its outputs
// back to files. The Rust test tests/kernels_emulated.rs drives it; scripts/emulate-
// kernels.sh builds it, once per emulated architecture (kernel_set.cpp).
//
//   dk-emulate KERNEL GRID BLOCK ARG...
//
// one ARG per kernel parameter, in order, parsed by the parameter's C++ type:
//   pointer   in:PATH[@OFF]        file contents, placed OFF elements into the buffer
//             inout:PATH[@OFF]     the same, written back to PATH after the launch
//             out:PATH:COUNT[@OFF] COUNT unwritten elements, written to PATH after
//             alias:K              the same address as (pointer) parameter K, 0-based
//             null                 a null pointer
//   uint64_t  a number (decimal or 0x hex)
//   float     0x + the 8 hex digits of its bits, or a decimal
//   double    0x + the 16 hex digits of its bits, or a decimal
//   DkDraw    SEED,OFFSET,INDEX_BASE,THRESHOLD (by value: its `state` field is 0)
//
// Buffers are device memory as the emulated driver has it (device_memory.h): each one
// ends where its data ends, so any access past it, and a read of bytes never written, is
// reported; the OFF elements before the data are poisoned and checked after the launch,
// so a stray write just before it is reported too, and an output element left unwritten
// is reported when it is written back. Exit status: 0 ok, 2 bad usage, 3 a fault the model
// detected (deadlocked or divergent collective), 4 a memory report.
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <string>
#include <type_traits>
#include <utility>

#include "device_memory.h"
#include "engine.h"

DKEMU_DECLARE_SET(DKEMU_ARCH);

namespace {

constexpr unsigned char POISON = 0xA5;

template <typename T>
T from_word(uint64_t w) {
    T v;
    std::memcpy(&v, &w, sizeof(T));
    return v;
}

[[noreturn]] void usage(const std::string& what) {
    std::fprintf(stderr, "dk-emulate: %s\n", what.c_str());
    std::_Exit(2);
}

struct Buffer {
    std::string path;
    bool write_back = false;
    unsigned char* alloc = nullptr;  // the allocation: OFF poisoned elements, then the data
    unsigned char* data = nullptr;
    size_t bytes = 0;
};

std::vector<unsigned char> read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) usage("cannot read " + path);
    return std::vector<unsigned char>(std::istreambuf_iterator<char>(f), {});
}

// `bytes` of device memory at `off_bytes` into an allocation that ends with them.
Buffer make_buffer(size_t off_bytes, size_t bytes) {
    uint64_t ptr = 0;
    if (dkemu::mem::allocate(off_bytes + bytes + (off_bytes + bytes == 0), &ptr) !=
        dkemu::mem::AllocResult::Ok)
        usage("device memory allocation failed");
    Buffer b;
    b.alloc = reinterpret_cast<unsigned char*>(ptr);
    std::memset(b.alloc, POISON, off_bytes);  // host bytes: still unwritten to the shadow
    b.data = b.alloc + off_bytes;
    b.bytes = bytes;
    return b;
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

void parse_arg(Launch& L, int index, const dkemu::ParamDesc& p, const std::string& s) {
    using dkemu::ParamKind;
    switch (p.kind) {
        case ParamKind::Pointer: {
            const size_t elem = p.elem_size;
            void* ptr = nullptr;
            if (s == "null") {
            } else if (s.rfind("alias:", 0) == 0) {
                const int k = std::stoi(s.substr(6));
                if (!L.pointer_of.count(k))
                    usage("alias of a parameter that is not a buffer: " + s);
                ptr = L.pointer_of[k];
            } else if (s.rfind("in:", 0) == 0 || s.rfind("inout:", 0) == 0) {
                const bool inout = s[2] == 'o';
                auto [path, off] = split_offset(s.substr(inout ? 6 : 3));
                const auto content = read_file(path);
                if (content.size() % elem) usage(path + ": not a whole number of elements");
                Buffer b = make_buffer(off * elem, content.size());
                std::memcpy(b.data, content.data(), content.size());
                dkemu::mem::mark_written((uint64_t)(uintptr_t)b.data, content.size());
                b.path = path;
                b.write_back = inout;
                ptr = b.data;
                L.buffers.push_back(std::move(b));
            } else if (s.rfind("out:", 0) == 0) {
                auto [spec, off] = split_offset(s.substr(4));
                const size_t colon = spec.rfind(':');
                if (colon == std::string::npos) usage("out:PATH:COUNT expected, got " + s);
                const size_t count = std::stoull(spec.substr(colon + 1));
                Buffer b = make_buffer(off * elem, count * elem);
                b.path = spec.substr(0, colon);
                b.write_back = true;
                ptr = b.data;
                L.buffers.push_back(std::move(b));
            } else {
                usage("bad buffer argument " + s);
            }
            L.pointer_of[index] = ptr;
            store(L, ptr);
            break;
        }
        case ParamKind::U64:
            store(L, (uint64_t)std::stoull(s, nullptr, 0));
            break;
        case ParamKind::F32:
            store(L, s.rfind("0x", 0) == 0 ? from_word<float>(std::stoull(s, nullptr, 16))
                                           : std::stof(s));
            break;
        case ParamKind::F64:
            store(L, s.rfind("0x", 0) == 0 ? from_word<double>(std::stoull(s, nullptr, 16))
                                           : std::stod(s));
            break;
        case ParamKind::Draw: {
            uint64_t d[5] = {};  // d[4], the device state of a captured call, stays 0
            size_t start = 0;
            for (int k = 0; k < 4; ++k) {
                const size_t comma = s.find(',', start);
                if ((k < 3) != (comma != std::string::npos)) usage("DkDraw needs 4 numbers: " + s);
                d[k] = std::stoull(s.substr(start, comma - start), nullptr, 0);
                start = comma + 1;
            }
            std::vector<unsigned char> bytes(sizeof d);
            std::memcpy(bytes.data(), d, sizeof d);
            L.values.push_back(std::move(bytes));
            break;
        }
        case ParamKind::Struct:
            // Argument structs hold device pointers: the emulated driver's tests run them.
            usage("parameter " + std::to_string(index) +
                  " is an argument struct, which dk-emulate cannot build from text");
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
    const dkemu::KernelSet& set = *DKEMU_SET_FN(DKEMU_ARCH)();
    size_t index = 0;
    const dkemu::KernelDesc* kernel = set.find(argv[1], &index);
    if (!kernel) usage(std::string("unknown kernel ") + argv[1]);
    const unsigned grid = (unsigned)std::stoul(argv[2]);
    const unsigned block = (unsigned)std::stoul(argv[3]);
    if (grid == 0 || block == 0 || block % 32 != 0 || block > 1024)
        usage("GRID > 0 and BLOCK a multiple of 32 up to 1024");
    std::vector<std::string> args(argv + 4, argv + argc);
    if (args.size() != kernel->params.size())
        usage(std::string(argv[1]) + " takes " + std::to_string(kernel->params.size()) +
              " arguments");

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

    dkemu::mem::configure(1ull << 32);
    Launch launch;
    for (size_t k = 0; k < args.size(); ++k) parse_arg(launch, (int)k, kernel->params[k], args[k]);
    std::vector<void*> params;
    for (auto& v : launch.values) params.push_back(v.data());

    int status = 0;
    if (set.launch(index, grid, block, params.data()) != dkemu::LaunchStatus::Ok) status = 4;
    for (const Buffer& buf : launch.buffers) {
        for (const unsigned char* p = buf.alloc; p < buf.data; ++p) {
            if (*p != POISON) {
                std::fprintf(stderr, "emulator: a write just before buffer %s\n", buf.path.c_str());
                status = 4;
                break;
            }
        }
        if (!buf.write_back) continue;
        const uint64_t unwritten =
            dkemu::mem::first_unwritten((uint64_t)(uintptr_t)buf.data, buf.bytes);
        if (unwritten != UINT64_MAX) {
            dkemu::mem::report("initcheck", "output " + buf.path + " left unwritten at byte " +
                                                std::to_string(unwritten - (uintptr_t)buf.data) +
                                                " of " + std::to_string(buf.bytes));
        }
        std::ofstream f(buf.path, std::ios::binary | std::ios::trunc);
        f.write(reinterpret_cast<const char*>(buf.data), (std::streamsize)buf.bytes);
        if (!f) usage("cannot write " + buf.path);
    }
    if (dkemu::mem::report_count() > 0) status = 4;
    std::fflush(stderr);
    std::_Exit(status);
}
