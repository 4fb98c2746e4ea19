// philox.cuh: the random stream and the drop decision of SPEC sections 1-2, on the device.
//
// This header is the device twin of src/philox.rs and src/mask.rs. Every kernel draws its
// random words through `dk_philox_word`/`dk_philox4` and decides with `dk_dropped`, so the
// arithmetic of the contract lives in exactly one place on each side.
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

// The random word of decision i alone (for scalar tails and grouped layers).
__device__ __forceinline__ uint32_t dk_philox_word(uint64_t seed, uint64_t offset, uint64_t i) {
    return dk_lane(dk_philox4(seed, offset, i >> 2), (uint32_t)(i & 3));
}

// SPEC section 2: dropped <=> u < t, with t = floor(p * 2^32 + 0.5) in [0, 2^32].
// t is passed as u64 so that p = 1 (t = 2^32) drops every word.
__device__ __forceinline__ bool dk_dropped(uint32_t u, uint64_t threshold) {
    return (uint64_t)u < threshold;
}
