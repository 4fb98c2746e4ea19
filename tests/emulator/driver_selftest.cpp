// driver_selftest.cpp: proves that the emulated CUDA driver (driver.cpp) catches the bugs
// it claims to catch. Each case makes one mistake on purpose (an out-of-bounds write, a
// read of memory never written, a use after free, a module that does not match the
// kernels, a short parameter buffer, bad handles, ...) and checks both the CUresult the
// driver answers and the report line it writes. A correct launch is the control: it must
// return 0, report nothing and give a plausible dropout, so a driver that reports
// everything fails too.
//
//   bash scripts/emulated-driver.sh
//   g++ -std=c++17 -O1 -Wall -o target/emulator/driver-selftest
//       tests/emulator/driver_selftest.cpp -ldl      (one command line)
//   target/emulator/driver-selftest target/emulated-driver/libcuda.so.1 [CASE]
//
// Every case runs in a child process of its own (fork, then dlopen), so the sticky
// CUDA_ERROR_ILLEGAL_ADDRESS of one case cannot leak into the next. The child sets
// DKEMU_REPORTS_FATAL=0 and DKEMU_REPORT_LOG=<a file of its own> before loading the
// driver; an exit status of 86 therefore means the driver ignored DKEMU_REPORTS_FATAL.
// Output: `ok CASE` or `FAILED CASE: why` per case, then `N passed, M failed`.
#include <dlfcn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

namespace {

using CUresult = int;
using CUdeviceptr = unsigned long long;

// The driver calls the cases make, declared with plain C types.
#define DK_CALLS(X)                                                                          \
    X(cuInit, (unsigned))                                                                    \
    X(cuDeviceGet, (int*, int))                                                              \
    X(cuDevicePrimaryCtxRetain, (void**, int))                                               \
    X(cuCtxSetCurrent, (void*))                                                              \
    X(cuMemAlloc_v2, (CUdeviceptr*, size_t))                                                 \
    X(cuMemFree_v2, (CUdeviceptr))                                                           \
    X(cuMemcpyHtoD_v2, (CUdeviceptr, const void*, size_t))                                   \
    X(cuMemcpyDtoH_v2, (void*, CUdeviceptr, size_t))                                         \
    X(cuModuleLoadData, (void**, const void*))                                               \
    X(cuModuleGetFunction, (void**, void*, const char*))                                     \
    X(cuLaunchKernel, (void*, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,    \
                       unsigned, void*, void**, void**))                                     \
    X(cuStreamCreate, (void**, unsigned))                                                    \
    X(cuStreamBeginCapture_v2, (void*, int))                                                 \
    X(cuStreamEndCapture, (void*, void**))                                                   \
    X(cuStreamIsCapturing, (void*, int*))                                                    \
    X(cuGraphInstantiateWithFlags, (void**, void*, unsigned long long))                      \
    X(cuGraphLaunch, (void*, void*))                                                         \
    X(cuGraphDestroy, (void*))                                                               \
    X(cuGraphExecDestroy, (void*))                                                           \
    X(cuEventCreate, (void**, unsigned))                                                     \
    X(cuEventRecord, (void*, void*))                                                         \
    X(cuStreamWaitEvent, (void*, void*, unsigned))                                           \
    X(cuMemcpyHtoDAsync_v2, (CUdeviceptr, const void*, size_t, void*))                      \
    X(cuStreamSynchronize, (void*))
#define DK_FIELD(fn, args) CUresult(*fn) args;
struct Api {
    DK_CALLS(DK_FIELD)
} cu;

// kernels/dk_draw.cuh's DkDraw, passed by value.
struct DkDraw {
    uint64_t seed, offset, index_base, threshold, state;
};
const DkDraw DRAW = {1, 2, 0, 1ull << 31, 0};  // p = 0.5, by value

// PTX modules as the driver reads them: only the header and the entries' parameter lists
// matter, the body is ignored (the driver runs the g++-compiled twin).
std::string ptx(const std::string& entries) {
    return ".version 9.0\n.target sm_80\n.address_size 64\n\n" + entries;
}
std::string fwd_entry(const std::string& name, const char* scale_type = ".f32") {
    std::string p = "\t.param .u64 .ptr .align 1 " + name + "_param_";
    return ".visible .entry " + name + "(\n" + p + "0,\n" + p + "1,\n" + p + "2,\n" +
           "\t.param .u64 " + name + "_param_3,\n\t.param .align 8 .b8 " + name +
           "_param_4[40],\n\t.param " + scale_type + " " + name + "_param_5\n)\n{\n\tret;\n}\n";
}
const std::string MASK_ENTRY =
    ".visible .entry dropout_mask_bits(\n\t.param .u64 .ptr .align 1 dropout_mask_bits_param_0,\n"
    "\t.param .u64 dropout_mask_bits_param_1,\n"
    "\t.param .align 8 .b8 dropout_mask_bits_param_2[40]\n)\n{\n\tret;\n}\n";

// One case's state in the child: the report log and the first failure.
struct Case {
    std::string log_path;
    std::string failure;

    void fail(const std::string& why) {
        if (failure.empty()) failure = why;
    }
    bool rc(CUresult got, CUresult want, const char* call) {
        if (got == want) return true;
        fail(std::string(call) + " returned " + std::to_string(got) + ", expected " +
             std::to_string(want));
        return false;
    }
    std::vector<std::string> reports() const {
        std::vector<std::string> lines;
        std::ifstream f(log_path);
        for (std::string l; std::getline(f, l);) lines.push_back(l);
        return lines;
    }
    // A report line tagged [tag] that holds every word.
    void report(const char* tag, const std::vector<std::string>& words) {
        const std::string t = std::string("dkemu: [") + tag + "] ";
        const auto lines = reports();
        for (const std::string& l : lines) {
            bool all = l.find(t) != std::string::npos;
            for (const std::string& w : words) all = all && l.find(w) != std::string::npos;
            if (all) return;
        }
        std::string want = "no [" + std::string(tag) + "] report with";
        for (const std::string& w : words) want += " '" + w + "'";
        fail(want + (lines.empty() ? " (no reports)" : " (reports: " + lines[0] + ")"));
    }
    void no_reports() {
        const auto lines = reports();
        if (!lines.empty()) fail("unexpected report: " + lines[0]);
    }

    CUdeviceptr alloc(size_t bytes) {
        CUdeviceptr p = 0;
        rc(cu.cuMemAlloc_v2(&p, bytes), 0, "cuMemAlloc_v2");
        return p;
    }
    void put(CUdeviceptr d, const std::vector<float>& h) {
        rc(cu.cuMemcpyHtoD_v2(d, h.data(), h.size() * sizeof(float)), 0, "cuMemcpyHtoD_v2");
    }
    void* function(const std::string& module_ptx, const char* name) {
        void *m = nullptr, *f = nullptr;
        if (rc(cu.cuModuleLoadData(&m, module_ptx.c_str()), 0, "cuModuleLoadData"))
            rc(cu.cuModuleGetFunction(&f, m, name), 0, "cuModuleGetFunction");
        return f;
    }
    void* fwd() { return function(ptx(fwd_entry("dropout_fwd_f32")), "dropout_fwd_f32"); }
};

std::vector<float> inputs(size_t n) {
    std::vector<float> x(n);
    for (size_t i = 0; i < n; ++i) x[i] = 1.0f + 0.25f * (float)i;  // never 0
    return x;
}

// dropout_fwd_f32(x, y, bits, n, draw, 2.0f) on grid 4 x block 256, on `stream`.
CUresult launch_fwd(void* f, CUdeviceptr x, CUdeviceptr y, CUdeviceptr bits, uint64_t n,
                    DkDraw draw = DRAW, void* stream = nullptr) {
    float scale = 2.0f;
    void* params[] = {&x, &y, &bits, &n, &draw, &scale};
    return cu.cuLaunchKernel(f, 4, 1, 1, 256, 1, 1, 0, stream, params, nullptr);
}

// ---- the cases ---------------------------------------------------------------------------
void out_of_bounds_write(Case& c) {
    CUdeviceptr x = c.alloc(1024 * 4), y = c.alloc(1000 * 4), bits = c.alloc(32 * 4);
    c.put(x, inputs(1024));
    c.rc(launch_fwd(c.fwd(), x, y, bits, 1024), 700, "cuLaunchKernel");
    c.report("memcheck", {"invalid write", "kernel dropout_fwd_f32", "block ", "thread ",
                          "past the end of allocation #2"});
    // The illegal address sticks to the context, as on a GPU.
    CUdeviceptr p = 0;
    c.rc(cu.cuMemAlloc_v2(&p, 256), 700, "cuMemAlloc_v2 after the fault");
}

void unwritten_read(Case& c) {
    CUdeviceptr x = c.alloc(1024 * 4), y = c.alloc(1024 * 4), bits = c.alloc(32 * 4);
    c.rc(launch_fwd(c.fwd(), x, y, bits, 1024), 0, "cuLaunchKernel");
    c.report("initcheck", {"never written", "kernel dropout_fwd_f32", "block ", "thread ",
                           "allocation #1"});
}

void unwritten_output_copied(Case& c) {
    CUdeviceptr x = c.alloc(1024 * 4), y = c.alloc(1024 * 4), bits = c.alloc(32 * 4);
    c.put(x, inputs(1024));
    c.rc(launch_fwd(c.fwd(), x, y, bits, 1000), 0, "cuLaunchKernel");
    c.no_reports();  // the launch itself is fine: y[1000..] is simply not written
    std::vector<float> h(1024);
    c.rc(cu.cuMemcpyDtoH_v2(h.data(), y, 1024 * 4), 0, "cuMemcpyDtoH_v2");
    c.report("initcheck", {"device-to-host copy of 4096 bytes", "never written",
                           "allocation #2", "+ 4000"});
}

void use_after_free(Case& c) {
    CUdeviceptr x = c.alloc(1024 * 4), y = c.alloc(1024 * 4), bits = c.alloc(32 * 4);
    c.put(x, inputs(1024));
    void* f = c.fwd();
    c.rc(cu.cuMemFree_v2(x), 0, "cuMemFree_v2");
    c.rc(launch_fwd(f, x, y, bits, 1024), 700, "cuLaunchKernel");
    c.report("memcheck", {"invalid read", "kernel dropout_fwd_f32", "freed allocation #1"});
}

void double_free(Case& c) {
    CUdeviceptr x = c.alloc(4096);
    c.rc(cu.cuMemFree_v2(x), 0, "cuMemFree_v2");
    c.no_reports();
    c.rc(cu.cuMemFree_v2(x), 1, "cuMemFree_v2 (second)");
    c.report("memcheck", {"free of", "freed allocation #1", "not the start of a live allocation"});
}

void wrong_module(Case& c) {
    void *a = nullptr, *b = nullptr, *f = nullptr;
    c.rc(cu.cuModuleLoadData(&a, ptx(fwd_entry("dropout_fwd_f32")).c_str()), 0,
         "cuModuleLoadData (A)");
    c.rc(cu.cuModuleLoadData(&b, ptx(MASK_ENTRY).c_str()), 0, "cuModuleLoadData (B)");
    c.rc(cu.cuModuleGetFunction(&f, a, "dropout_mask_bits"), 500,
         "cuModuleGetFunction(A, dropout_mask_bits)");
    // Controls: each module has its own entry.
    c.rc(cu.cuModuleGetFunction(&f, b, "dropout_mask_bits"), 0,
         "cuModuleGetFunction(B, dropout_mask_bits)");
    c.rc(cu.cuModuleGetFunction(&f, a, "dropout_fwd_f32"), 0,
         "cuModuleGetFunction(A, dropout_fwd_f32)");
}

void wrong_param_sizes(Case& c) {
    void* m = nullptr;
    c.rc(cu.cuModuleLoadData(&m, ptx(fwd_entry("dropout_fwd_f32", ".f64")).c_str()), 801,
         "cuModuleLoadData");
    c.report("module", {"entry dropout_fwd_f32", "(8, 8, 8, 8, 40, 8)", "(8, 8, 8, 8, 40, 4)",
                        "does not load"});
    if (m) c.fail("cuModuleLoadData set a module handle on failure");
}

void unknown_entry(Case& c) {
    void* m = nullptr;
    const std::string text = ptx(fwd_entry("dropout_fwd_f32") + fwd_entry("no_such_kernel"));
    c.rc(cu.cuModuleLoadData(&m, text.c_str()), 801, "cuModuleLoadData");
    c.report("module", {"entry no_such_kernel", "twin", "does not load"});
}

void wrong_param_buffer(Case& c) {
    CUdeviceptr x = c.alloc(1024 * 4), y = c.alloc(1024 * 4), bits = c.alloc(32 * 4);
    c.put(x, inputs(1024));
    void* f = c.fwd();
    // The packed parameters: three pointers, n, the 40-byte draw, the scale: 76 bytes.
    unsigned char buf[80] = {};
    const uint64_t n = 1024;
    const float scale = 2.0f;
    std::memcpy(buf, &x, 8);
    std::memcpy(buf + 8, &y, 8);
    std::memcpy(buf + 16, &bits, 8);
    std::memcpy(buf + 24, &n, 8);
    std::memcpy(buf + 32, &DRAW, 40);
    std::memcpy(buf + 72, &scale, 4);
    size_t size = 76 - 8;
    void* extra[] = {(void*)1, buf, (void*)2, &size, (void*)0};
    c.rc(cu.cuLaunchKernel(f, 4, 1, 1, 256, 1, 1, 0, nullptr, nullptr, extra), 1,
         "cuLaunchKernel (68-byte buffer)");
    c.report("launch", {"parameter buffer of 68 bytes", "dropout_fwd_f32", "takes 76"});
    // Control: the right size launches, and adds no report.
    size = 76;
    c.rc(cu.cuLaunchKernel(f, 4, 1, 1, 256, 1, 1, 0, nullptr, nullptr, extra), 0,
         "cuLaunchKernel (76-byte buffer)");
    if (c.reports().size() != 1) c.fail("the correct buffer made a report");
}

void zero_byte_alloc(Case& c) {
    CUdeviceptr p = 0;
    c.rc(cu.cuMemAlloc_v2(&p, 0), 1, "cuMemAlloc_v2(0 bytes)");
}

void bad_handles(Case& c) {
    void* f = nullptr;
    c.rc(cu.cuModuleGetFunction(&f, (void*)0x1234, "dropout_fwd_f32"), 400,
         "cuModuleGetFunction(bogus module)");
    c.rc(cu.cuStreamSynchronize((void*)0x5678), 400, "cuStreamSynchronize(bogus stream)");
}

void copy_outside(Case& c) {
    CUdeviceptr p = c.alloc(1024);
    const unsigned char h[8] = {};
    c.rc(cu.cuMemcpyHtoD_v2(p + 1020, h, 8), 1, "cuMemcpyHtoD_v2");
    c.report("memcheck", {"host-to-device copy of 8 bytes", "allocation #1", "past its end"});
}

void correct_launch(Case& c) {
    const size_t n = 1000, words = 32;
    CUdeviceptr x = c.alloc(n * 4), y = c.alloc(n * 4), bits = c.alloc(words * 4);
    const std::vector<float> hx = inputs(n);
    c.put(x, hx);
    c.rc(launch_fwd(c.fwd(), x, y, bits, n), 0, "cuLaunchKernel");
    std::vector<float> hy(n);
    std::vector<uint32_t> hb(words);
    c.rc(cu.cuMemcpyDtoH_v2(hy.data(), y, n * 4), 0, "cuMemcpyDtoH_v2 (y)");
    c.rc(cu.cuMemcpyDtoH_v2(hb.data(), bits, words * 4), 0, "cuMemcpyDtoH_v2 (bits)");
    c.no_reports();
    size_t kept = 0;
    for (size_t i = 0; i < n; ++i) {
        const bool bit = (hb[i / 32] >> (i % 32)) & 1u;
        const bool k = hy[i] == 2.0f * hx[i];
        if (!k && hy[i] != 0.0f) c.fail("y[" + std::to_string(i) + "] is neither 0 nor 2*x");
        if (bit != k) c.fail("bit " + std::to_string(i) + " disagrees with y");
        kept += k;
    }
    if (hb[words - 1] >> (n % 32)) c.fail("bits past n are set");
    if (kept < 400 || kept > 600) c.fail(std::to_string(kept) + " of 1000 kept at p = 0.5");
}

template <typename T>
std::vector<T> get(Case& c, CUdeviceptr d, size_t n) {
    std::vector<T> h(n);
    c.rc(cu.cuMemcpyDtoH_v2(h.data(), d, n * sizeof(T)), 0, "cuMemcpyDtoH_v2");
    return h;
}

// A captured launch is recorded, not run; each replay runs it again, reading the device
// memory of that moment: with a draw whose (seed, offset) is read from a DkRngState, replay
// k gives what an eager launch at that state gives. Parameters are frozen at capture (a
// change to the host variable after the launch call changes nothing).
void capture_replays(Case& c) {
    const size_t n = 1000, words = 32;
    CUdeviceptr x = c.alloc(n * 4), y = c.alloc(n * 4), bits = c.alloc(words * 4);
    CUdeviceptr state = c.alloc(16), ey = c.alloc(n * 4), ebits = c.alloc(words * 4);
    c.put(x, inputs(n));
    void* f = c.fwd();
    void *s = nullptr, *graph = nullptr, *exec = nullptr;
    c.rc(cu.cuStreamCreate(&s, 0), 0, "cuStreamCreate");
    const uint64_t zeros[2] = {0, 0};
    c.rc(cu.cuMemcpyHtoD_v2(state, zeros, 16), 0, "cuMemcpyHtoD_v2 (state)");
    c.rc(cu.cuMemcpyHtoD_v2(y, inputs(n).data(), n * 4), 0, "cuMemcpyHtoD_v2 (y)");
    c.rc(cu.cuStreamBeginCapture_v2(s, 0), 0, "cuStreamBeginCapture_v2");
    DkDraw captured = {0, 3, 0, 1ull << 31, state};  // offset 3: the call's increment
    c.rc(launch_fwd(f, x, y, bits, n, captured, s), 0, "cuLaunchKernel (captured)");
    int status = -1;
    c.rc(cu.cuStreamIsCapturing(s, &status), 0, "cuStreamIsCapturing");
    if (status != 1) c.fail("not capturing after a captured launch");
    c.rc(cu.cuStreamEndCapture(s, &graph), 0, "cuStreamEndCapture");
    if (!graph) return c.fail("a capture of one launch gave no graph");
    if (get<float>(c, y, n) != inputs(n)) c.fail("the captured launch ran at capture");
    c.rc(cu.cuGraphInstantiateWithFlags(&exec, graph, 0), 0, "cuGraphInstantiateWithFlags");
    for (uint64_t k = 0; k < 3; ++k) {
        const uint64_t st[2] = {77, 10 * k};
        c.rc(cu.cuMemcpyHtoDAsync_v2(state, st, 16, s), 0, "cuMemcpyHtoDAsync_v2 (state)");
        c.rc(cu.cuGraphLaunch(exec, s), 0, "cuGraphLaunch");
        const DkDraw eager = {77, 10 * k + 3, 0, 1ull << 31, 0};
        c.rc(launch_fwd(f, x, ey, ebits, n, eager), 0, "cuLaunchKernel (eager)");
        if (get<float>(c, y, n) != get<float>(c, ey, n))
            c.fail("replay " + std::to_string(k) + "'s output differs from the eager call's");
        if (get<uint32_t>(c, bits, words) != get<uint32_t>(c, ebits, words))
            c.fail("replay " + std::to_string(k) + "'s mask differs from the eager call's");
    }
    const auto first = get<uint32_t>(c, ebits, words);
    const DkDraw other = {77, 3, 0, 1ull << 31, 0};
    c.rc(launch_fwd(f, x, ey, ebits, n, other), 0, "cuLaunchKernel (offset 3)");
    if (get<uint32_t>(c, ebits, words) == first) c.fail("replays drew the same mask");
    c.rc(cu.cuGraphExecDestroy(exec), 0, "cuGraphExecDestroy");
    c.rc(cu.cuGraphDestroy(graph), 0, "cuGraphDestroy");
    c.rc(cu.cuGraphLaunch(exec, s), 400, "cuGraphLaunch (destroyed)");
    c.no_reports();
}

// What a capture cannot hold is refused with CUDA's codes and invalidates it: a
// synchronize, a host copy, a wait on an event recorded outside the capture; in the
// global mode also a synchronous allocation on any stream. Relaxed mode allows that one.
void capture_refusals(Case& c) {
    void* s = nullptr;
    c.rc(cu.cuStreamCreate(&s, 0), 0, "cuStreamCreate");
    CUdeviceptr d = c.alloc(64);
    const unsigned char h[64] = {};
    void *graph = nullptr, *ev = nullptr;
    int status = -1;
    struct Refusal {
        const char* what;
        int mode, want;
        std::function<CUresult()> call;
    };
    c.rc(cu.cuEventCreate(&ev, 0), 0, "cuEventCreate");
    c.rc(cu.cuEventRecord(ev, s), 0, "cuEventRecord (outside)");
    const Refusal refusals[] = {
        {"cuStreamSynchronize", 2, 900, [&] { return cu.cuStreamSynchronize(s); }},
        {"cuMemcpyHtoDAsync", 2, 900, [&] { return cu.cuMemcpyHtoDAsync_v2(d, h, 64, s); }},
        {"cuStreamWaitEvent (outside event)", 2, 905, [&] { return cu.cuStreamWaitEvent(s, ev, 0); }},
        {"cuMemAlloc (global mode)", 0, 900, [&] {
             CUdeviceptr p = 0;
             return cu.cuMemAlloc_v2(&p, 64);
         }},
    };
    for (const Refusal& r : refusals) {
        c.rc(cu.cuStreamBeginCapture_v2(s, r.mode), 0, "cuStreamBeginCapture_v2");
        c.rc(r.call(), r.want, r.what);
        c.rc(cu.cuStreamIsCapturing(s, &status), 0, "cuStreamIsCapturing");
        if (status != 2) c.fail(std::string(r.what) + " left the capture valid");
        c.rc(launch_fwd(c.fwd(), d, d, 0, 0, DRAW, s), 901, "cuLaunchKernel (invalidated)");
        c.rc(cu.cuStreamEndCapture(s, &graph), 901, "cuStreamEndCapture (invalidated)");
        if (graph) c.fail("an invalidated capture gave a graph");
    }
    // Controls: relaxed mode allows a synchronous allocation; an event recorded in the
    // capture may be waited on in it.
    c.rc(cu.cuStreamBeginCapture_v2(s, 2), 0, "cuStreamBeginCapture_v2 (relaxed)");
    CUdeviceptr p = 0;
    c.rc(cu.cuMemAlloc_v2(&p, 64), 0, "cuMemAlloc_v2 (relaxed mode)");
    c.rc(cu.cuEventRecord(ev, s), 0, "cuEventRecord (in the capture)");
    c.rc(cu.cuStreamWaitEvent(s, ev, 0), 0, "cuStreamWaitEvent (captured event)");
    c.rc(cu.cuStreamEndCapture(s, &graph), 0, "cuStreamEndCapture (relaxed)");
    if (graph) c.fail("a capture with no work gave a graph");
}

struct Named {
    const char* name;
    void (*run)(Case&);
};
const Named CASES[] = {
    {"out_of_bounds_write", out_of_bounds_write},
    {"unwritten_read", unwritten_read},
    {"unwritten_output_copied", unwritten_output_copied},
    {"use_after_free", use_after_free},
    {"double_free", double_free},
    {"wrong_module", wrong_module},
    {"wrong_param_sizes", wrong_param_sizes},
    {"unknown_entry", unknown_entry},
    {"wrong_param_buffer", wrong_param_buffer},
    {"zero_byte_alloc", zero_byte_alloc},
    {"bad_handles", bad_handles},
    {"copy_outside", copy_outside},
    {"correct_launch", correct_launch},
    {"capture_replays", capture_replays},
    {"capture_refusals", capture_refusals},
};

// The child: load the driver, set up the context, run one case; its verdict is the exit
// status (0 ok, 1 failed, 2 could not run) and a line on stdout when it failed.
int child(const char* driver, const Named& k, const std::string& log) {
    setenv("DKEMU_REPORTS_FATAL", "0", 1);
    setenv("DKEMU_REPORT_LOG", log.c_str(), 1);
    void* lib = dlopen(driver, RTLD_NOW | RTLD_LOCAL);
    if (!lib) return std::printf("FAILED %s: dlopen: %s\n", k.name, dlerror()), 2;
#define DK_LOAD(fn, args)                                                  \
    if (!(cu.fn = reinterpret_cast<decltype(cu.fn)>(dlsym(lib, #fn)))) \
        return std::printf("FAILED %s: dlsym: %s\n", k.name, dlerror()), 2;
    DK_CALLS(DK_LOAD)
    Case c{log, ""};
    int dev = -1;
    void* ctx = nullptr;
    if (c.rc(cu.cuInit(0), 0, "cuInit") && c.rc(cu.cuDeviceGet(&dev, 0), 0, "cuDeviceGet") &&
        c.rc(cu.cuDevicePrimaryCtxRetain(&ctx, dev), 0, "cuDevicePrimaryCtxRetain") &&
        c.rc(cu.cuCtxSetCurrent(ctx), 0, "cuCtxSetCurrent"))
        k.run(c);
    if (c.failure.empty()) return 0;
    std::printf("FAILED %s: %s\n", k.name, c.failure.c_str());
    return 1;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2 || argc > 3) {
        std::fprintf(stderr, "usage: %s path/to/libcuda.so.1 [CASE]\n", argv[0]);
        return 2;
    }
    char dir[] = "/tmp/dkemu-selftest-XXXXXX";
    if (!mkdtemp(dir)) return std::perror("mkdtemp"), 2;
    int passed = 0, failed = 0;
    for (const Named& k : CASES) {
        if (argc == 3 && std::strcmp(argv[2], k.name) != 0) continue;
        const std::string log = std::string(dir) + "/" + k.name + ".log";
        const std::string err = std::string(dir) + "/" + k.name + ".stderr";
        std::fflush(stdout);
        const pid_t pid = fork();
        if (pid < 0) return std::perror("fork"), 2;
        if (pid == 0) {
            // The driver's own lines (the reports among them) go to a file, shown on failure.
            if (!std::freopen(err.c_str(), "w", stderr)) std::_Exit(2);
            std::exit(child(argv[1], k, log));  // exit, not _exit: the driver's atexit runs
        }
        int status = 0;
        waitpid(pid, &status, 0);
        const int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        if (code == 0) {
            std::printf("ok %s\n", k.name);
            ++passed;
        } else {
            if (code == 86)
                std::printf("FAILED %s: exit 86, DKEMU_REPORTS_FATAL=0 was ignored\n", k.name);
            else if (!WIFEXITED(status))
                std::printf("FAILED %s: killed by signal %d\n", k.name, WTERMSIG(status));
            // (exit 1 or 2: the child printed why)
            std::ifstream e(err);
            for (std::string l; std::getline(e, l);) std::printf("    %s\n", l.c_str());
            ++failed;
        }
        std::remove(log.c_str());
        std::remove(err.c_str());
    }
    rmdir(dir);
    if (passed + failed == 0) std::fprintf(stderr, "no case named %s\n", argv[2]);
    std::printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 && passed > 0 ? 0 : 1;
}
