// dropout.cu: elementwise dropout (SPEC section 3) and its bit-mask backward, for f32, f64,
// f16 and bf16 tensors, bit-exact with the CPU reference. The arithmetic (dk_scaled,
// DkType<T>::zero) comes from dk_dtype.cuh, the random words and the decision from
// philox.cuh, the 16-byte loads/stores and the mask-word packing from dk_vector.cuh.
//
// Work split. A thread owns one "group" of VEC = DkDrawWidth<T>::E consecutive local
// elements per iteration (4 for f32/f64, 8 for f16/bf16: one 16-byte vector for
// f32/f16/bf16, two for f64; VEC/4 Philox calls when index_base % 4 == 0). Groups are
// walked with a grid-stride loop (group g, g + total_threads, ...), so neighbouring lanes
// touch neighbouring 16-byte vectors (coalesced) and the result depends only on the element
// index, never on the launch shape. The 32 keep bits of one mask word come from
// L = 32 / VEC neighbouring lanes, OR-reduced by dk_store_bits. We chose this over "one
// thread per 32-element word" because that variant makes each warp load instruction touch
// 32 different cache lines; here a warp's loads cover one contiguous 512-byte span (1 KiB
// for f64).
//
// index_base % 4 is tested once per kernel and the forward loop instantiated for the
// aligned and the shifted case (dk_words with DK_INDEX_ALIGNED / DK_INDEX_SHIFTED), so
// each loop holds only its own Philox path.
//
// Warp-collective safety: the forward loop runs to a bound rounded up to a multiple of 32
// groups, so every lane of a warp runs the same number of iterations (lane 0 of a warp
// has g % 32 == 0 because the block size is a multiple of 32); lanes past n just
// contribute no bits. Nothing exits the loop early, and `bits` is uniform over the
// kernel, so each __shfl_xor_sync is reached by all 32 lanes.
//
// Arithmetic: dk_scaled is __fmul_rn / __dmul_rn with explicit _rn conversions (build.rs
// also passes --fmad=false); a dropped element is a select of +0.0, never a multiply by 0,
// so NaN/inf inputs and the unused (possibly inf) scale of p = 1 cannot leak into the
// output.
//
// Aliasing: x may equal y (and dy may equal dx). Those pointers are not __restrict__ and
// are read with ordinary coherent loads; each element is read, then written, by the
// same thread.
#include <stdint.h>

#include "dk_draw.cuh"
#include "dk_dtype.cuh"
#include "dk_vector.cuh"
#include "philox.cuh"

// Forward (and regenerate-backward with x = dy, y = dx, bits = null).
template <typename T, DkIndexAlign A>
__device__ __forceinline__ void dk_dropout_fwd_loop(const T* x, T* y, uint32_t* bits, uint64_t n,
                                                    uint64_t seed, uint64_t offset,
                                                    uint64_t index_base, uint64_t threshold,
                                                    typename DkType<T>::C scale) {
    using D = DkType<T>;
    constexpr int VEC = DkDrawWidth<T>::E;
    const bool vec_ok = dk_aligned16(x) && dk_aligned16(y);
    const uint64_t groups = n / VEC + (n % VEC != 0);
    const uint64_t groups_warp = (groups + 31) & ~(uint64_t)31;  // warp-uniform bound
    const uint64_t words = n / 32 + (n % 32 != 0);
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;

    for (uint64_t g = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups_warp;
         g += stride) {
        const uint64_t i0 = g * VEC;
        uint32_t keep = 0;  // bit k: element i0 + k kept
        if (i0 < n) {
            uint32_t u[VEC];
            dk_words<VEC, A>(seed, offset, index_base + i0, u);
            if (vec_ok && n - i0 >= VEC) {
                T v[VEC];
                dk_load(x + i0, v);
#pragma unroll
                for (int k = 0; k < VEC; ++k) {
                    const bool dropped = dk_dropped(u[k], threshold);
                    v[k] = dropped ? D::zero() : dk_scaled(v[k], scale);
                    keep |= (uint32_t)!dropped << k;
                }
                dk_store(y + i0, v);
            } else {
#pragma unroll
                for (int k = 0; k < VEC; ++k) {
                    if (i0 + k < n) {
                        const bool dropped = dk_dropped(u[k], threshold);
                        const T xv = x[i0 + k];
                        y[i0 + k] = dropped ? D::zero() : dk_scaled(xv, scale);
                        keep |= (uint32_t)!dropped << k;
                    }
                }
            }
        }
        // Group g fills bits (g % L) * VEC .. + VEC-1 of word g / L (L = 32 / VEC).
        if (bits != nullptr) dk_store_bits<VEC>(bits, words, g, keep);
    }
}

template <typename T>
__device__ __forceinline__ void dk_dropout_fwd(const T* x, T* y, uint32_t* bits, uint64_t n,
                                               uint64_t seed, uint64_t offset,
                                               uint64_t index_base, uint64_t threshold,
                                               typename DkType<T>::C scale) {
    // Uniform over the kernel: every group starts at a multiple of VEC (itself a multiple
    // of 4), so index_base % 4 alone says whether groups line up with Philox outputs.
    if ((index_base & 3) == 0) {
        dk_dropout_fwd_loop<T, DK_INDEX_ALIGNED>(x, y, bits, n, seed, offset, index_base,
                                                 threshold, scale);
    } else {
        dk_dropout_fwd_loop<T, DK_INDEX_SHIFTED>(x, y, bits, n, seed, offset, index_base,
                                                 threshold, scale);
    }
}

// Backward from the saved bit mask: dx = bit set ? dy * scale : +0.
template <typename T>
__device__ __forceinline__ void dk_dropout_bwd_bits(const T* dy, T* dx,
                                                    const uint32_t* __restrict__ bits,
                                                    uint64_t n, typename DkType<T>::C scale) {
    using D = DkType<T>;
    constexpr int VEC = DkDrawWidth<T>::E;
    const bool vec_ok = dk_aligned16(dy) && dk_aligned16(dx);
    const uint64_t groups = n / VEC + (n % VEC != 0);
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;

    for (uint64_t g = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups;
         g += stride) {
        const uint64_t i0 = g * VEC;
        // i0 % 32 is a multiple of VEC, so the group's VEC bits sit inside one word.
        const uint32_t keep = bits[i0 / 32] >> (uint32_t)(i0 % 32);
        if (vec_ok && n - i0 >= VEC) {
            T v[VEC];
            dk_load(dy + i0, v);
#pragma unroll
            for (int k = 0; k < VEC; ++k) {
                v[k] = (keep >> k) & 1u ? dk_scaled(v[k], scale) : D::zero();
            }
            dk_store(dx + i0, v);
        } else {
#pragma unroll
            for (int k = 0; k < VEC; ++k) {
                if (i0 + k < n) {
                    const T v = dy[i0 + k];
                    dx[i0 + k] = (keep >> k) & 1u ? dk_scaled(v, scale) : D::zero();
                }
            }
        }
    }
}

// Exported entry points (names and signatures are the contract with the Rust launcher).
// __launch_bounds__(1024) keeps every block size up to 1024 launchable.
#define DK_DROPOUT_KERNELS(DT, T, C)                                                         \
    extern "C" __global__ void __launch_bounds__(1024)                                      \
        dropout_fwd_##DT(const T* x, T* y, uint32_t* bits, uint64_t n, DkDraw draw,         \
                         C scale) {                                                          \
        dk_dropout_fwd<T>(x, y, bits, n, draw.seed, draw.offset, draw.index_base,            \
                          draw.threshold, scale);                                            \
    }                                                                                        \
    extern "C" __global__ void __launch_bounds__(1024)                                      \
        dropout_bwd_bits_##DT(const T* dy, T* dx, const uint32_t* bits, uint64_t n, C scale) { \
        dk_dropout_bwd_bits<T>(dy, dx, bits, n, scale);                                      \
    }

DK_DROPOUT_KERNELS(f32, float, float)
DK_DROPOUT_KERNELS(f64, double, double)
DK_DROPOUT_KERNELS(f16, __half, float)
DK_DROPOUT_KERNELS(bf16, __nv_bfloat16, float)
