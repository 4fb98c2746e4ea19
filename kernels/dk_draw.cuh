// dk_draw.cuh: the one by-value launch parameter that says which random words a kernel
// draws (SPEC sections 1-2). The Rust launcher passes the same 32-byte layout
// (four u64, no padding), so the four scalars cannot be pushed in the wrong order.
#pragma once
#include <stdint.h>

struct DkDraw {
    uint64_t seed;        // Philox key
    uint64_t offset;      // counter words 2-3: the generator's call count
    uint64_t index_base;  // decision index of local element 0 (dropout_mask_bits: first)
    uint64_t threshold;   // t = floor(p * 2^32 + 0.5) in [0, 2^32]: dropped <=> u < t
};
static_assert(sizeof(DkDraw) == 32, "DkDraw must match the Rust launcher's 32-byte layout");
