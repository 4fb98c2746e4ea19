//! Grouped decisions on the CPU (SPEC section 6): channel dropout, DropPath and
//! FeatureAlphaDropout, one decision per group of consecutive elements.

use super::{map_words, with_kept, Block, Cpu, CpuOperand, Source};
use crate::backend::{Forwarded, GroupedKernels};
use crate::element::Element;
use crate::mask::{fill_keep_bits, mask_words, Probability};
use crate::plan::{GroupLayout, Kept, StreamPos};

impl GroupedKernels for Cpu {
    fn grouped_forward<T: Element>(
        x: CpuOperand<'_, T>,
        pos: StreamPos,
        prob: &Probability,
        layout: &GroupLayout,
        kept: Kept<T::Compute>,
    ) -> crate::error::Result<Forwarded<Self, T>> {
        let mut bits = None;
        let y = x.write_with(|src, out| {
            bits = Some(forward(src, out, pos, prob, layout, kept)?);
            Ok(())
        })?;
        Ok((y, bits))
    }

    fn grouped_keep_bits_into<T: Element>(
        _like: &CpuOperand<'_, T>,
        mask: &mut Vec<u32>,
        pos: StreamPos,
        prob: &Probability,
        layout: &GroupLayout,
    ) -> crate::error::Result<()> {
        mask.clear();
        mask.resize(mask_words(layout.count), 0);
        fill_keep_bits(pos.seed, pos.offset, layout.first, prob, layout.count, mask);
        Ok(())
    }

    fn apply_grouped_bits<T: Element>(
        x: CpuOperand<'_, T>,
        bits: &Vec<u32>,
        layout: &GroupLayout,
        kept: Kept<T::Compute>,
    ) -> crate::error::Result<Option<Vec<T>>> {
        x.write_with(|src, out| {
            grouped_apply(src, out, bits, layout, kept);
            Ok(())
        })
    }
}

/// The grouped forward: draws the decisions of `layout` first (few: one per channel or
/// sample), then applies them; returns the packed decision bits (or the allocation error).
pub(crate) fn forward<T: Element>(
    x: Source<'_, T>,
    y: &mut [T],
    pos: StreamPos,
    prob: &Probability,
    layout: &GroupLayout,
    op: Kept<T::Compute>,
) -> crate::error::Result<Vec<u32>> {
    let mut bits = crate::alloc::zeroed_words(mask_words(layout.count))?;
    fill_keep_bits(
        pos.seed,
        pos.offset,
        layout.first,
        prob,
        layout.count,
        &mut bits,
    );
    grouped_apply(x, y, &bits, layout, op);
    Ok(bits)
}

/// y_i = bit((lead + i) / group) ? the kept map of x_i : the dropped value, reading one bit
/// per decision from `decision_bits`.
pub(crate) fn grouped_apply<T: Element>(
    x: Source<'_, T>,
    y: &mut [T],
    decision_bits: &[u32],
    layout: &GroupLayout,
    op: Kept<T::Compute>,
) {
    let (group, lead) = (layout.group, layout.lead);
    with_kept!(op, |kept_map, dropped| map_words(
        [x],
        y,
        None,
        #[inline(always)]
        move |w, [xb]: &[Block<T::Compute>; 1], yb: &mut Block<T::Compute>| {
            // Walk the group position instead of dividing per element.
            let start = lead + 32 * w as u64;
            let (mut j, mut r) = (start / group, start % group);
            for k in 0..32 {
                // Past the tail j may point one word beyond the mask: read nothing there.
                let word = decision_bits.get((j / 32) as usize).copied().unwrap_or(0);
                yb[k] = if word >> (j % 32) & 1 == 1 {
                    kept_map(xb[k])
                } else {
                    dropped
                };
                r += 1;
                if r == group {
                    r = 0;
                    j += 1;
                }
            }
            0
        },
    ))
}
