//! An independent scalar reference of SPEC sections 2, 3, 4 and 6 for the reliability
//! tests: threshold, keep probability, scale, alpha constants and the per-element
//! arithmetic, written out from the spec one element at a time. Only the random words come
//! from dropkit (its public `philox::random_word`); everything that turns a word into an
//! output is here, so a bug in the crate's threshold or arithmetic cannot hide behind
//! itself.
#![allow(dead_code)]

use dropkit::Element;
use half::{bf16, f16};

/// 2^32 as an f64 (exact).
pub const TWO_POW_32: f64 = 4_294_967_296.0;
/// -lambda * alpha of SELU (SPEC section 6).
pub const SELU_A: f64 = -1.758_099_340_847_376_6;

/// True when `p` is a probability the spec accepts: finite and in [0, 1].
pub fn valid_p(p: f64) -> bool {
    p.is_finite() && (0.0..=1.0).contains(&p)
}

/// t = floor(p * 2^32 + 0.5) in f64, as an integer in [0, 2^32].
pub fn threshold(p: f64) -> u64 {
    (p * TWO_POW_32 + 0.5).floor() as u64
}

/// q = (2^32 - t) / 2^32.
pub fn keep_probability(t: u64) -> f64 {
    (TWO_POW_32 - t as f64) / TWO_POW_32
}

/// Decision `i` at (seed, offset) is kept: u_i >= t.
pub fn kept(seed: u64, offset: u64, i: u64, t: u64) -> bool {
    u64::from(dropkit::philox::random_word(seed, offset, i)) >= t
}

/// The packed mask of SPEC section 4 for decisions `first .. first + count`.
pub fn keep_bits(seed: u64, offset: u64, first: u64, count: usize, t: u64) -> Vec<u32> {
    let mut bits = vec![0u32; count.div_ceil(32)];
    for k in 0..count {
        if kept(seed, offset, first + k as u64, t) {
            bits[k / 32] |= 1 << (k % 32);
        }
    }
    bits
}

/// What the reference needs of an element type: exact widening, the compute type C, and
/// one round-to-nearest-even narrowing from C (through `half` for the 16-bit types).
pub trait RefFloat: Element {
    /// C is f64 (for f64 tensors) rather than f32.
    const COMPUTE_F64: bool;
    /// The value, exactly, as an f64.
    fn widen(self) -> f64;
    /// `c` (a value of C held in an f64) rounded once to this type.
    fn narrow(c: f64) -> Self;
    /// Data for tests (any rounding is fine here).
    fn data(v: f64) -> Self;
}

impl RefFloat for f32 {
    const COMPUTE_F64: bool = false;
    fn widen(self) -> f64 {
        f64::from(self)
    }
    fn narrow(c: f64) -> Self {
        c as f32
    }
    fn data(v: f64) -> Self {
        v as f32
    }
}

impl RefFloat for f64 {
    const COMPUTE_F64: bool = true;
    fn widen(self) -> f64 {
        self
    }
    fn narrow(c: f64) -> Self {
        c
    }
    fn data(v: f64) -> Self {
        v
    }
}

/// f16 and bf16 compute in f32 and narrow through `half`.
macro_rules! half_ref_float {
    ($t:ty) => {
        impl RefFloat for $t {
            const COMPUTE_F64: bool = false;
            fn widen(self) -> f64 {
                f64::from(self.to_f32())
            }
            fn narrow(c: f64) -> Self {
                <$t>::from_f32(c as f32)
            }
            fn data(v: f64) -> Self {
                <$t>::from_f32(v as f32)
            }
        }
    };
}
half_ref_float!(f16);
half_ref_float!(bf16);

/// An f64 constant rounded once to C.
pub fn to_c<T: RefFloat>(v: f64) -> f64 {
    if T::COMPUTE_F64 {
        v
    } else {
        f64::from(v as f32)
    }
}

/// One IEEE multiply in C (operands are values of C).
pub fn mul_c<T: RefFloat>(a: f64, b: f64) -> f64 {
    if T::COMPUTE_F64 {
        a * b
    } else {
        f64::from(a as f32 * b as f32)
    }
}

/// One IEEE add in C (operands are values of C).
pub fn add_c<T: RefFloat>(a: f64, b: f64) -> f64 {
    if T::COMPUTE_F64 {
        a + b
    } else {
        f64::from(a as f32 + b as f32)
    }
}

/// How a kept element is transformed and what a dropped one becomes (SPEC section 6).
#[derive(Debug, Clone, Copy)]
pub enum Arith {
    /// kept x * s, dropped +0 (Dropout, channel dropout, DropPath).
    Scale,
    /// kept a*x + b, dropped a*A + b (AlphaDropout, FeatureAlphaDropout).
    Alpha,
}

/// The constants of one call in C: (kept factor, kept offset, dropped value, gradient
/// factor). For `Scale`: (s, -, +0, s); for `Alpha`: (a, b, a*A + b, a).
pub fn constants<T: RefFloat>(t: u64, arith: Arith) -> (f64, f64, f64, f64) {
    let q = keep_probability(t);
    match arith {
        Arith::Scale => {
            let s = to_c::<T>(1.0 / q);
            (s, 0.0, 0.0, s)
        }
        Arith::Alpha => {
            let a = 1.0 / (q * (1.0 + (1.0 - q) * SELU_A * SELU_A)).sqrt();
            let b = -a * SELU_A * (1.0 - q);
            let (ac, bc) = (to_c::<T>(a), to_c::<T>(b));
            let dropped = add_c::<T>(mul_c::<T>(to_c::<T>(SELU_A), ac), bc);
            (ac, bc, dropped, ac)
        }
    }
}

/// The forward of one element: `keep` is its decision.
pub fn forward_elem<T: RefFloat>(x: T, keep: bool, t: u64, arith: Arith) -> T {
    if t == 1 << 32 {
        // p = 1: everything is +0 (SPEC section 2).
        return T::narrow(0.0);
    }
    let (factor, shift, dropped, _) = constants::<T>(t, arith);
    if !keep {
        return T::narrow(dropped);
    }
    match arith {
        Arith::Scale => T::narrow(mul_c::<T>(x.widen(), factor)),
        Arith::Alpha => T::narrow(add_c::<T>(mul_c::<T>(x.widen(), factor), shift)),
    }
}

/// The backward of one element: dx = kept ? round_T(dy * g) : +0.
pub fn backward_elem<T: RefFloat>(dy: T, keep: bool, t: u64, arith: Arith) -> T {
    if !keep || t == 1 << 32 {
        return T::narrow(0.0);
    }
    let (_, _, _, g) = constants::<T>(t, arith);
    T::narrow(mul_c::<T>(dy.widen(), g))
}

/// Decision of local element `i` of a tensor starting at global element `index_base`,
/// with `group` elements per decision (1 for elementwise layers).
pub fn decision_index(index_base: u64, i: usize, group: u64) -> u64 {
    (index_base + i as u64) / group
}

/// The fused forward of one element (SPEC section 6): x, bias value, residual.
pub fn fused_elem<T: RefFloat>(x: T, bias: T, residual: T, keep: bool, t: u64) -> T {
    let z = add_c::<T>(x.widen(), bias.widen());
    let m = if !keep || t == 1 << 32 {
        0.0
    } else {
        mul_c::<T>(z, to_c::<T>(1.0 / keep_probability(t)))
    };
    T::narrow(add_c::<T>(residual.widen(), m))
}

/// Same bits, or both NaN (NaN payloads are outside the guarantees).
pub fn same<T: RefFloat>(a: T, b: T) -> bool {
    a.to_bits_u64() == b.to_bits_u64() || (a.widen().is_nan() && b.widen().is_nan())
}

/// Index of the first element where `got` and `want` differ (see [`same`]).
pub fn first_difference<T: RefFloat>(got: &[T], want: &[T]) -> Option<usize> {
    if got.len() != want.len() {
        return Some(got.len().min(want.len()));
    }
    got.iter().zip(want).position(|(&g, &w)| !same(g, w))
}

/// Deterministic test data: varied signs and exponents, and with `specials` also NaN,
/// infinities, -0.0, subnormals and the largest finite value at every 7th element.
pub fn data<T: RefFloat>(n: usize, salt: u64, specials: bool) -> Vec<T> {
    (0..n as u64)
        .map(|i| {
            if specials && i % 7 == 3 {
                let special = [
                    f64::NAN,
                    f64::INFINITY,
                    f64::NEG_INFINITY,
                    -0.0,
                    f64::from(f32::from_bits(1)),
                    f64::from(f32::MAX),
                    5.960_464_477_539_063e-8, // smallest f16 subnormal
                ];
                return T::data(
                    special[((i / 7).wrapping_add(salt) % special.len() as u64) as usize],
                );
            }
            let h = (i ^ salt).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
            let v = (h as f64 / (1u64 << 24) as f64 - 0.5) * 2f64.powi((i % 11) as i32 - 5);
            T::data(v)
        })
        .collect()
}
