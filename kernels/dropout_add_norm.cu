// dropout_add_norm.cu: the fused dropout + residual add + LayerNorm / RMSNorm of
// docs/spec.md section 6.3, forward and backward, and the column sums of dgamma.
//
//   s = round_R(residual + dropout(x + bias)),  z = round_T(norm(s) * gamma (+ beta))
//
// One warp per row, rows grid-strided: lane l takes columns l, l + 32, ... in increasing
// order, and the row sums meet in the xor butterfly (16, 8, 4, 2, 1). That is the spec's
// row-sum order S(f), a function of H alone, so the bits do not depend on the grid, the
// block size or the GPU, and the CPU (src/cpu/norm.rs) gives the same ones. Rows of any
// H: the passes re-read the row's s, which this thread itself wrote (program order), from
// global memory (L1/L2), so no register or shared-memory limit on H.
//
// Decisions: always the packed mask `keep` (SPEC section 4, local element order), which
// the host has dropout_mask_bits draw first (into a transient buffer for the regenerate
// form): that kernel uses all four words of each Philox call, where a per-element draw in
// these row loops would use one and make them compute-bound. `training == 0`: no mask,
// nothing dropped and nothing multiplied (eval). Column sums of dbias and dbeta are
// column_sum_partial/finish (bias_dropout_residual.cu) over dx and dz; dgamma's partials
// come from add_norm_dgamma_partial here, finished by column_sum_finish.
#include "dk_dtype.cuh"

// The arguments of one forward, by value: one struct per (T, R), the Rust side's
// `NormFwdArgs` (src/cuda/norm.rs) with the same layout. bias, residual, beta and keep may
// be null.
template <typename T, typename R>
struct DkNormFwdArgs {
    const T* x;
    const T* bias;
    const R* residual;
    const T* gamma;
    const T* beta;
    const uint32_t* keep;  // the decisions (training only)
    T* z;
    R* s;
    double* stats;  // mean and rstd of row r at 2r, 2r + 1 (C values, widened exactly)
    uint64_t rows;
    uint64_t h;
    double eps;    // rounded once to C here
    double scale;  // s of SPEC section 2 in f64, rounded once to C here
    uint32_t norm;      // 0: LayerNorm, 1: RMSNorm
    uint32_t training;  // 0: eval
};

// The arguments of one backward; ds, dresidual and keep may be null.
template <typename T, typename R>
struct DkNormBwdArgs {
    const T* dz;
    const R* ds;
    const R* s;
    const T* gamma;
    const double* stats;
    const uint32_t* keep;
    T* dx;
    R* dresidual;
    uint64_t rows;
    uint64_t h;
    double scale;
    uint32_t norm;
    uint32_t training;
};

// dgamma's block partials: partial[b * h + c] = the f64 sum over the rows r of block b, in
// increasing r, of (double)(to_C(dz[r][c]) * y[r][c]).
template <typename T, typename R>
struct DkNormDgammaArgs {
    const T* dz;
    const R* s;
    const double* stats;
    double* partial;
    uint64_t rows;
    uint64_t h;
    uint64_t block_rows;
    uint32_t norm;
    uint32_t pad;
};

static_assert(sizeof(DkNormFwdArgs<float, float>) == 112, "NormFwdArgs is 112 bytes in Rust");
static_assert(sizeof(DkNormBwdArgs<float, float>) == 96, "NormBwdArgs is 96 bytes in Rust");
static_assert(sizeof(DkNormDgammaArgs<float, float>) == 64, "NormDgammaArgs is 64 bytes in Rust");

__device__ __forceinline__ float dk_sub(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double dk_sub(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ float dk_div(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ double dk_div(double a, double b) { return __ddiv_rn(a, b); }
__device__ __forceinline__ float dk_sqrt(float a) { return __fsqrt_rn(a); }
__device__ __forceinline__ double dk_sqrt(double a) { return __dsqrt_rn(a); }
__device__ __forceinline__ void dk_from_double(double d, float& c) { c = __double2float_rn(d); }
__device__ __forceinline__ void dk_from_double(double d, double& c) { c = d; }

// S(f) from each lane's strided sum: the xor butterfly. Lane l adds lane l ^ w's value, so
// for l < w it is acc_l + acc_{l+w}, the spec's order; the other lanes compute the same
// sums with the operands swapped, which IEEE addition does not tell apart.
template <typename C>
__device__ __forceinline__ C dk_warp_sum(C acc) {
#pragma unroll
    for (int w = 16; w >= 1; w /= 2) acc = dk_add(acc, __shfl_xor_sync(0xffffffffu, acc, w));
    return acc;
}

// Whether element j of a row is kept: kr points at the mask word of the row's first
// element, koff is that element's bit in it (32-bit index math in the loops).
__device__ __forceinline__ bool dk_norm_kept(const uint32_t* kr, uint32_t koff, uint32_t j) {
    const uint32_t b = koff + j;
    return (kr[b >> 5] >> (b & 31u)) & 1u;
}

// The normalized value y of section 6.3.
template <typename C>
__device__ __forceinline__ C dk_normalized(uint32_t norm, C v, C mean, C rstd) {
    return norm == 0 ? dk_mul(dk_sub(v, mean), rstd) : dk_mul(v, rstd);
}

template <typename T, typename R>
__device__ __forceinline__ void dk_norm_fwd(const DkNormFwdArgs<T, R>& a) {
    using C = typename DkType<T>::C;
    const uint32_t lane = threadIdx.x & 31u;
    const uint64_t warps = blockDim.x / 32;
    const uint32_t h = (uint32_t)a.h;  // H < 2^31 (the host checks): 32-bit column math
    C scale, eps, hc;
    dk_from_double(a.scale, scale);
    dk_from_double(a.eps, eps);
    dk_from_double((double)h, hc);
    const C one = (C)1;
    for (uint64_t r = (uint64_t)blockIdx.x * warps + threadIdx.x / 32; r < a.rows;
         r += (uint64_t)gridDim.x * warps) {
        const uint64_t e0 = r * h;
        const T* xr = a.x + e0;
        const R* rr = a.residual ? a.residual + e0 : nullptr;
        R* sr = a.s + e0;
        const uint32_t* kr = a.keep ? a.keep + (e0 >> 5) : nullptr;
        const uint32_t koff = (uint32_t)(e0 & 31u);
        // Pass 1: s, and the lane sums of v (LayerNorm) or v * v (RMSNorm).
        C acc = (C)0;
        for (uint32_t j = lane; j < h; j += 32) {
            C av = DkType<T>::to_c(xr[j]);
            if (a.bias) av = dk_add(av, DkType<T>::to_c(a.bias[j]));
            C m = av;
            if (a.training) m = dk_norm_kept(kr, koff, j) ? dk_mul(av, scale) : (C)0;
            const C sum = rr ? dk_add(DkType<R>::to_c(rr[j]), m) : m;
            const R sv = DkType<R>::round_t(sum);
            sr[j] = sv;
            const C v = DkType<R>::to_c(sv);
            acc = dk_add(acc, a.norm == 0 ? v : dk_mul(v, v));
        }
        C mean = (C)0, rstd;
        if (a.norm == 0) {
            mean = dk_div(dk_warp_sum(acc), hc);
            // Pass 2: the variance around the mean.
            C acc2 = (C)0;
            for (uint32_t j = lane; j < h; j += 32) {
                const C d = dk_sub(DkType<R>::to_c(sr[j]), mean);
                acc2 = dk_add(acc2, dk_mul(d, d));
            }
            const C var = dk_div(dk_warp_sum(acc2), hc);
            rstd = dk_div(one, dk_sqrt(dk_add(var, eps)));
        } else {
            const C ms = dk_div(dk_warp_sum(acc), hc);
            rstd = dk_div(one, dk_sqrt(dk_add(ms, eps)));
        }
        // Pass 3: z.
        T* zr = a.z + e0;
        for (uint32_t j = lane; j < h; j += 32) {
            const C y = dk_normalized(a.norm, DkType<R>::to_c(sr[j]), mean, rstd);
            const C g = dk_mul(y, DkType<T>::to_c(a.gamma[j]));
            zr[j] = DkType<T>::round_t(a.beta ? dk_add(g, DkType<T>::to_c(a.beta[j])) : g);
        }
        if (lane == 0) {
            a.stats[2 * r] = (double)mean;
            a.stats[2 * r + 1] = (double)rstd;
        }
    }
}

template <typename T, typename R>
__device__ __forceinline__ void dk_norm_bwd(const DkNormBwdArgs<T, R>& a) {
    using C = typename DkType<T>::C;
    const uint32_t lane = threadIdx.x & 31u;
    const uint64_t warps = blockDim.x / 32;
    const uint32_t h = (uint32_t)a.h;
    C scale, hc;
    dk_from_double(a.scale, scale);
    dk_from_double((double)h, hc);
    for (uint64_t r = (uint64_t)blockIdx.x * warps + threadIdx.x / 32; r < a.rows;
         r += (uint64_t)gridDim.x * warps) {
        const uint64_t e0 = r * h;
        const T* dzr = a.dz + e0;
        const R* sr = a.s + e0;
        const R* dsr = a.ds ? a.ds + e0 : nullptr;
        R* drr = a.dresidual ? a.dresidual + e0 : nullptr;
        T* dxr = a.dx + e0;
        const uint32_t* kr = a.keep ? a.keep + (e0 >> 5) : nullptr;
        const uint32_t koff = (uint32_t)(e0 & 31u);
        C mean, rstd;
        dk_from_double(a.stats[2 * r], mean);
        dk_from_double(a.stats[2 * r + 1], rstd);
        // Pass 1: the lane sums of g * y and g.
        C acc1 = (C)0, acc2 = (C)0;
        for (uint32_t j = lane; j < h; j += 32) {
            const C y = dk_normalized(a.norm, DkType<R>::to_c(sr[j]), mean, rstd);
            const C g = dk_mul(DkType<T>::to_c(dzr[j]), DkType<T>::to_c(a.gamma[j]));
            acc1 = dk_add(acc1, dk_mul(g, y));
            acc2 = dk_add(acc2, g);
        }
        const C c1 = dk_div(dk_warp_sum(acc1), hc);
        const C c2 = a.norm == 0 ? dk_div(dk_warp_sum(acc2), hc) : (C)0;
        // Pass 2: the gradient at s, then dresidual and dx.
        for (uint32_t j = lane; j < h; j += 32) {
            const C y = dk_normalized(a.norm, DkType<R>::to_c(sr[j]), mean, rstd);
            const C g = dk_mul(DkType<T>::to_c(dzr[j]), DkType<T>::to_c(a.gamma[j]));
            const C w = dk_sub(g, dk_mul(y, c1));
            const C t = a.norm == 0 ? dk_mul(dk_sub(w, c2), rstd) : dk_mul(w, rstd);
            const C u = dsr ? dk_add(t, DkType<R>::to_c(dsr[j])) : t;
            if (drr) drr[j] = DkType<R>::round_t(u);
            T dx;
            if (!a.training) {
                dx = DkType<T>::round_t(u);
            } else if (dk_norm_kept(kr, koff, j)) {
                dx = DkType<T>::round_t(dk_mul(u, scale));
            } else {
                dx = DkType<T>::zero();
            }
            dxr[j] = dx;
        }
    }
}

// A thread per (block, column) pair, grid-stride; neighbouring threads take neighbouring
// columns, so each row's loads are coalesced.
template <typename T, typename R>
__device__ __forceinline__ void dk_norm_dgamma_partial(const DkNormDgammaArgs<T, R>& a) {
    using C = typename DkType<T>::C;
    const uint64_t h = a.h;
    const uint64_t blocks = a.rows / a.block_rows + (a.rows % a.block_rows != 0);
    const uint64_t pairs = blocks * h;
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    for (uint64_t t = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; t < pairs; t += stride) {
        const uint64_t b = t / h;
        const uint64_t c = t - b * h;
        const uint64_t r0 = b * a.block_rows;
        const uint64_t r1 = a.rows - r0 < a.block_rows ? a.rows : r0 + a.block_rows;
        double acc = 0.0;
        for (uint64_t r = r0; r < r1; ++r) {
            C mean, rstd;
            dk_from_double(a.stats[2 * r], mean);
            dk_from_double(a.stats[2 * r + 1], rstd);
            const C y = dk_normalized(a.norm, DkType<R>::to_c(a.s[r * h + c]), mean, rstd);
            const C p = dk_mul(DkType<T>::to_c(a.dz[r * h + c]), y);
            acc = __dadd_rn(acc, (double)p);
        }
        a.partial[t] = acc;
    }
}

// The exported kernels of one (T, R) pair (names and argument structs are the contract
// with the Rust side).
#define DK_NORM_KERNELS(SUFFIX, T, R)                                                        \
    extern "C" __global__ void dropout_add_norm_fwd_##SUFFIX(DkNormFwdArgs<T, R> args) {     \
        dk_norm_fwd<T, R>(args);                                                             \
    }                                                                                        \
    extern "C" __global__ void dropout_add_norm_bwd_##SUFFIX(DkNormBwdArgs<T, R> args) {     \
        dk_norm_bwd<T, R>(args);                                                             \
    }                                                                                        \
    extern "C" __global__ void add_norm_dgamma_partial_##SUFFIX(                             \
        DkNormDgammaArgs<T, R> args) {                                                       \
        dk_norm_dgamma_partial<T, R>(args);                                                  \
    }

DK_NORM_KERNELS(f32, float, float)
DK_NORM_KERNELS(f64, double, double)
DK_NORM_KERNELS(f16, __half, __half)
DK_NORM_KERNELS(bf16, __nv_bfloat16, __nv_bfloat16)
DK_NORM_KERNELS(f16_rf32, __half, float)
DK_NORM_KERNELS(bf16_rf32, __nv_bfloat16, float)
