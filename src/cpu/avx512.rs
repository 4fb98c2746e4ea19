//! The elementwise CPU ops (dropout and alpha dropout forward, backward from bits) with
//! AVX-512: the same arithmetic as the portable and AVX2 paths, so the same bits, on
//! twice the vector width.
//!
//! Per four 32-element mask words: Philox4x32-10 for their 32 counter blocks runs in zmm
//! registers ([`philox`]: each 32-bit state word in the low half of a 64-bit lane, as the
//! AVX2 path does, so a round is two `vpmuludq`, two swaps and two three-way xors per
//! eight blocks), the keep bits come out of unsigned compares, and the elements are widened,
//! mapped and selected under that mask. bf16 narrows with `vcvtneps2bf16` where the CPU
//! has AVX-512 BF16: that instruction rounds to nearest even and quiets NaNs exactly as
//! the spec (and `half`) do, but flushes f32 subnormal inputs to zero, so a vector holding
//! a subnormal goes through the integer rounding instead. f16 converts with the AVX-512
//! forms of the F16C instructions.
//!
//! Needs AVX-512 F, BW, VL and DQ, F16C and BMI2 ([`has_avx512`](crate::host::simd::has_avx512));
//! AVX-512 BF16 is used when present.

use super::{for_each_chunk, for_each_mask_chunk, Source, CHUNK};
use crate::element::Element;
use crate::mask::Probability;
use crate::plan::Kept;
use half::{bf16, f16};
use std::any::TypeId;
use std::arch::x86_64::*;

/// True when bf16 outputs narrow in hardware (AVX-512 BF16).
fn hardware_bf16() -> bool {
    std::is_x86_feature_detected!("avx512bf16")
}

mod bf16_convert;
mod lanes16;
pub(super) mod norm_backward_rows;
pub(super) mod norm_rows;
mod philox;
mod stream;

/// Where the keep bits come from, four mask words (128 elements) at a time.
pub(crate) trait KeepSource: Sync {
    /// Words `w .. w + 4` of the call (elements `32 * w ..`); words past the end of the
    /// call may hold anything.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F and BMI2.
    unsafe fn words4(&self, w: usize) -> [u32; 4];
}

/// Regenerated from Philox: decision `index_base + i` for element i.
pub(crate) struct Regenerate {
    seed: u64,
    offset: u64,
    index_base: u64,
    prob: Probability,
    keys: philox::RoundKeys,
}

impl Regenerate {
    pub(crate) fn new(seed: u64, offset: u64, index_base: u64, prob: &Probability) -> Self {
        Self {
            seed,
            offset,
            index_base,
            prob: *prob,
            keys: philox::RoundKeys::new(seed),
        }
    }
}

impl KeepSource for Regenerate {
    #[inline(always)]
    /// # Safety
    /// As [`KeepSource::words4`].
    unsafe fn words4(&self, w: usize) -> [u32; 4] {
        let first = self.index_base.wrapping_add(32 * w as u64);
        if self.prob.drops_all() {
            return [0; 4];
        }
        if first & 3 != 0 {
            // A shard that starts inside a Philox block: nine blocks per word, rare.
            return std::array::from_fn(|j| {
                let first = first.wrapping_add(32 * j as u64);
                crate::mask::keep_word(self.seed, self.offset, first, &self.prob)
            });
        }
        // SAFETY: AVX-512 F and BMI2, by this function's contract (as KeepSource::words4).
        unsafe {
            // t < 2^32 here; u >= t keeps.
            let t = _mm512_set1_epi32(self.prob.threshold() as u32 as i32);
            philox::keep_words4(&self.keys, self.offset, first >> 2, t)
        }
    }
}

/// Read from a saved mask (one word per 32 elements).
pub(crate) struct Saved<'a>(pub(crate) &'a [u32]);

impl KeepSource for Saved<'_> {
    #[inline(always)]
    /// # Safety
    /// As [`KeepSource::words4`].
    unsafe fn words4(&self, w: usize) -> [u32; 4] {
        match self.0.get(w..w + 4) {
            Some(words) => [words[0], words[1], words[2], words[3]],
            None => std::array::from_fn(|j| self.0.get(w + j).copied().unwrap_or(0)),
        }
    }
}

/// An element type's one mask word (32 elements) in AVX-512 registers.
pub(crate) trait Avx512Element: Element {
    /// Whether [`stream`](Self::stream) writes anything.
    const STREAMS: bool;
    /// Reads `len` (1..=32) elements at `x`, maps them by `op` where `keep` has a 1 and
    /// writes the dropped value elsewhere, and stores `len` elements at `y` (which may be
    /// `x`). Lanes past `len` are neither read nor written.
    ///
    /// # Safety
    /// `x` and `y` valid for `len` elements; the CPU must support AVX-512 F, BW, VL, DQ,
    /// F16C and BMI2, and AVX-512 BF16 when `HW_BF16`.
    unsafe fn word<const HW_BF16: bool>(
        x: *const Self,
        y: *mut Self,
        len: usize,
        keep: u32,
        op: &Kept<Self::Compute>,
    );

    /// One chunk of `n` elements from `x` to `y` (separate buffers), as
    /// [`chunk_body`] does, with streaming stores ([`stream`](self::stream)); nothing
    /// when not [`STREAMS`](Self::STREAMS).
    ///
    /// # Safety
    /// As [`word`](Self::word), for `n` elements; `bits`, when given, holds
    /// `n.div_ceil(32)` words.
    unsafe fn stream<K: KeepSource, const HW_BF16: bool>(
        _first_word: usize,
        _x: *const Self,
        _y: *mut Self,
        _n: usize,
        _bits: Option<&mut [u32]>,
        _keep: &K,
        _op: &Kept<Self::Compute>,
    ) {
    }
}

/// The lanes of a word below `len` (1..=32).
#[inline(always)]
fn live(len: usize) -> u32 {
    if len >= 32 {
        u32::MAX
    } else {
        (1u32 << len) - 1
    }
}

/// 16 f32 lanes through `op`, kept where `k` has a 1.
#[inline(always)]
/// # Safety
/// The CPU must support AVX-512 F, BW and VL.
unsafe fn map_ps(v: __m512, k: __mmask16, op: &Kept<f32>) -> __m512 {
    // SAFETY: the caller upholds this fn's contract: the CPU must support AVX-512 F, BW and VL.
    unsafe {
        match *op {
            // The masked multiply writes +0 (all bits clear) in dropped lanes.
            Kept::Scale(s) => _mm512_maskz_mul_ps(k, v, _mm512_set1_ps(s)),
            Kept::Affine { a, b, dropped } => {
                let kept = _mm512_add_ps(_mm512_mul_ps(v, _mm512_set1_ps(a)), _mm512_set1_ps(b));
                _mm512_mask_blend_ps(k, _mm512_set1_ps(dropped), kept)
            }
        }
    }
}

/// 8 f64 lanes through `op`, kept where `k` has a 1.
#[inline(always)]
/// # Safety
/// The CPU must support AVX-512 F, BW and VL.
unsafe fn map_pd(v: __m512d, k: __mmask8, op: &Kept<f64>) -> __m512d {
    // SAFETY: the caller upholds this fn's contract: the CPU must support AVX-512 F, BW and VL.
    unsafe {
        match *op {
            Kept::Scale(s) => _mm512_maskz_mul_pd(k, v, _mm512_set1_pd(s)),
            Kept::Affine { a, b, dropped } => {
                let kept = _mm512_add_pd(_mm512_mul_pd(v, _mm512_set1_pd(a)), _mm512_set1_pd(b));
                _mm512_mask_blend_pd(k, _mm512_set1_pd(dropped), kept)
            }
        }
    }
}

/// The element types computed in f32: sixteen lanes load widened and store narrowed.
trait Lanes16: Element<Compute = f32> {
    /// # Safety
    /// As [`Avx512Element::word`], for the lanes set in `lanes`.
    unsafe fn load16(x: *const Self, lanes: __mmask16) -> __m512;
    /// # Safety
    /// As [`Avx512Element::word`], for the lanes set in `lanes`.
    unsafe fn store16<const HW_BF16: bool>(y: *mut Self, lanes: __mmask16, r: __m512);
    /// `r` rounded to this type and widened back, in registers: what [`Self::load16`]
    /// would read after [`Self::store16`] (without the trip through memory, which a
    /// masked store does not forward to a load).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW, VL and F16C (and AVX-512 BF16 when `HW_BF16`).
    unsafe fn round16<const HW_BF16: bool>(r: __m512) -> __m512;
    /// Whether [`stream16`](Self::stream16) is a streaming store: for f32, whose sixteen
    /// lanes fill a cache line (the 16-bit types, half a line per vector, store as usual).
    const STREAMS: bool = false;
    /// All sixteen lanes with a non-temporal store where [`STREAMS`](Self::STREAMS), else
    /// an ordinary one.
    ///
    /// # Safety
    /// As [`Avx512Element::word`], and `y` aligned to 16 elements' bytes.
    #[inline(always)]
    unsafe fn stream16<const HW_BF16: bool>(y: *mut Self, r: __m512) {
        // SAFETY: as the caller's.
        unsafe { Self::store16::<HW_BF16>(y, u16::MAX, r) }
    }
}

impl<T: Lanes16> Avx512Element for T {
    const STREAMS: bool = <T as Lanes16>::STREAMS;

    #[inline(always)]
    /// # Safety
    /// As [`Avx512Element::stream`].
    unsafe fn stream<K: KeepSource, const HW_BF16: bool>(
        first_word: usize,
        x: *const T,
        y: *mut T,
        n: usize,
        bits: Option<&mut [u32]>,
        keep: &K,
        op: &Kept<f32>,
    ) {
        // SAFETY: the caller upholds this fn's contract: as [`Avx512Element::stream`].
        unsafe { stream::chunk::<T, K, HW_BF16>(first_word, x, y, n, bits, keep, op) }
    }

    #[inline(always)]
    /// # Safety
    /// As [`Avx512Element::word`].
    unsafe fn word<const HW_BF16: bool>(
        x: *const T,
        y: *mut T,
        len: usize,
        keep: u32,
        op: &Kept<f32>,
    ) {
        // SAFETY: the caller upholds this fn's contract: as [`Avx512Element::word`].
        unsafe {
            let m = live(len);
            for half in 0..2 {
                let (lanes, k) = ((m >> (16 * half)) as u16, (keep >> (16 * half)) as u16);
                let r = map_ps(T::load16(x.add(16 * half), lanes), k, op);
                T::store16::<HW_BF16>(y.add(16 * half), lanes, r);
            }
        }
    }
}

impl Avx512Element for f64 {
    const STREAMS: bool = false;

    #[inline(always)]
    /// # Safety
    /// As [`Avx512Element::word`].
    unsafe fn word<const HW_BF16: bool>(
        x: *const f64,
        y: *mut f64,
        len: usize,
        keep: u32,
        op: &Kept<f64>,
    ) {
        // SAFETY: the caller upholds this fn's contract: as [`Avx512Element::word`].
        unsafe {
            let m = live(len);
            for quarter in 0..4 {
                let (lanes, k) = ((m >> (8 * quarter)) as u8, (keep >> (8 * quarter)) as u8);
                let v = _mm512_maskz_loadu_pd(lanes, x.add(8 * quarter));
                _mm512_mask_storeu_pd(y.add(8 * quarter), lanes, map_pd(v, k, op));
            }
        }
    }
}

/// One chunk: words `first_word ..` of the call over `y` (and `x`, or `y` itself in
/// place), writing the keep bits of each word to `bits` when given.
#[inline(always)]
/// # Safety
/// The CPU must support AVX-512 F, BW, VL, DQ, F16C and BMI2 (and AVX-512 BF16 where the
/// function enables it or `HW_BF16` is set); `x`, when given, is as long as `y`, and
/// `bits`, when given, holds one word per 32 elements of `y`.
unsafe fn chunk_body<T: Avx512Element, K: KeepSource, const HW_BF16: bool>(
    first_word: usize,
    x: Option<&[T]>,
    y: &mut [T],
    mut bits: Option<&mut [u32]>,
    keep: &K,
    op: &Kept<T::Compute>,
    streaming: bool,
) {
    // SAFETY: the caller upholds this fn's contract: the CPU must support AVX-512 F, BW, VL,
    // DQ, F16C and BMI2 (and AVX-512 BF16 where the function enables it or `HW_BF16` is set);
    // `x`, when given, is as long as `y`, and `bits`, when given, holds one word per 32
    // elements of `y`.
    unsafe {
        let n = y.len();
        let yp = y.as_mut_ptr();
        let xp = match x {
            Some(x) => x.as_ptr(),
            None => yp as *const T,
        };
        // Streaming needs a chunk of at most CHUNK elements (its mask buffer's size); a call
        // small enough to run as one piece never streams in practice (`stream::worth_it`).
        if streaming && T::STREAMS && x.is_some() && n > 0 && n <= CHUNK {
            T::stream::<K, HW_BF16>(first_word, xp, yp, n, bits, keep, op);
            return;
        }
        // Whole groups of four words (128 elements): no partial word, so no lane masks.
        let groups = n / 128;
        for g in 0..groups {
            let keep4 = keep.words4(first_word + 4 * g);
            for (j, word) in keep4.into_iter().enumerate() {
                let w = 4 * g + j;
                // SAFETY: 32w + 32 <= 128 * groups <= n elements of both x and y.
                T::word::<HW_BF16>(xp.add(32 * w), yp.add(32 * w), 32, word, op);
                if let Some(bits) = bits.as_deref_mut() {
                    bits[w] = word;
                }
            }
        }
        // The last 0-3 words, the last of them possibly partial.
        let words = n.div_ceil(32);
        if 4 * groups < words {
            let keep4 = keep.words4(first_word + 4 * groups);
            for (w, word) in (4 * groups..words).zip(keep4) {
                let len = (n - 32 * w).min(32);
                let word = word & live(len);
                // SAFETY: 32w + len <= n elements of both x and y.
                T::word::<HW_BF16>(xp.add(32 * w), yp.add(32 * w), len, word, op);
                if let Some(bits) = bits.as_deref_mut() {
                    bits[w] = word;
                }
            }
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,f16c,bmi2")]
/// # Safety
/// The CPU must support AVX-512 F, BW, VL, DQ, F16C and BMI2 (and AVX-512 BF16 where the
/// function enables it or `HW_BF16` is set); `x`, when given, is as long as `y`, and
/// `bits`, when given, holds one word per 32 elements of `y`.
unsafe fn chunk_avx512<T: Avx512Element, K: KeepSource>(
    first_word: usize,
    x: Option<&[T]>,
    y: &mut [T],
    bits: Option<&mut [u32]>,
    keep: &K,
    op: &Kept<T::Compute>,
    streaming: bool,
) {
    // SAFETY: the caller upholds this fn's contract: the CPU must support AVX-512 F, BW, VL,
    // DQ, F16C and BMI2 (and AVX-512 BF16 where the function enables it or `HW_BF16` is set);
    // `x`, when given, is as long as `y`, and `bits`, when given, holds one word per 32
    // elements of `y`.
    unsafe { chunk_body::<T, K, false>(first_word, x, y, bits, keep, op, streaming) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,f16c,bmi2,avx512bf16")]
/// # Safety
/// The CPU must support AVX-512 F, BW, VL, DQ, F16C and BMI2 (and AVX-512 BF16 where the
/// function enables it or `HW_BF16` is set); `x`, when given, is as long as `y`, and
/// `bits`, when given, holds one word per 32 elements of `y`.
unsafe fn chunk_avx512_bf16<T: Avx512Element, K: KeepSource>(
    first_word: usize,
    x: Option<&[T]>,
    y: &mut [T],
    bits: Option<&mut [u32]>,
    keep: &K,
    op: &Kept<T::Compute>,
    streaming: bool,
) {
    // SAFETY: the caller upholds this fn's contract: the CPU must support AVX-512 F, BW, VL,
    // DQ, F16C and BMI2 (and AVX-512 BF16 where the function enables it or `HW_BF16` is set);
    // `x`, when given, is as long as `y`, and `bits`, when given, holds one word per 32
    // elements of `y`.
    unsafe { chunk_body::<T, K, true>(first_word, x, y, bits, keep, op, streaming) }
}

/// y = keep ? op(x) : dropped over the whole call, chunks on all cores; the keep bits of
/// each word go to `bits_out` when given. `x` is `y` itself for [`Source::Output`].
///
/// # Safety
/// [`has_avx512`](crate::host::simd::has_avx512) must be true.
pub(crate) unsafe fn map_elementwise<T: Avx512Element, K: KeepSource>(
    x: Source<'_, T>,
    y: &mut [T],
    bits_out: Option<&mut [u32]>,
    keep: &K,
    op: Kept<T::Compute>,
) {
    // SAFETY: the caller upholds this fn's contract:
    // [`has_avx512`](crate::host::simd::has_avx512) must be true.
    unsafe {
        let streaming = matches!(x, Source::Slice(_)) && stream::worth_it(y);
        map_elementwise_with(x, y, bits_out, keep, op, streaming)
    }
}

/// [`map_elementwise`] with the choice of streaming stores made by the caller (tests use
/// it to stream small outputs).
///
/// # Safety
/// [`has_avx512`](crate::host::simd::has_avx512) must be true.
unsafe fn map_elementwise_with<T: Avx512Element, K: KeepSource>(
    x: Source<'_, T>,
    y: &mut [T],
    bits_out: Option<&mut [u32]>,
    keep: &K,
    op: Kept<T::Compute>,
    streaming: bool,
) {
    let hw_bf16 = hardware_bf16();
    for_each_chunk(y, bits_out, |start, y, bits| {
        let xs = match x {
            Source::Slice(s) => Some(&s[start..start + y.len()]),
            Source::Output => None,
        };
        // SAFETY: the caller checked `has_avx512`; BF16 checked just above.
        unsafe {
            if hw_bf16 {
                chunk_avx512_bf16(start / 32, xs, y, bits, keep, &op, streaming);
            } else {
                chunk_avx512(start / 32, xs, y, bits, keep, &op, streaming);
            }
        }
    });
}

/// The packed keep bits of the call's first `n` decisions into `bits` (bits at positions
/// `>= n` are 0), chunks on all cores: Philox and the compare alone, no elements.
///
/// # Safety
/// [`has_avx512`](crate::host::simd::has_avx512) must be true.
pub(crate) unsafe fn fill_keep_bits(bits: &mut [u32], keep: &Regenerate, n: usize) {
    for_each_mask_chunk(bits, n, |first_word, words| {
        // SAFETY: the caller checked `has_avx512`.
        unsafe { fill_keep_bits_chunk(first_word, words, keep, n) }
    });
}

/// [`fill_keep_bits`] on the calling thread (for a caller that is already one of many
/// tasks: the row drivers).
///
/// # Safety
/// [`has_avx512`](crate::host::simd::has_avx512) must be true.
pub(crate) unsafe fn fill_keep_bits_serial(bits: &mut [u32], keep: &Regenerate, n: usize) {
    // SAFETY: the caller checked `has_avx512`.
    unsafe { fill_keep_bits_chunk(0, bits, keep, n) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,bmi2")]
/// # Safety
/// The CPU must support AVX-512 F, BW, VL, DQ and BMI2.
unsafe fn fill_keep_bits_chunk(first_word: usize, words: &mut [u32], keep: &Regenerate, n: usize) {
    // SAFETY: the caller upholds this fn's contract: the CPU must support AVX-512 F, BW, VL, DQ
    // and BMI2.
    unsafe {
        for (g, out) in words.chunks_mut(4).enumerate() {
            let w = first_word + 4 * g;
            let keep4 = keep.words4(w);
            for (j, (word, kept)) in out.iter_mut().zip(keep4).enumerate() {
                *word = kept & live(n.saturating_sub(32 * (w + j)).min(32));
            }
        }
    }
}

/// True when `T` has a kernel here (all four element types do).
pub(crate) fn has_kernel<T: Element>() -> bool {
    [
        TypeId::of::<f32>(),
        TypeId::of::<f64>(),
        TypeId::of::<f16>(),
        TypeId::of::<bf16>(),
    ]
    .contains(&TypeId::of::<T>())
}

/// [`map_elementwise`] for any element type with a kernel ([`has_kernel`]; nothing is
/// done for another): the generic backend functions know only `T: Element`, so the type
/// is matched here.
///
/// # Safety
/// [`has_avx512`](crate::host::simd::has_avx512) must be true.
pub(crate) unsafe fn map_elementwise_any<T: Element, K: KeepSource>(
    x: Source<'_, T>,
    y: &mut [T],
    bits_out: Option<&mut [u32]>,
    keep: &K,
    op: Kept<T::Compute>,
) {
    macro_rules! as_type {
        ($u:ty) => {
            if TypeId::of::<T>() == TypeId::of::<$u>() {
                // SAFETY: T is $u (same TypeId), so these casts change no type at all.
                let (x, y, op) = unsafe {
                    let x = match x {
                        Source::Slice(s) => Source::Slice(&*(s as *const [T] as *const [$u])),
                        Source::Output => Source::Output,
                    };
                    let y = &mut *(y as *mut [T] as *mut [$u]);
                    let op: Kept<<$u as Element>::Compute> = std::mem::transmute_copy(&op);
                    (x, y, op)
                };
                // SAFETY: the caller checked `has_avx512`.
                return unsafe { map_elementwise::<$u, K>(x, y, bits_out, keep, op) };
            }
        };
    }
    as_type!(f32);
    as_type!(f64);
    as_type!(f16);
    as_type!(bf16);
}

#[cfg(test)]
mod tests;
