// alpha_dropout.cu: AlphaDropout forward (SPEC section 6), one decision per element.
//
//   kept:    y = round_T((to_C(x) * a) + b)     multiply and add each rounded in C, no FMA
//   dropped: y = round_T(dropped_value)         dropped_value = a*A + b, computed by the host
//
// Optionally writes the keep bits (SPEC section 4) for the backward pass, which reuses the
// elementwise dropout kernels with scale = a.
//
// Layout: a grid-stride loop over vectors of E elements (E = 4 for f32/f64, 8 for f16/bf16);
// the thread with vector v reads and writes elements v*E .. v*E+E-1 itself, so y may equal
// x. The loop condition is taken per warp so that every lane reaches the bit-packing
// shuffles; results do not depend on the grid or on the block size (a multiple of 32).
#include "dk_draw.cuh"
#include "dk_dtype.cuh"
#include "dk_vector.cuh"
#include "philox.cuh"

template <typename T>
__device__ __forceinline__ void alpha_dropout_fwd(const T* x, T* y, uint32_t* bits, uint64_t n,
                                                  uint64_t seed, uint64_t offset,
                                                  uint64_t index_base, uint64_t threshold,
                                                  typename DkType<T>::C a,
                                                  typename DkType<T>::C b,
                                                  typename DkType<T>::C dropped_value) {
    using D = DkType<T>;
    constexpr int E = DkDrawWidth<T>::E;
    const T dropped = D::round_t(dropped_value);
    const uint64_t nvec = n / E + (n % E != 0);
    const uint64_t nwords = n / 32 + (n % 32 != 0);
    const bool wide = dk_aligned16(x) && dk_aligned16(y);
    const uint32_t lane = threadIdx.x & 31u;
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;

    // v - lane is the warp's first vector: the same for all its lanes.
    for (uint64_t v = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; v - lane < nvec;
         v += stride) {
        const uint64_t i0 = v * E;
        // Issue the vector load before the Philox arithmetic so its latency overlaps it.
        const bool full = wide && i0 + E <= n;
        T val[E];
        if (full) dk_load(x + i0, val);
        uint32_t u[E];
        dk_words<E>(seed, offset, index_base + i0, u);

        uint32_t keep = 0;  // bit k: element i0 + k kept (0 past n)
        if (full) {
#pragma unroll
            for (int k = 0; k < E; ++k) {
                const bool kept = !dk_dropped(u[k], threshold);
                keep |= (uint32_t)kept << k;
                val[k] = kept ? dk_affine(val[k], a, b) : dropped;
            }
            dk_store(y + i0, val);
        } else {
#pragma unroll
            for (int k = 0; k < E; ++k) {
                const uint64_t i = i0 + k;
                if (i < n) {
                    const bool kept = !dk_dropped(u[k], threshold);
                    keep |= (uint32_t)kept << k;
                    const T xi = x[i];
                    y[i] = kept ? dk_affine(xi, a, b) : dropped;
                }
            }
        }

        if (bits != nullptr) dk_store_bits<E>(bits, nwords, v, keep);
    }
}

// One exported kernel per dtype (names and signatures are the contract with the Rust side).
#define DK_ALPHA_DROPOUT_FWD(SUFFIX, T, C)                                                  \
    extern "C" __global__ void alpha_dropout_fwd_##SUFFIX(                                  \
        const T* x, T* y, uint32_t* bits, uint64_t n, DkDraw draw, C a, C b,                 \
        C dropped_value) {                                                                   \
        alpha_dropout_fwd<T>(x, y, bits, n, draw.seed, draw.offset, draw.index_base,         \
                             draw.threshold, a, b, dropped_value);                           \
    }

DK_ALPHA_DROPOUT_FWD(f32, float, float)
DK_ALPHA_DROPOUT_FWD(f64, double, double)
DK_ALPHA_DROPOUT_FWD(f16, __half, float)
DK_ALPHA_DROPOUT_FWD(bf16, __nv_bfloat16, float)
