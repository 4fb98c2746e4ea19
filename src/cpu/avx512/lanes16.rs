//! The [`Lanes16`] impls: how f32, f16 and bf16 load sixteen lanes widened to f32 and
//! store them narrowed (bf16 through `bf16_convert`, f16 with the F16C instructions'
//! AVX-512 forms).

use super::bf16_convert::{narrow_bf16, widen_bf16};
use super::Lanes16;
use half::{bf16, f16};
use std::arch::x86_64::*;

impl Lanes16 for f32 {
    const STREAMS: bool = true;

    #[inline(always)]
    /// # Safety
    /// As [`Avx512Element::word`], for the lanes set in `lanes`.
    unsafe fn load16(x: *const f32, lanes: __mmask16) -> __m512 {
        // SAFETY: the caller upholds this fn's contract: as [`Avx512Element::word`], for the
        // lanes set in `lanes`.
        unsafe { _mm512_maskz_loadu_ps(lanes, x) }
    }
    #[inline(always)]
    /// # Safety
    /// As [`Avx512Element::word`], for the lanes set in `lanes`.
    unsafe fn store16<const HW_BF16: bool>(y: *mut f32, lanes: __mmask16, r: __m512) {
        // SAFETY: the caller upholds this fn's contract: as [`Avx512Element::word`], for the
        // lanes set in `lanes`.
        unsafe { _mm512_mask_storeu_ps(y, lanes, r) }
    }
    #[inline(always)]
    /// # Safety
    /// As [`Lanes16::stream16`].
    unsafe fn stream16<const HW_BF16: bool>(y: *mut f32, r: __m512) {
        // SAFETY: the caller upholds this fn's contract: as [`Lanes16::stream16`].
        unsafe { _mm512_stream_ps(y, r) }
    }
    #[inline(always)]
    /// # Safety
    /// As [`Lanes16::round16`].
    unsafe fn round16<const HW_BF16: bool>(r: __m512) -> __m512 {
        r
    }
}

impl Lanes16 for f16 {
    #[inline(always)]
    /// # Safety
    /// As [`Avx512Element::word`], for the lanes set in `lanes`.
    unsafe fn load16(x: *const f16, lanes: __mmask16) -> __m512 {
        // SAFETY: the caller upholds this fn's contract: as [`Avx512Element::word`], for the
        // lanes set in `lanes`.
        unsafe { _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(lanes, x as *const i16)) }
    }
    #[inline(always)]
    /// # Safety
    /// As [`Avx512Element::word`], for the lanes set in `lanes`.
    unsafe fn store16<const HW_BF16: bool>(y: *mut f16, lanes: __mmask16, r: __m512) {
        // SAFETY: the caller upholds this fn's contract: as [`Avx512Element::word`], for the
        // lanes set in `lanes`.
        unsafe {
            // Round to nearest even, as F16C's form and `f16::from_f32`.
            let h = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(r);
            _mm256_mask_storeu_epi16(y as *mut i16, lanes, h);
        }
    }
    #[inline(always)]
    /// # Safety
    /// As [`Lanes16::round16`].
    unsafe fn round16<const HW_BF16: bool>(r: __m512) -> __m512 {
        // SAFETY: the caller upholds this fn's contract (AVX-512 F and F16C).
        unsafe {
            _mm512_cvtph_ps(_mm512_cvtps_ph::<
                { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
            >(r))
        }
    }
}

impl Lanes16 for bf16 {
    #[inline(always)]
    /// # Safety
    /// As [`Avx512Element::word`], for the lanes set in `lanes`.
    unsafe fn load16(x: *const bf16, lanes: __mmask16) -> __m512 {
        // SAFETY: the caller upholds this fn's contract: as [`Avx512Element::word`], for the
        // lanes set in `lanes`.
        unsafe { widen_bf16(_mm256_maskz_loadu_epi16(lanes, x as *const i16)) }
    }
    #[inline(always)]
    /// # Safety
    /// As [`Avx512Element::word`], for the lanes set in `lanes`.
    unsafe fn store16<const HW_BF16: bool>(y: *mut bf16, lanes: __mmask16, r: __m512) {
        // SAFETY: the caller upholds this fn's contract: as [`Avx512Element::word`], for the
        // lanes set in `lanes`.
        unsafe {
            _mm256_mask_storeu_epi16(y as *mut i16, lanes, narrow_bf16::<HW_BF16>(r));
        }
    }
    #[inline(always)]
    /// # Safety
    /// As [`Lanes16::round16`].
    unsafe fn round16<const HW_BF16: bool>(r: __m512) -> __m512 {
        // SAFETY: the caller upholds this fn's contract (AVX-512 F, BW, VL; BF16 when
        // `HW_BF16`).
        unsafe { widen_bf16(narrow_bf16::<HW_BF16>(r)) }
    }
}
