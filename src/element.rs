//! The element types dropkit computes on and their compute types (SPEC section 2).
//!
//! f32, f16 and bf16 compute in f32; f64 computes in f64. Widening to the compute type is
//! exact and narrowing rounds once, to nearest even.

use half::{bf16, f16};
use std::fmt;

/// The dtype of a tensor, for messages and dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F64,
    F16,
    BF16,
}

impl DType {
    /// The short name used in kernel names (`dropout_fwd_f32`) and messages.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 => 8,
            DType::F16 | DType::BF16 => 2,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a type must be to cross to a CUDA kernel (nothing without the `cuda` feature).
#[cfg(feature = "cuda")]
pub trait DeviceScalar: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits {}
#[cfg(feature = "cuda")]
impl<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits> DeviceScalar for T {}
/// What a type must be to cross to a CUDA kernel (nothing without the `cuda` feature).
#[cfg(not(feature = "cuda"))]
pub trait DeviceScalar {}
#[cfg(not(feature = "cuda"))]
impl<T> DeviceScalar for T {}

/// The compute type C: f32 or f64. Plain IEEE operations, never fused.
pub trait ComputeFloat:
    Copy + Send + Sync + PartialEq + fmt::Debug + DeviceScalar + 'static
{
    const ZERO: Self;
    /// Rounds an f64 once to this type.
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn mul(self, rhs: Self) -> Self;
    fn add(self, rhs: Self) -> Self;
}

impl ComputeFloat for f32 {
    const ZERO: Self = 0.0;
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    #[inline(always)]
    fn mul(self, rhs: Self) -> Self {
        self * rhs
    }
    #[inline(always)]
    fn add(self, rhs: Self) -> Self {
        self + rhs
    }
}

impl ComputeFloat for f64 {
    const ZERO: Self = 0.0;
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn mul(self, rhs: Self) -> Self {
        self * rhs
    }
    #[inline(always)]
    fn add(self, rhs: Self) -> Self {
        self + rhs
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

/// A tensor element: f32, f64, `half::f16` or `half::bf16`.
pub trait Element:
    sealed::Sealed + Copy + Send + Sync + Default + PartialEq + fmt::Debug + DeviceScalar + 'static
{
    const DTYPE: DType;
    type Compute: ComputeFloat;
    /// +0.0.
    const ZERO: Self;
    /// 1.0.
    const ONE: Self;

    /// Exact widening.
    fn to_compute(self) -> Self::Compute;
    /// Round to nearest even.
    fn from_compute(c: Self::Compute) -> Self;
    /// One rounding to nearest even from f64 (reductions accumulate in f64).
    fn from_f64(v: f64) -> Self;
    /// The raw bits, widened to u64, for bit-exact comparisons.
    fn to_bits_u64(self) -> u64;

    /// A vector of `n` zeros (+0.0). The default is `vec![ZERO; n]`, which the standard
    /// library already turns into zeroed allocation (calloc: fresh pages need no writing)
    /// for f32 and f64; f16 and bf16 get the same through a `Vec<u16>`, instead of a pass
    /// that writes every element before the backend overwrites it.
    #[doc(hidden)]
    #[inline]
    fn zeroed_vec(n: usize) -> Vec<Self> {
        vec![Self::ZERO; n]
    }

    /// Widens a block; f16 and bf16 override this with half's vectorised slice conversion.
    #[inline(always)]
    fn to_compute_block(src: &[Self], dst: &mut [Self::Compute]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = s.to_compute();
        }
    }

    /// Narrows a block.
    #[inline(always)]
    fn from_compute_block(src: &[Self::Compute], dst: &mut [Self]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = Self::from_compute(s);
        }
    }
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    type Compute = f32;
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    #[inline(always)]
    fn to_compute(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_compute(c: f32) -> Self {
        c
    }
    // The compute type is the element type: whole-block copies (vector moves), not an
    // element loop that the compiler may leave scalar.
    #[inline(always)]
    fn to_compute_block(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    #[inline(always)]
    fn from_compute_block(src: &[f32], dst: &mut [Self]) {
        dst.copy_from_slice(src);
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_bits_u64(self) -> u64 {
        u64::from(self.to_bits())
    }
}

impl Element for f64 {
    const DTYPE: DType = DType::F64;
    type Compute = f64;
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    #[inline(always)]
    fn to_compute(self) -> f64 {
        self
    }
    #[inline(always)]
    fn from_compute(c: f64) -> Self {
        c
    }
    // The compute type is the element type: whole-block copies (vector moves), not an
    // element loop that the compiler may leave scalar.
    #[inline(always)]
    fn to_compute_block(src: &[Self], dst: &mut [f64]) {
        dst.copy_from_slice(src);
    }
    #[inline(always)]
    fn from_compute_block(src: &[f64], dst: &mut [Self]) {
        dst.copy_from_slice(src);
    }
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_bits_u64(self) -> u64 {
        self.to_bits()
    }
}

impl Element for f16 {
    const DTYPE: DType = DType::F16;
    type Compute = f32;
    const ZERO: Self = f16::ZERO;
    const ONE: Self = f16::ONE;
    #[inline]
    fn zeroed_vec(n: usize) -> Vec<Self> {
        use half::vec::HalfBitsVecExt;
        // +0.0 is the all-zero bit pattern.
        vec![0u16; n].reinterpret_into()
    }
    #[inline(always)]
    fn to_compute(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    fn from_compute(c: f32) -> Self {
        f16::from_f32(c)
    }
    fn from_f64(v: f64) -> Self {
        f16::from_f32(f64_to_f32_round_to_odd(v))
    }
    fn to_bits_u64(self) -> u64 {
        u64::from(self.to_bits())
    }
    #[inline(always)]
    fn to_compute_block(src: &[Self], dst: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            if let (Ok(s), Ok(d)) = (src.try_into(), dst.try_into()) {
                if crate::cpu::simd::avx2() {
                    // SAFETY: the CPU supports F16C (part of the AVX2 level), checked just above.
                    unsafe { f16c::widen32(s, d) };
                    return;
                }
            }
        }
        use half::slice::HalfFloatSliceExt;
        src.convert_to_f32_slice(dst);
    }
    #[inline(always)]
    fn from_compute_block(src: &[f32], dst: &mut [Self]) {
        #[cfg(target_arch = "x86_64")]
        {
            if let (Ok(s), Ok(d)) = (src.try_into(), dst.try_into()) {
                if crate::cpu::simd::avx2() {
                    // SAFETY: the CPU supports F16C (part of the AVX2 level), checked just above.
                    unsafe { f16c::narrow32(s, d) };
                    return;
                }
            }
        }
        use half::slice::HalfFloatSliceExt;
        dst.convert_from_f32_slice(src);
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
        for i in 0..4 {
            // SAFETY: 8 elements at 8 * i, i < 4, inside both arrays; unaligned accesses.
            let h = _mm_loadu_si128(src.as_ptr().add(8 * i) as *const __m128i);
            _mm256_storeu_ps(dst.as_mut_ptr().add(8 * i), _mm256_cvtph_ps(h));
        }
    }

    /// Round to nearest even, like `f16::from_f32`.
    ///
    /// # Safety
    /// The CPU must support F16C.
    #[inline(always)]
    pub(super) unsafe fn narrow32(src: &[f32; 32], dst: &mut [f16; 32]) {
        for i in 0..4 {
            // SAFETY: 8 elements at 8 * i, i < 4, inside both arrays; unaligned accesses.
            let v = _mm256_loadu_ps(src.as_ptr().add(8 * i));
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
            _mm_storeu_si128(dst.as_mut_ptr().add(8 * i) as *mut __m128i, h);
        }
    }
}

impl Element for bf16 {
    const DTYPE: DType = DType::BF16;
    type Compute = f32;
    const ZERO: Self = bf16::ZERO;
    const ONE: Self = bf16::ONE;
    #[inline]
    fn zeroed_vec(n: usize) -> Vec<Self> {
        use half::vec::HalfBitsVecExt;
        // +0.0 is the all-zero bit pattern.
        vec![0u16; n].reinterpret_into()
    }
    #[inline(always)]
    fn to_compute(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    fn from_compute(c: f32) -> Self {
        bf16::from_f32(c)
    }
    fn from_f64(v: f64) -> Self {
        bf16::from_f32(f64_to_f32_round_to_odd(v))
    }
    fn to_bits_u64(self) -> u64 {
        u64::from(self.to_bits())
    }
    #[inline(always)]
    fn to_compute_block(src: &[Self], dst: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            if let (Ok(s), Ok(d)) = (src.try_into(), dst.try_into()) {
                if crate::cpu::simd::avx2() {
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
    #[inline(always)]
    fn from_compute_block(src: &[f32], dst: &mut [Self]) {
        #[cfg(target_arch = "x86_64")]
        {
            if let (Ok(s), Ok(d)) = (src.try_into(), dst.try_into()) {
                if crate::cpu::simd::avx2() {
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

    /// # Safety
    /// The CPU must support AVX2.
    #[inline(always)]
    pub(super) unsafe fn narrow32(src: &[f32; 32], dst: &mut [bf16; 32]) {
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

/// f64 to f32 rounding to odd: truncate, then set the last bit if anything was lost.
///
/// Rounding to odd into f32 (24 bits) and then to nearest even into f16 or bf16 (at most
/// 11 bits) is one correct rounding from f64, as CUDA's `__double2half` and
/// `__double2bfloat16` do; half's own f64 conversions ignore the low mantissa bits.
pub fn f64_to_f32_round_to_odd(v: f64) -> f32 {
    let nearest = v as f32;
    if v.is_nan() || f64::from(nearest) == v {
        return nearest;
    }
    // Step the nearest value toward zero if it rounded away from zero: that is truncation.
    let truncated = if f64::from(nearest).abs() > v.abs() {
        f32::from_bits(nearest.to_bits() - 1)
    } else {
        nearest
    };
    f32::from_bits(truncated.to_bits() | 1)
}

/// The scale s (or any f64 constant) rounded once to the compute type of `T`.
pub fn to_compute_f64<T: Element>(v: f64) -> T::Compute {
    <T::Compute as ComputeFloat>::from_f64(v)
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
            bf16::from_compute_block(&f, &mut h);
            let mut back = [0f32; 32];
            bf16::to_compute_block(&h, &mut back);
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
            f16::from_compute_block(&f, &mut h);
            bf16::from_compute_block(&f, &mut b);
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
            f16::to_compute_block(chunk, &mut f);
            let mut back = [f16::ZERO; 32];
            f16::from_compute_block(&f, &mut back);
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
        f16::from_compute_block(&f, &mut h);
        for k in 0..32 {
            assert_eq!(h[k].to_bits(), f16::from_f32(f[k]).to_bits());
        }
    }

    #[test]
    fn f64_to_half_rounds_once() {
        // 1 + 2^-11 + 2^-40 sits just above the f16 tie between 1 and 1 + 2^-10: correct
        // rounding goes up; dropping the low bits (a tie, rounded to even) would go down.
        let v = 1.0 + 2f64.powi(-11) + 2f64.powi(-40);
        assert_eq!(
            f16::from_f64(v),
            f16::from_f32(1.0),
            "half's own conversion truncates"
        );
        assert_eq!(<f16 as Element>::from_f64(v).to_f64(), 1.0 + 2f64.powi(-10));
        let v = 1.0 + 2f64.powi(-8) + 2f64.powi(-40);
        assert_eq!(<bf16 as Element>::from_f64(v).to_f64(), 1.0 + 2f64.powi(-7));
        // Exact and overflowing values.
        assert_eq!(<f16 as Element>::from_f64(0.5), f16::from_f32(0.5));
        assert!(<f16 as Element>::from_f64(1e300).is_infinite());
        assert!(<bf16 as Element>::from_f64(-1e300).is_infinite());
        assert!(<bf16 as Element>::from_f64(f64::NAN).is_nan());
        assert_eq!(
            f64_to_f32_round_to_odd(-(1.0 + 2f64.powi(-30))),
            -(1.0 + 2f32.powi(-23))
        );
    }
}
