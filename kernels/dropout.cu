// dropout.cu: elementwise dropout (SPEC section 3) and its bit-mask backward, for f32, f64,
// f16 and bf16 tensors, bit-exact with the CPU reference. The arithmetic (dk_scaled,
// DkType<T>::zero, dk_round_all) comes from dk_dtype.cuh, the loops, random words and
// mask packing from dk_elementwise.cuh, the 16-byte loads/stores from dk_vector.cuh.
//
// The forward (also the regenerate-form backward, x = dy, y = dx, bits = null) is
// dk_elementwise with DkMapOp and DkScaleKept: a full-vector main loop (E = 16
// elements per thread and step for f16/bf16, 8 for f32, 4 for f64) and a scalar tail
// loop; see dk_elementwise.cuh for the work split and the warp-collective rules. The
// backward reads bits instead of drawing words; it has the same two loops without the
// mask packing.
//
// Arithmetic: a kept element is round_T(to_C(x) * s) with __fmul_rn / __dmul_rn (build.rs
// also passes --fmad=false); a dropped element is a select of +0.0 (before rounding:
// round_T(+0) = +0), never a multiply by 0, so NaN/inf inputs and the unused (possibly
// inf) scale of p = 1 cannot leak into the output.
//
// Aliasing: x may equal y (and dy may equal dx). Those pointers are not __restrict__ and
// are read with ordinary coherent loads; each element is read, then written, by the
// same thread.
#include <stdint.h>

#include "dk_draw.cuh"
#include "dk_dtype.cuh"
#include "dk_elementwise.cuh"
#include "dk_vector.cuh"

// Backward from the saved bit mask: dx = bit set ? dy * scale : +0. Main loop over the
// full E-element groups when both pointers are 16-byte aligned, then the rest one element
// at a time. i0 % 32 is a multiple of E, so a group's E bits sit inside one word.
template <typename T>
__device__ __forceinline__ void dk_dropout_bwd_bits(const T* dy, T* dx,
                                                    const uint32_t* __restrict__ bits,
                                                    uint64_t n, typename DkType<T>::C scale) {
    using C = typename DkType<T>::C;
    constexpr int E = DkDrawWidth<T>::E;
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    const uint64_t tid = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    uint64_t done = 0;  // elements done by the main loop
    if (dk_aligned16(dy) && dk_aligned16(dx)) {
        const uint64_t full = n / E;
        for (uint64_t g = tid; g < full; g += stride) {
            const uint64_t i0 = g * E;
            const uint32_t keep = bits[i0 / 32] >> (uint32_t)(i0 % 32);
            T v[E];
            dk_load(dy + i0, v);
            C c[E];
#pragma unroll
            for (int k = 0; k < E; ++k) {
                c[k] = (keep >> k) & 1u ? dk_mul(DkType<T>::to_c(v[k]), scale) : (C)0;
            }
            dk_round_all(c, v);
            dk_store(dx + i0, v);
        }
        done = full * E;
    }
    for (uint64_t i = done + tid; i < n; i += stride) {
        const T v = dy[i];
        dx[i] = (bits[i / 32] >> (uint32_t)(i % 32)) & 1u ? dk_scaled(v, scale)
                                                         : DkType<T>::zero();
    }
}

// Exported entry points (names and signatures are the contract with the Rust launcher).
// __launch_bounds__(1024) keeps every block size up to 1024 launchable.
#define DK_DROPOUT_KERNELS(DT, T, C)                                                         \
    extern "C" __global__ void __launch_bounds__(1024)                                      \
        dropout_fwd_##DT(const T* x, T* y, uint32_t* bits, uint64_t n, DkDraw draw,         \
                         C scale) {                                                          \
        dk_elementwise(DkMapOp<T, DkScaleKept<C>>{x, y, {scale}}, bits, n, draw);           \
    }                                                                                        \
    extern "C" __global__ void __launch_bounds__(1024)                                      \
        dropout_bwd_bits_##DT(const T* dy, T* dx, const uint32_t* bits, uint64_t n, C scale) { \
        dk_dropout_bwd_bits<T>(dy, dx, bits, n, scale);                                      \
    }

DK_DROPOUT_KERNELS(f32, float, float)
DK_DROPOUT_KERNELS(f64, double, double)
DK_DROPOUT_KERNELS(f16, __half, float)
DK_DROPOUT_KERNELS(bf16, __nv_bfloat16, float)
