// bias_dropout_residual.cu: fused out = residual + dropout(x + bias) (SPEC section 6) and
// the column sum used for the bias gradient.
//
//   z   = to_C(x_i) + to_C(bias[(index_base + i) % h])     rounded in C
//   m   = dropped_i ? +0 : z * scale                        select, rounded in C
//   out = round_T(to_C(residual_i) + m)                     rounded in C, then round_T
//
// The decision of local element i is index_base + i, as in elementwise dropout, and the
// keep bits (SPEC section 4) are written when bits != null. The arithmetic is
// dk_bias_dropout_residual (dk_dtype.cuh).
#include "dk_draw.cuh"
#include "dk_dtype.cuh"
#include "dk_vector.cuh"
#include "dk_elementwise.cuh"

// The loops are dk_elementwise's (dk_elementwise.cuh): a full-vector main loop and a
// scalar tail, with E = 8 elements per thread and step for f16/bf16 and 4 for f32/f64
// (one 16-byte piece of x, residual, bias and out; more would pass 64 registers). The
// thread with group g reads x and residual and writes out for its elements itself, so out
// may equal x or residual. The bias column of the group's first element is tracked from
// step to step (+ the grid stride modulo h), so the loops have no 64-bit division.
//
// BIAS_VEC (uniform over the kernel): bias 16-byte aligned, h % E == 0 and index_base % E
// == 0, so every group's E bias values are one aligned run that does not wrap: only then
// does the main loop run (a gathering main loop would pass 64 registers); otherwise every
// element takes the tail. BIAS_VEC implies index_base % 4 == 0: no shifted main loops.
template <typename T, bool BIAS_VEC>
struct DkBiasDropoutResidualOp {
    static constexpr int E = DkPiece<T>::N > 4 ? DkPiece<T>::N : 4;
    static constexpr bool SHIFTED = false;  // BIAS_VEC needs index_base % E == 0
    using C = typename DkType<T>::C;
    const T* x;
    const T* bias;
    const T* residual;
    T* out;
    uint64_t h;
    C scale;
    uint64_t col = 0;       // bias column of the current group's first element
    uint64_t step_r = 0;    // (grid stride * E) % h
    uint64_t tail_col = 0;  // column of the tail's current element

    __device__ __forceinline__ bool vec_ok() const {
        return BIAS_VEC && dk_aligned16(x) && dk_aligned16(residual) && dk_aligned16(out);
    }
    __device__ __forceinline__ void begin(uint64_t g, const DkDraw& d) {
        step_r = ((uint64_t)gridDim.x * blockDim.x * E) % h;
        col = (d.index_base + g * E) % h;
    }
    __device__ __forceinline__ void next() {
        col += step_r;
        if (col >= h) col -= h;
    }
    __device__ __forceinline__ uint32_t vec(uint64_t i0, const uint32_t (&u)[E], uint32_t t) {
        T xv[E], rv[E], bv[E];
        dk_load(x + i0, xv);
        dk_load(residual + i0, rv);
        dk_load(bias + col, bv);
        C o[E];
        uint32_t keep = 0;
#pragma unroll
        for (int k = 0; k < E; ++k) {
            const bool kept = u[k] >= t;
            keep |= (uint32_t)kept << k;
            const C z = dk_add(DkType<T>::to_c(xv[k]), DkType<T>::to_c(bv[k]));
            o[k] = dk_add(DkType<T>::to_c(rv[k]), kept ? dk_mul(z, scale) : (C)0);
        }
        dk_round_all(o, xv);
        dk_store(out + i0, xv);
        return keep;
    }
    __device__ __forceinline__ void one(uint64_t i, int k, bool kept) {
        // The tail calls this for k = 0, 1, ... of a group: the column steps along (h may
        // be below E, so it can wrap more than once).
        if (k == 0) tail_col = col;
        const T xi = x[i], ri = residual[i], bi = bias[tail_col];
        out[i] = dk_bias_dropout_residual(xi, bi, ri, kept, scale);
        if (++tail_col == h) tail_col = 0;
    }
};

template <typename T>
__device__ __forceinline__ void dk_bias_dropout_residual_fwd(const T* x, const T* bias,
                                                             const T* residual, T* out,
                                                             uint32_t* bits, uint64_t n,
                                                             uint64_t h, const DkDraw& d,
                                                             typename DkType<T>::C scale) {
    constexpr int E = DkBiasDropoutResidualOp<T, true>::E;
    if (dk_aligned16(bias) && h % E == 0 && d.index_base % E == 0) {
        DkBiasDropoutResidualOp<T, true> op{x, bias, residual, out, h, scale};
        dk_elementwise(op, bits, n, d);
    } else {
        DkBiasDropoutResidualOp<T, false> op{x, bias, residual, out, h, scale};
        dk_elementwise(op, bits, n, d);
    }
}

// The same arithmetic with the decisions read from keep bits in local order (a shard of
// any layout, whose bits dropout_mask_bits_shard drew through its layout): local element
// i keeps iff bit i of keep (SPEC section 4's packing), bias column i % h (the shard's
// bias is its slice of H). A thread per element, grid-stride; the column follows the
// index by the grid stride modulo h, so each thread divides once.
template <typename T>
__device__ __forceinline__ void dk_bias_dropout_residual_bits_fwd(
    const T* x, const T* bias, const T* residual, T* out, const uint32_t* keep, uint64_t n,
    uint64_t h, typename DkType<T>::C scale) {
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const uint64_t step = stride % h;
    uint64_t col = i % h;
    for (; i < n; i += stride) {
        const bool kept = (keep[i >> 5] >> (i & 31u)) & 1u;
        out[i] = dk_bias_dropout_residual(x[i], bias[col], residual[i], kept, scale);
        col += step;
        if (col >= h) col -= h;
    }
}

// The column sum (the bias gradient; docs/spec.md, bias-gradient note). Rows are split
// into blocks of block_rows consecutive rows (the spec's R = 256, passed by the host so
// its buffer size and the kernels cannot disagree); partial[b][c] is the f64 sum of
// column c over block b in increasing row order, and out[c] = round_T(f64 sum of
// partial[b][c] over b in increasing order), every sum starting from +0.0 and every add
// rounded in double. The order is fixed by the shape alone, so the result does not depend
// on the launch shape (no atomics) and the CPU (cpu::family::column_sum) gives the same
// bits. Two kernels: _partial, a thread per (block, column) pair, then _finish, a thread
// per column; the host allocates partial (blocks * h doubles, row-major [b][c]).

// Sum of (double)p[k * h] for k = 0 .. n-1 in increasing k, from +0.0. Loads are issued
// 8 ahead of the adds for memory parallelism; the add order is unchanged. S is T for the
// rows of g and double for the partial sums.
template <typename S>
__device__ __forceinline__ double dk_column_run(const S* p, uint64_t n, uint64_t h) {
    using D = DkType<S>;
    double acc = 0.0;
    uint64_t k = 0;
    for (; k + 8 <= n; k += 8) {
        double v[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) v[j] = D::to_double(p[j * h]);
#pragma unroll
        for (int j = 0; j < 8; ++j) acc = __dadd_rn(acc, v[j]);
        p += 8 * h;
    }
    for (; k < n; ++k) {
        acc = __dadd_rn(acc, D::to_double(*p));
        p += h;
    }
    return acc;
}

__device__ __forceinline__ uint64_t dk_column_blocks(uint64_t rows, uint64_t block_rows) {
    return rows / block_rows + (rows % block_rows != 0);
}

// partial[b * h + c] for every pair t = b * h + c, grid-stride: neighbouring threads take
// neighbouring columns of one block, so each row's loads are coalesced. One 64-bit
// division per pair, against block_rows loads.
template <typename T>
__device__ __forceinline__ void dk_column_sum_partial(const T* g, double* partial,
                                                      uint64_t rows, uint64_t h,
                                                      uint64_t block_rows) {
    const uint64_t pairs = dk_column_blocks(rows, block_rows) * h;
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    for (uint64_t t = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; t < pairs; t += stride) {
        const uint64_t b = t / h;
        const uint64_t c = t - b * h;
        const uint64_t r0 = b * block_rows;
        const uint64_t n = rows - r0 < block_rows ? rows - r0 : block_rows;
        partial[t] = dk_column_run(g + r0 * h + c, n, h);
    }
}

// out[c] from the blocks partial sums of column c, a thread per column, grid-stride
// (coalesced as above). partial is read whole before out is written (stream order), so
// out may even equal g.
template <typename T>
__device__ __forceinline__ void dk_column_sum_finish(const double* partial, T* out,
                                                     uint64_t blocks, uint64_t h) {
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    for (uint64_t c = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; c < h; c += stride) {
        out[c] = DkType<T>::from_double(dk_column_run(partial + c, blocks, h));
    }
}

// The exported kernels of one dtype (names and signatures are the contract with the Rust
// side).
#define DK_BDR_KERNELS(SUFFIX, T, C)                                                         \
    extern "C" __global__ void __launch_bounds__(1024) bias_dropout_residual_fwd_##SUFFIX(                           \
        const T* x, const T* bias, const T* residual, T* out, uint32_t* bits, uint64_t n,     \
        uint64_t h, DkDraw draw, C scale) {                                                  \
        dk_bias_dropout_residual_fwd<T>(x, bias, residual, out, bits, n, h, draw, scale);    \
    }                                                                                        \
    extern "C" __global__ void bias_dropout_residual_bits_fwd_##SUFFIX(                      \
        const T* x, const T* bias, const T* residual, T* out, const uint32_t* keep,           \
        uint64_t n, uint64_t h, C scale) {                                                   \
        dk_bias_dropout_residual_bits_fwd<T>(x, bias, residual, out, keep, n, h, scale);      \
    }                                                                                        \
    extern "C" __global__ void column_sum_partial_##SUFFIX(                                  \
        const T* g, double* partial, uint64_t rows, uint64_t h, uint64_t block_rows) {       \
        dk_column_sum_partial<T>(g, partial, rows, h, block_rows);                           \
    }                                                                                        \
    extern "C" __global__ void column_sum_finish_##SUFFIX(const double* partial, T* out,     \
                                                          uint64_t blocks, uint64_t h) {     \
        dk_column_sum_finish<T>(partial, out, blocks, h);                                    \
    }

DK_BDR_KERNELS(f32, float, float)
DK_BDR_KERNELS(f64, double, double)
DK_BDR_KERNELS(f16, __half, float)
DK_BDR_KERNELS(bf16, __nv_bfloat16, float)
