// driver.cpp: the emulated CUDA driver, a libcuda.so that runs dropkit's kernels on the CPU.
// It implements the driver calls dropkit makes through cudarc (device and attribute
// queries, the primary context and the current context per thread, streams, events,
// allocation, memset and copies, modules, cuLaunchKernel, error names) with the error
// codes a real driver gives; every other binding cudarc has is a generated stub
// (driver_stubs.cpp) that says its name and answers CUDA_ERROR_NOT_SUPPORTED.
//
// Work runs synchronously, in call order: a stream is a handle, an event a timestamp.
// Modules are read from PTX text (or from the ELF cubin NVRTC makes) and each entry is
// bound to the g++-compiled twin in the engine (engine.h) of the architecture the code
// was built for; a module with an entry that has no twin, or whose parameter sizes differ
// from the C++ signature, does not load. Memory is checked as compute-sanitizer does
// (device_memory.h); a kernel stopped by a memory fault fails its launch with
// CUDA_ERROR_ILLEGAL_ADDRESS, which then sticks to the context as on a GPU.
//
// Personalities (read once, at cuInit):
//   DKEMU_CC=9.0|7.5|8.0|...   compute capability (default 9.0: the compute_80 PTX loads)
//   DKEMU_DRIVER=13.0|12.4     driver version; its PTX ISA limit (9.0, 8.4) is enforced
//   DKEMU_POOLS=1|0            memory pools (cuMemAllocAsync) supported or not
//   DKEMU_MEMORY_MB=N          device memory (default 8192), so out-of-memory is real
//   DKEMU_SMS=N                multiprocessors (default 132, as an H200)
//   DKEMU_TRACE=1              what the driver does, on stderr
//   DKEMU_CALL_LOG=PATH        the name of each driver call made, once, appended to PATH
//                              (check-cuda12.sh compares them with CUDA 12.0's symbols)
#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>
#include <set>
#include <string>
#include <vector>

#include "cubin.h"
#include "device_memory.h"
#include "engine.h"

DKEMU_DECLARE_SET(750);
DKEMU_DECLARE_SET(800);

using CUresult = int;
using CUdevice = int;
using CUdeviceptr = unsigned long long;

namespace {

// The CUresult values this driver answers (cuda.h).
enum : int {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_NOT_INITIALIZED = 3,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_IMAGE = 200,
    CUDA_ERROR_INVALID_CONTEXT = 201,
    CUDA_ERROR_NO_BINARY_FOR_GPU = 209,
    CUDA_ERROR_INVALID_PTX = 218,
    CUDA_ERROR_UNSUPPORTED_PTX_VERSION = 222,
    CUDA_ERROR_INVALID_HANDLE = 400,
    CUDA_ERROR_ILLEGAL_STATE = 401,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_ILLEGAL_ADDRESS = 700,
    CUDA_ERROR_LAUNCH_FAILED = 719,
    CUDA_ERROR_NOT_SUPPORTED = 801,
    CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED = 900,
    CUDA_ERROR_STREAM_CAPTURE_INVALIDATED = 901,
    CUDA_ERROR_STREAM_CAPTURE_ISOLATION = 905,
    CUDA_ERROR_CAPTURED_EVENT = 907,
    CUDA_ERROR_UNKNOWN = 999,
};

struct ErrorText {
    int code;
    const char* name;
    const char* text;
};
const ErrorText ERRORS[] = {
    {CUDA_SUCCESS, "CUDA_SUCCESS", "no error"},
    {CUDA_ERROR_INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {CUDA_ERROR_OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {CUDA_ERROR_NOT_INITIALIZED, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"},
    {CUDA_ERROR_INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {CUDA_ERROR_INVALID_IMAGE, "CUDA_ERROR_INVALID_IMAGE", "device kernel image is invalid"},
    {CUDA_ERROR_INVALID_CONTEXT, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context"},
    {CUDA_ERROR_NO_BINARY_FOR_GPU, "CUDA_ERROR_NO_BINARY_FOR_GPU",
     "no kernel image is available for execution on the device"},
    {CUDA_ERROR_INVALID_PTX, "CUDA_ERROR_INVALID_PTX", "a PTX JIT compilation failed"},
    {CUDA_ERROR_UNSUPPORTED_PTX_VERSION, "CUDA_ERROR_UNSUPPORTED_PTX_VERSION",
     "the provided PTX was compiled with an unsupported toolchain."},
    {CUDA_ERROR_INVALID_HANDLE, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"},
    {CUDA_ERROR_ILLEGAL_STATE, "CUDA_ERROR_ILLEGAL_STATE",
     "the operation is not permitted when the stream is in this state"},
    {CUDA_ERROR_NOT_FOUND, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {CUDA_ERROR_ILLEGAL_ADDRESS, "CUDA_ERROR_ILLEGAL_ADDRESS",
     "an illegal memory access was encountered"},
    {CUDA_ERROR_LAUNCH_FAILED, "CUDA_ERROR_LAUNCH_FAILED", "unspecified launch failure"},
    {CUDA_ERROR_NOT_SUPPORTED, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported"},
    {CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED",
     "operation not permitted when stream is capturing"},
    {CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED",
     "operation failed due to a previous error during capture"},
    {CUDA_ERROR_STREAM_CAPTURE_ISOLATION, "CUDA_ERROR_STREAM_CAPTURE_ISOLATION",
     "operation would make the legacy stream depend on a capturing blocking stream"},
    {CUDA_ERROR_CAPTURED_EVENT, "CUDA_ERROR_CAPTURED_EVENT",
     "operation not permitted on an event last recorded in a capturing stream"},
    {CUDA_ERROR_UNKNOWN, "CUDA_ERROR_UNKNOWN", "unknown error"},
};

// ---- personality -----------------------------------------------------------------------
struct Personality {
    int cc_major = 9, cc_minor = 0;
    int driver = 13000;  // cuDriverGetVersion's 1000 * major + 10 * minor
    bool pools = true;
    uint64_t memory = 8192ull << 20;
    int sms = 132;
    bool trace = false;
    // The newest PTX ISA this driver loads, as 10 * major + minor.
    int max_ptx_isa() const { return driver >= 13000 ? 90 : 80 + (driver % 1000) / 10; }
};

const char* env(const char* name) {
    const char* v = std::getenv(name);
    return v && *v ? v : nullptr;
}

Personality read_personality() {
    Personality p;
    if (const char* cc = env("DKEMU_CC")) std::sscanf(cc, "%d.%d", &p.cc_major, &p.cc_minor);
    if (const char* d = env("DKEMU_DRIVER")) {
        int major = 13, minor = 0;
        std::sscanf(d, "%d.%d", &major, &minor);
        p.driver = major * 1000 + minor * 10;
    }
    if (const char* v = env("DKEMU_POOLS")) p.pools = std::strcmp(v, "0") != 0;
    if (const char* v = env("DKEMU_MEMORY_MB")) p.memory = std::strtoull(v, nullptr, 10) << 20;
    if (const char* v = env("DKEMU_SMS")) p.sms = std::max(1, std::atoi(v));
    if (const char* v = env("DKEMU_TRACE")) p.trace = std::strcmp(v, "0") != 0;
    return p;
}

// ---- state -----------------------------------------------------------------------------
// One device, its primary context, and handles by kind. Every entry point takes `g_lock`,
// so threads sharing the device see the calls one at a time (kernels included).
struct Context {
    int refs = 0;
};
// Stream capture. cuStreamBeginCapture marks the stream capturing (cuStreamIsCapturing
// says so). What a graph can hold is recorded, in stream order, instead of run: kernel
// launches (with their parameter bytes, copied at the call as CUDA does), device-to-device
// copies and memsets. cuStreamEndCapture hands the recording over as a graph (null if it
// is empty, as cudarc expects of an empty capture), cuGraphInstantiateWithFlags freezes it
// and each cuGraphLaunch runs it again on a stream. What a capture cannot hold is refused
// as CUDA refuses it, and invalidates the capture (cuStreamEndCapture then returns
// CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, later work on the stream the same):
//  - on the capturing stream: a synchronize or query, a copy from or to the host, an
//    allocation or free (CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
//  - a wait on an event not recorded in this capture (CUDA_ERROR_STREAM_CAPTURE_ISOLATION;
//    cudarc's event tracking does this, so captures run with it off);
//  - in the global mode, the "unsafe" calls of any thread while a capture is active (in
//    the thread-local mode, of the capturing thread): cuMemAlloc, cuMemFree, the synchronous copies and memsets and
//    cuCtxSynchronize (CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED); relaxed mode allows them.
// Querying or synchronizing an event last recorded in a capture gives
// CUDA_ERROR_CAPTURED_EVENT.
enum Capture : int { CAPTURE_NONE = 0, CAPTURE_ACTIVE = 1, CAPTURE_INVALIDATED = 2 };
struct Function;
// One recorded operation of a graph.
struct Node {
    enum Kind { LAUNCH, MEMSET, COPY } kind = LAUNCH;
    Function* function = nullptr;  // LAUNCH: the kernel, its grid and block, its parameters
    unsigned grid = 0, block = 0;
    std::vector<std::vector<unsigned char>> params;
    CUdeviceptr dst = 0, src = 0;  // MEMSET (dst, value, n), COPY (dst, src, n)
    size_t n = 0;
    unsigned char value = 0;
};
struct Graph {
    std::vector<Node> nodes;
};
struct GraphExec {
    std::vector<Node> nodes;
};
struct Stream {
    unsigned flags = 0;
    int capture = CAPTURE_NONE;
    int capture_mode = 0;  // CU_STREAM_CAPTURE_MODE_GLOBAL 0, THREAD_LOCAL 1, RELAXED 2
    std::thread::id capture_thread;  // the thread that began the capture
    unsigned capture_id = 0;
    std::vector<Node> recording;
};
struct Event {
    double ms = 0;  // host time at the last record
    bool recorded = false;
    unsigned captured_in = 0;  // the capture id of its last record, 0 if outside any
};
struct Module;
struct Function {
    Module* module;
    size_t index;  // in the module's kernel set
};
struct Module {
    const dkemu::KernelSet* set;
    std::map<std::string, Function*> functions;  // entries of the image, bound to twins
    std::string what;                            // "PTX (ISA 9.0, sm_80)", for traces
};

std::recursive_mutex g_lock;
bool g_initialized = false;
Personality g_p;
Context g_primary;
int g_sticky = CUDA_SUCCESS;  // an error that broke the context (illegal address)
std::set<Stream*> g_streams;
std::set<Event*> g_events;
std::set<Graph*> g_graphs;
std::set<GraphExec*> g_execs;
unsigned g_next_capture_id = 1;
std::set<Module*> g_modules;
std::set<Function*> g_functions;
thread_local Context* t_current = nullptr;

void trace(const char* fmt, ...) {
    if (!g_p.trace) return;
    va_list ap;
    va_start(ap, fmt);
    std::fputs("dkemu: ", stderr);
    std::vfprintf(stderr, fmt, ap);
    std::fputc('\n', stderr);
    va_end(ap);
}

// DKEMU_CALL_LOG: each entry point's name the first time it is called (under g_lock).
void note_call(const char* name) {
    static const char* path = std::getenv("DKEMU_CALL_LOG");
    static std::set<std::string> seen;
    if (!path || !seen.insert(name).second) return;
    if (FILE* f = std::fopen(path, "a")) {
        std::fprintf(f, "%s\n", name);
        std::fclose(f);
    }
}

// What most calls check first: initialized, a live current context, no sticky error.
int ready() {
    if (!g_initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (!t_current || t_current->refs == 0) return CUDA_ERROR_INVALID_CONTEXT;
    return g_sticky;
}

// Null, CU_STREAM_LEGACY (1), CU_STREAM_PER_THREAD (2), or a stream of ours.
bool valid_stream(void* s) {
    const uintptr_t v = reinterpret_cast<uintptr_t>(s);
    return v <= 2 || g_streams.count(static_cast<Stream*>(s));
}

Stream* capturing_stream(void* s) {
    const uintptr_t v = reinterpret_cast<uintptr_t>(s);
    return v <= 2 ? nullptr : static_cast<Stream*>(s);
}

// Work a graph cannot hold, queued on stream `s`: refused while it captures (and the
// capture invalidated); after an invalidation, refused until the capture ends.
int capture_guard(void* s, const char* call) {
    Stream* st = capturing_stream(s);
    if (!st) return CUDA_SUCCESS;
    if (st->capture == CAPTURE_ACTIVE) {
        st->capture = CAPTURE_INVALIDATED;
        trace("%s on a capturing stream: not permitted, the capture is invalidated", call);
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    }
    return st->capture == CAPTURE_INVALIDATED ? CUDA_ERROR_STREAM_CAPTURE_INVALIDATED
                                              : CUDA_SUCCESS;
}

// Work a graph can hold, queued on stream `s`: whether it is recorded instead of run
// (*record), or refused because the capture was invalidated.
int capture_record(void* s, bool* record) {
    Stream* st = capturing_stream(s);
    *record = st && st->capture == CAPTURE_ACTIVE;
    return st && st->capture == CAPTURE_INVALIDATED ? CUDA_ERROR_STREAM_CAPTURE_INVALIDATED
                                                    : CUDA_SUCCESS;
}

// A call CUDA calls "unsafe" during capture (it may synchronize implicitly): refused, and
// the capture invalidated, while any stream captures in the global or thread-local mode
// (thread-local: only on the capturing thread).
int unsafe_call_guard(const char* call) {
    for (Stream* st : g_streams) {
        const bool this_thread = st->capture_thread == std::this_thread::get_id();
        if (st->capture == CAPTURE_ACTIVE &&
            (st->capture_mode == 0 || (st->capture_mode == 1 && this_thread))) {
            st->capture = CAPTURE_INVALIDATED;
            trace("%s while a stream captures in the global or thread-local mode: not "
                  "permitted, the capture is invalidated", call);
            return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
        }
    }
    return CUDA_SUCCESS;
}

double now_ms() {
    using namespace std::chrono;
    return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

std::string hex(uint64_t v) {
    char b[32];
    std::snprintf(b, sizeof b, "0x%llx", (unsigned long long)v);
    return b;
}

// ---- module images ---------------------------------------------------------------------
struct Entry {
    std::string name;
    std::vector<uint32_t> param_sizes;
};

struct Image {
    unsigned arch = 0;  // sm_XY the code is for, as 10 * X + Y
    int ptx_isa = 0;    // 10 * major + minor; 0 for a cubin
    std::vector<Entry> entries;
};

uint32_t ptx_type_size(const std::string& t) {
    if (t == ".u64" || t == ".s64" || t == ".b64" || t == ".f64") return 8;
    if (t == ".u32" || t == ".s32" || t == ".b32" || t == ".f32") return 4;
    if (t == ".u16" || t == ".s16" || t == ".b16" || t == ".f16") return 2;
    if (t == ".u8" || t == ".s8" || t == ".b8") return 1;
    return 0;
}

// Reads `.version`, `.target` and every `.entry NAME( .param ... )` of a PTX module.
bool parse_ptx(const char* text, Image* img, std::string* why) {
    const std::string s(text);
    int major = 0, minor = 0;
    const size_t v = s.find(".version ");
    if (v == std::string::npos || std::sscanf(s.c_str() + v, ".version %d.%d", &major, &minor) != 2) {
        *why = "no .version line";
        return false;
    }
    img->ptx_isa = major * 10 + minor;
    const size_t t = s.find(".target sm_");
    if (t == std::string::npos || std::sscanf(s.c_str() + t, ".target sm_%u", &img->arch) != 1) {
        *why = "no .target sm_XY line";
        return false;
    }
    for (size_t at = s.find(".entry "); at != std::string::npos; at = s.find(".entry ", at + 1)) {
        const size_t open = s.find('(', at);
        const size_t close = s.find(')', open);
        if (open == std::string::npos || close == std::string::npos) {
            *why = "an .entry without its parameter list";
            return false;
        }
        Entry e;
        e.name = s.substr(at + 7, open - at - 7);
        e.name.erase(e.name.find_last_not_of(" \t\r\n") + 1);
        const std::string params = s.substr(open + 1, close - open - 1);
        for (size_t p = params.find(".param"); p != std::string::npos;
             p = params.find(".param", p + 1)) {
            const size_t end = std::min(params.find(',', p), params.size());
            // Words of one declaration: .param [.align N] .TYPE [.ptr ...] NAME[[N]]
            std::vector<std::string> words;
            size_t w = p;
            while (w < end) {
                while (w < end && std::isspace((unsigned char)params[w])) ++w;
                size_t x = w;
                while (x < end && !std::isspace((unsigned char)params[x])) ++x;
                if (x > w) words.push_back(params.substr(w, x - w));
                w = x;
            }
            uint32_t size = 0;
            for (const std::string& word : words) {
                if (!size) size = ptx_type_size(word);
            }
            const std::string& last = words.back();
            const size_t bracket = last.find('[');
            if (bracket != std::string::npos) size *= (uint32_t)std::strtoul(last.c_str() + bracket + 1, nullptr, 10);
            if (!size) {
                *why = "a parameter of " + e.name + " of unknown type";
                return false;
            }
            e.param_sizes.push_back(size);
        }
        img->entries.push_back(std::move(e));
    }
    return true;
}

std::string sizes(const std::vector<uint32_t>& v) {
    std::string s = "(";
    for (size_t k = 0; k < v.size(); ++k) s += (k ? ", " : "") + std::to_string(v[k]);
    return s + ")";
}

// The engine for code built for `arch`: the compute_80 one from sm_80 on, else the portable.
const dkemu::KernelSet* engine_for(unsigned arch) {
    return arch >= 80 ? DKEMU_SET_FN(800)() : DKEMU_SET_FN(750)();
}

int load_module(Module** out, const void* image) {
    Image img;
    std::string why;
    const bool cubin = dkemu::is_elf(image);
    if (cubin) {
        dkemu::CubinInfo info;
        if (!dkemu::parse_cubin(image, &info, &why)) {
            trace("cuModuleLoadData: not a cubin this driver can read: %s", why.c_str());
            return CUDA_ERROR_INVALID_IMAGE;
        }
        img.arch = info.sm;
        for (auto& k : info.kernels) img.entries.push_back(Entry{k.name, k.param_sizes});
        // A cubin runs only on its own major architecture, at its minor or newer.
        if ((int)img.arch / 10 != g_p.cc_major || (int)img.arch % 10 > g_p.cc_minor) {
            trace("cuModuleLoadData: sm_%u cubin on a %d.%d device", img.arch, g_p.cc_major,
                  g_p.cc_minor);
            return CUDA_ERROR_NO_BINARY_FOR_GPU;
        }
    } else {
        if (!parse_ptx(static_cast<const char*>(image), &img, &why)) {
            trace("cuModuleLoadData: invalid PTX: %s", why.c_str());
            return CUDA_ERROR_INVALID_PTX;
        }
        if (img.ptx_isa > g_p.max_ptx_isa()) {
            trace("cuModuleLoadData: PTX ISA %d.%d is newer than this driver (CUDA %d.%d) loads",
                  img.ptx_isa / 10, img.ptx_isa % 10, g_p.driver / 1000, g_p.driver % 1000 / 10);
            return CUDA_ERROR_UNSUPPORTED_PTX_VERSION;
        }
        if ((int)img.arch > g_p.cc_major * 10 + g_p.cc_minor) {
            trace("cuModuleLoadData: PTX for sm_%u on a %d.%d device", img.arch, g_p.cc_major,
                  g_p.cc_minor);
            return CUDA_ERROR_NO_BINARY_FOR_GPU;
        }
    }
    auto* m = new Module{engine_for(img.arch), {}, ""};
    m->what = (cubin ? "cubin sm_" : "PTX sm_") + std::to_string(img.arch);
    for (const Entry& e : img.entries) {
        size_t index = 0;
        const dkemu::KernelDesc* twin = m->set->find(e.name, &index);
        std::vector<uint32_t> want;
        if (twin)
            for (const auto& p : twin->params) want.push_back(p.size);
        if (!twin || want != e.param_sizes) {
            dkemu::mem::report(
                "module", "entry " + e.name + " of a " + m->what + " module " +
                              (twin ? "declares parameters of " + sizes(e.param_sizes) +
                                          " bytes, its C++ twin takes " + sizes(want)
                                    : "has no g++-compiled twin in the emulator") +
                              ": the module does not load");
            for (auto& f : m->functions) delete f.second;
            delete m;
            return CUDA_ERROR_NOT_SUPPORTED;
        }
        if (m->functions.count(e.name)) continue;  // declared twice: one function
        m->functions[e.name] = new Function{m, index};
    }
    for (auto& f : m->functions) g_functions.insert(f.second);
    g_modules.insert(m);
    *out = m;
    trace("cuModuleLoadData: %s, %zu entries", m->what.c_str(), m->functions.size());
    return CUDA_SUCCESS;
}

// ---- memory ----------------------------------------------------------------------------
int alloc(CUdeviceptr* ptr, size_t bytes) {
    if (!ptr) return CUDA_ERROR_INVALID_VALUE;
    uint64_t p = 0;
    switch (dkemu::mem::allocate(bytes, &p)) {
        case dkemu::mem::AllocResult::ZeroBytes:
            return CUDA_ERROR_INVALID_VALUE;
        case dkemu::mem::AllocResult::OutOfMemory:
            trace("allocation of %zu bytes: out of memory", bytes);
            return CUDA_ERROR_OUT_OF_MEMORY;
        case dkemu::mem::AllocResult::Ok:
            break;
    }
    *ptr = p;
    trace("allocated %zu bytes at %s", bytes, hex(p).c_str());
    return CUDA_SUCCESS;
}

int release(CUdeviceptr ptr) {
    if (!dkemu::mem::release(ptr)) {
        dkemu::mem::report("memcheck", "free of " + dkemu::mem::describe(ptr) +
                                           ", not the start of a live allocation");
        return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}

// A copy or memset's device range: inside one live allocation, else a report.
bool device_range(const char* call, CUdeviceptr p, size_t n) {
    std::string why;
    if (dkemu::mem::live_range(p, n, &why)) return true;
    dkemu::mem::report("memcheck", std::string(call) + " of " + std::to_string(n) + " bytes: " + why);
    return false;
}

int copy_htod(CUdeviceptr dst, const void* src, size_t n) {
    if (int r = ready()) return r;
    if (n == 0) return CUDA_SUCCESS;
    if (!src || !device_range("host-to-device copy", dst, n)) return CUDA_ERROR_INVALID_VALUE;
    std::memcpy(reinterpret_cast<void*>(dst), src, n);
    dkemu::mem::mark_written(dst, n);
    return CUDA_SUCCESS;
}

int copy_dtoh(void* dst, CUdeviceptr src, size_t n) {
    if (int r = ready()) return r;
    if (n == 0) return CUDA_SUCCESS;
    if (!dst || !device_range("device-to-host copy", src, n)) return CUDA_ERROR_INVALID_VALUE;
    const uint64_t unwritten = dkemu::mem::first_unwritten(src, n);
    if (unwritten != UINT64_MAX) {
        dkemu::mem::report("initcheck", "device-to-host copy of " + std::to_string(n) +
                                            " bytes from " + hex(src) + " reads bytes never written, from " +
                                            dkemu::mem::describe(unwritten));
    }
    std::memcpy(dst, reinterpret_cast<const void*>(src), n);
    return CUDA_SUCCESS;
}

int copy_dtod(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    if (int r = ready()) return r;
    if (n == 0) return CUDA_SUCCESS;
    if (!device_range("device-to-device copy (source)", src, n) ||
        !device_range("device-to-device copy (destination)", dst, n))
        return CUDA_ERROR_INVALID_VALUE;
    std::memmove(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), n);
    dkemu::mem::copy_shadow(dst, src, n);
    return CUDA_SUCCESS;
}

int memset8(CUdeviceptr dst, unsigned char v, size_t n) {
    if (int r = ready()) return r;
    if (n == 0) return CUDA_SUCCESS;
    if (!device_range("memset", dst, n)) return CUDA_ERROR_INVALID_VALUE;
    std::memset(reinterpret_cast<void*>(dst), v, n);
    dkemu::mem::mark_written(dst, n);
    return CUDA_SUCCESS;
}

// ---- launch ----------------------------------------------------------------------------
// CU_LAUNCH_PARAM_* markers of cuLaunchKernel's `extra`.
const uintptr_t PARAM_END = 0, PARAM_BUFFER_POINTER = 1, PARAM_BUFFER_SIZE = 2;

// Runs kernel `f` now on its parameter bytes.
int run_kernel(Function* f, unsigned gx, unsigned bx,
               std::vector<std::vector<unsigned char>>& storage) {
    const dkemu::KernelDesc& k = f->module->set->kernels[f->index];
    std::vector<void*> args;
    for (auto& s : storage) args.push_back(s.data());
    trace("cuLaunchKernel %s <<<%u, %u>>>", k.name.c_str(), gx, bx);
    if (f->module->set->launch(f->index, gx, bx, args.data()) != dkemu::LaunchStatus::Ok) {
        g_sticky = CUDA_ERROR_ILLEGAL_ADDRESS;
        return g_sticky;
    }
    return CUDA_SUCCESS;
}

int launch(Function* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
           unsigned bz, unsigned shared, void* stream, void** params, void** extra) {
    if (int r = ready()) return r;
    if (!g_functions.count(f)) return CUDA_ERROR_INVALID_HANDLE;
    if (!valid_stream(stream)) return CUDA_ERROR_INVALID_HANDLE;
    bool record = false;
    if (int r = capture_record(stream, &record)) return r;
    const dkemu::KernelDesc& k = f->module->set->kernels[f->index];
    if (gx == 0 || gy == 0 || gz == 0 || bx == 0 || by == 0 || bz == 0 || bx > 1024 ||
        gx > 0x7fffffffu || shared > 48 * 1024)
        return CUDA_ERROR_INVALID_VALUE;
    if (gy != 1 || gz != 1 || by != 1 || bz != 1 || bx % 32 != 0) {
        trace("cuLaunchKernel %s: <<<(%u,%u,%u), (%u,%u,%u)>>> is not modelled (1-D, whole warps)",
              k.name.c_str(), gx, gy, gz, bx, by, bz);
        return CUDA_ERROR_NOT_SUPPORTED;
    }
    // The parameters, copied by the sizes of the C++ signature (as the GPU copies them by
    // the sizes the module declares, which loading checked are the same).
    std::vector<std::vector<unsigned char>> storage;
    if (params && extra) return CUDA_ERROR_INVALID_VALUE;  // one or the other (cuda.h)
    if (params) {
        for (size_t i = 0; i < k.params.size(); ++i) {
            if (!params[i]) return CUDA_ERROR_INVALID_VALUE;
            const auto* p = static_cast<const unsigned char*>(params[i]);
            storage.emplace_back(p, p + k.params[i].size);
        }
    } else if (extra) {
        const unsigned char* buf = nullptr;
        size_t buf_size = SIZE_MAX;
        for (size_t i = 0; (uintptr_t)extra[i] != PARAM_END; i += 2) {
            if ((uintptr_t)extra[i] == PARAM_BUFFER_POINTER) buf = static_cast<unsigned char*>(extra[i + 1]);
            else if ((uintptr_t)extra[i] == PARAM_BUFFER_SIZE) buf_size = *static_cast<size_t*>(extra[i + 1]);
            else return CUDA_ERROR_INVALID_VALUE;
        }
        size_t at = 0;
        std::vector<size_t> offsets;
        for (const auto& p : k.params) {
            const size_t align = std::min<size_t>(p.size, 8);
            at = (at + align - 1) / align * align;
            offsets.push_back(at);
            at += p.size;
        }
        if (!buf || buf_size != at) {
            dkemu::mem::report("launch", "parameter buffer of " + std::to_string(buf_size) +
                                             " bytes for " + k.name + ", which takes " +
                                             std::to_string(at));
            return CUDA_ERROR_INVALID_VALUE;
        }
        for (size_t i = 0; i < k.params.size(); ++i)
            storage.emplace_back(buf + offsets[i], buf + offsets[i] + k.params[i].size);
    } else if (!k.params.empty()) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (record) {
        trace("cuLaunchKernel %s <<<%u, %u>>>: captured", k.name.c_str(), gx, bx);
        Node node;
        node.kind = Node::LAUNCH;
        node.function = f;
        node.grid = gx;
        node.block = bx;
        node.params = std::move(storage);
        capturing_stream(stream)->recording.push_back(std::move(node));
        return CUDA_SUCCESS;
    }
    return run_kernel(f, gx, bx, storage);
}

// Runs the nodes of a graph in order, as one launch of it on a stream.
int run_nodes(const std::vector<Node>& nodes) {
    for (const Node& node : nodes) {
        int r = CUDA_SUCCESS;
        switch (node.kind) {
            case Node::LAUNCH: {
                if (!g_functions.count(node.function)) return CUDA_ERROR_INVALID_HANDLE;
                std::vector<std::vector<unsigned char>> params = node.params;
                r = run_kernel(node.function, node.grid, node.block, params);
                break;
            }
            case Node::MEMSET: r = memset8(node.dst, node.value, node.n); break;
            case Node::COPY: r = copy_dtod(node.dst, node.src, node.n); break;
        }
        if (r != CUDA_SUCCESS) return r;
    }
    return CUDA_SUCCESS;
}

int attribute(int attr) {
    switch (attr) {
        case 1: return 1024;                  // MAX_THREADS_PER_BLOCK
        case 2: case 3: return 1024;          // MAX_BLOCK_DIM_X, _Y
        case 4: return 64;                    // MAX_BLOCK_DIM_Z
        case 5: return 0x7fffffff;            // MAX_GRID_DIM_X
        case 6: case 7: return 65535;         // MAX_GRID_DIM_Y, _Z
        case 8: return 48 * 1024;             // MAX_SHARED_MEMORY_PER_BLOCK
        case 9: return 64 * 1024;             // TOTAL_CONSTANT_MEMORY
        case 10: return 32;                   // WARP_SIZE
        case 12: return 65536;                // MAX_REGISTERS_PER_BLOCK
        case 13: return 1980000;              // CLOCK_RATE (kHz)
        case 16: return g_p.sms;              // MULTIPROCESSOR_COUNT
        case 36: return 2619000;              // MEMORY_CLOCK_RATE (kHz)
        case 37: return 6144;                 // GLOBAL_MEMORY_BUS_WIDTH
        case 39: return 2048;                 // MAX_THREADS_PER_MULTIPROCESSOR
        case 75: return g_p.cc_major;         // COMPUTE_CAPABILITY_MAJOR
        case 76: return g_p.cc_minor;         // COMPUTE_CAPABILITY_MINOR
        case 81: return 228 * 1024;           // MAX_SHARED_MEMORY_PER_MULTIPROCESSOR
        case 82: return 65536;                // MAX_REGISTERS_PER_MULTIPROCESSOR
        case 97: return 227 * 1024;           // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
        case 106: return 32;                  // MAX_BLOCKS_PER_MULTIPROCESSOR
        case 115: return g_p.pools ? 1 : 0;   // MEMORY_POOLS_SUPPORTED
        default: return 0;
    }
}

}  // namespace

// ---- the driver API ----------------------------------------------------------------------
// DKEMU_API marks what this file implements; scripts/emulated-driver.sh generates a stub
// for every other binding cudarc has.
#define DKEMU_API extern "C" __attribute__((visibility("default"))) CUresult
#define LOCKED                                           \
    std::lock_guard<std::recursive_mutex> guard(g_lock); \
    note_call(__func__)

DKEMU_API cuInit(unsigned flags) {
    LOCKED;
    if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
    if (!g_initialized) {
        g_p = read_personality();
        dkemu::mem::configure(g_p.memory);
        g_initialized = true;
        trace("cuInit: compute capability %d.%d, CUDA %d.%d, pools %s, %llu MiB, %d SMs",
              g_p.cc_major, g_p.cc_minor, g_p.driver / 1000, g_p.driver % 1000 / 10,
              g_p.pools ? "on" : "off", (unsigned long long)(g_p.memory >> 20), g_p.sms);
    }
    return CUDA_SUCCESS;
}

DKEMU_API cuDriverGetVersion(int* v) {
    LOCKED;
    if (!v) return CUDA_ERROR_INVALID_VALUE;
    *v = g_initialized ? g_p.driver : read_personality().driver;
    return CUDA_SUCCESS;
}

DKEMU_API cuDeviceGetCount(int* n) {
    LOCKED;
    if (!g_initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (!n) return CUDA_ERROR_INVALID_VALUE;
    *n = 1;
    return CUDA_SUCCESS;
}

DKEMU_API cuDeviceGet(CUdevice* d, int ordinal) {
    LOCKED;
    if (!g_initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (!d) return CUDA_ERROR_INVALID_VALUE;
    if (ordinal != 0) return CUDA_ERROR_INVALID_DEVICE;
    *d = 0;
    return CUDA_SUCCESS;
}

DKEMU_API cuDeviceGetAttribute(int* v, int attr, CUdevice d) {
    LOCKED;
    if (!g_initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    if (!v || attr <= 0 || attr >= 160) return CUDA_ERROR_INVALID_VALUE;
    *v = attribute(attr);
    return CUDA_SUCCESS;
}

DKEMU_API cuDeviceGetName(char* name, int len, CUdevice d) {
    LOCKED;
    if (!g_initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    if (!name || len <= 0) return CUDA_ERROR_INVALID_VALUE;
    std::snprintf(name, (size_t)len, "dkemu emulated GPU (sm_%d%d, CUDA %d.%d)", g_p.cc_major,
                  g_p.cc_minor, g_p.driver / 1000, g_p.driver % 1000 / 10);
    return CUDA_SUCCESS;
}

DKEMU_API cuDeviceTotalMem_v2(size_t* bytes, CUdevice d) {
    LOCKED;
    if (!g_initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    if (!bytes) return CUDA_ERROR_INVALID_VALUE;
    *bytes = g_p.memory;
    return CUDA_SUCCESS;
}

DKEMU_API cuDeviceGetUuid(unsigned char* uuid, CUdevice d) {
    LOCKED;
    if (!g_initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    if (!uuid) return CUDA_ERROR_INVALID_VALUE;
    std::memcpy(uuid, "dkemu-device-000", 16);
    return CUDA_SUCCESS;
}

DKEMU_API cuDeviceGetUuid_v2(unsigned char* uuid, CUdevice d) { return cuDeviceGetUuid(uuid, d); }

DKEMU_API cuDevicePrimaryCtxRetain(void** ctx, CUdevice d) {
    LOCKED;
    if (!g_initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    if (!ctx) return CUDA_ERROR_INVALID_VALUE;
    ++g_primary.refs;
    *ctx = &g_primary;
    return CUDA_SUCCESS;
}

DKEMU_API cuDevicePrimaryCtxRelease_v2(CUdevice d) {
    LOCKED;
    if (!g_initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    if (g_primary.refs == 0) return CUDA_ERROR_INVALID_CONTEXT;
    --g_primary.refs;
    return CUDA_SUCCESS;
}

DKEMU_API cuCtxSetCurrent(void* ctx) {
    LOCKED;
    if (!g_initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (ctx && ctx != &g_primary) return CUDA_ERROR_INVALID_CONTEXT;
    t_current = static_cast<Context*>(ctx);
    return CUDA_SUCCESS;
}

DKEMU_API cuCtxGetCurrent(void** ctx) {
    LOCKED;
    if (!g_initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (!ctx) return CUDA_ERROR_INVALID_VALUE;
    *ctx = t_current;
    return CUDA_SUCCESS;
}

DKEMU_API cuCtxGetDevice(CUdevice* d) {
    LOCKED;
    if (!g_initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (!t_current || t_current->refs == 0) return CUDA_ERROR_INVALID_CONTEXT;
    if (!d) return CUDA_ERROR_INVALID_VALUE;
    *d = 0;
    return CUDA_SUCCESS;
}

DKEMU_API cuCtxSynchronize() {
    LOCKED;
    if (int r = ready()) return r;
    return unsafe_call_guard("cuCtxSynchronize");
}

DKEMU_API cuStreamCreate(void** s, unsigned flags) {
    LOCKED;
    if (int r = ready()) return r;
    if (!s || flags > 1) return CUDA_ERROR_INVALID_VALUE;
    auto* st = new Stream{flags};
    g_streams.insert(st);
    *s = st;
    return CUDA_SUCCESS;
}

DKEMU_API cuStreamCreateWithPriority(void** s, unsigned flags, int) { return cuStreamCreate(s, flags); }

DKEMU_API cuStreamDestroy_v2(void* s) {
    LOCKED;
    if (!g_initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (!s || !g_streams.erase(static_cast<Stream*>(s))) return CUDA_ERROR_INVALID_HANDLE;
    delete static_cast<Stream*>(s);
    return CUDA_SUCCESS;
}

DKEMU_API cuStreamSynchronize(void* s) {
    LOCKED;
    if (int r = ready()) return r;
    if (!valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    return capture_guard(s, "cuStreamSynchronize");
}

DKEMU_API cuStreamBeginCapture_v2(void* s, int mode) {
    LOCKED;
    if (int r = ready()) return r;
    if (!valid_stream(s) || reinterpret_cast<uintptr_t>(s) <= 2) return CUDA_ERROR_INVALID_HANDLE;
    if (mode < 0 || mode > 2) return CUDA_ERROR_INVALID_VALUE;
    Stream* st = static_cast<Stream*>(s);
    if (st->capture != CAPTURE_NONE) return CUDA_ERROR_ILLEGAL_STATE;
    st->capture = CAPTURE_ACTIVE;
    st->capture_mode = mode;
    st->capture_thread = std::this_thread::get_id();
    st->capture_id = g_next_capture_id++;
    st->recording.clear();
    return CUDA_SUCCESS;
}

DKEMU_API cuStreamEndCapture(void* s, void** graph) {
    LOCKED;
    if (int r = ready()) return r;
    if (!valid_stream(s) || reinterpret_cast<uintptr_t>(s) <= 2) return CUDA_ERROR_INVALID_HANDLE;
    if (!graph) return CUDA_ERROR_INVALID_VALUE;
    Stream* st = static_cast<Stream*>(s);
    const int was = st->capture;
    if (was == CAPTURE_NONE) return CUDA_ERROR_ILLEGAL_STATE;
    st->capture = CAPTURE_NONE;
    std::vector<Node> nodes = std::move(st->recording);
    st->recording.clear();
    *graph = nullptr;
    if (was == CAPTURE_INVALIDATED) return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    if (!nodes.empty()) {  // an empty capture gives no graph (cudarc: Ok(None))
        auto* g = new Graph{std::move(nodes)};
        g_graphs.insert(g);
        *graph = g;
        trace("capture ended: a graph of %zu nodes", g->nodes.size());
    }
    return CUDA_SUCCESS;
}

DKEMU_API cuGraphInstantiateWithFlags(void** exec, void* graph, unsigned long long flags) {
    LOCKED;
    if (int r = ready()) return r;
    auto* g = static_cast<Graph*>(graph);
    if (!exec || !g_graphs.count(g)) return CUDA_ERROR_INVALID_VALUE;
    (void)flags;  // auto-free and priorities change nothing here
    auto* e = new GraphExec{g->nodes};
    g_execs.insert(e);
    *exec = e;
    return CUDA_SUCCESS;
}

DKEMU_API cuGraphLaunch(void* exec, void* s) {
    LOCKED;
    if (int r = ready()) return r;
    auto* e = static_cast<GraphExec*>(exec);
    if (!g_execs.count(e) || !valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    bool record = false;
    if (int r = capture_record(s, &record)) return r;
    if (record) {  // a graph launched into a capture becomes part of it
        auto& rec = capturing_stream(s)->recording;
        rec.insert(rec.end(), e->nodes.begin(), e->nodes.end());
        return CUDA_SUCCESS;
    }
    trace("cuGraphLaunch: %zu nodes", e->nodes.size());
    return run_nodes(e->nodes);
}

DKEMU_API cuGraphUpload(void* exec, void* s) {
    LOCKED;
    if (int r = ready()) return r;
    if (!g_execs.count(static_cast<GraphExec*>(exec)) || !valid_stream(s))
        return CUDA_ERROR_INVALID_HANDLE;
    return CUDA_SUCCESS;
}

DKEMU_API cuGraphExecDestroy(void* exec) {
    LOCKED;
    if (!g_initialized) return CUDA_ERROR_NOT_INITIALIZED;
    auto* e = static_cast<GraphExec*>(exec);
    if (!g_execs.erase(e)) return CUDA_ERROR_INVALID_VALUE;
    delete e;
    return CUDA_SUCCESS;
}

DKEMU_API cuGraphDestroy(void* graph) {
    LOCKED;
    if (!g_initialized) return CUDA_ERROR_NOT_INITIALIZED;
    auto* g = static_cast<Graph*>(graph);
    if (!g_graphs.erase(g)) return CUDA_ERROR_INVALID_VALUE;
    delete g;
    return CUDA_SUCCESS;
}

DKEMU_API cuStreamIsCapturing(void* s, int* status) {
    LOCKED;
    if (int r = ready()) return r;
    if (!valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    if (!status) return CUDA_ERROR_INVALID_VALUE;
    const uintptr_t v = reinterpret_cast<uintptr_t>(s);
    *status = v <= 2 ? CAPTURE_NONE : static_cast<Stream*>(s)->capture;
    return CUDA_SUCCESS;
}

DKEMU_API cuStreamQuery(void* s) { return cuStreamSynchronize(s); }

DKEMU_API cuStreamWaitEvent(void* s, void* e, unsigned flags) {
    LOCKED;
    if (int r = ready()) return r;
    auto* ev = static_cast<Event*>(e);
    if (!valid_stream(s) || !g_events.count(ev)) return CUDA_ERROR_INVALID_HANDLE;
    if (flags) return CUDA_ERROR_INVALID_VALUE;
    Stream* st = capturing_stream(s);
    if (st && st->capture == CAPTURE_INVALIDATED) return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    if (st && st->capture == CAPTURE_ACTIVE && ev->captured_in != st->capture_id) {
        // A dependency on work outside the capture: a graph cannot hold it.
        st->capture = CAPTURE_INVALIDATED;
        trace("cuStreamWaitEvent on a capturing stream, for an event recorded outside the "
              "capture: the capture is invalidated");
        return CUDA_ERROR_STREAM_CAPTURE_ISOLATION;
    }
    return CUDA_SUCCESS;
}

DKEMU_API cuEventCreate(void** e, unsigned flags) {
    LOCKED;
    if (int r = ready()) return r;
    if (!e || flags > 0xf) return CUDA_ERROR_INVALID_VALUE;
    auto* ev = new Event{};
    g_events.insert(ev);
    *e = ev;
    return CUDA_SUCCESS;
}

DKEMU_API cuEventRecord(void* e, void* s) {
    LOCKED;
    if (int r = ready()) return r;
    auto* ev = static_cast<Event*>(e);
    if (!g_events.count(ev) || !valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    bool record = false;
    if (int r = capture_record(s, &record)) return r;
    if (record) {  // a point in the capture, not a time
        ev->captured_in = capturing_stream(s)->capture_id;
        return CUDA_SUCCESS;
    }
    ev->ms = now_ms();
    ev->recorded = true;
    ev->captured_in = 0;
    return CUDA_SUCCESS;
}

DKEMU_API cuEventSynchronize(void* e) {
    LOCKED;
    if (int r = ready()) return r;
    auto* ev = static_cast<Event*>(e);
    if (!g_events.count(ev)) return CUDA_ERROR_INVALID_HANDLE;
    return ev->captured_in ? CUDA_ERROR_CAPTURED_EVENT : CUDA_SUCCESS;
}

DKEMU_API cuEventQuery(void* e) { return cuEventSynchronize(e); }

DKEMU_API cuEventElapsedTime(float* ms, void* start, void* end) {
    LOCKED;
    if (int r = ready()) return r;
    auto *a = static_cast<Event*>(start), *b = static_cast<Event*>(end);
    if (!g_events.count(a) || !g_events.count(b)) return CUDA_ERROR_INVALID_HANDLE;
    if (!ms) return CUDA_ERROR_INVALID_VALUE;
    if (a->captured_in || b->captured_in) return CUDA_ERROR_CAPTURED_EVENT;
    if (!a->recorded || !b->recorded) return CUDA_ERROR_INVALID_HANDLE;
    *ms = (float)(b->ms - a->ms);
    return CUDA_SUCCESS;
}

DKEMU_API cuEventElapsedTime_v2(float* ms, void* start, void* end) {
    return cuEventElapsedTime(ms, start, end);
}

DKEMU_API cuEventDestroy_v2(void* e) {
    LOCKED;
    if (!g_initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (!g_events.erase(static_cast<Event*>(e))) return CUDA_ERROR_INVALID_HANDLE;
    delete static_cast<Event*>(e);
    return CUDA_SUCCESS;
}

DKEMU_API cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    LOCKED;
    if (int r = ready()) return r;
    if (!free_bytes || !total) return CUDA_ERROR_INVALID_VALUE;
    *total = g_p.memory;
    *free_bytes = g_p.memory - dkemu::mem::in_use();
    return CUDA_SUCCESS;
}

DKEMU_API cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
    LOCKED;
    if (int r = ready()) return r;
    if (int r = unsafe_call_guard("cuMemAlloc")) return r;
    return alloc(p, bytes);
}

DKEMU_API cuMemAllocAsync(CUdeviceptr* p, size_t bytes, void* s) {
    LOCKED;
    if (int r = ready()) return r;
    if (!g_p.pools) return CUDA_ERROR_NOT_SUPPORTED;
    if (!valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    if (int r = capture_guard(s, "cuMemAllocAsync")) return r;
    return alloc(p, bytes);
}

DKEMU_API cuMemFree_v2(CUdeviceptr p) {
    LOCKED;
    if (int r = ready()) return r;
    if (int r = unsafe_call_guard("cuMemFree")) return r;
    return release(p);
}

DKEMU_API cuMemFreeAsync(CUdeviceptr p, void* s) {
    LOCKED;
    if (int r = ready()) return r;
    if (!g_p.pools) return CUDA_ERROR_NOT_SUPPORTED;
    if (!valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    if (int r = capture_guard(s, "cuMemFreeAsync")) return r;
    return release(p);
}

DKEMU_API cuMemHostAlloc(void** p, size_t bytes, unsigned) {
    LOCKED;
    if (int r = ready()) return r;
    if (!p || bytes == 0) return CUDA_ERROR_INVALID_VALUE;
    *p = std::aligned_alloc(4096, (bytes + 4095) / 4096 * 4096);
    return *p ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

DKEMU_API cuMemFreeHost(void* p) {
    LOCKED;
    std::free(p);
    return CUDA_SUCCESS;
}

DKEMU_API cuMemsetD8_v2(CUdeviceptr d, unsigned char v, size_t n) {
    LOCKED;
    if (int r = unsafe_call_guard("cuMemsetD8_v2")) return r;
    return memset8(d, v, n);
}

DKEMU_API cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, void* s) {
    LOCKED;
    if (!valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    bool record = false;
    if (int r = capture_record(s, &record)) return r;
    if (record) {
        if (int r = ready()) return r;
        if (n && !device_range("memset", d, n)) return CUDA_ERROR_INVALID_VALUE;
        Node node;
        node.kind = Node::MEMSET;
        node.dst = d;
        node.value = v;
        node.n = n;
        capturing_stream(s)->recording.push_back(node);
        return CUDA_SUCCESS;
    }
    return memset8(d, v, n);
}

DKEMU_API cuMemcpyHtoD_v2(CUdeviceptr d, const void* h, size_t n) {
    LOCKED;
    if (int r = unsafe_call_guard("cuMemcpyHtoD_v2")) return r;
    return copy_htod(d, h, n);
}

DKEMU_API cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void* h, size_t n, void* s) {
    LOCKED;
    if (!valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    if (int r = capture_guard(s, "cuMemcpyHtoDAsync")) return r;
    return copy_htod(d, h, n);
}

DKEMU_API cuMemcpyDtoH_v2(void* h, CUdeviceptr d, size_t n) {
    LOCKED;
    if (int r = unsafe_call_guard("cuMemcpyDtoH_v2")) return r;
    return copy_dtoh(h, d, n);
}

DKEMU_API cuMemcpyDtoHAsync_v2(void* h, CUdeviceptr d, size_t n, void* s) {
    LOCKED;
    if (!valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    if (int r = capture_guard(s, "cuMemcpyDtoHAsync")) return r;
    return copy_dtoh(h, d, n);
}

DKEMU_API cuMemcpyDtoD_v2(CUdeviceptr d, CUdeviceptr s, size_t n) {
    LOCKED;
    if (int r = unsafe_call_guard("cuMemcpyDtoD_v2")) return r;
    return copy_dtod(d, s, n);
}

DKEMU_API cuMemcpyDtoDAsync_v2(CUdeviceptr d, CUdeviceptr s, size_t n, void* st) {
    LOCKED;
    if (!valid_stream(st)) return CUDA_ERROR_INVALID_HANDLE;
    bool record = false;
    if (int r = capture_record(st, &record)) return r;
    if (record) {
        if (int r = ready()) return r;
        if (n && (!device_range("device-to-device copy (source)", s, n) ||
                  !device_range("device-to-device copy (destination)", d, n)))
            return CUDA_ERROR_INVALID_VALUE;
        Node node;
        node.kind = Node::COPY;
        node.dst = d;
        node.src = s;
        node.n = n;
        capturing_stream(st)->recording.push_back(node);
        return CUDA_SUCCESS;
    }
    return copy_dtod(d, s, n);
}

DKEMU_API cuModuleLoadData(void** m, const void* image) {
    LOCKED;
    if (int r = ready()) return r;
    if (!m || !image) return CUDA_ERROR_INVALID_VALUE;
    Module* mod = nullptr;
    const int r = load_module(&mod, image);
    if (r == CUDA_SUCCESS) *m = mod;
    return r;
}

DKEMU_API cuModuleGetFunction(void** f, void* m, const char* name) {
    LOCKED;
    if (int r = ready()) return r;
    auto* mod = static_cast<Module*>(m);
    if (!g_modules.count(mod)) return CUDA_ERROR_INVALID_HANDLE;
    if (!f || !name) return CUDA_ERROR_INVALID_VALUE;
    auto it = mod->functions.find(name);
    if (it == mod->functions.end()) {
        trace("cuModuleGetFunction: no %s in this %s module", name, mod->what.c_str());
        return CUDA_ERROR_NOT_FOUND;
    }
    *f = it->second;
    return CUDA_SUCCESS;
}

DKEMU_API cuModuleUnload(void* m) {
    LOCKED;
    if (!g_initialized) return CUDA_ERROR_NOT_INITIALIZED;
    auto* mod = static_cast<Module*>(m);
    if (!g_modules.erase(mod)) return CUDA_ERROR_INVALID_HANDLE;
    for (auto& f : mod->functions) {
        g_functions.erase(f.second);
        delete f.second;
    }
    delete mod;
    return CUDA_SUCCESS;
}

DKEMU_API cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                         unsigned bz, unsigned shared, void* stream, void** params, void** extra) {
    LOCKED;
    return launch(static_cast<Function*>(f), gx, gy, gz, bx, by, bz, shared, stream, params, extra);
}

DKEMU_API cuGetErrorName(CUresult e, const char** s) {
    LOCKED;
    if (!s) return CUDA_ERROR_INVALID_VALUE;
    for (const auto& t : ERRORS) {
        if (t.code == e) {
            *s = t.name;
            return CUDA_SUCCESS;
        }
    }
    *s = nullptr;
    return CUDA_ERROR_INVALID_VALUE;
}

DKEMU_API cuGetErrorString(CUresult e, const char** s) {
    LOCKED;
    if (!s) return CUDA_ERROR_INVALID_VALUE;
    for (const auto& t : ERRORS) {
        if (t.code == e) {
            *s = t.text;
            return CUDA_SUCCESS;
        }
    }
    *s = nullptr;
    return CUDA_ERROR_INVALID_VALUE;
}

// For the generated stubs: one line per binding the first time it is called.
extern "C" __attribute__((visibility("hidden"))) CUresult dkemu_not_supported(const char* name) {
    std::lock_guard<std::recursive_mutex> guard(g_lock);
    note_call(name);
    static std::set<std::string> said;
    if (said.insert(name).second)
        std::fprintf(stderr, "dkemu: %s is not emulated: CUDA_ERROR_NOT_SUPPORTED\n", name);
    return CUDA_ERROR_NOT_SUPPORTED;
}
