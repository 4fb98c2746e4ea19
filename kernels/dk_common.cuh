// dk_common.cuh: per-dtype arithmetic (SPEC sections 3 and 6), 16-byte vector access,
// unaligned-safe Philox draws and warp bit packing, shared by alpha_dropout.cu,
// grouped_dropout.cu and bias_dropout_residual.cu.
//
// Why explicit intrinsics: the contract forbids fused multiply-add and needs
// round-to-nearest-even everywhere, so every multiply and add goes through
// __fmul_rn/__fadd_rn (__dmul_rn/__dadd_rn), which the compiler may not contract.
#pragma once
#include <stdint.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include "philox.cuh"

// DkType<T>: the compute type C of tensor type T, exact to_c, round-to-nearest-even round_t
// (C -> T), and a correctly rounded conversion from double (for column sums).
template <typename T>
struct DkType;

template <>
struct DkType<float> {
    using C = float;
    static __device__ __forceinline__ float to_c(float x) { return x; }
    static __device__ __forceinline__ float round_t(float c) { return c; }
    static __device__ __forceinline__ double to_double(float x) { return (double)x; }
    static __device__ __forceinline__ float from_double(double d) { return __double2float_rn(d); }
};

template <>
struct DkType<double> {
    using C = double;
    static __device__ __forceinline__ double to_c(double x) { return x; }
    static __device__ __forceinline__ double round_t(double c) { return c; }
    static __device__ __forceinline__ double to_double(double x) { return x; }
    static __device__ __forceinline__ double from_double(double d) { return d; }
};

template <>
struct DkType<__half> {
    using C = float;
    static __device__ __forceinline__ float to_c(__half x) { return __half2float(x); }
    static __device__ __forceinline__ __half round_t(float c) { return __float2half_rn(c); }
    static __device__ __forceinline__ double to_double(__half x) { return (double)__half2float(x); }
    // cvt.rn.f16.f64: one rounding straight from double (no double rounding through float).
    static __device__ __forceinline__ __half from_double(double d) { return __double2half(d); }
};

template <>
struct DkType<__nv_bfloat16> {
    using C = float;
    static __device__ __forceinline__ float to_c(__nv_bfloat16 x) { return __bfloat162float(x); }
    static __device__ __forceinline__ __nv_bfloat16 round_t(float c) { return __float2bfloat16_rn(c); }
    static __device__ __forceinline__ double to_double(__nv_bfloat16 x) {
        return (double)__bfloat162float(x);
    }
    // Correctly rounded double -> bf16 (below sm_90 the header rounds to float with
    // round-to-odd, then to bf16 with round-to-nearest-even: no double-rounding error).
    static __device__ __forceinline__ __nv_bfloat16 from_double(double d) {
        return __double2bfloat16(d);
    }
};

__device__ __forceinline__ float dk_mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double dk_mul(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float dk_add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double dk_add(double a, double b) { return __dadd_rn(a, b); }

// +0.0 in T (dropped outputs are selected, never computed by multiplying).
template <typename T>
__device__ __forceinline__ T dk_zero() {
    return DkType<T>::round_t((typename DkType<T>::C)0);
}

// ---- 16-byte vector access ----------------------------------------------------------

__device__ __forceinline__ bool dk_aligned16(const void* p) {
    return ((uintptr_t)p & 15u) == 0;
}

// One 16-byte piece of T (4 floats, 2 doubles, 8 halves).
template <typename T>
struct alignas(16) DkPiece {
    T v[16 / sizeof(T)];
};

// Loads/stores E consecutive elements at a 16-byte aligned address, as 16-byte pieces.
template <typename T, int E>
__device__ __forceinline__ void dk_load(const T* p, T (&v)[E]) {
    constexpr int P = 16 / sizeof(T);
    static_assert(E % P == 0, "E must be a whole number of 16-byte pieces");
#pragma unroll
    for (int q = 0; q < E / P; ++q) {
        const DkPiece<T> piece = reinterpret_cast<const DkPiece<T>*>(p)[q];
#pragma unroll
        for (int k = 0; k < P; ++k) v[q * P + k] = piece.v[k];
    }
}

template <typename T, int E>
__device__ __forceinline__ void dk_store(T* p, const T (&v)[E]) {
    constexpr int P = 16 / sizeof(T);
    static_assert(E % P == 0, "E must be a whole number of 16-byte pieces");
#pragma unroll
    for (int q = 0; q < E / P; ++q) {
        DkPiece<T> piece;
#pragma unroll
        for (int k = 0; k < P; ++k) piece.v[k] = v[q * P + k];
        reinterpret_cast<DkPiece<T>*>(p)[q] = piece;
    }
}

// Elements per thread per step for kernels that draw random words: a multiple of 4 (one
// Philox call per 4 decisions) and of the 16-byte piece: 4 for f32/f64, 8 for f16/bf16.
template <typename T>
struct DkDrawWidth {
    static constexpr int E = (16 / sizeof(T)) > 4 ? (16 / sizeof(T)) : 4;
};

// ---- random words -------------------------------------------------------------------

// The random words of decisions d0 .. d0+3 (SPEC section 1). When d0 % 4 == 0 that is one
// Philox call; otherwise the four words straddle two calls. d0 % 4 is the same for every
// thread of a launch (d0 = base + multiple of 4), so the branch does not diverge.
__device__ __forceinline__ void dk_words4(uint64_t seed, uint64_t offset, uint64_t d0,
                                          uint32_t (&u)[4]) {
    const uint64_t g = d0 >> 2;
    const uint32_t lo = (uint32_t)(d0 & 3);
    const uint4 r0 = dk_philox4(seed, offset, g);
    if (lo == 0) {
        u[0] = r0.x;
        u[1] = r0.y;
        u[2] = r0.z;
        u[3] = r0.w;
        return;
    }
    const uint4 r1 = dk_philox4(seed, offset, g + 1);
#pragma unroll
    for (uint32_t k = 0; k < 4; ++k) {
        const uint32_t j = lo + k;
        u[k] = j < 4 ? dk_lane(r0, j) : dk_lane(r1, j - 4);
    }
}

// ---- warp bit packing ---------------------------------------------------------------

// Writes the SPEC section 4 keep bits of a warp step. The thread handling vector v
// (elements v*E .. v*E+E-1) holds their keep bits in bits 0..E-1 of `keep`; L = 32/E
// consecutive lanes cover one 32-element word, so an OR across those lanes builds it and
// the first of them stores it (if the word exists). Every lane of the warp must call this
// (full-mask shuffles): callers keep their loop trip counts warp-uniform.
template <int E>
__device__ __forceinline__ void dk_store_bits(uint32_t* bits, uint64_t nwords, uint64_t v,
                                              uint32_t keep) {
    constexpr uint32_t L = 32 / E;
    const uint32_t lane = threadIdx.x & 31u;
    uint32_t word = keep << (E * (lane % L));
#pragma unroll
    for (uint32_t m = 1; m < L; m <<= 1) word |= __shfl_xor_sync(0xffffffffu, word, m);
    const uint64_t w = v / L;
    if (lane % L == 0 && w < nwords) bits[w] = word;
}
