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

/// Rows per block of the column sum (docs/spec.md, bias-gradient note): a constant, so the
/// bias gradient depends on neither the device nor the thread count. The CUDA launch
/// passes this value to its kernels (src/cuda/ops.rs), so both block the rows alike.
pub const COLUMN_SUM_BLOCK_ROWS: usize = 256;

/// The bias gradient: with rows split into blocks of [`COLUMN_SUM_BLOCK_ROWS`] consecutive
/// rows, partial_{b,c} = the f64 sum of g[r * h + c] over the rows of block b in increasing
/// r, and out_c = round_T(the f64 sum of partial_{b,c} over b in increasing b), every sum
/// from +0.0. The CUDA kernels do exactly these adds, so both give the same bits.
///
/// Tasks are (block, column chunk) tiles writing their own partial sums, then column
/// chunks adding them up in block order: parallel over rows and columns, and the adds
/// never depend on how rayon splits the work.
pub fn column_sum<T: Element>(g: &[T], out: &mut [T], h: usize) {
    use rayon::prelude::*;
    const R: usize = COLUMN_SUM_BLOCK_ROWS;
    const COLS: usize = 256;
    if h == 0 {
        return;
    }
    let rows = g.len() / h;
    let blocks = rows.div_ceil(R);
    // blocks * h doubles: n / 32 bytes for n elements.
    let mut partial = vec![0f64; blocks * h];
    partial
        .par_chunks_mut(h)
        .enumerate()
        .for_each(|(b, part_row)| {
            let block = &g[b * R * h..(rows.min((b + 1) * R)) * h];
            part_row
                .par_chunks_mut(COLS)
                .enumerate()
                .for_each(|(k, part)| {
                    let c0 = k * COLS;
                    let mut acc = [0f64; COLS];
                    for row in block.chunks_exact(h) {
                        for (a, &v) in acc.iter_mut().zip(&row[c0..c0 + part.len()]) {
                            *a += v.to_compute().to_f64();
                        }
                    }
                    part.copy_from_slice(&acc[..part.len()]);
                });
        });
    out.par_chunks_mut(COLS).enumerate().for_each(|(k, out)| {
        let c0 = k * COLS;
        let mut acc = [0f64; COLS];
        for part_row in partial.chunks_exact(h) {
            for (a, &p) in acc.iter_mut().zip(&part_row[c0..c0 + out.len()]) {
                *a += p;
            }
        }
        for (o, &a) in out.iter_mut().zip(&acc) {
            *o = T::from_f64(a);
        }
    });
}
