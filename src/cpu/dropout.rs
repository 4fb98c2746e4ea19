//! Elementwise decisions on the CPU (SPEC sections 3 and 6): dropout and alpha dropout
//! forward with optional packed bits, and backward from bits. Backward by regeneration is
//! the forward (with `Kept::Scale`) applied to the gradient.

use super::{map_words, with_kept, Block, Source};
use crate::element::{ComputeFloat, Element};
use crate::mask::{keep_word, Probability};
use crate::plan::{Kept, StreamPos};

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

/// dx = bit ? dy * s : +0, from packed keep bits (bit i of the mask is element i).
pub fn backward_bits<T: Element>(dy: Source<'_, T>, dx: &mut [T], bits: &[u32], scale: T::Compute) {
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
