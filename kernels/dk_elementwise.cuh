// dk_elementwise.cuh: the loop shared by every kernel that draws one decision per element
// (dropout, alpha dropout, the fused bias + dropout + residual). A kernel supplies an Op
// that says what to do with E consecutive elements; this file walks the elements, draws
// their random words, decides, and packs the keep bits (SPEC sections 1-4).
//
// Work split. A thread owns one "group" of E consecutive local elements per step (E a
// multiple of 4: one Philox call per 4 decisions). Groups are walked with a grid-stride
// loop, so the result depends only on the element index, never on the launch shape. The
// 32 keep bits of one mask word come from L = 32 / E neighbouring lanes (OR across them
// with shuffles, dk_store_bits).
//
// Two loops, so that the hot one holds nothing else:
//  - dk_main_loop: whole warp steps (32 groups) of full 16-byte vectors, every pointer
//    aligned, threshold t < 2^32 (a 32-bit compare), index_base % 4 known at compile time
//    (one instantiation each, dk_words_at),
//    the mask written or not known at compile time. No bound checks.
//  - dk_tail_loop: everything else (the last partial warp step and the elements past the
//    last full group, misaligned pointers, t = 2^32): scalar loads, bound checks, a 64-bit
//    compare, index_base % 4 tested at run time.
// The choice between them is made once per kernel from uniform values, so it never
// diverges.
//
// Warp-collective safety: both loops run a warp-uniform number of steps (the bound is
// tested on g - lane, the warp's first group, a multiple of 32 because the block size is),
// so every __shfl_xor_sync is reached by all 32 lanes.
//
// The Op (see dropout.cu for the simplest), one copy per thread:
//   static constexpr int E;
//   static constexpr bool SHIFTED;  the main loop may run with index_base % 4 != 0
//   bool vec_ok() const;  all pointers 16-byte aligned (dk_load/dk_store can be used)
//   void begin(uint64_t g, const DkDraw& d);  before a loop, with the thread's first group
//   uint32_t vec(uint64_t i0, const uint32_t (&u)[E], uint32_t t);
//       elements i0 .. i0+E-1 with decision k dropped <=> u[k] < t; returns the keep bits
//   void one(uint64_t i, int k, bool kept);  element i = i0 + k alone (the tail)
//   void next();  after each grid-stride step (state that follows the element index)
#pragma once
#include <stdint.h>

#include "dk_draw.cuh"
#include "dk_dtype.cuh"
#include "dk_vector.cuh"
#include "philox.cuh"

// CAPTURED: the call reads (seed, offset) from its generator's device state (a CUDA
// graph), at each step (dk_seed / dk_offset: nothing extra held in registers); otherwise
// from the parameter, as an eager call always did: the eager loop has no added work.
template <int E, bool BITS, int S, bool CAPTURED, typename Op>
__device__ __forceinline__ void dk_main_loop(Op& op, uint32_t* bits, uint64_t full,
                                             const DkDraw& d) {
    const uint32_t t = (uint32_t)d.threshold;  // < 2^32 here
    const uint32_t lane = threadIdx.x & 31u;
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    // g - lane is the warp's first group; full is a multiple of 32, so the whole warp
    // step lies inside the full groups.
    const uint64_t g0 = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    op.begin(g0, d);
    for (uint64_t g = g0; g - lane < full; g += stride) {
        const uint64_t i0 = g * E;
        uint32_t u[E];
        const uint64_t seed = CAPTURED ? dk_seed(d) : d.seed;
        const uint64_t offset = CAPTURED ? dk_offset(d) : d.offset;
        dk_words_at<E, S>(seed, offset, d.index_base + i0, u);
        const uint32_t keep = op.vec(i0, u, t);
        if (BITS) {
            // Full groups only: the word exists, no bound check.
            constexpr uint32_t L = 32 / E;
            const uint32_t word = dk_pack_word<E>(keep);
            if (lane % L == 0) bits[g / L] = word;
        }
        op.next();
    }
}

template <int E, typename Op>
__device__ __forceinline__ void dk_tail_loop(Op& op, uint32_t* bits, uint64_t n,
                                             uint64_t first_group, const DkDraw& d) {
    const uint64_t groups = n / E + (n % E != 0);
    const uint64_t words = n / 32 + (n % 32 != 0);
    const uint32_t lane = threadIdx.x & 31u;
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    const uint64_t g0 = first_group + (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    op.begin(g0, d);
    for (uint64_t g = g0; g - lane < groups; g += stride) {
        const uint64_t i0 = g * E;
        uint32_t keep = 0;  // bit k: element i0 + k kept (0 past n)
        // Four decisions at a time, not unrolled: the tail is rare and this keeps its
        // registers (and so the kernel's, which ptxas sizes for its worst loop) low.
#pragma unroll 1
        for (int j = 0; j < E && i0 + j < n; j += 4) {
            uint32_t u[4];
            dk_words<4>(dk_seed(d), dk_offset(d), d.index_base + i0 + j, u);
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                const int k = j + q;
                if (i0 + k < n) {
                    const bool kept = !dk_dropped(u[q], d.threshold);
                    op.one(i0 + k, k, kept);
                    keep |= (uint32_t)kept << k;
                }
            }
        }
        if (bits != nullptr) dk_store_bits<E>(bits, words, g, keep);
        op.next();
    }
}

// The main loop for the mask's presence and the shift, each its own instantiation.
template <int E, bool CAPTURED, typename Op>
__device__ __forceinline__ void dk_main_loops(Op& op, uint32_t* bits, uint64_t full,
                                              const DkDraw& d, uint32_t shift) {
    if (bits != nullptr) {
        switch (shift) {
            case 0: dk_main_loop<E, true, 0, CAPTURED>(op, bits, full, d); break;
            case 1: dk_main_loop<E, true, 1, CAPTURED>(op, bits, full, d); break;
            case 2: dk_main_loop<E, true, 2, CAPTURED>(op, bits, full, d); break;
            default: dk_main_loop<E, true, 3, CAPTURED>(op, bits, full, d); break;
        }
    } else {
        switch (shift) {
            case 0: dk_main_loop<E, false, 0, CAPTURED>(op, bits, full, d); break;
            case 1: dk_main_loop<E, false, 1, CAPTURED>(op, bits, full, d); break;
            case 2: dk_main_loop<E, false, 2, CAPTURED>(op, bits, full, d); break;
            default: dk_main_loop<E, false, 3, CAPTURED>(op, bits, full, d); break;
        }
    }
}

// The whole kernel: the main loop over the full warp steps when it applies, then the tail.
template <typename Op>
__device__ __forceinline__ void dk_elementwise(Op op, uint32_t* bits, uint64_t n,
                                               const DkDraw& d) {
    constexpr int E = Op::E;
    uint64_t full = 0;  // groups done by the main loop: whole warp steps
    if (op.vec_ok() && d.threshold <= 0xffffffffull) {
        full = (n / E) & ~(uint64_t)31;
        // Every group starts at a multiple of E (itself a multiple of 4), so index_base
        // % 4 alone says how groups sit on Philox outputs: one main loop per case.
        // An Op whose main loop needs index_base % 4 == 0 anyway (SHIFTED = false) gets
        // no shifted loops: the constant 0 makes them dead code.
        const uint32_t shift = Op::SHIFTED ? (uint32_t)d.index_base & 3u : 0u;
        if (d.state == 0) {
            dk_main_loops<E, false>(op, bits, full, d, shift);
        } else {
            dk_main_loops<E, true>(op, bits, full, d, shift);
        }
    }
    dk_tail_loop<E>(op, bits, n, full, d);
}

// The Op of kernels whose output element depends only on its input element (dropout,
// alpha dropout): F gives the kept value in C, F::kept(to_C(x)), and the dropped one,
// F::dropped() (a constant of C). The choice is a select in C, rounded like a kept value
// (round_T(+0) = +0), never arithmetic on a dropped input, so NaN/inf inputs cannot leak.
template <typename T, typename F, int E_ = DkDrawWidth<T>::E>
struct DkMapOp {
    static constexpr int E = E_;
    static constexpr bool SHIFTED = true;
    using C = typename DkType<T>::C;
    const T* x;
    T* y;
    F f;

    __device__ __forceinline__ bool vec_ok() const { return dk_aligned16(x) && dk_aligned16(y); }
    __device__ __forceinline__ void begin(uint64_t, const DkDraw&) {}
    __device__ __forceinline__ void next() {}

    __device__ __forceinline__ uint32_t vec(uint64_t i0, const uint32_t (&u)[E], uint32_t t) {
        T v[E];
        dk_load(x + i0, v);
        C c[E];
        uint32_t keep = 0;
#pragma unroll
        for (int k = 0; k < E; ++k) {
            const bool kept = u[k] >= t;
            keep |= (uint32_t)kept << k;
            c[k] = kept ? f.kept(DkType<T>::to_c(v[k])) : f.dropped();
        }
        dk_round_all(c, v);
        dk_store(y + i0, v);
        return keep;
    }

    __device__ __forceinline__ void one(uint64_t i, int, bool kept) {
        const T xv = x[i];
        y[i] = DkType<T>::round_t(kept ? f.kept(DkType<T>::to_c(xv)) : f.dropped());
    }
};
