//! f32 <-> bf16 on AVX-512 lanes for the elementwise kernels: the widening shift, and the
//! narrowing with the spec's rounding, in hardware (`vcvtneps2bf16`) where the CPU has
//! AVX-512 BF16 and the vector holds no subnormal, in integer operations otherwise.

use std::arch::x86_64::*;

/// bf16 bits (in the low halves of 32-bit lanes) to f32, a plain shift.
///
/// `half` quiets a signalling NaN here; this does not need to, because every use is
/// followed by an f32 multiply (`map_ps` (avx512.rs)), which quiets it the same way (sets bit 22,
/// keeps the payload), and dropped lanes do not depend on the input.
#[inline(always)]
/// # Safety
/// The CPU must support AVX-512 F, BW and VL.
pub(super) unsafe fn widen_bf16(h: __m256i) -> __m512 {
    // SAFETY: the caller upholds this fn's contract: the CPU must support AVX-512 F, BW and VL.
    unsafe { _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h))) }
}

/// f32 to bf16 with integer operations: round to nearest even (add 0x7FFF plus the last
/// kept bit, then truncate), a NaN keeps its top bits and gets the quiet bit.
#[inline(always)]
/// # Safety
/// The CPU must support AVX-512 F, BW and VL.
unsafe fn narrow_bf16_integer(r: __m512) -> __m256i {
    // SAFETY: the caller upholds this fn's contract: the CPU must support AVX-512 F, BW and VL.
    unsafe {
        let x = _mm512_castps_si512(r);
        let nan = _mm512_cmpgt_epu32_mask(
            _mm512_and_si512(x, _mm512_set1_epi32(0x7FFF_FFFF)),
            _mm512_set1_epi32(0x7F80_0000),
        );
        let top = _mm512_srli_epi32::<16>(x);
        let last = _mm512_and_si512(top, _mm512_set1_epi32(1));
        let biased = _mm512_add_epi32(_mm512_add_epi32(x, _mm512_set1_epi32(0x7FFF)), last);
        let rounded = _mm512_srli_epi32::<16>(biased);
        let out = _mm512_mask_or_epi32(rounded, nan, top, _mm512_set1_epi32(0x40));
        _mm512_cvtepi32_epi16(out)
    }
}

/// f32 to bf16, the spec's rounding; `vcvtneps2bf16` when `HW_BF16`, except for vectors
/// holding an f32 subnormal, which the instruction would flush to zero.
#[inline(always)]
/// # Safety
/// The CPU must support AVX-512 F, BW and VL, and AVX-512 BF16 when `HW_BF16`.
pub(super) unsafe fn narrow_bf16<const HW_BF16: bool>(r: __m512) -> __m256i {
    // SAFETY: the caller upholds this fn's contract: the CPU must support AVX-512 F, BW and VL,
    // and AVX-512 BF16 when `HW_BF16`.
    unsafe {
        if HW_BF16 {
            // 0x20: a denormal of either sign.
            if _mm512_fpclass_ps_mask::<0x20>(r) == 0 {
                return hardware_narrow_bf16(r);
            }
        }
        narrow_bf16_integer(r)
    }
}

/// `vcvtneps2bf16`; a separate function so that its feature does not leak into callers.
#[inline(always)]
/// # Safety
/// The CPU must support AVX-512 F and AVX-512 BF16.
unsafe fn hardware_narrow_bf16(r: __m512) -> __m256i {
    // SAFETY: the caller upholds this fn's contract: the CPU must support AVX-512 F and AVX-512
    // BF16.
    unsafe {
        // SAFETY (layout): __m256bh and __m256i are both 32 bytes of plain bits.
        std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(r))
    }
}
