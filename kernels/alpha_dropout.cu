// alpha_dropout.cu: AlphaDropout forward (SPEC section 6), one decision per element.
//
//   kept:    y = round_T((to_C(x) * a) + b)     multiply and add each rounded in C, no FMA
//   dropped: y = round_T(dropped_value)         dropped_value = a*A + b, computed by the host
//
// Optionally writes the keep bits (SPEC section 4) for the backward pass, which reuses the
// elementwise dropout kernels with scale = a.
//
// The loops are dk_elementwise's (dk_elementwise.cuh: a full-vector main loop and a scalar
// tail, 8 elements per thread and step for f16/bf16 and f32, 4 for f64); the thread
// with group g reads and writes its elements itself, so y may equal x. The dropped value
// is selected in C and rounded like a kept one: round_T of the host's constant.
#include "dk_draw.cuh"
#include "dk_dtype.cuh"
#include "dk_elementwise.cuh"
#include "dk_vector.cuh"

// Elements per thread and step: 8 for f16/bf16 (one 16-byte piece; 16 needs more than 64
// registers on sm_90 with the sm_80+ conversions, for the extra constant b), else as
// dropout.
#define DK_ALPHA_WIDTH(T) (sizeof(T) == 2 ? 8 : DkDrawWidth<T>::E)

// One exported kernel per dtype (names and signatures are the contract with the Rust side).
#define DK_ALPHA_DROPOUT_FWD(SUFFIX, T, C)                                                  \
    extern "C" __global__ void __launch_bounds__(1024) alpha_dropout_fwd_##SUFFIX(          \
        const T* x, T* y, uint32_t* bits, uint64_t n, DkDraw draw, C a, C b,                 \
        C dropped_value) {                                                                   \
        dk_elementwise(DkMapOp<T, DkAffineKept<C>, DK_ALPHA_WIDTH(T)>{x, y, {a, b, dropped_value}}, \
                       bits, n, draw);                                                       \
    }

DK_ALPHA_DROPOUT_FWD(f32, float, float)
DK_ALPHA_DROPOUT_FWD(f64, double, double)
DK_ALPHA_DROPOUT_FWD(f16, __half, float)
DK_ALPHA_DROPOUT_FWD(bf16, __nv_bfloat16, float)
