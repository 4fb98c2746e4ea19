//! Elementwise decisions on the CPU (SPEC sections 3 and 6): dropout and alpha dropout
//! forward with optional packed bits, and backward from bits. Backward by regeneration is
//! the forward (with `Kept::Scale`) applied to the gradient.

use super::{map_words, mask_for, with_kept, Block, Cpu, CpuOperand, Source};
use crate::backend::{DropoutKernels, Forwarded, SavedMask};
use crate::element::{ComputeFloat, Element};
use crate::error::Result;
use crate::mask::{keep_word, Probability};
use crate::plan::{Decisions, GroupLayout, Kept, MaskMode, StreamPos};
use crate::shard::ShardLayout;

impl DropoutKernels for Cpu {
    fn dropout_forward<T: Element>(
        x: CpuOperand<'_, T>,
        pos: StreamPos,
        prob: &Probability,
        kept: Kept<T::Compute>,
        mode: MaskMode,
    ) -> Result<Forwarded<Self, T>> {
        let mut bits = mask_for(x.len(), mode)?;
        let y = x.write_with(|src, out| {
            forward_with(src, out, bits.as_deref_mut(), pos, prob, kept);
            Ok(())
        })?;
        Ok((y, bits))
    }

    fn dropout_backward<T: Element>(
        dy: CpuOperand<'_, T>,
        saved: SavedMask<'_, Vec<u32>>,
        prob: &Probability,
        decisions: &Decisions,
        scale: T::Compute,
    ) -> Result<Option<Vec<T>>> {
        // A grouped regenerate-form mask is drawn first (it is one bit per group).
        let regenerated = match (&saved, decisions) {
            (SavedMask::Regenerate(pos), Decisions::Grouped(_)) => {
                Some(decisions.keep_bits(pos, prob, dy.len())?)
            }
            _ => None,
        };
        dy.write_with(|src, dx| {
            match (saved, decisions, regenerated.as_ref()) {
                (SavedMask::Regenerate(pos), Decisions::Elementwise, _) => {
                    forward(src, dx, None, pos, prob, scale)
                }
                (SavedMask::Bits(bits), Decisions::Elementwise, _) => {
                    backward_bits(src, dx, bits, scale)
                }
                (SavedMask::Bits(bits), Decisions::Grouped(layout), _)
                | (SavedMask::Regenerate(_), Decisions::Grouped(layout), Some(bits)) => {
                    super::grouped::grouped_apply(src, dx, bits, layout, Kept::Scale(scale))
                }
                (SavedMask::Regenerate(_), Decisions::Grouped(_), None) => {
                    unreachable!("a grouped regenerate-form mask is drawn above")
                }
            }
            Ok(())
        })
    }

    fn shard_keep_bits<T: Element>(
        _like: &CpuOperand<'_, T>,
        pos: StreamPos,
        prob: &Probability,
        layout: &ShardLayout,
    ) -> Result<Vec<u32>> {
        layout.keep_bits(pos.seed, pos.offset, prob)
    }

    fn apply_bits<T: Element>(
        x: CpuOperand<'_, T>,
        bits: &Vec<u32>,
        kept: Kept<T::Compute>,
    ) -> Result<Option<Vec<T>>> {
        x.write_with(|src, out| {
            match kept {
                // The same arithmetic as the forward: dropped ? +0 : x * s.
                Kept::Scale(s) => backward_bits(src, out, bits, s),
                Kept::Affine { .. } => {
                    let one = GroupLayout::new(1, 0, out.len());
                    super::grouped::grouped_apply(src, out, bits, &one, kept)
                }
            }
            Ok(())
        })
    }
}

/// y = dropped ? +0 : x * s, writing the keep bits when asked.
pub fn forward<T: Element>(
    x: Source<'_, T>,
    y: &mut [T],
    bits: Option<&mut [u32]>,
    pos: StreamPos,
    prob: &Probability,
    scale: T::Compute,
) {
    forward_with(x, y, bits, pos, prob, Kept::Scale(scale));
}

/// y = dropped ? the dropped value : the kept map of x, for elementwise decisions, writing
/// the keep bits when asked.
pub(crate) fn forward_with<T: Element>(
    x: Source<'_, T>,
    y: &mut [T],
    bits: Option<&mut [u32]>,
    pos: StreamPos,
    prob: &Probability,
    op: Kept<T::Compute>,
) {
    #[cfg(target_arch = "x86_64")]
    if crate::host::simd::level() == crate::host::simd::SimdLevel::Avx512
        && super::avx512::has_kernel::<T>()
    {
        let keep = super::avx512::Regenerate::new(pos.seed, pos.offset, pos.index_base, prob);
        // SAFETY: the AVX-512 level is chosen only when `simd::has_avx512()`.
        unsafe { super::avx512::map_elementwise_any(x, y, bits, &keep, op) };
        return;
    }
    forward_words(x, y, bits, pos, prob, op);
}

/// [`forward_with`] through the generic word driver (portable or AVX2 code).
pub(crate) fn forward_words<T: Element>(
    x: Source<'_, T>,
    y: &mut [T],
    bits: Option<&mut [u32]>,
    pos: StreamPos,
    prob: &Probability,
    op: Kept<T::Compute>,
) {
    with_kept!(op, |kept_map, dropped| map_words(
        [x],
        y,
        bits,
        #[inline(always)]
        move |w, [xb]: &[Block<T::Compute>; 1], yb: &mut Block<T::Compute>| {
            let first = pos.index_base.wrapping_add(32 * w as u64);
            let keep = keep_word(pos.seed, pos.offset, first, prob);
            for k in 0..32 {
                // Computed for every element, then selected (never a multiply by 0): the
                // loop vectorises, and a dropped NaN or inf still gives the dropped value.
                let kept = kept_map(xb[k]);
                yb[k] = if keep & (1 << k) != 0 { kept } else { dropped };
            }
            keep
        },
    ))
}

/// The packed keep bits (SPEC section 4) of decisions `pos.index_base ..` for `n` elements
/// into `bits` (`mask_words(n)` words; bits at positions `>= n` are 0): the mask alone, as
/// a forward with bits writes it, on all cores with AVX-512.
pub fn fill_keep_bits(bits: &mut [u32], pos: StreamPos, prob: &Probability, n: usize) {
    #[cfg(target_arch = "x86_64")]
    if crate::host::simd::level() == crate::host::simd::SimdLevel::Avx512 {
        let keep = super::avx512::Regenerate::new(pos.seed, pos.offset, pos.index_base, prob);
        // SAFETY: the AVX-512 level is chosen only when `simd::has_avx512()`.
        unsafe { super::avx512::fill_keep_bits(bits, &keep, n) };
        return;
    }
    crate::mask::fill_keep_bits(pos.seed, pos.offset, pos.index_base, prob, n, bits);
}

/// dx = bit ? dy * s : +0, from packed keep bits (bit i of the mask is element i).
pub fn backward_bits<T: Element>(dy: Source<'_, T>, dx: &mut [T], bits: &[u32], scale: T::Compute) {
    #[cfg(target_arch = "x86_64")]
    if crate::host::simd::level() == crate::host::simd::SimdLevel::Avx512
        && super::avx512::has_kernel::<T>()
    {
        let keep = super::avx512::Saved(bits);
        // SAFETY: the AVX-512 level is chosen only when `simd::has_avx512()`.
        unsafe { super::avx512::map_elementwise_any(dy, dx, None, &keep, Kept::Scale(scale)) };
        return;
    }
    backward_bits_words(dy, dx, bits, scale);
}

/// [`backward_bits`] through the generic word driver (portable or AVX2 code).
pub(crate) fn backward_bits_words<T: Element>(
    dy: Source<'_, T>,
    dx: &mut [T],
    bits: &[u32],
    scale: T::Compute,
) {
    let zero = <T::Compute as ComputeFloat>::ZERO;
    map_words(
        [dy],
        dx,
        None,
        #[inline(always)]
        move |w, [gb]: &[Block<T::Compute>; 1], out: &mut Block<T::Compute>| {
            let word = bits[w];
            for k in 0..32 {
                let kept = gb[k].mul(scale);
                out[k] = if word & (1 << k) != 0 { kept } else { zero };
            }
            word
        },
    );
}
