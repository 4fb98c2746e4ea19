// dk_draw.cuh: the one by-value launch parameter that says which random words a kernel
// draws (SPEC sections 1-2). The Rust launcher passes the same 40-byte layout
// (five u64, no padding), so the scalars cannot be pushed in the wrong order.
//
// Under a CUDA graph a kernel's parameters are frozen at capture, so a captured call
// cannot take (seed, offset) by value: it would replay one mask forever. Such a call
// passes `state`, the device address of its generator's DkRngState, and in `offset` its
// place among the generator's calls in the graph; the kernel reads the state when it runs
// (dk_resolve), and the host writes the state before each replay. An eager call passes
// state = 0 and reads nothing.
#pragma once
#include <stdint.h>

struct DkDraw {
    uint64_t seed;        // Philox key
    uint64_t offset;      // counter words 2-3: the generator's call count
    uint64_t index_base;  // decision index of local element 0 (dropout_mask_bits: first)
    uint64_t threshold;   // t = floor(p * 2^32 + 0.5) in [0, 2^32]: dropped <=> u < t
    uint64_t state;       // 0, or the address of a DkRngState (offset is then relative)
};
static_assert(sizeof(DkDraw) == 40, "DkDraw must match the Rust launcher's 40-byte layout");

// A generator's (seed, offset) in device memory (src/cuda/graph.rs writes it).
struct DkRngState {
    uint64_t seed;
    uint64_t offset;  // the offset of the graph's first call on this generator
};
static_assert(sizeof(DkRngState) == 16, "DkRngState must match the Rust side's 16 bytes");

// The seed and offset of a draw where a loop uses them: the parameter's own for an eager
// call (read from the parameter space, as before); read from the generator's state for a
// captured one. Read at each use rather than held, so the hot loops (dk_elementwise.cuh)
// keep their registers; the branch is uniform across the grid.
__device__ __forceinline__ uint64_t dk_seed(const DkDraw& d) {
    return d.state != 0 ? reinterpret_cast<const DkRngState*>(d.state)->seed : d.seed;
}
__device__ __forceinline__ uint64_t dk_offset(const DkDraw& d) {
    return d.state != 0 ? reinterpret_cast<const DkRngState*>(d.state)->offset + d.offset
                        : d.offset;
}

// The draw with (seed, offset) made absolute: unchanged for an eager call; for a captured
// one, read from the generator's state at run time. Uniform across the grid (one branch,
// no divergence); the kernels outside dk_elementwise call it once, first.
__device__ __forceinline__ DkDraw dk_resolve(DkDraw d) {
    if (d.state != 0) {
        const DkRngState* s = reinterpret_cast<const DkRngState*>(d.state);
        d.seed = s->seed;
        d.offset = s->offset + d.offset;
        d.state = 0;
    }
    return d;
}
