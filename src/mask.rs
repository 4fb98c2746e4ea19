//! The drop decision of SPEC sections 2 and 4 on the host: probability validation,
//! threshold, effective keep probability, scale, and the packed keep-mask.
//!
//! This file and `kernels/philox.cuh` are the only places that turn `p` into decisions;
//! every layer and backend goes through [`Probability`].

use crate::error::{Error, Result};
use crate::philox;

/// 2^32 as the u64 threshold of "drop everything".
const TWO_POW_32: u64 = 1 << 32;

/// A validated drop probability with everything derived from it (SPEC section 2).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Probability {
    p: f64,
    threshold: u64,
}

impl Probability {
    /// Validates `p`: finite and in [0, 1], else [`Error::InvalidProbability`].
    pub fn new(p: f64) -> Result<Self> {
        if !p.is_finite() || !(0.0..=1.0).contains(&p) {
            return Err(Error::InvalidProbability(p));
        }
        // p * 2^32 is exact (a power-of-two scale); + 0.5 rounds once in f64; floor is exact.
        let threshold = (p * TWO_POW_32 as f64 + 0.5).floor() as u64;
        Ok(Self { p, threshold })
    }

    /// The probability as given.
    pub fn p(&self) -> f64 {
        self.p
    }

    /// t = floor(p * 2^32 + 0.5), in [0, 2^32]. Decision dropped <=> u < t.
    pub fn threshold(&self) -> u64 {
        self.threshold
    }

    /// q = (2^32 - t) / 2^32, the keep probability actually applied.
    pub fn keep_probability(&self) -> f64 {
        (TWO_POW_32 - self.threshold) as f64 / TWO_POW_32 as f64
    }

    /// s = 1 / q in f64 (infinite when everything is dropped; never used then).
    pub fn scale_f64(&self) -> f64 {
        1.0 / self.keep_probability()
    }

    /// s rounded once to f32, the compute type of f32, f16 and bf16 tensors.
    pub fn scale_f32(&self) -> f32 {
        self.scale_f64() as f32
    }

    /// True when p rounds to "drop everything" (t = 2^32).
    pub fn drops_all(&self) -> bool {
        self.threshold == TWO_POW_32
    }

    /// True when nothing is ever dropped (t = 0).
    pub fn drops_none(&self) -> bool {
        self.threshold == 0
    }

    /// The decision for a random word.
    #[inline(always)]
    pub fn keeps(&self, u: u32) -> bool {
        u64::from(u) >= self.threshold
    }
}

/// Number of u32 words that hold `n` packed decisions.
pub fn mask_words(n: usize) -> usize {
    n.div_ceil(32)
}

/// The random words of decisions `first .. first + 32`, for any `first` (not only multiples
/// of 4): eight Philox blocks when `first` is aligned, nine otherwise.
#[inline(always)]
pub fn words_at(seed: u64, offset: u64, first: u64) -> [u32; 32] {
    let shift = (first & 3) as usize;
    let group = first >> 2;
    let head = philox::words32(seed, offset, group);
    if shift == 0 {
        return head;
    }
    let tail = philox::philox4x32_10(philox::counter(group + 8, offset), philox::key(seed));
    let mut out = [0u32; 32];
    out[..32 - shift].copy_from_slice(&head[shift..]);
    out[32 - shift..].copy_from_slice(&tail[..shift]);
    out
}

/// The 32 keep bits (bit b = decision `first + b` kept) of decisions `first .. first + 32`:
/// [`pack_keep`] of [`words_at`], computed in vector registers on AVX2 CPUs when `first` is
/// a multiple of 4 (the usual case: the words of eight whole Philox blocks).
#[inline(always)]
pub fn keep_word(seed: u64, offset: u64, first: u64, prob: &Probability) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        if first & 3 == 0 && crate::host::simd::avx2() {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { x86::keep_word_avx2(seed, offset, first >> 2, prob) };
        }
    }
    pack_keep(&words_at(seed, offset, first), prob)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Probability;
    use crate::philox::x86::blocks8_avx2;
    use std::arch::x86_64::*;

    /// [`super::fill_keep_bits`] compiled with AVX2, so that the Philox code inlines.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn fill_keep_bits_avx2(
        seed: u64,
        offset: u64,
        first: u64,
        prob: &Probability,
        n: usize,
        bits: &mut [u32],
    ) {
        super::fill_keep_bits_impl(seed, offset, first, prob, n, bits)
    }

    /// [`super::keep_word`] for decisions `4 * group ..`: u >= t as an unsigned compare
    /// (`max(u, t) == u`), one sign bit per word gathered by `movemask`.
    ///
    /// # Safety
    /// The CPU must support AVX2. Fast when inlined into AVX2 code (see `philox::x86`).
    #[inline(always)]
    pub(super) unsafe fn keep_word_avx2(
        seed: u64,
        offset: u64,
        group: u64,
        prob: &Probability,
    ) -> u32 {
        // SAFETY: the caller upholds this fn's contract: the CPU must support AVX2. Fast when
        // inlined into AVX2 code (see `philox::x86`).
        unsafe {
            if prob.drops_all() {
                return 0;
            }
            // t < 2^32 here.
            let t = _mm256_set1_epi32(prob.threshold() as u32 as i32);
            let mut bits = 0u32;
            for (i, u) in blocks8_avx2(seed, offset, group).into_iter().enumerate() {
                let kept = _mm256_cmpeq_epi32(_mm256_max_epu32(u, t), u);
                bits |= (_mm256_movemask_ps(_mm256_castsi256_ps(kept)) as u32) << (8 * i);
            }
            bits
        }
    }
}

/// Packs the keep decisions of 32 random words into one mask word (bit b = word b kept).
#[inline(always)]
pub fn pack_keep(words: &[u32; 32], prob: &Probability) -> u32 {
    // u >= t as a u32 compare (vectorises); t = 2^32 (drop everything) is the one threshold
    // that does not fit, and keeps nothing.
    let t = prob.threshold().min(u64::from(u32::MAX)) as u32;
    let mut bits = 0u32;
    for (b, &u) in words.iter().enumerate() {
        bits |= u32::from(u >= t) << b;
    }
    if prob.drops_all() {
        0
    } else {
        bits
    }
}

/// The packed keep-mask of SPEC section 4 for `n` elementwise decisions `0..n`.
///
/// Bit b of word w is decision 32w + b (1 = kept); bits at positions >= n are 0.
pub fn keep_bits(seed: u64, offset: u64, p: f64, n: usize) -> Result<Vec<u32>> {
    let prob = Probability::new(p)?;
    keep_bits_from(seed, offset, 0, &prob, n)
}

/// [`keep_bits`] for decisions `first .. first + n` with an already validated probability.
/// Decisions past index 2^64 - 1 are [`Error::OutOfRange`]; a mask the allocator refuses
/// is [`Error::OutOfMemory`].
pub fn keep_bits_from(
    seed: u64,
    offset: u64,
    first: u64,
    prob: &Probability,
    n: usize,
) -> Result<Vec<u32>> {
    if first.checked_add(n as u64).is_none() {
        return Err(Error::OutOfRange(format!(
            "decisions {first} + {n} overflow the 64-bit decision index"
        )));
    }
    let mut bits = crate::alloc::zeroed_words(mask_words(n))?;
    fill_keep_bits(seed, offset, first, prob, n, &mut bits);
    Ok(bits)
}

/// Writes the packed mask of decisions `first .. first + n` into `bits` (all words: those
/// past decision n get 0). Decision indices wrap modulo 2^64; every caller in the crate
/// checks the range first.
pub fn fill_keep_bits(
    seed: u64,
    offset: u64,
    first: u64,
    prob: &Probability,
    n: usize,
    bits: &mut [u32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::host::simd::avx2() {
            // SAFETY: the CPU supports AVX2, checked just above.
            unsafe { x86::fill_keep_bits_avx2(seed, offset, first, prob, n, bits) };
            return;
        }
    }
    fill_keep_bits_impl(seed, offset, first, prob, n, bits);
}

#[inline(always)]
fn fill_keep_bits_impl(
    seed: u64,
    offset: u64,
    first: u64,
    prob: &Probability,
    n: usize,
    bits: &mut [u32],
) {
    for (w, word) in bits.iter_mut().enumerate() {
        let start = 32 * w;
        let valid = n.saturating_sub(start).min(32);
        let live = if valid == 32 {
            u32::MAX
        } else {
            (1u32 << valid) - 1
        };
        *word = keep_word(seed, offset, first.wrapping_add(start as u64), prob) & live;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_invalid_p() {
        for p in [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -0.1,
            1.5,
            -1e-300,
        ] {
            assert!(
                matches!(Probability::new(p), Err(Error::InvalidProbability(_))),
                "{p}"
            );
        }
        assert_eq!(Probability::new(-0.0).unwrap().threshold(), 0);
    }

    #[test]
    fn threshold_edges() {
        assert_eq!(Probability::new(0.0).unwrap().threshold(), 0);
        assert_eq!(Probability::new(1.0).unwrap().threshold(), 1 << 32);
        assert_eq!(Probability::new(0.5).unwrap().threshold(), 1 << 31);
        // 1e-9 * 2^32 = 4.29..., so t = 4 and q = 1 - 4 / 2^32.
        let tiny = Probability::new(1e-9).unwrap();
        assert_eq!(tiny.threshold(), 4);
        assert_eq!(tiny.keep_probability(), 1.0 - 4.0 / 4294967296.0);
        assert!(Probability::new(1.0).unwrap().drops_all());
        assert!(Probability::new(0.0).unwrap().drops_none());
    }

    #[test]
    fn words_at_any_start_follows_the_stream() {
        for first in [0u64, 1, 2, 3, 5, (1 << 34) + 3] {
            let w = words_at(9, 4, first);
            for (k, &u) in w.iter().enumerate() {
                assert_eq!(u, philox::random_word(9, 4, first + k as u64));
            }
        }
    }

    #[test]
    fn keep_word_matches_pack_keep() {
        for p in [0.0, 1e-9, 0.1, 0.5, 0.9, 1.0 - 1e-9, 1.0] {
            let prob = Probability::new(p).unwrap();
            for first in [0u64, 4, 32, 1 << 34, u64::MAX - 31, 1, 3, 6] {
                for (seed, offset) in [(0u64, 0u64), (7, 1 << 40), (u64::MAX, u64::MAX)] {
                    assert_eq!(
                        keep_word(seed, offset, first, &prob),
                        pack_keep(&words_at(seed, offset, first), &prob),
                        "p {p} first {first} seed {seed} offset {offset}"
                    );
                }
            }
        }
    }

    #[test]
    fn bits_past_n_are_zero() {
        let bits = keep_bits(1, 2, 0.0, 33).unwrap();
        assert_eq!(bits, vec![u32::MAX, 1]);
        assert!(keep_bits(1, 2, 0.5, 0).unwrap().is_empty());
    }
}
