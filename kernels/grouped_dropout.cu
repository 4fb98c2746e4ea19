// grouped_dropout.cu: dropout with one decision per group of `group` consecutive elements
// (SPEC section 6: channel dropout Dropout1d/2d/3d, DropPath, FeatureAlphaDropout).
//
//   dropout_mask_bits   the keep bits of decisions first_decision .. + n_decisions - 1
//   dropout_mask_bits_shard  the keep bits, in local order, of a shard of any layout: local
//                       element i decides by its row-major index in the whole tensor
//   grouped_scale_*     y = kept ? round_T(to_C(x) * scale) : +0         (forward and backward)
//   grouped_alpha_*     y = kept ? round_T(to_C(x) * a + b) : round_T(dropped_value)
//
// Local element i belongs to local decision j = (lead + i) / group; lead < group lets a
// shard start in the middle of a group. Decisions are few (N*C or N), so the mask is
// drawn once by its own kernel and the elementwise kernels only read bits.
#include "dk_draw.cuh"
#include "dk_dtype.cuh"
#include "dk_vector.cuh"
#include "philox.cuh"

// One thread per 32-decision word: each word is written whole by one thread, so no
// pre-zeroing and no atomics are needed; bits past n_decisions are 0.
__device__ __forceinline__ void dk_mask_bits(uint32_t* bits, uint64_t n_decisions,
                                             uint64_t seed, uint64_t offset,
                                             uint64_t first_decision, uint64_t threshold) {
    const uint64_t nwords = n_decisions / 32 + (n_decisions % 32 != 0);
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    for (uint64_t w = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; w < nwords;
         w += stride) {
        const uint64_t j0 = w * 32;
        uint32_t word = 0;
#pragma unroll
        for (int q = 0; q < 8; ++q) {
            uint32_t u[4];
            dk_words<4>(seed, offset, first_decision + j0 + 4 * q, u);
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                const uint64_t j = j0 + 4 * q + k;
                if (j < n_decisions && !dk_dropped(u[k], threshold)) word |= 1u << (4 * q + k);
            }
        }
        bits[w] = word;
    }
}

// draw.index_base carries the first decision.
extern "C" __global__ void dropout_mask_bits(uint32_t* bits, uint64_t n_decisions, DkDraw draw) {
    draw = dk_resolve(draw);
    dk_mask_bits(bits, n_decisions, draw.seed, draw.offset, draw.index_base, draw.threshold);
}

// A shard's place in the whole tensor for dropout_mask_bits_shard: local element i, as
// coordinates of the shard shape len[0..rank) (row-major), decides by index
// draw.index_base + sum_a coord_a * stride[a], stride the whole tensor's row-major strides.
// The same layout as `DkShard` in src/cuda/grouped.rs; unused axes have len 1.
struct DkShard {
    uint64_t rank;
    uint64_t len[8];
    uint64_t stride[8];
};
static_assert(sizeof(DkShard) == 136, "DkShard must match the Rust launcher's 136-byte layout");

// One thread per 32-decision word of the local mask, as dk_mask_bits. The word's first
// element is placed once (its coordinates and global index g, one division per axis);
// the next ones step an odometer over the coordinates (the innermost axis first, a carry
// resetting an axis that reaches its length; unused axes, len 1 and stride 0, reset at
// every step and move nothing), so no decision divides. Each decision's word is lane g % 4
// of the Philox output for group g / 4 (dk_philox_word), and consecutive decisions that
// fall in the same group reuse its output: a run that is contiguous in the whole tensor
// takes one Philox call per four decisions, as the whole tensor's mask does. Every loop
// over the 8 axis slots is unrolled, so the coordinates stay in registers.
extern "C" __global__ void dropout_mask_bits_shard(uint32_t* bits, uint64_t n, DkDraw draw,
                                                   DkShard shard) {
    draw = dk_resolve(draw);
    const uint64_t nwords = n / 32 + (n % 32 != 0);
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    for (uint64_t w = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; w < nwords;
         w += stride) {
        uint64_t c[8];
        uint64_t rest = w * 32, g = draw.index_base;
#pragma unroll
        for (int a = 7; a >= 0; --a) {
            c[a] = 0;
            if ((uint64_t)a < shard.rank) {
                c[a] = rest % shard.len[a];
                rest /= shard.len[a];
                g += c[a] * shard.stride[a];
            }
        }
        uint64_t group = ~(uint64_t)0;
        uint4 r = make_uint4(0, 0, 0, 0);
        uint32_t word = 0;
        for (uint32_t k = 0; k < 32; ++k) {
            if (w * 32 + k >= n) break;
            if (g >> 2 != group) {
                group = g >> 2;
                r = dk_philox4(draw.seed, draw.offset, group);
            }
            if (!dk_dropped(dk_lane(r, (uint32_t)(g & 3)), draw.threshold)) word |= 1u << k;
            bool carry = true;
#pragma unroll
            for (int a = 7; a >= 0; --a) {
                if (carry) {
                    c[a] += 1;
                    g += shard.stride[a];
                    if (c[a] == shard.len[a]) {
                        c[a] = 0;
                        g -= shard.len[a] * shard.stride[a];
                    } else {
                        carry = false;
                    }
                }
            }
        }
        bits[w] = word;
    }
}

// Grid-stride loops over vectors of E = DkPiece<T>::N elements (one 16-byte piece); the
// thread with vector v reads and writes elements v*E .. v*E+E-1 itself, so y may equal x.
// The decision of the first element is tracked as (j, r) with lead + v*E = j*group + r and
// advanced by a precomputed quotient/remainder of the grid stride, so the loops have no
// 64-bit division. F gives the kept and dropped values in C (dk_dtype.cuh).
//
// Two loops, as in dk_elementwise.cuh: the main loop takes the full vectors when both
// pointers are 16-byte aligned and group >= E (a vector then meets at most two decisions:
// its keep bits are two masks, no per-element walk), with no bound checks; the tail takes
// the rest one element at a time.
template <typename T>
struct DkGroupedPos {
    uint64_t j, r, step_q, step_r, group;

    __device__ __forceinline__ DkGroupedPos(uint64_t v, uint64_t group_, uint64_t lead) {
        group = group_;
        const uint64_t step = (uint64_t)gridDim.x * blockDim.x * DkPiece<T>::N;
        step_q = step / group;
        step_r = step % group;
        j = (lead + v * DkPiece<T>::N) / group;
        r = (lead + v * DkPiece<T>::N) % group;
    }

    // (j, r) of the thread's next vector: lead + (v + stride) * E.
    __device__ __forceinline__ void next() {
        j += step_q;
        r += step_r;
        if (r >= group) {
            r -= group;
            ++j;
        }
    }
};

template <typename T, typename F>
__device__ __forceinline__ void dk_grouped_apply(const T* x, T* y, const uint32_t* bits,
                                                 uint64_t n, uint64_t group, uint64_t lead,
                                                 F f) {
    using C = typename DkType<T>::C;
    constexpr int E = DkPiece<T>::N;
    constexpr uint32_t ALL = (1u << E) - 1;
    const uint64_t nvec = n / E + (n % E != 0);
    const uint64_t tid = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    uint64_t done = 0;  // vectors done by the main loop

    if (dk_aligned16(x) && dk_aligned16(y) && group >= (uint64_t)E) {
        const uint64_t full = n / E;
        if (tid < full) {
            DkGroupedPos<T> pos(tid, group, lead);
            for (uint64_t v = tid; v < full; v += stride) {
                const uint64_t i0 = v * E;
                // Elements k < k0 belong to decision j, the rest (if any) to j + 1, which
                // exists because element i0 + k0 < n.
                const uint32_t k0 = pos.r + E <= group ? E : (uint32_t)(group - pos.r);
                const uint32_t lo = (1u << k0) - 1;
                uint32_t keep = (bits[pos.j >> 5] >> (uint32_t)(pos.j & 31)) & 1u ? lo : 0u;
                if (k0 < E) {
                    const uint64_t j1 = pos.j + 1;
                    if ((bits[j1 >> 5] >> (uint32_t)(j1 & 31)) & 1u) keep |= ALL & ~lo;
                }
                T val[E];
                // A fully dropped vector does not need x (dropped values are constants).
                if (keep != 0) dk_load(x + i0, val);
                C c[E];
#pragma unroll
                for (int k = 0; k < E; ++k) {
                    c[k] = (keep >> k) & 1u ? f.kept(DkType<T>::to_c(val[k])) : f.dropped();
                }
                dk_round_all(c, val);
                dk_store(y + i0, val);
                pos.next();
            }
        }
        done = full;
    }

    // The tail: one element at a time, any group size.
    const uint64_t v0 = done + tid;
    if (v0 >= nvec) return;
    DkGroupedPos<T> pos(v0, group, lead);
    for (uint64_t v = v0; v < nvec; v += stride) {
        const uint64_t i0 = v * E;
        uint64_t jj = pos.j, rr = pos.r;
        uint32_t word = bits[jj >> 5];
#pragma unroll
        for (int k = 0; k < E; ++k) {
            if (i0 + k >= n) break;
            if (k > 0 && ++rr == group) {
                rr = 0;
                ++jj;
                if ((jj & 31) == 0) word = bits[jj >> 5];
            }
            const T xi = x[i0 + k];
            const C c = (word >> (uint32_t)(jj & 31)) & 1u ? f.kept(DkType<T>::to_c(xi))
                                                           : f.dropped();
            y[i0 + k] = DkType<T>::round_t(c);
        }
        pos.next();
    }
}

// One exported kernel per dtype (names and signatures are the contract with the Rust side).
#define DK_GROUPED_KERNELS(SUFFIX, T, C)                                                    \
    extern "C" __global__ void __launch_bounds__(1024) grouped_scale_##SUFFIX(               \
        const T* x, T* y, const uint32_t* bits, uint64_t n, uint64_t group, uint64_t lead,   \
        C scale) {                                                                          \
        dk_grouped_apply<T>(x, y, bits, n, group, lead, DkScaleKept<C>{scale});             \
    }                                                                                       \
    extern "C" __global__ void __launch_bounds__(1024) grouped_alpha_##SUFFIX(               \
        const T* x, T* y, const uint32_t* bits, uint64_t n, uint64_t group, uint64_t lead,   \
        C a, C b, C dropped_value) {                                                        \
        dk_grouped_apply<T>(x, y, bits, n, group, lead, DkAffineKept<C>{a, b, dropped_value}); \
    }

DK_GROUPED_KERNELS(f32, float, float)
DK_GROUPED_KERNELS(f64, double, double)
DK_GROUPED_KERNELS(f16, __half, float)
DK_GROUPED_KERNELS(bf16, __nv_bfloat16, float)
