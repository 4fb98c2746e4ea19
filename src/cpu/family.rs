//! The rest of the family on the CPU (SPEC section 6): grouped decisions (channel dropout,
//! DropPath, FeatureAlphaDropout), fused bias + dropout + residual, and the column sum
//! that gives the bias gradient.

use super::{map_words, Block, KeptOp, Source};
use crate::cpu::dropout::StreamPos;
use crate::element::{ComputeFloat, Element};
use crate::mask::{keep_word, Probability};

/// y_i = bit((lead + i) / group) ? op.kept(x_i) : op.dropped(), reading one bit per
/// decision from `decision_bits`.
pub fn grouped_apply<T: Element, K: KeptOp<T::Compute>>(
    x: Source<'_, T>,
    y: &mut [T],
    decision_bits: &[u32],
    group: u64,
    lead: u64,
    op: K,
) {
    map_words(
        [x],
        y,
        None,
        #[inline(always)]
        move |w, [xb]: &[Block<T::Compute>; 1], yb: &mut Block<T::Compute>| {
            // Walk the group position instead of dividing per element.
            let start = lead + 32 * w as u64;
            let (mut j, mut r) = (start / group, start % group);
            let dropped = op.dropped();
            for k in 0..32 {
                // Past the tail j may point one word beyond the mask: read nothing there.
                let word = decision_bits.get((j / 32) as usize).copied().unwrap_or(0);
                yb[k] = if word >> (j % 32) & 1 == 1 {
                    op.kept(xb[k])
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
    );
}

/// out_i = round_T(residual_i + (dropped ? 0 : (x_i + bias_{(index_base + i) mod h}) * s)),
/// each operation rounded in the compute type, with elementwise decisions.
#[allow(clippy::too_many_arguments)]
pub fn bias_dropout_residual<T: Element>(
    x: &[T],
    bias: &[T],
    residual: Source<'_, T>,
    out: &mut [T],
    bits: Option<&mut [u32]>,
    pos: StreamPos,
    prob: &Probability,
    scale: T::Compute,
) {
    let h = bias.len() as u64;
    let zero = <T::Compute as ComputeFloat>::ZERO;
    let mut bias_c = vec![zero; bias.len()];
    T::to_compute_block(bias, &mut bias_c);
    map_words(
        [Source::Slice(x), residual],
        out,
        bits,
        #[inline(always)]
        move |w, [xb, rb]: &[Block<T::Compute>; 2], ob: &mut Block<T::Compute>| {
            let first = pos.index_base.wrapping_add(32 * w as u64);
            let keep = keep_word(pos.seed, pos.offset, first, prob);
            let mut col = (first % h) as usize;
            for k in 0..32 {
                let kept = keep & (1 << k) != 0;
                let z = xb[k].add(bias_c[col]);
                let m = if kept { z.mul(scale) } else { zero };
                ob[k] = rb[k].add(m);
                col += 1;
                if col == bias_c.len() {
                    col = 0;
                }
            }
            keep
        },
    );
}

/// out_c = round_T(sum over rows r, in order, of g[r * h + c]), accumulated in f64: the
/// bias gradient, deterministic whatever the thread count.
pub fn column_sum<T: Element>(g: &[T], out: &mut [T], h: usize) {
    use rayon::prelude::*;
    const COLS: usize = 256;
    if h == 0 {
        return;
    }
    let rows = g.len() / h;
    out.par_chunks_mut(COLS).enumerate().for_each(|(blk, out)| {
        let c0 = blk * COLS;
        let mut acc = [0f64; COLS];
        for r in 0..rows {
            let row = &g[r * h + c0..r * h + c0 + out.len()];
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += v.to_compute().to_f64();
            }
        }
        for (o, &a) in out.iter_mut().zip(&acc) {
            *o = T::from_f64(a);
        }
    });
}
