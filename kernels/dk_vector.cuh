// dk_vector.cuh: how a thread's run of E consecutive elements moves between memory and
// registers: 16-byte vector loads/stores, the per-dtype run widths, and the warp-shuffle
// packing of the run's keep bits into SPEC section 4 mask words. Shared by every kernel.
#pragma once
#include <stdint.h>

__device__ __forceinline__ bool dk_aligned16(const void* p) {
    return ((uintptr_t)p & 15u) == 0;
}

// One 16-byte piece of T: N = 4 floats, 2 doubles, 8 halves or bf16s.
template <typename T>
struct alignas(16) DkPiece {
    static constexpr int N = 16 / sizeof(T);
    T v[N];
};

// Elements per thread per step for kernels that draw random words: a multiple of 4 (one
// Philox call per 4 decisions) and of the 16-byte piece. 16 for f16/bf16 (two pieces, two
// lanes per mask word), 8 for f32 (two pieces), 4 for f64 (two pieces): more elements
// per step spread the loop's fixed cost (addresses, the branch, the mask word's
// shuffles) over more elements, within 64 registers.
template <typename T>
struct DkDrawWidth {
    static constexpr int E = sizeof(T) == 2 ? 16 : sizeof(T) == 4 ? 8 : 4;
};

// Loads/stores E consecutive elements at a 16-byte aligned address, as 16-byte pieces.
template <typename T, int E>
__device__ __forceinline__ void dk_load(const T* p, T (&v)[E]) {
    constexpr int P = DkPiece<T>::N;
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
    constexpr int P = DkPiece<T>::N;
    static_assert(E % P == 0, "E must be a whole number of 16-byte pieces");
#pragma unroll
    for (int q = 0; q < E / P; ++q) {
        DkPiece<T> piece;
#pragma unroll
        for (int k = 0; k < P; ++k) piece.v[k] = v[q * P + k];
        reinterpret_cast<DkPiece<T>*>(p)[q] = piece;
    }
}

// The SPEC section 4 mask word of a warp step. The thread handling run v (elements v*E ..
// v*E+E-1) holds their keep bits in bits 0..E-1 of `keep`; L = 32/E consecutive lanes
// cover one 32-element word, so an OR across those lanes builds it; the first of them
// (lane % L == 0) holds it for word v / L. This needs v % L == lane % L, which holds for
// v = blockIdx.x * blockDim.x + threadIdx.x + k * stride when the block size is a
// multiple of 32. Every lane of the warp must call this (full-mask shuffles): callers keep
// their loop trip counts warp-uniform.
template <int E>
__device__ __forceinline__ uint32_t dk_pack_word(uint32_t keep) {
    static_assert(E > 0 && E <= 32 && 32 % E == 0, "E must divide 32");
    constexpr uint32_t L = 32 / E;
    const uint32_t lane = threadIdx.x & 31u;
    uint32_t word = keep << (E * (lane % L));
#pragma unroll
    for (uint32_t m = 1; m < L; m <<= 1) word |= __shfl_xor_sync(0xffffffffu, word, m);
    return word;
}

// Packs (dk_pack_word) and stores word v / L if it exists (w < nwords).
template <int E>
__device__ __forceinline__ void dk_store_bits(uint32_t* bits, uint64_t nwords, uint64_t v,
                                              uint32_t keep) {
    constexpr uint32_t L = 32 / E;
    const uint32_t word = dk_pack_word<E>(keep);
    const uint64_t w = v / L;
    if ((threadIdx.x & 31u) % L == 0 && w < nwords) bits[w] = word;
}
