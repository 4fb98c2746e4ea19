// dropout.cu: elementwise dropout (SPEC section 3) and its bit-mask backward, for f32, f64,
// f16 and bf16 tensors, bit-exact with the CPU reference.
//
// Work split. A thread owns one "group" of VEC consecutive local elements per iteration
// (VEC = 4 for f32/f64, 8 for f16/bf16: one 16-byte vector for f32/f16/bf16, two for f64;
// VEC/4 Philox calls when index_base % 4 == 0). Groups are walked with a grid-stride loop
// (group g, g + total_threads, ...), so neighbouring lanes touch neighbouring 16-byte
// vectors (coalesced) and the result depends only on the element index, never on the
// launch shape. The 32 keep bits of one mask word come from L = 32 / VEC neighbouring
// lanes, OR-reduced with __shfl_xor_sync. We chose this over "one thread per 32-element
// word" because that variant makes each warp load instruction touch 32 different cache
// lines; here a warp's loads cover one contiguous 512-byte span (1 KiB for f64).
//
// Warp-collective safety: the forward loop runs to a bound rounded up to a multiple of 32
// groups, so every lane of a warp runs the same number of iterations (lane 0 of a warp
// has g % 32 == 0 because the block size is a multiple of 32); lanes past n just
// contribute no bits. Nothing exits the loop early, and `bits` is uniform over the
// kernel, so each __shfl_xor_sync is reached by all 32 lanes.
//
// Arithmetic: __fmul_rn / __dmul_rn and explicit _rn conversions (build.rs also passes
// --fmad=false); a dropped element is a select of +0.0, never a multiply by 0, so NaN/inf
// inputs and the unused (possibly inf) scale of p = 1 cannot leak into the output.
//
// Aliasing: x may equal y (and dy may equal dx). Those pointers are not __restrict__ and
// are read with ordinary coherent loads; each element is read, then written, by the
// same thread.
#include <stdint.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include "philox.cuh"

// Per-dtype element type T, compute type C (SPEC section 2), group width VEC, the
// kept-value arithmetic and the 16-byte vector loads/stores of one group.
template <typename T> struct DkType;

template <> struct DkType<float> {
    using C = float;
    static constexpr int VEC = 4;
    static __device__ __forceinline__ float zero() { return 0.0f; }
    static __device__ __forceinline__ float mul(float x, float s) { return __fmul_rn(x, s); }
    static __device__ __forceinline__ void load(const float* p, float (&v)[VEC]) {
        const float4 a = *reinterpret_cast<const float4*>(p);
        v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
    }
    static __device__ __forceinline__ void store(float* p, const float (&v)[VEC]) {
        *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
    }
};

template <> struct DkType<double> {
    using C = double;
    static constexpr int VEC = 4;
    static __device__ __forceinline__ double zero() { return 0.0; }
    static __device__ __forceinline__ double mul(double x, double s) { return __dmul_rn(x, s); }
    static __device__ __forceinline__ void load(const double* p, double (&v)[VEC]) {
        const double2 a = reinterpret_cast<const double2*>(p)[0];
        const double2 b = reinterpret_cast<const double2*>(p)[1];
        v[0] = a.x; v[1] = a.y; v[2] = b.x; v[3] = b.y;
    }
    static __device__ __forceinline__ void store(double* p, const double (&v)[VEC]) {
        reinterpret_cast<double2*>(p)[0] = make_double2(v[0], v[1]);
        reinterpret_cast<double2*>(p)[1] = make_double2(v[2], v[3]);
    }
};

// The two 16-bit types move as raw bits: element 2k is the low half of 32-bit word k
// (little-endian), so one uint4 holds 8 elements in order.
template <> struct DkType<__half> {
    using C = float;
    static constexpr int VEC = 8;
    static __device__ __forceinline__ __half zero() { return __ushort_as_half((unsigned short)0); }
    static __device__ __forceinline__ __half mul(__half x, float s) {
        return __float2half_rn(__fmul_rn(__half2float(x), s));
    }
    static __device__ __forceinline__ __half lo(uint32_t w) { return __ushort_as_half((unsigned short)(w & 0xFFFFu)); }
    static __device__ __forceinline__ __half hi(uint32_t w) { return __ushort_as_half((unsigned short)(w >> 16)); }
    static __device__ __forceinline__ uint32_t pack(__half a, __half b) {
        return (uint32_t)__half_as_ushort(a) | ((uint32_t)__half_as_ushort(b) << 16);
    }
    static __device__ __forceinline__ void load(const __half* p, __half (&v)[VEC]) {
        const uint4 a = *reinterpret_cast<const uint4*>(p);
        v[0] = lo(a.x); v[1] = hi(a.x); v[2] = lo(a.y); v[3] = hi(a.y);
        v[4] = lo(a.z); v[5] = hi(a.z); v[6] = lo(a.w); v[7] = hi(a.w);
    }
    static __device__ __forceinline__ void store(__half* p, const __half (&v)[VEC]) {
        *reinterpret_cast<uint4*>(p) =
            make_uint4(pack(v[0], v[1]), pack(v[2], v[3]), pack(v[4], v[5]), pack(v[6], v[7]));
    }
};

template <> struct DkType<__nv_bfloat16> {
    using C = float;
    static constexpr int VEC = 8;
    static __device__ __forceinline__ __nv_bfloat16 zero() { return __ushort_as_bfloat16((unsigned short)0); }
    static __device__ __forceinline__ __nv_bfloat16 mul(__nv_bfloat16 x, float s) {
        return __float2bfloat16_rn(__fmul_rn(__bfloat162float(x), s));
    }
    static __device__ __forceinline__ __nv_bfloat16 lo(uint32_t w) {
        return __ushort_as_bfloat16((unsigned short)(w & 0xFFFFu));
    }
    static __device__ __forceinline__ __nv_bfloat16 hi(uint32_t w) {
        return __ushort_as_bfloat16((unsigned short)(w >> 16));
    }
    static __device__ __forceinline__ uint32_t pack(__nv_bfloat16 a, __nv_bfloat16 b) {
        return (uint32_t)__bfloat16_as_ushort(a) | ((uint32_t)__bfloat16_as_ushort(b) << 16);
    }
    static __device__ __forceinline__ void load(const __nv_bfloat16* p, __nv_bfloat16 (&v)[VEC]) {
        const uint4 a = *reinterpret_cast<const uint4*>(p);
        v[0] = lo(a.x); v[1] = hi(a.x); v[2] = lo(a.y); v[3] = hi(a.y);
        v[4] = lo(a.z); v[5] = hi(a.z); v[6] = lo(a.w); v[7] = hi(a.w);
    }
    static __device__ __forceinline__ void store(__nv_bfloat16* p, const __nv_bfloat16 (&v)[VEC]) {
        *reinterpret_cast<uint4*>(p) =
            make_uint4(pack(v[0], v[1]), pack(v[2], v[3]), pack(v[4], v[5]), pack(v[6], v[7]));
    }
};

// The random words of decisions d0 .. d0+VEC-1 (VEC a multiple of 4). Decision d0+k is
// lane (s+k)&3 of group g0 + ((s+k)>>2), with g0 = d0>>2 and s = d0&3, i.e. entry s+k of
// the flattened outputs of groups g0, g0+1, ... INDEX_ALIGNED (s == 0 for every group,
// because index_base % 4 == 0 and VEC % 4 == 0) is the usual case: VEC/4 Philox calls.
// Otherwise one more call and a shift by s. It is a template parameter, not a runtime
// branch, because the shifted path needs more live registers and ptxas sizes a kernel's
// register file for its worst path. All array indices are compile-time constants after
// unrolling, so everything stays in registers.
template <int VEC, bool INDEX_ALIGNED>
__device__ __forceinline__ void dk_draw(uint64_t seed, uint64_t offset, uint64_t d0,
                                        uint32_t (&u)[VEC]) {
    const uint64_t g0 = d0 >> 2;
    uint32_t w[VEC + 4];
#pragma unroll
    for (int j = 0; j < VEC / 4 + (INDEX_ALIGNED ? 0 : 1); ++j) {
        const uint4 r = dk_philox4(seed, offset, g0 + (uint64_t)j);
        w[4 * j + 0] = r.x; w[4 * j + 1] = r.y; w[4 * j + 2] = r.z; w[4 * j + 3] = r.w;
    }
    if (INDEX_ALIGNED) {
#pragma unroll
        for (int k = 0; k < VEC; ++k) u[k] = w[k];
    } else {
        const uint32_t s = (uint32_t)d0 & 3u;  // 1, 2 or 3 here
#pragma unroll
        for (int k = 0; k < VEC; ++k) u[k] = s == 1 ? w[k + 1] : s == 2 ? w[k + 2] : w[k + 3];
    }
}

__device__ __forceinline__ bool dk_aligned16(const void* a, const void* b) {
    return (((uintptr_t)a | (uintptr_t)b) & 15u) == 0;
}

// Forward (and regenerate-backward with x = dy, y = dx, bits = null).
template <typename T, bool INDEX_ALIGNED>
__device__ __forceinline__ void dk_dropout_fwd_loop(const T* x, T* y, uint32_t* bits, uint64_t n,
                                                    uint64_t seed, uint64_t offset,
                                                    uint64_t index_base, uint64_t threshold,
                                                    typename DkType<T>::C scale) {
    using D = DkType<T>;
    constexpr int VEC = D::VEC;
    constexpr uint32_t L = 32 / VEC;  // lanes per mask word
    const bool vec_ok = dk_aligned16(x, y);
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
            dk_draw<VEC, INDEX_ALIGNED>(seed, offset, index_base + i0, u);
            if (vec_ok && n - i0 >= VEC) {
                T v[VEC];
                D::load(x + i0, v);
#pragma unroll
                for (int k = 0; k < VEC; ++k) {
                    const bool dropped = dk_dropped(u[k], threshold);
                    v[k] = dropped ? D::zero() : D::mul(v[k], scale);
                    keep |= (uint32_t)!dropped << k;
                }
                D::store(y + i0, v);
            } else {
#pragma unroll
                for (int k = 0; k < VEC; ++k) {
                    if (i0 + k < n) {
                        const bool dropped = dk_dropped(u[k], threshold);
                        const T xv = x[i0 + k];
                        y[i0 + k] = dropped ? D::zero() : D::mul(xv, scale);
                        keep |= (uint32_t)!dropped << k;
                    }
                }
            }
        }
        if (bits != nullptr) {
            // Group g fills bits (g % L) * VEC .. + VEC-1 of word g / L; the L lanes of a
            // word are neighbours aligned to L, so xor-shuffles by 1 .. L/2 stay inside it.
            keep <<= (uint32_t)(g % L) * VEC;
#pragma unroll
            for (uint32_t o = 1; o < L; o <<= 1) keep |= __shfl_xor_sync(0xFFFFFFFFu, keep, o);
            if (g % L == 0 && g / L < words) bits[g / L] = keep;
        }
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
        dk_dropout_fwd_loop<T, true>(x, y, bits, n, seed, offset, index_base, threshold, scale);
    } else {
        dk_dropout_fwd_loop<T, false>(x, y, bits, n, seed, offset, index_base, threshold, scale);
    }
}

// Backward from the saved bit mask: dx = bit set ? dy * scale : +0.
template <typename T>
__device__ __forceinline__ void dk_dropout_bwd_bits(const T* dy, T* dx,
                                                    const uint32_t* __restrict__ bits,
                                                    uint64_t n, typename DkType<T>::C scale) {
    using D = DkType<T>;
    constexpr int VEC = D::VEC;
    const bool vec_ok = dk_aligned16(dy, dx);
    const uint64_t groups = n / VEC + (n % VEC != 0);
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;

    for (uint64_t g = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups;
         g += stride) {
        const uint64_t i0 = g * VEC;
        // i0 % 32 is a multiple of VEC, so the group's VEC bits sit inside one word.
        const uint32_t keep = bits[i0 / 32] >> (uint32_t)(i0 % 32);
        if (vec_ok && n - i0 >= VEC) {
            T v[VEC];
            D::load(dy + i0, v);
#pragma unroll
            for (int k = 0; k < VEC; ++k) v[k] = (keep >> k) & 1u ? D::mul(v[k], scale) : D::zero();
            D::store(dx + i0, v);
        } else {
#pragma unroll
            for (int k = 0; k < VEC; ++k) {
                if (i0 + k < n) {
                    const T v = dy[i0 + k];
                    dx[i0 + k] = (keep >> k) & 1u ? D::mul(v, scale) : D::zero();
                }
            }
        }
    }
}

// Exported entry points (names and signatures are the contract with the Rust launcher).
// __launch_bounds__(1024) keeps every block size up to 1024 launchable.
#define DK_DROPOUT_KERNELS(DT, T, C)                                                         \
    extern "C" __global__ void __launch_bounds__(1024)                                      \
        dropout_fwd_##DT(const T* x, T* y, uint32_t* bits, uint64_t n, uint64_t seed,       \
                         uint64_t offset, uint64_t index_base, uint64_t threshold, C scale) { \
        dk_dropout_fwd<T>(x, y, bits, n, seed, offset, index_base, threshold, scale);        \
    }                                                                                        \
    extern "C" __global__ void __launch_bounds__(1024)                                      \
        dropout_bwd_bits_##DT(const T* dy, T* dx, const uint32_t* bits, uint64_t n, C scale) { \
        dk_dropout_bwd_bits<T>(dy, dx, bits, n, scale);                                      \
    }

DK_DROPOUT_KERNELS(f32, float, float)
DK_DROPOUT_KERNELS(f64, double, double)
DK_DROPOUT_KERNELS(f16, __half, float)
DK_DROPOUT_KERNELS(bf16, __nv_bfloat16, float)
