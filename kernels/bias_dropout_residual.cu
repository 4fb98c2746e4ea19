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
#include "philox.cuh"

// Layout as in alpha_dropout.cu: a grid-stride loop over vectors of E elements (4 for
// f32/f64, 8 for f16/bf16); the thread with vector v reads x, residual and writes out for
// elements v*E .. v*E+E-1 itself, so out may equal x or residual. The loop condition is
// per warp so every lane reaches the bit-packing shuffles. The bias column of the first
// element is advanced by the grid stride modulo h, so the loop has no 64-bit division.
template <typename T>
__device__ __forceinline__ void dk_bias_dropout_residual_fwd(
    const T* x, const T* bias, const T* residual, T* out, uint32_t* bits, uint64_t n,
    uint64_t h, uint64_t seed, uint64_t offset, uint64_t index_base, uint64_t threshold,
    typename DkType<T>::C scale) {
    constexpr int E = DkPiece<T>::N > 4 ? DkPiece<T>::N : 4;  // one 16-byte piece
    const uint64_t nvec = n / E + (n % E != 0);
    const uint64_t nwords = n / 32 + (n % 32 != 0);
    const bool wide = dk_aligned16(x) && dk_aligned16(residual) && dk_aligned16(out);
    const bool bias_wide = dk_aligned16(bias);
    const uint32_t lane = threadIdx.x & 31u;
    const uint64_t v0 = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    const uint64_t step_r = (stride * E) % h;
    uint64_t col = (index_base + v0 * E) % h;  // bias column of element v*E

    // v - lane is the warp's first vector: the same for all its lanes.
    for (uint64_t v = v0; v - lane < nvec; v += stride) {
        const uint64_t i0 = v * E;
        uint32_t u[E];
        dk_words<E>(seed, offset, index_base + i0, u);

        uint32_t keep = 0;  // bit k: element i0 + k kept (0 past n)
        if (wide && i0 + E <= n) {
            T xv[E], rv[E], bv[E];
            dk_load(x + i0, xv);
            dk_load(residual + i0, rv);
            // col % E == 0 keeps bias + col 16-byte aligned (E*sizeof(T) >= 16).
            if (bias_wide && col % E == 0 && col + E <= h) {
                dk_load(bias + col, bv);
            } else {
                uint64_t c = col;
#pragma unroll
                for (int k = 0; k < E; ++k) {
                    bv[k] = bias[c];
                    if (++c == h) c = 0;
                }
            }
#pragma unroll
            for (int k = 0; k < E; ++k) {
                const bool kept = !dk_dropped(u[k], threshold);
                keep |= (uint32_t)kept << k;
                xv[k] = dk_bias_dropout_residual(xv[k], bv[k], rv[k], kept, scale);
            }
            dk_store(out + i0, xv);
        } else {
            uint64_t c = col;
#pragma unroll
            for (int k = 0; k < E; ++k) {
                const uint64_t i = i0 + k;
                if (i >= n) break;
                const T xi = x[i], ri = residual[i], bi = bias[c];
                const bool kept = !dk_dropped(u[k], threshold);
                keep |= (uint32_t)kept << k;
                out[i] = dk_bias_dropout_residual(xi, bi, ri, kept, scale);
                if (++c == h) c = 0;
            }
        }

        if (bits != nullptr) dk_store_bits<E>(bits, nwords, v, keep);

        col += step_r;
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
    extern "C" __global__ void bias_dropout_residual_fwd_##SUFFIX(                           \
        const T* x, const T* bias, const T* residual, T* out, uint32_t* bits, uint64_t n,     \
        uint64_t h, DkDraw draw, C scale) {                                                  \
        dk_bias_dropout_residual_fwd<T>(x, bias, residual, out, bits, n, h, draw.seed,       \
                                        draw.offset, draw.index_base, draw.threshold, scale); \
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
