//! The block conversions between f16 / bf16 and f32: one mask word (32
//! elements) at a time, with F16C and AVX2 where the CPU has them and portable code
//! otherwise, always with the same bits as `half` (SPEC section 2: widening is exact,
//! narrowing rounds once to nearest even). `Element::to_compute_block` and
//! `from_compute_block` of f16 and bf16 call these.

use half::{bf16, f16};

/// f16 to f32, exact.
#[inline(always)]
pub(crate) fn f16_to_f32_block(src: &[f16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if let (Ok(s), Ok(d)) = (src.try_into(), dst.try_into()) {
            if crate::host::simd::avx2() {
                // SAFETY: the CPU supports F16C (part of the AVX2 level), checked just above.
                unsafe { f16c::widen32(s, d) };
                return;
            }
        }
    }
    use half::slice::HalfFloatSliceExt;
    src.convert_to_f32_slice(dst);
}

/// f32 to f16, rounding to nearest even.
#[inline(always)]
pub(crate) fn f32_to_f16_block(src: &[f32], dst: &mut [f16]) {
    #[cfg(target_arch = "x86_64")]
    {
        if let (Ok(s), Ok(d)) = (src.try_into(), dst.try_into()) {
            if crate::host::simd::avx2() {
                // SAFETY: the CPU supports F16C (part of the AVX2 level), checked just above.
                unsafe { f16c::narrow32(s, d) };
                return;
            }
        }
    }
    use half::slice::HalfFloatSliceExt;
    dst.convert_from_f32_slice(src);
}

/// bf16 to f32, exact (NaNs quieted as half does).
#[inline(always)]
pub(crate) fn bf16_to_f32_block(src: &[bf16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if let (Ok(s), Ok(d)) = (src.try_into(), dst.try_into()) {
            if crate::host::simd::avx2() {
                // SAFETY: the CPU supports AVX2, checked just above.
                unsafe { bf16_avx2::widen32(s, d) };
                return;
            }
        }
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f32::from_bits(bf16_bits_to_f32_bits(s.to_bits()));
    }
}

/// f32 to bf16, rounding to nearest even.
#[inline(always)]
pub(crate) fn f32_to_bf16_block(src: &[f32], dst: &mut [bf16]) {
    #[cfg(target_arch = "x86_64")]
    {
        if let (Ok(s), Ok(d)) = (src.try_into(), dst.try_into()) {
            if crate::host::simd::avx2() {
                // SAFETY: the CPU supports AVX2, checked just above.
                unsafe { bf16_avx2::narrow32(s, d) };
                return;
            }
        }
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = bf16::from_bits(f32_bits_to_bf16_bits(s.to_bits()));
    }
}

/// One mask word of f16 through F16C, as half's slice conversions do when the CPU has it
/// (the same instructions and rounding, so the same bits), but inlined: `#[inline(always)]`
/// without `#[target_feature]`, fast inside the CPU backend's AVX2 + F16C chunk loop.
#[cfg(target_arch = "x86_64")]
mod f16c {
    use half::f16;
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support F16C.
    #[inline(always)]
    pub(super) unsafe fn widen32(src: &[f16; 32], dst: &mut [f32; 32]) {
        // SAFETY: the caller upholds this fn's contract: the CPU must support F16C.
        unsafe {
            for i in 0..4 {
                // SAFETY: 8 elements at 8 * i, i < 4, inside both arrays; unaligned accesses.
                let h = _mm_loadu_si128(src.as_ptr().add(8 * i) as *const __m128i);
                _mm256_storeu_ps(dst.as_mut_ptr().add(8 * i), _mm256_cvtph_ps(h));
            }
        }
    }

    /// Round to nearest even, like `f16::from_f32`.
    ///
    /// # Safety
    /// The CPU must support F16C.
    #[inline(always)]
    pub(super) unsafe fn narrow32(src: &[f32; 32], dst: &mut [f16; 32]) {
        // SAFETY: the caller upholds this fn's contract: the CPU must support F16C.
        unsafe {
            for i in 0..4 {
                // SAFETY: 8 elements at 8 * i, i < 4, inside both arrays; unaligned accesses.
                let v = _mm256_loadu_ps(src.as_ptr().add(8 * i));
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
                _mm_storeu_si128(dst.as_mut_ptr().add(8 * i) as *mut __m128i, h);
            }
        }
    }
}

/// One mask word of bf16 with AVX2 integer operations: the same arithmetic as
/// [`bf16_bits_to_f32_bits`] and [`f32_bits_to_bf16_bits`] (so the same bits as half), eight
/// lanes at a time. `#[inline(always)]` without `#[target_feature]`, like [`f16c`].
#[cfg(target_arch = "x86_64")]
mod bf16_avx2 {
    use half::bf16;
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support AVX2.
    #[inline(always)]
    pub(super) unsafe fn widen32(src: &[bf16; 32], dst: &mut [f32; 32]) {
        // SAFETY: the caller upholds this fn's contract: the CPU must support AVX2.
        unsafe {
            let abs = _mm256_set1_epi32(0x7FFF);
            let inf = _mm256_set1_epi32(0x7F80);
            let quiet = _mm256_set1_epi32(0x40);
            for i in 0..4 {
                // SAFETY: 8 elements at 8 * i, i < 4, inside both arrays; unaligned accesses.
                let h = _mm_loadu_si128(src.as_ptr().add(8 * i) as *const __m128i);
                let h = _mm256_cvtepu16_epi32(h);
                let nan = _mm256_cmpgt_epi32(_mm256_and_si256(h, abs), inf);
                let w = _mm256_slli_epi32::<16>(_mm256_or_si256(h, _mm256_and_si256(nan, quiet)));
                _mm256_storeu_si256(dst.as_mut_ptr().add(8 * i) as *mut __m256i, w);
            }
        }
    }

    /// # Safety
    /// The CPU must support AVX2.
    #[inline(always)]
    pub(super) unsafe fn narrow32(src: &[f32; 32], dst: &mut [bf16; 32]) {
        // SAFETY: the caller upholds this fn's contract: the CPU must support AVX2.
        unsafe {
            let abs = _mm256_set1_epi32(0x7FFF_FFFF);
            let inf = _mm256_set1_epi32(0x7F80_0000);
            let sticky_or_last = _mm256_set1_epi32(0x1_7FFF);
            let one = _mm256_set1_epi32(1);
            let quiet = _mm256_set1_epi32(0x40);
            let zero = _mm256_setzero_si256();
            let mut out = [_mm256_setzero_si256(); 4];
            for (i, o) in out.iter_mut().enumerate() {
                // SAFETY: 8 elements at 8 * i, i < 4, inside `src`; unaligned loads.
                let x = _mm256_loadu_si256(src.as_ptr().add(8 * i) as *const __m256i);
                // Compares are signed, so the masked (non-negative) value is compared.
                let nan = _mm256_cmpgt_epi32(_mm256_and_si256(x, abs), inf);
                let round = _mm256_and_si256(_mm256_srli_epi32::<15>(x), one);
                let rest = _mm256_cmpeq_epi32(_mm256_and_si256(x, sticky_or_last), zero);
                let up = _mm256_andnot_si256(rest, round);
                let top = _mm256_srli_epi32::<16>(x);
                let rounded = _mm256_add_epi32(top, _mm256_andnot_si256(nan, up));
                *o = _mm256_or_si256(rounded, _mm256_and_si256(nan, quiet));
            }
            // Pack pairs of registers to u16 (values fit, so saturation never applies); packus
            // works within 128-bit halves, so the 64-bit quarters are put back in order.
            for j in 0..2 {
                let p = _mm256_packus_epi32(out[2 * j], out[2 * j + 1]);
                let p = _mm256_permute4x64_epi64::<0b1101_1000>(p);
                // SAFETY: 16 elements at 16 * j, j < 2, inside `dst`; unaligned store.
                _mm256_storeu_si256(dst.as_mut_ptr().add(16 * j) as *mut __m256i, p);
            }
        }
    }
}

/// `bf16::to_f32` without branches (so block loops vectorise): the bits move up 16 places
/// and a NaN gets its quiet bit set, exactly as half does.
#[inline(always)]
fn bf16_bits_to_f32_bits(h: u16) -> u32 {
    let nan = u32::from(h & 0x7FFF > 0x7F80);
    (u32::from(h) | nan << 6) << 16
}

/// `bf16::from_f32` without branches: round to nearest even (up when the round bit is set
/// and the sticky bits or the last kept bit are); a NaN keeps its top bits and gets the
/// quiet bit, exactly as half does.
#[inline(always)]
fn f32_bits_to_bf16_bits(x: u32) -> u16 {
    let nan = u32::from(x & 0x7FFF_FFFF > 0x7F80_0000);
    let up = (x >> 15 & 1) & u32::from(x & 0x1_7FFF != 0);
    // A NaN adds nothing and sets the quiet bit instead.
    let top = x >> 16;
    ((top + (up & (nan ^ 1))) | nan << 6) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_block_conversions_match_half() {
        // Every bf16 widens as half widens it.
        for h in 0..=u16::MAX {
            let want = bf16::from_bits(h).to_f32().to_bits();
            assert_eq!(bf16_bits_to_f32_bits(h), want, "{h:#06x}");
        }
        // f32 patterns: a stride through all of them plus the neighbourhoods of every
        // rounding boundary class (ties, NaN / inf edges, largest finite), both signs.
        let mut patterns: Vec<u32> = (0..=u32::MAX).step_by(65_521).collect();
        for base in [
            0u32,
            0x7F7F_0000,
            0x7F80_0000,
            0x3F80_0000,
            0x0000_8000,
            0x0001_8000,
        ] {
            for d in 0..=0x1_0001u32 {
                patterns.push(base.wrapping_add(d));
                patterns.push(base.wrapping_add(d) | 0x8000_0000);
            }
        }
        for x in &patterns {
            let want = bf16::from_f32(f32::from_bits(*x)).to_bits();
            assert_eq!(f32_bits_to_bf16_bits(*x), want, "{x:#010x}");
        }
        // The block conversions (vector code where the CPU has it) agree with both.
        for chunk in patterns.chunks_exact(32) {
            let f: Vec<f32> = chunk.iter().map(|&x| f32::from_bits(x)).collect();
            let mut h = [bf16::ZERO; 32];
            f32_to_bf16_block(&f, &mut h);
            let mut back = [0f32; 32];
            bf16_to_f32_block(&h, &mut back);
            for k in 0..32 {
                let want = bf16::from_f32(f[k]).to_bits();
                assert_eq!(h[k].to_bits(), want, "{:#010x}", chunk[k]);
                assert_eq!(back[k].to_bits(), h[k].to_f32().to_bits());
            }
        }
    }

    /// Every f32 bit pattern through the block narrowing of f16 and bf16, against half's
    /// scalar conversions (minutes in a debug build: `cargo test --release -- --ignored`).
    #[test]
    #[ignore]
    fn exhaustive_block_narrowing_matches_half() {
        let mut f = [0f32; 32];
        let (mut h, mut b) = ([f16::ZERO; 32], [bf16::ZERO; 32]);
        for hi in 0..(1u64 << 27) {
            for (k, v) in f.iter_mut().enumerate() {
                *v = f32::from_bits(((hi << 5) | k as u64) as u32);
            }
            f32_to_f16_block(&f, &mut h);
            f32_to_bf16_block(&f, &mut b);
            for k in 0..32 {
                assert_eq!(h[k].to_bits(), f16::from_f32(f[k]).to_bits(), "{:?}", f[k]);
                assert_eq!(b[k].to_bits(), bf16::from_f32(f[k]).to_bits(), "{:?}", f[k]);
            }
        }
    }

    #[test]
    fn f16_block_conversions_match_half() {
        let all: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
        for chunk in all.chunks_exact(32) {
            let mut f = [0f32; 32];
            f16_to_f32_block(chunk, &mut f);
            let mut back = [f16::ZERO; 32];
            f32_to_f16_block(&f, &mut back);
            for k in 0..32 {
                assert_eq!(f[k].to_bits(), chunk[k].to_f32().to_bits());
                assert_eq!(back[k].to_bits(), f16::from_f32(f[k]).to_bits());
            }
        }
        let mut f = [0f32; 32];
        for (k, v) in f.iter_mut().enumerate() {
            *v = 1.0 + k as f32 * 2f32.powi(-12) + 2f32.powi(-20);
        }
        let mut h = [f16::ZERO; 32];
        f32_to_f16_block(&f, &mut h);
        for k in 0..32 {
            assert_eq!(h[k].to_bits(), f16::from_f32(f[k]).to_bits());
        }
    }
}
