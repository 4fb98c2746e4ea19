// bias_dropout_residual_bwd.cu: the backward of the fused layer in one pass over the
// upstream gradient: dx (the dropout backward, SPEC section 6) and the per-block column
// sums of dx that the bias gradient adds up (docs/spec.md, bias-gradient note), so dx is
// written once and never read back. column_sum_finish_<T> (bias_dropout_residual.cu)
// then adds the block sums of each column. The residual gradient is dy itself: no kernel.
//
//   dx_i = kept_i ? round_T(to_C(dy_i) * scale) : +0        (dk_scaled, as dropout_bwd)
//   partial[b][c] = f64 sum of (double)dx[r * h + c] over the rows r of block b,
//                   increasing r, from +0.0, each add rounded in double
//
// exactly the adds of column_sum_partial_<T> over dx, so the bias gradient has the same
// bits as the two-pass path and the CPU (cpu::residual::column_sum).
//
// Decisions: element i of the tensor (row-major, i = r * h + c) is kept when bit i of
// `bits` is set (the saved mask, bit i % 32 of word i / 32), or, when bits is null, when
// the random word of decision draw.index_base + i is not dropped (the regenerate form:
// one Philox call per element, as the elements of a thread are h apart).
//
// Work split: a thread per (block, column) pair t = b * h + c, grid-stride, as in
// column_sum_partial: neighbouring threads take neighbouring columns of one row, so each
// row's loads and stores are coalesced. dy may equal dx (each element is read, then
// written, by the same thread).
#include <stdint.h>

#include "dk_draw.cuh"
#include "dk_dtype.cuh"
#include "philox.cuh"

template <typename T>
__device__ __forceinline__ void dk_bdr_bwd(const T* dy, T* dx, const uint32_t* bits,
                                           double* partial, uint64_t rows, uint64_t h,
                                           uint64_t block_rows, DkDraw draw,
                                           typename DkType<T>::C scale) {
    const uint64_t blocks = rows / block_rows + (rows % block_rows != 0);
    const uint64_t pairs = blocks * h;
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    for (uint64_t t = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; t < pairs; t += stride) {
        const uint64_t b = t / h;
        const uint64_t c = t - b * h;
        const uint64_t r0 = b * block_rows;
        const uint64_t nr = rows - r0 < block_rows ? rows - r0 : block_rows;
        double acc = 0.0;
        uint64_t i = r0 * h + c;
        for (uint64_t r = 0; r < nr; ++r, i += h) {
            const bool kept =
                bits != nullptr
                    ? ((bits[i / 32] >> (uint32_t)(i % 32)) & 1u) != 0
                    : !dk_dropped(dk_philox_word(draw.seed, draw.offset, draw.index_base + i),
                                  draw.threshold);
            const T v = kept ? dk_scaled(dy[i], scale) : DkType<T>::zero();
            dx[i] = v;
            acc = __dadd_rn(acc, DkType<T>::to_double(v));
        }
        partial[t] = acc;
    }
}

// Exported entry points (names and signatures are the contract with the Rust launcher,
// src/cuda/residual.rs).
#define DK_BDR_BWD_KERNELS(DT, T, C)                                                         \
    extern "C" __global__ void bias_dropout_residual_bwd_##DT(                             \
        const T* dy, T* dx, const uint32_t* bits, double* partial, uint64_t rows,           \
        uint64_t h, uint64_t block_rows, DkDraw draw, C scale) {                            \
        dk_bdr_bwd<T>(dy, dx, bits, partial, rows, h, block_rows, dk_resolve(draw), scale); \
    }

DK_BDR_BWD_KERNELS(f32, float, float)
DK_BDR_BWD_KERNELS(f64, double, double)
DK_BDR_BWD_KERNELS(f16, __half, float)
DK_BDR_BWD_KERNELS(bf16, __nv_bfloat16, float)
