// grouped_dropout.cu: dropout with one decision per group of `group` consecutive elements
// (SPEC section 6: channel dropout Dropout1d/2d/3d, DropPath, FeatureAlphaDropout).
//
//   dropout_mask_bits   the keep bits of decisions first_decision .. + n_decisions - 1
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
    dk_mask_bits(bits, n_decisions, draw.seed, draw.offset, draw.index_base, draw.threshold);
}

// Kept/dropped values of the two elementwise kernels.
template <typename T>
struct DkScaleOp {
    typename DkType<T>::C scale;
    __device__ __forceinline__ T kept(T x) const { return dk_scaled(x, scale); }
    __device__ __forceinline__ T dropped() const { return DkType<T>::zero(); }
};

template <typename T>
struct DkAlphaOp {
    typename DkType<T>::C a, b;
    T dropped_t;  // round_T(dropped_value)
    __device__ __forceinline__ T kept(T x) const { return dk_affine(x, a, b); }
    __device__ __forceinline__ T dropped() const { return dropped_t; }
};

// Grid-stride loop over vectors of E = DkPiece<T>::N elements (one 16-byte piece); the
// thread with vector v reads and writes elements v*E .. v*E+E-1 itself, so y may equal x.
// The decision of the first element is tracked as (j, r) with lead + v*E = j*group + r and
// advanced by a precomputed quotient/remainder of the grid stride, so the loop has no
// 64-bit division.
template <typename T, typename Op>
__device__ __forceinline__ void dk_grouped_apply(const T* x, T* y, const uint32_t* bits,
                                                 uint64_t n, uint64_t group, uint64_t lead,
                                                 Op op) {
    constexpr int E = DkPiece<T>::N;
    const uint64_t nvec = n / E + (n % E != 0);
    const bool wide = dk_aligned16(x) && dk_aligned16(y);
    const uint64_t v0 = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (v0 >= nvec) return;
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    const uint64_t step = stride * E;  // elements per grid-stride step
    const uint64_t step_q = step / group, step_r = step % group;
    uint64_t j = (lead + v0 * E) / group;
    uint64_t r = (lead + v0 * E) % group;

    for (uint64_t v = v0; v < nvec; v += stride) {
        const uint64_t i0 = v * E;
        // Keep bits of elements i0 .. i0+E-1 (those < n). A word is reloaded only when
        // the decision crosses into the next word; every decision read belongs to an
        // element < n, so it lies inside the bits buffer.
        uint32_t keep = 0;
        {
            uint64_t jj = j, rr = r;
            uint32_t word = bits[jj >> 5];
#pragma unroll
            for (int k = 0; k < E; ++k) {
                if (i0 + k >= n) break;
                if (k > 0 && ++rr == group) {
                    rr = 0;
                    ++jj;
                    if ((jj & 31) == 0) word = bits[jj >> 5];
                }
                keep |= ((word >> (uint32_t)(jj & 31)) & 1u) << k;
            }
        }

        if (wide && i0 + E <= n) {
            T val[E];
            // A fully dropped vector does not need x (dropped values are constants).
            if (keep != 0) dk_load(x + i0, val);
#pragma unroll
            for (int k = 0; k < E; ++k) val[k] = (keep >> k) & 1u ? op.kept(val[k]) : op.dropped();
            dk_store(y + i0, val);
        } else {
#pragma unroll
            for (int k = 0; k < E; ++k) {
                const uint64_t i = i0 + k;
                if (i < n) {
                    const T xi = x[i];
                    y[i] = (keep >> k) & 1u ? op.kept(xi) : op.dropped();
                }
            }
        }

        // (j, r) of the next vector of this thread: lead + (v + stride)*E.
        j += step_q;
        r += step_r;
        if (r >= group) {
            r -= group;
            ++j;
        }
    }
}

// One exported kernel per dtype (names and signatures are the contract with the Rust side).
#define DK_GROUPED_KERNELS(SUFFIX, T, C)                                                    \
    extern "C" __global__ void grouped_scale_##SUFFIX(const T* x, T* y, const uint32_t* bits, \
                                                      uint64_t n, uint64_t group,           \
                                                      uint64_t lead, C scale) {             \
        DkScaleOp<T> op;                                                                    \
        op.scale = scale;                                                                   \
        dk_grouped_apply<T>(x, y, bits, n, group, lead, op);                                \
    }                                                                                       \
    extern "C" __global__ void grouped_alpha_##SUFFIX(const T* x, T* y, const uint32_t* bits, \
                                                      uint64_t n, uint64_t group,           \
                                                      uint64_t lead, C a, C b,              \
                                                      C dropped_value) {                    \
        DkAlphaOp<T> op;                                                                    \
        op.a = a;                                                                           \
        op.b = b;                                                                           \
        op.dropped_t = DkType<T>::round_t(dropped_value);                                   \
        dk_grouped_apply<T>(x, y, bits, n, group, lead, op);                                \
    }

DK_GROUPED_KERNELS(f32, float, float)
DK_GROUPED_KERNELS(f64, double, double)
DK_GROUPED_KERNELS(f16, __half, float)
DK_GROUPED_KERNELS(bf16, __nv_bfloat16, float)
