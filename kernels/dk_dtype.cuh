// dk_dtype.cuh: the per-dtype arithmetic of the contract on the device (SPEC sections 2, 3
// and 6): the compute type C of each tensor type T, the exact and rounding conversions, +0,
// and the per-element formulas of the dropout family (dk_scaled, dk_affine,
// dk_bias_dropout_residual). Every kernel computes through these helpers, so the device
// arithmetic lives in this one file.
//
// Why explicit intrinsics: the contract forbids fused multiply-add and needs
// round-to-nearest-even everywhere, so every multiply and add goes through
// __fmul_rn/__fadd_rn (__dmul_rn/__dadd_rn), which the compiler may not contract.
#pragma once
#include <stdint.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

// DkType<T>: the compute type C of tensor type T, exact to_c, round-to-nearest-even round_t
// (C -> T), a correctly rounded conversion from double (for column sums) and +0.0 in T as a
// bit pattern (a constant, where round_t(0) would be a conversion instruction).
template <typename T>
struct DkType;

template <>
struct DkType<float> {
    using C = float;
    static __device__ __forceinline__ float to_c(float x) { return x; }
    static __device__ __forceinline__ float round_t(float c) { return c; }
    static __device__ __forceinline__ void round_pair(float a, float b, float& ta, float& tb) {
        ta = a;
        tb = b;
    }
    static __device__ __forceinline__ double to_double(float x) { return (double)x; }
    static __device__ __forceinline__ float from_double(double d) { return __double2float_rn(d); }
    static __device__ __forceinline__ float zero() { return 0.0f; }
};

template <>
struct DkType<double> {
    using C = double;
    static __device__ __forceinline__ double to_c(double x) { return x; }
    static __device__ __forceinline__ double round_t(double c) { return c; }
    static __device__ __forceinline__ void round_pair(double a, double b, double& ta,
                                                      double& tb) {
        ta = a;
        tb = b;
    }
    static __device__ __forceinline__ double to_double(double x) { return x; }
    static __device__ __forceinline__ double from_double(double d) { return d; }
    static __device__ __forceinline__ double zero() { return 0.0; }
};

template <>
struct DkType<__half> {
    using C = float;
    static __device__ __forceinline__ float to_c(__half x) { return __half2float(x); }
    static __device__ __forceinline__ __half round_t(float c) { return __float2half_rn(c); }
    // Two at a time: one cvt.rn.f16x2.f32 on sm_80 and newer (.x from a).
    static __device__ __forceinline__ void round_pair(float a, float b, __half& ta, __half& tb) {
        const __half2 r = __floats2half2_rn(a, b);
        ta = r.x;
        tb = r.y;
    }
    static __device__ __forceinline__ double to_double(__half x) { return (double)__half2float(x); }
    // cvt.rn.f16.f64: one rounding straight from double (no double rounding through float).
    static __device__ __forceinline__ __half from_double(double d) { return __double2half(d); }
    static __device__ __forceinline__ __half zero() { return __ushort_as_half((unsigned short)0); }
};

// float -> bf16 bits, round to nearest even, in integer arithmetic: add half an ulp of
// bf16 minus one, plus the lowest kept bit (ties to even), and truncate; a NaN becomes
// the canonical 0x7fff, as cvt.rn.bf16.f32 gives. Overflow carries into the exponent and
// yields inf, as it must. For GPUs without the hardware conversion (below sm_80).
__device__ __forceinline__ unsigned short dk_bf16_rn_bits(float f) {
    const uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fff;
    return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

template <>
struct DkType<__nv_bfloat16> {
    using C = float;
    static __device__ __forceinline__ float to_c(__nv_bfloat16 x) { return __bfloat162float(x); }
    static __device__ __forceinline__ __nv_bfloat16 round_t(float c) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
        return __float2bfloat16_rn(c);  // cvt.rn.bf16.f32
#else
        return __ushort_as_bfloat16(dk_bf16_rn_bits(c));
#endif
    }
    // Two at a time: one cvt.rn.bf16x2.f32 on sm_80 and newer (.x from a).
    static __device__ __forceinline__ void round_pair(float a, float b, __nv_bfloat16& ta,
                                                      __nv_bfloat16& tb) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
        const __nv_bfloat162 r = __floats2bfloat162_rn(a, b);
        ta = r.x;
        tb = r.y;
#else
        ta = round_t(a);
        tb = round_t(b);
#endif
    }
    static __device__ __forceinline__ double to_double(__nv_bfloat16 x) {
        return (double)__bfloat162float(x);
    }
    // Correctly rounded double -> bf16 (below sm_90 the header rounds to float with
    // round-to-odd, then to bf16 with round-to-nearest-even: no double-rounding error).
    static __device__ __forceinline__ __nv_bfloat16 from_double(double d) {
        return __double2bfloat16(d);
    }
    static __device__ __forceinline__ __nv_bfloat16 zero() {
        return __ushort_as_bfloat16((unsigned short)0);
    }
};

__device__ __forceinline__ float dk_mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double dk_mul(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float dk_add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double dk_add(double a, double b) { return __dadd_rn(a, b); }

// Kept value of Dropout, channel dropout and DropPath, and every backward (SPEC sections 3
// and 6): round_T(to_C(x) * s). A dropped value is selected (DkType<T>::zero() or a
// constant), never computed by multiplying, so NaN/inf inputs and an unused infinite scale
// cannot leak into it.
template <typename T>
__device__ __forceinline__ T dk_scaled(T x, typename DkType<T>::C s) {
    return DkType<T>::round_t(dk_mul(DkType<T>::to_c(x), s));
}

// Kept value of AlphaDropout and FeatureAlphaDropout (SPEC section 6):
// round_T((to_C(x) * a) + b), the multiply and the add each rounded in C.
template <typename T>
__device__ __forceinline__ T dk_affine(T x, typename DkType<T>::C a, typename DkType<T>::C b) {
    return DkType<T>::round_t(dk_add(dk_mul(DkType<T>::to_c(x), a), b));
}

// Fused bias + dropout + residual (SPEC section 6), every step rounded in C:
//   z = to_C(x) + to_C(bias);  m = kept ? z * s : +0;  out = round_T(to_C(residual) + m).
template <typename T>
__device__ __forceinline__ T dk_bias_dropout_residual(T x, T bias, T residual, bool kept,
                                                      typename DkType<T>::C s) {
    using C = typename DkType<T>::C;
    const C z = dk_add(DkType<T>::to_c(x), DkType<T>::to_c(bias));
    const C m = kept ? dk_mul(z, s) : (C)0;
    return DkType<T>::round_t(dk_add(DkType<T>::to_c(residual), m));
}

// round_T of E compute values (E even), in pairs: the paired conversions halve the
// conversion instructions of f16 and bf16.
template <typename T, int E>
__device__ __forceinline__ void dk_round_all(const typename DkType<T>::C (&c)[E], T (&t)[E]) {
    static_assert(E % 2 == 0, "E must be even");
#pragma unroll
    for (int k = 0; k < E; k += 2) DkType<T>::round_pair(c[k], c[k + 1], t[k], t[k + 1]);
}

// Kept and dropped values in C of the dropout family, for loops that select in C and round
// once (dk_round_all): Dropout, channel dropout and DropPath keep x * s and drop +0
// (round_T(+0) = +0); AlphaDropout keeps a*x + b (multiply, then add, each rounded in C)
// and drops the host's a*A + b.
template <typename C>
struct DkScaleKept {
    C scale;
    __device__ __forceinline__ C kept(C c) const { return dk_mul(c, scale); }
    __device__ __forceinline__ C dropped() const { return (C)0; }
};

template <typename C>
struct DkAffineKept {
    C a, b, dropped_value;
    __device__ __forceinline__ C kept(C c) const { return dk_add(dk_mul(c, a), b); }
    __device__ __forceinline__ C dropped() const { return dropped_value; }
};
