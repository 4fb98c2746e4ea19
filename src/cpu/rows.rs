//! The CPU driver of row ops (rows of H, as the fused add + norm has): tasks of whole rows
//! on all cores, each compiled for AVX2 where the CPU has it, the 32-column chunks of a
//! row, and the fixed 32-lane row sum of docs/spec.md section 6.3. A row op writes its
//! per-row arithmetic against these and inherits an order that depends only on H. Also
//! what the norm's forward and backward share: widened row vectors and the regenerate
//! form's decisions of a block.

use crate::element::{ComputeFloat, Element};
use crate::error::Result;
use crate::mask::mask_words;
use crate::plan::{NormCall, ROW_SUM_LANES};
use rayon::prelude::*;

/// Runs `run` on every task, on all cores when `parallel`, each call through [`simd_call`].
pub(super) fn for_tasks<X: Send>(tasks: Vec<X>, parallel: bool, run: impl Fn(X) + Sync) {
    if parallel {
        tasks.into_par_iter().for_each(|t| {
            simd_call(
                #[inline(always)]
                || run(t),
            )
        });
    } else {
        tasks.into_iter().for_each(|t| {
            simd_call(
                #[inline(always)]
                || run(t),
            )
        });
    }
}

/// Runs `f` compiled for AVX2 and F16C where the CPU has them (the row loops are plain
/// slice loops: this lets them run 8 lanes wide instead of SSE2's 4; the arithmetic is the
/// same IEEE operations, never contracted).
#[inline(always)]
fn simd_call(f: impl FnOnce()) {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::host::simd::avx2() {
            // SAFETY: the CPU supports AVX2 and F16C (host::simd checked both).
            unsafe { call_avx2(f) };
            return;
        }
    }
    f()
}

/// `f` inlined into a function compiled for AVX2 and F16C.
///
/// # Safety
/// The CPU must support AVX2 and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn call_avx2(f: impl FnOnce()) {
    f()
}

/// Runs `$body` for each chunk of 32 columns of a row of `$h` (`$c0` its first column,
/// `$len` its width): full chunks with `$len` the constant 32, so their loops unroll and
/// vectorize, then the partial last chunk, if any.
macro_rules! for_chunks {
    ($h:expr, |$c0:ident, $len:ident| $body:block) => {{
        let h = $h;
        let full = h - h % ROW_SUM_LANES;
        let mut $c0 = 0;
        while $c0 < full {
            let $len = ROW_SUM_LANES;
            $body
            $c0 += ROW_SUM_LANES;
        }
        if $c0 < h {
            let $len = h - $c0;
            $body
        }
    }};
}
pub(super) use for_chunks;

/// The fixed tree of section 6.3 over the 32 lane sums: lane l adds lane l + w for w =
/// 16, 8, 4, 2, 1.
#[inline(always)]
pub(super) fn lane_tree<C: ComputeFloat>(mut acc: [C; ROW_SUM_LANES]) -> C {
    let mut w = ROW_SUM_LANES / 2;
    while w >= 1 {
        for l in 0..w {
            acc[l] = acc[l].add(acc[l + w]);
        }
        w /= 2;
    }
    acc[0]
}

/// The 32 mask bits from bit `b` of `bits` on (bit j of the result is bit b + j; bits
/// past the end of the mask read as 0).
#[inline(always)]
pub(super) fn bits_at(bits: &[u32], b: usize) -> u32 {
    let (w, sh) = (b / 32, b % 32);
    let lo = bits[w] >> sh;
    if sh == 0 {
        lo
    } else {
        lo | bits.get(w + 1).map_or(0, |&hi| hi << (32 - sh))
    }
}

/// The row sum S(f) of section 6.3 of `f(v_j)`: 32 lanes striding by 32 (lane k adds
/// v_k, v_{k+32}, ... in order, from +0), then the fixed tree.
#[inline(always)]
pub(super) fn row_sum<C: ComputeFloat>(v: &[C], f: impl Fn(C) -> C) -> C {
    let mut acc = [C::ZERO; ROW_SUM_LANES];
    let mut chunks = v.chunks_exact(ROW_SUM_LANES);
    for chunk in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            *a = a.add(f(x));
        }
    }
    for (a, &x) in acc.iter_mut().zip(chunks.remainder()) {
        *a = a.add(f(x));
    }
    let mut w = ROW_SUM_LANES / 2;
    while w >= 1 {
        for l in 0..w {
            acc[l] = acc[l].add(acc[l + w]);
        }
        w /= 2;
    }
    acc[0]
}

/// `vals` widened to the compute type, or `None` when absent.
pub(super) fn widened<T: Element>(vals: Option<&[T]>) -> Result<Option<Vec<T::Compute>>> {
    vals.map(|v| {
        let mut c = crate::alloc::filled(<T::Compute as ComputeFloat>::ZERO, v.len())?;
        T::to_compute_block(v, &mut c);
        Ok(c)
    })
    .transpose()
}

/// The decisions of `count` elements from local element `first` (a multiple of 32):
/// computed into `scratch`.
pub(super) fn regenerate<'b>(
    call: &NormCall,
    first: usize,
    count: usize,
    scratch: &'b mut Vec<u32>,
) -> &'b [u32] {
    scratch.clear();
    scratch.resize(mask_words(count), 0);
    call_keep_bits(call, first, count, scratch);
    scratch
}

/// The decisions of `count` elements from local element `first` (a multiple of 32) into
/// `bits`, on the calling thread: the AVX-512 Philox where the CPU has it (the row drivers'
/// tasks draw their own rows' decisions), the AVX2 or portable one otherwise.
pub(super) fn call_keep_bits(call: &NormCall, first: usize, count: usize, bits: &mut [u32]) {
    let (pos, prob) = (call.pos, &call.prob);
    call.fill_keep_bits(first, count, bits, |global, count, bits| {
        #[cfg(target_arch = "x86_64")]
        if crate::host::simd::level() == crate::host::simd::SimdLevel::Avx512 {
            let keep = super::avx512::Regenerate::new(pos.seed, pos.offset, global, prob);
            let words = mask_words(count).min(bits.len());
            // SAFETY: the AVX-512 level is chosen only when `simd::has_avx512()`.
            unsafe { super::avx512::fill_keep_bits_serial(&mut bits[..words], &keep, count) };
            bits[words..].fill(0);
            return;
        }
        crate::mask::fill_keep_bits(pos.seed, pos.offset, global, prob, count, bits);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_sum_is_the_lane_tree() {
        // H = 40: lanes 0..8 hold two values, the others one; the tree pairs lane l with
        // l + 16, then l + 8, ... Values chosen so f32 rounding shows the order.
        let vals: Vec<f32> = (0..40)
            .map(|j| if j % 3 == 0 { 1e8 } else { 1.0 + j as f32 })
            .collect();
        let mut acc = [0f32; 32];
        for (j, &v) in vals.iter().enumerate() {
            acc[j % 32] += v;
        }
        for w in [16, 8, 4, 2, 1] {
            for l in 0..w {
                acc[l] += acc[l + w];
            }
        }
        assert_eq!(row_sum(&vals, |x| x).to_bits(), acc[0].to_bits());
        // And it is not the plain left-to-right sum for these values.
        let plain: f32 = vals.iter().sum();
        assert_ne!(plain.to_bits(), acc[0].to_bits());
        // Fewer than 32 values: idle lanes stay +0, so -0 becomes +0.
        assert_eq!(row_sum(&[-0.0f32], |x| x).to_bits(), 0.0f32.to_bits());
    }
}
