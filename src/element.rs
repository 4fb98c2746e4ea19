//! The element types dropkit computes on and their compute types (SPEC section 2).
//!
//! f32, f16 and bf16 compute in f32; f64 computes in f64. Widening to the compute type is
//! exact and narrowing rounds once, to nearest even.

use half::{bf16, f16};
use std::fmt;

/// The dtype of a tensor, for messages and dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// `f32`.
    F32,
    /// `f64`.
    F64,
    /// `half::f16`.
    F16,
    /// `half::bf16`.
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
    /// +0.0.
    const ZERO: Self;
    /// Rounds an f64 once to this type.
    fn from_f64(v: f64) -> Self;
    /// Widens to f64, exactly.
    fn to_f64(self) -> f64;
    /// One IEEE multiplication, rounded to nearest even.
    fn mul(self, rhs: Self) -> Self;
    /// One IEEE addition, rounded to nearest even.
    fn add(self, rhs: Self) -> Self;
    /// One IEEE subtraction, rounded to nearest even.
    fn sub(self, rhs: Self) -> Self;
    /// One IEEE division, rounded to nearest even.
    fn div(self, rhs: Self) -> Self;
    /// The IEEE square root, correctly rounded.
    fn sqrt(self) -> Self;
    /// `self` when `keep`, else +0: a select on the bits (so a NaN or inf in `self`
    /// cannot leak into a dropped value), branch-free so that loops of it vectorize.
    fn kept_or_zero(self, keep: bool) -> Self;
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
    #[inline(always)]
    fn sub(self, rhs: Self) -> Self {
        self - rhs
    }
    #[inline(always)]
    fn div(self, rhs: Self) -> Self {
        self / rhs
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        // Rust's sqrt is IEEE's correctly rounded square root (sqrtss / sqrtsd).
        Self::sqrt(self)
    }
    #[inline(always)]
    fn kept_or_zero(self, keep: bool) -> Self {
        f32::from_bits(self.to_bits() & 0u32.wrapping_sub(u32::from(keep)))
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
    #[inline(always)]
    fn sub(self, rhs: Self) -> Self {
        self - rhs
    }
    #[inline(always)]
    fn div(self, rhs: Self) -> Self {
        self / rhs
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        // Rust's sqrt is IEEE's correctly rounded square root (sqrtss / sqrtsd).
        Self::sqrt(self)
    }
    #[inline(always)]
    fn kept_or_zero(self, keep: bool) -> Self {
        f64::from_bits(self.to_bits() & 0u64.wrapping_sub(u64::from(keep)))
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
    /// Which dtype this is.
    const DTYPE: DType;
    /// The compute type C (SPEC section 2): f32 for f16, bf16 and f32, f64 for f64.
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
    // The CPU backend's vectorised conversions (F16C where the CPU has it).
    #[inline(always)]
    fn to_compute_block(src: &[Self], dst: &mut [f32]) {
        crate::host::convert::f16_to_f32_block(src, dst);
    }
    #[inline(always)]
    fn from_compute_block(src: &[f32], dst: &mut [Self]) {
        crate::host::convert::f32_to_f16_block(src, dst);
    }
}

impl Element for bf16 {
    const DTYPE: DType = DType::BF16;
    type Compute = f32;
    const ZERO: Self = bf16::ZERO;
    const ONE: Self = bf16::ONE;
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
    // The CPU backend's branch-free conversions (AVX2 where the CPU has it).
    #[inline(always)]
    fn to_compute_block(src: &[Self], dst: &mut [f32]) {
        crate::host::convert::bf16_to_f32_block(src, dst);
    }
    #[inline(always)]
    fn from_compute_block(src: &[f32], dst: &mut [Self]) {
        crate::host::convert::f32_to_bf16_block(src, dst);
    }
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
