// cuda_shim.h: lets g++ compile kernels/*.cu unchanged as host code, so the CPU can run
// them under a model of CUDA's execution: every thread of a block is a cooperative fiber
// with its own threadIdx, warps of 32 fibers meet at real shuffles and ballots (a
// collective completes only when all 32 lanes reach it, and a lane that exits or waits in
// a different collective is reported as a deadlock), and __syncthreads is a block barrier.
// The arithmetic intrinsics round as the GPU does (round to nearest even, no FMA: build
// with -ffp-contract=off; NaN results are the GPU's canonical NaN). The engine
// (kernel_set.cpp) runs the blocks of a grid one after another.
//
// The kernels are compiled with -fsanitize=kernel-address, which checks every access they
// make against device memory (device_memory.h). What the model itself touches (fibers,
// warps, the thread indices) is host memory, so those functions are DKEMU_HOST: not
// instrumented, and not inlined into the kernels.
#pragma once
#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

// ---- language keywords -------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __restrict__ __restrict

// ---- vector types -----------------------------------------------------------------------
struct uint2 { uint32_t x, y; };
struct alignas(16) uint4 { uint32_t x, y, z, w; };
struct float2 { float x, y; };
inline uint2 make_uint2(uint32_t x, uint32_t y) { return uint2{x, y}; }
inline uint4 make_uint4(uint32_t x, uint32_t y, uint32_t z, uint32_t w) {
    return uint4{x, y, z, w};
}
inline float2 make_float2(float x, float y) { return float2{x, y}; }

#define DKEMU_HOST __attribute__((no_sanitize_address, noinline))

// ---- execution model ----------------------------------------------------------------------
namespace dkemu {

struct Dim3 {
    unsigned x = 1, y = 1, z = 1;
};

[[noreturn]] DKEMU_HOST inline void fail(const char* what) {
    std::fprintf(stderr, "emulator: %s\n", what);
    std::fflush(stderr);
    std::_Exit(3);
}

enum Wait { RUNNING, AT_WARP, AT_BLOCK };

struct Fiber {
    ucontext_t ctx;
    Dim3 tid;
    bool done = false;
    Wait wait = RUNNING;
    uint64_t wait_gen = 0;
};

// The meeting point of one warp's collective: inputs of the lanes that arrived, and the
// results of the last two completed collectives (a lane that resumes late still reads its
// own, while the faster lanes may already have entered the next one).
struct Warp {
    int arrived = 0;
    const char* kind = nullptr;
    uint64_t gen = 0;
    uint64_t in[32];
    uint32_t arg[32];
    uint64_t out[2][32];
};

struct Block {
    std::vector<Fiber> fibers;
    std::vector<Warp> warps;
    ucontext_t scheduler;
    int live = 0;
    int barrier_arrived = 0;
    uint64_t barrier_gen = 0;
};

inline thread_local Block* g_block = nullptr;
inline thread_local Fiber* g_fiber = nullptr;
inline thread_local Dim3 g_block_idx, g_block_dim, g_grid_dim;

DKEMU_HOST inline void yield_to_scheduler() { swapcontext(&g_fiber->ctx, &g_block->scheduler); }

// One warp collective: `compute(in, arg, lane)` gives lane's result once all 32 arrived.
template <typename F>
DKEMU_HOST inline uint64_t collective(const char* kind, uint32_t mask, uint64_t value, uint32_t arg,
                           F compute) {
    if (mask != 0xffffffffu) fail("a warp collective with a partial mask (not modelled)");
    Fiber& f = *g_fiber;
    Warp& w = g_block->warps[f.tid.x / 32];
    const unsigned lane = f.tid.x % 32;
    if (w.arrived == 0) {
        w.kind = kind;
    } else if (std::strcmp(w.kind, kind) != 0) {
        std::fprintf(stderr, "emulator: lanes of warp %u meet in %s and %s\n", f.tid.x / 32,
                     w.kind, kind);
        fail("divergent warp collectives");
    }
    w.in[lane] = value;
    w.arg[lane] = arg;
    const uint64_t gen = w.gen;
    if (++w.arrived == 32) {
        for (unsigned l = 0; l < 32; ++l) w.out[gen & 1][l] = compute(w.in, w.arg, l);
        w.arrived = 0;
        ++w.gen;
    } else {
        f.wait = AT_WARP;
        f.wait_gen = gen;
        yield_to_scheduler();
        f.wait = RUNNING;
    }
    return w.out[gen & 1][lane];
}

DKEMU_HOST inline void sync_block() {
    Block& b = *g_block;
    const uint64_t gen = b.barrier_gen;
    if (++b.barrier_arrived == b.live) {
        b.barrier_arrived = 0;
        ++b.barrier_gen;
        return;
    }
    g_fiber->wait = AT_BLOCK;
    g_fiber->wait_gen = gen;
    yield_to_scheduler();
    g_fiber->wait = RUNNING;
}

template <typename T>
inline uint64_t to_word(T v) {
    static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
    uint64_t w = 0;
    std::memcpy(&w, &v, sizeof(T));
    return w;
}
template <typename T>
inline T from_word(uint64_t w) {
    T v;
    std::memcpy(&v, &w, sizeof(T));
    return v;
}

}  // namespace dkemu

namespace dkemu {
DKEMU_HOST inline Dim3 thread_idx() { return g_fiber->tid; }
DKEMU_HOST inline Dim3 block_idx() { return g_block_idx; }
DKEMU_HOST inline Dim3 block_dim() { return g_block_dim; }
DKEMU_HOST inline Dim3 grid_dim() { return g_grid_dim; }
}  // namespace dkemu

#define threadIdx (dkemu::thread_idx())
#define blockIdx (dkemu::block_idx())
#define blockDim (dkemu::block_dim())
#define gridDim (dkemu::grid_dim())
#define warpSize 32

inline void __syncthreads() { dkemu::sync_block(); }

template <typename T>
inline T __shfl_xor_sync(uint32_t mask, T var, int lane_mask, int width = 32) {
    return dkemu::from_word<T>(dkemu::collective(
        "__shfl_xor_sync", mask, dkemu::to_word(var), (uint32_t)lane_mask,
        [width](const uint64_t* in, const uint32_t* arg, unsigned l) DKEMU_HOST {
            // Lanes outside the caller's width-segment read their own value.
            const unsigned src = l ^ (arg[l] & 31u);
            return (src / width == l / width) ? in[src] : in[l];
        }));
}

template <typename T>
inline T __shfl_sync(uint32_t mask, T var, int src_lane, int width = 32) {
    return dkemu::from_word<T>(dkemu::collective(
        "__shfl_sync", mask, dkemu::to_word(var), (uint32_t)src_lane,
        [width](const uint64_t* in, const uint32_t* arg, unsigned l) DKEMU_HOST {
            return in[(l / width) * width + (arg[l] % width)];
        }));
}

template <typename T>
inline T __shfl_down_sync(uint32_t mask, T var, unsigned delta, int width = 32) {
    return dkemu::from_word<T>(dkemu::collective(
        "__shfl_down_sync", mask, dkemu::to_word(var), delta,
        [width](const uint64_t* in, const uint32_t* arg, unsigned l) DKEMU_HOST {
            const unsigned src = l + arg[l];
            return (src / width == l / width) ? in[src] : in[l];
        }));
}

inline uint32_t __ballot_sync(uint32_t mask, int predicate) {
    return (uint32_t)dkemu::collective(
        "__ballot_sync", mask, predicate != 0, 0,
        [](const uint64_t* in, const uint32_t*, unsigned) DKEMU_HOST {
            uint64_t word = 0;
            for (unsigned k = 0; k < 32; ++k) word |= (in[k] & 1u) << k;
            return word;
        });
}

// ---- integer intrinsics --------------------------------------------------------------------
inline uint32_t __umulhi(uint32_t a, uint32_t b) { return (uint32_t)(((uint64_t)a * b) >> 32); }
inline uint64_t __umul64hi(uint64_t a, uint64_t b) {
    return (uint64_t)(((unsigned __int128)a * b) >> 64);
}
inline int __popc(uint32_t x) { return __builtin_popcount(x); }
inline uint32_t __brev(uint32_t x) {
    uint32_t r = 0;
    for (int k = 0; k < 32; ++k) r |= ((x >> k) & 1u) << (31 - k);
    return r;
}
// PTX prmt.b32 in its default mode: byte k of the result is byte (s >> 4k) & 7 of {y, x}.
inline uint32_t __byte_perm(uint32_t x, uint32_t y, uint32_t s) {
    const uint64_t bytes = ((uint64_t)y << 32) | x;
    uint32_t r = 0;
    for (int k = 0; k < 4; ++k) r |= (uint32_t)((bytes >> (8 * ((s >> (4 * k)) & 7))) & 0xff) << (8 * k);
    return r;
}
inline uint32_t __funnelshift_r(uint32_t lo, uint32_t hi, uint32_t shift) {
    const uint64_t v = ((uint64_t)hi << 32) | lo;
    return (uint32_t)(v >> (shift & 31));
}

// ---- floating point ------------------------------------------------------------------------
namespace dkemu {
// GPU arithmetic gives the canonical NaN, whatever the operands' payloads.
inline float canon(float r) {
    if (std::isnan(r)) return from_word<float>(0x7fffffffu);
    return r;
}
inline double canon(double r) {
    if (std::isnan(r)) return from_word<double>(0x7fffffffffffffffull);
    return r;
}

// Round-to-nearest-even of a double into a binary format with `mbits` stored mantissa bits
// and `ebits` exponent bits (half: 10/5, bf16: 7/8), subnormals and overflow to inf
// included; NaN gives the canonical NaN 0x7fff (what cvt.rn.f16/bf16 produce).
inline uint16_t round_to_small(double d, int mbits, int ebits) {
    const uint16_t sign = std::signbit(d) ? 0x8000 : 0;
    const uint16_t inf = (uint16_t)(((1u << ebits) - 1) << mbits);
    if (std::isnan(d)) return 0x7fff;
    const double a = std::fabs(d);
    if (std::isinf(a)) return sign | inf;
    if (a == 0.0) return sign;
    const int bias = (1 << (ebits - 1)) - 1;
    const int emin = 1 - bias, emax = bias;
    int k;
    std::frexp(a, &k);  // a = f * 2^k, f in [0.5, 1)
    int e = k - 1 < emin ? emin : k - 1;
    // q = a / 2^(e - mbits) is exact (a power-of-two scaling far from double's limits);
    // nearbyint rounds it to nearest even in the default rounding mode.
    double r = std::nearbyint(std::ldexp(a, mbits - e));
    if (r >= std::ldexp(1.0, mbits + 1)) {
        r /= 2;  // rounded up into the next binade (r was 2^(mbits+1): exact)
        ++e;
    }
    if (e > emax) return sign | inf;
    const uint32_t m = (uint32_t)r;
    if (m < (1u << mbits)) return sign | (uint16_t)m;  // subnormal (e == emin)
    return sign | (uint16_t)(((uint32_t)(e + bias) << mbits) | (m - (1u << mbits)));
}

inline double small_to_double(uint16_t h, int mbits, int ebits) {
    const int bias = (1 << (ebits - 1)) - 1;
    const uint32_t e = (h >> mbits) & ((1u << ebits) - 1);
    const uint32_t m = h & ((1u << mbits) - 1);
    double v;
    if (e == 0) {
        v = std::ldexp((double)m, 1 - bias - mbits);
    } else if (e == (1u << ebits) - 1) {
        v = m ? std::nan("") : INFINITY;
    } else {
        v = std::ldexp((double)(m | (1u << mbits)), (int)e - bias - mbits);
    }
    return (h & 0x8000) ? -v : v;
}
}  // namespace dkemu

inline float __fmul_rn(float a, float b) { return dkemu::canon(a * b); }
inline float __fadd_rn(float a, float b) { return dkemu::canon(a + b); }
inline double __dmul_rn(double a, double b) { return dkemu::canon(a * b); }
inline double __dadd_rn(double a, double b) { return dkemu::canon(a + b); }
inline float __fsub_rn(float a, float b) { return dkemu::canon(a - b); }
inline double __dsub_rn(double a, double b) { return dkemu::canon(a - b); }
inline float __fdiv_rn(float a, float b) { return dkemu::canon(a / b); }
inline double __ddiv_rn(double a, double b) { return dkemu::canon(a / b); }
inline float __fsqrt_rn(float a) { return dkemu::canon(std::sqrt(a)); }
inline double __dsqrt_rn(double a) { return dkemu::canon(std::sqrt(a)); }
inline float __double2float_rn(double d) { return dkemu::canon((float)d); }
inline float __uint_as_float(uint32_t u) { return dkemu::from_word<float>(u); }
inline uint32_t __float_as_uint(float f) { return dkemu::to_word(f); }

struct __half {
    uint16_t __x;
};
struct __nv_bfloat16 {
    uint16_t __x;
};
struct alignas(4) __half2 {
    __half x, y;
};
struct alignas(4) __nv_bfloat162 {
    __nv_bfloat16 x, y;
};

inline __half __ushort_as_half(unsigned short u) { return __half{u}; }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { return __nv_bfloat16{u}; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }

// half -> float is exact (a NaN keeps its payload and is made quiet, as cvt.f32.f16 does).
inline float __half2float(__half h) {
    if ((h.__x & 0x7c00) == 0x7c00 && (h.__x & 0x3ff)) {
        const uint32_t w = ((uint32_t)(h.__x & 0x8000) << 16) | 0x7fc00000u |
                           ((uint32_t)(h.__x & 0x3ff) << 13);
        return dkemu::from_word<float>(w);
    }
    return (float)dkemu::small_to_double(h.__x, 10, 5);
}
// bf16 -> float is a 16-bit shift (the CUDA header does exactly that).
inline float __bfloat162float(__nv_bfloat16 h) {
    return dkemu::from_word<float>((uint32_t)h.__x << 16);
}
inline __half __float2half_rn(float f) { return __half{dkemu::round_to_small(f, 10, 5)}; }
inline __half __double2half(double d) { return __half{dkemu::round_to_small(d, 10, 5)}; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    return __nv_bfloat16{dkemu::round_to_small(f, 7, 8)};
}
inline __nv_bfloat16 __double2bfloat16(double d) {
    return __nv_bfloat16{dkemu::round_to_small(d, 7, 8)};
}
// The paired conversions (cvt.rn.f16x2.f32 / cvt.rn.bf16x2.f32 on the GPU): .x from a.
inline __half2 __floats2half2_rn(float a, float b) {
    return __half2{__float2half_rn(a), __float2half_rn(b)};
}
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
    return __nv_bfloat162{__float2bfloat16_rn(a), __float2bfloat16_rn(b)};
}
inline __half2 __float22half2_rn(float2 f) { return __floats2half2_rn(f.x, f.y); }
inline __nv_bfloat162 __float22bfloat162_rn(float2 f) { return __floats2bfloat162_rn(f.x, f.y); }
