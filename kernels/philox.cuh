// philox.cuh: the random stream and the drop decision of SPEC sections 1-2, on the device.
//
// This header is the device twin of src/philox.rs and src/mask.rs. Every kernel draws its
// random words through `dk_words` (or `dk_philox_word`) and decides with `dk_dropped`, so
// the random stream of the contract lives in exactly one place on each side.
#pragma once
#include <stdint.h>

#define DK_PHILOX_M0 0xD2511F53u
#define DK_PHILOX_M1 0xCD9E8D57u
#define DK_PHILOX_W0 0x9E3779B9u
#define DK_PHILOX_W1 0xBB67AE85u

// Philox4x32-10: ten rounds, the key bumped between rounds (not before the first).
__device__ __forceinline__ uint4 dk_philox4x32_10(uint4 c, uint2 k) {
#pragma unroll
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            k.x += DK_PHILOX_W0;
            k.y += DK_PHILOX_W1;
        }
        const uint32_t hi0 = __umulhi(DK_PHILOX_M0, c.x);
        const uint32_t lo0 = DK_PHILOX_M0 * c.x;
        const uint32_t hi1 = __umulhi(DK_PHILOX_M1, c.z);
        const uint32_t lo1 = DK_PHILOX_M1 * c.z;
        c = make_uint4(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
    }
    return c;
}

// The four random words of decisions 4g .. 4g+3 (SPEC section 1: counter = [g, offset]).
__device__ __forceinline__ uint4 dk_philox4(uint64_t seed, uint64_t offset, uint64_t g) {
    const uint4 counter = make_uint4((uint32_t)g, (uint32_t)(g >> 32), (uint32_t)offset,
                                     (uint32_t)(offset >> 32));
    const uint2 key = make_uint2((uint32_t)seed, (uint32_t)(seed >> 32));
    return dk_philox4x32_10(counter, key);
}

// Lane `lane` (0..3) of a Philox output.
__device__ __forceinline__ uint32_t dk_lane(uint4 r, uint32_t lane) {
    return lane == 0 ? r.x : lane == 1 ? r.y : lane == 2 ? r.z : r.w;
}

// The random word of decision i alone: SPEC section 1 literally (kernels draw runs of
// consecutive decisions with dk_words below).
__device__ __forceinline__ uint32_t dk_philox_word(uint64_t seed, uint64_t offset, uint64_t i) {
    return dk_lane(dk_philox4(seed, offset, i >> 2), (uint32_t)(i & 3));
}

// The random words u[k] of decisions d0 + k, k = 0 .. E-1 (E a multiple of 4). Decision
// d0 + k is entry s + k (s = d0 % 4, tested at run time) of the outputs of groups d0/4,
// d0/4 + 1, ... laid end to end, so s == 0 takes E/4 Philox calls (one per 4 decisions)
// and s != 0 one more and a shift by s. Callers step d0 by multiples of 4 from a
// per-launch base, so s is the same for every thread and the branch does not diverge.
// Hot loops use dk_words_at below instead (the shift a compile-time constant, one loop
// per shift): ptxas sizes a kernel's registers for its worst path, and a loop holding
// every shift needs more than each alone. Array indices are compile-time constants after
// unrolling (registers only).
template <int E>
__device__ __forceinline__ void dk_words(uint64_t seed, uint64_t offset, uint64_t d0,
                                         uint32_t (&u)[E]) {
    static_assert(E > 0 && E % 4 == 0, "E must be a multiple of 4");
    const uint64_t g0 = d0 >> 2;
    const uint32_t s = (uint32_t)d0 & 3u;
    uint32_t w[E + 4];
#pragma unroll
    for (int j = 0; j < E / 4; ++j) {
        const uint4 r = dk_philox4(seed, offset, g0 + (uint64_t)j);
        w[4 * j + 0] = r.x;
        w[4 * j + 1] = r.y;
        w[4 * j + 2] = r.z;
        w[4 * j + 3] = r.w;
    }
    if (s == 0) {
#pragma unroll
        for (int k = 0; k < E; ++k) u[k] = w[k];
        return;
    }
    const uint4 r = dk_philox4(seed, offset, g0 + (uint64_t)(E / 4));
    w[E + 0] = r.x;
    w[E + 1] = r.y;
    w[E + 2] = r.z;
    w[E + 3] = r.w;
#pragma unroll
    for (int k = 0; k < E; ++k) u[k] = s == 1 ? w[k + 1] : s == 2 ? w[k + 2] : w[k + 3];
}

// dk_words for a shift s = d0 % 4 known at compile time (S): the words are a fixed
// window of the E/4 (+1 when S != 0) Philox outputs, so the shift costs no instructions
// and only the E words in use stay live. Main loops are instantiated once per S.
template <int E, int S>
__device__ __forceinline__ void dk_words_at(uint64_t seed, uint64_t offset, uint64_t d0,
                                            uint32_t (&u)[E]) {
    static_assert(E > 0 && E % 4 == 0 && S >= 0 && S < 4, "E % 4 == 0, S in 0..3");
    const uint64_t g0 = d0 >> 2;
#pragma unroll
    for (int j = 0; j < E / 4 + (S != 0); ++j) {
        const uint4 r = dk_philox4(seed, offset, g0 + (uint64_t)j);
        const uint32_t w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const int k = 4 * j + q - S;  // word q of call j is decision d0 + k
            if (k >= 0 && k < E) u[k] = w[q];
        }
    }
}

// SPEC section 2: dropped <=> u < t, with t = floor(p * 2^32 + 0.5) in [0, 2^32].
// t is passed as u64 so that p = 1 (t = 2^32) drops every word.
__device__ __forceinline__ bool dk_dropped(uint32_t u, uint64_t threshold) {
    return (uint64_t)u < threshold;
}
