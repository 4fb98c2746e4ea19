//! The fused bias + dropout + residual on the CPU (SPEC section 6), elementwise decisions,
//! and the column sum that gives its bias gradient.

use super::{map_words, mask_for, Block, Cpu, CpuOperand, Source};
use crate::backend::{DropoutKernels, Forwarded, ResidualGradsInto, ResidualKernels, SavedMask};
use crate::element::{ComputeFloat, Element};
use crate::error::Result;
use crate::mask::{keep_word, Probability};
use crate::plan::{Decisions, MaskMode, StreamPos, COLUMN_SUM_BLOCK_ROWS};

impl ResidualKernels for Cpu {
    fn residual_forward<T: Element>(
        x: &Vec<T>,
        bias: &Vec<T>,
        residual: CpuOperand<'_, T>,
        pos: StreamPos,
        prob: &Probability,
        scale: T::Compute,
        mode: MaskMode,
    ) -> Result<Forwarded<Self, T>> {
        let mut bits = mask_for(residual.len(), mode)?;
        let out = residual.write_with(|residual, out| {
            let inputs = FusedInputs { x, bias, residual };
            bias_dropout_residual(inputs, out, bits.as_deref_mut(), pos, prob, scale)
        })?;
        Ok((out, bits))
    }

    fn residual_forward_bits<T: Element>(
        x: &Vec<T>,
        bias: &Vec<T>,
        residual: CpuOperand<'_, T>,
        bits: &Vec<u32>,
        scale: T::Compute,
    ) -> Result<Option<Vec<T>>> {
        residual.write_with(|residual, out| {
            let inputs = FusedInputs { x, bias, residual };
            bias_dropout_residual_bits(inputs, out, bits, scale)
        })
    }

    fn column_sum<T: Element>(g: &Vec<T>, hidden: usize) -> Result<Vec<T>> {
        let mut out = crate::alloc::zeroed::<T>(hidden)?;
        column_sum(g, &mut out, hidden)?;
        Ok(out)
    }

    fn residual_backward_into<T: Element>(
        dy: &Vec<T>,
        grads: ResidualGradsInto<'_, Self, T>,
        saved: Option<SavedMask<'_, Vec<u32>>>,
        prob: &Probability,
        scale: T::Compute,
        hidden: usize,
    ) -> Result<()> {
        match saved {
            Some(saved) => {
                let into = CpuOperand::Into(dy, grads.dx);
                Self::dropout_backward(into, saved, prob, &Decisions::Elementwise, scale)?;
            }
            None => grads.dx.copy_from_slice(dy),
        }
        // The CPU's column sum keeps its own partials (nothing here is captured).
        column_sum(grads.dx, grads.db, hidden)
    }

    /// dx through the dropout backward, then its column sums: the same bits as CUDA's one
    /// pass.
    fn residual_backward<T: Element>(
        dy: &Vec<T>,
        saved: SavedMask<'_, Vec<u32>>,
        prob: &Probability,
        scale: T::Compute,
        hidden: usize,
    ) -> Result<(Vec<T>, Vec<T>)> {
        let input = CpuOperand::Input(dy);
        let dx = Self::dropout_backward(input, saved, prob, &Decisions::Elementwise, scale)?
            .unwrap_or_else(|| unreachable!("a backward over an input returns its output"));
        let db = <Self as ResidualKernels>::column_sum(&dx, hidden)?;
        Ok((dx, db))
    }
}

/// The three inputs of the fused layer: x and residual of n elements, bias of h.
#[derive(Clone, Copy)]
pub struct FusedInputs<'a, T> {
    /// The input, rows x H.
    pub x: &'a [T],
    /// The bias, H elements.
    pub bias: &'a [T],
    /// A separate slice, or the output itself (written in place over the residual).
    pub residual: Source<'a, T>,
}

/// out_i = round_T(residual_i + (dropped ? 0 : (x_i + bias_{(index_base + i) mod h}) * s)),
/// each operation rounded in the compute type, with elementwise decisions.
/// [`Error::OutOfMemory`](crate::Error::OutOfMemory) when the bias's compute-type copy
/// cannot be allocated (nothing written then).
pub fn bias_dropout_residual<T: Element>(
    inputs: FusedInputs<'_, T>,
    out: &mut [T],
    bits: Option<&mut [u32]>,
    pos: StreamPos,
    prob: &Probability,
    scale: T::Compute,
) -> crate::error::Result<()> {
    fused_words(inputs, out, bits, pos.index_base, scale, move |first| {
        keep_word(pos.seed, pos.offset, first, prob)
    })
}

/// [`bias_dropout_residual`] with its decisions read from `keep`, local element i keeping
/// iff bit i (a shard of any layout, whose bits came through its layout): bias column
/// `i mod h`.
pub fn bias_dropout_residual_bits<T: Element>(
    inputs: FusedInputs<'_, T>,
    out: &mut [T],
    keep: &[u32],
    scale: T::Compute,
) -> crate::error::Result<()> {
    debug_assert!(keep.len() >= out.len().div_ceil(32), "a bit per element");
    fused_words(inputs, out, None, 0, scale, |first| {
        keep[(first / 32) as usize]
    })
}

/// The fused arithmetic over words of 32 elements, element i at index `base + i` (its
/// bias column is that index mod h), the word at index `first` kept as `keep(first)` says.
fn fused_words<T: Element>(
    FusedInputs { x, bias, residual }: FusedInputs<'_, T>,
    out: &mut [T],
    bits: Option<&mut [u32]>,
    base: u64,
    scale: T::Compute,
    keep: impl Fn(u64) -> u32 + Sync,
) -> crate::error::Result<()> {
    let h = bias.len() as u64;
    let zero = <T::Compute as ComputeFloat>::ZERO;
    let mut bias_c = crate::alloc::filled(zero, bias.len())?;
    T::to_compute_block(bias, &mut bias_c);
    map_words(
        [Source::Slice(x), residual],
        out,
        bits,
        #[inline(always)]
        move |w, [xb, rb]: &[Block<T::Compute>; 2], ob: &mut Block<T::Compute>| {
            let first = base.wrapping_add(32 * w as u64);
            let keep = keep(first);
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
    Ok(())
}

/// The bias gradient: with rows split into blocks of [`COLUMN_SUM_BLOCK_ROWS`] consecutive
/// rows, partial_{b,c} = the f64 sum of g[r * h + c] over the rows of block b in increasing
/// r, and out_c = round_T(the f64 sum of partial_{b,c} over b in increasing b), every sum
/// from +0.0. The CUDA kernels do exactly these adds, so both give the same bits.
///
/// Tasks are (block, column chunk) tiles writing their own partial sums, then column
/// chunks adding them up in block order: parallel over rows and columns, and the adds
/// never depend on how rayon splits the work.
///
/// [`Error::OutOfMemory`](crate::Error::OutOfMemory) when the partial sums (`n / 32` bytes
/// for `n` elements of `g`) cannot be allocated (nothing written then).
pub fn column_sum<T: Element>(g: &[T], out: &mut [T], h: usize) -> crate::error::Result<()> {
    use rayon::prelude::*;
    const R: usize = COLUMN_SUM_BLOCK_ROWS;
    const COLS: usize = 256;
    if h == 0 {
        return Ok(());
    }
    let rows = g.len() / h;
    let blocks = rows.div_ceil(R);
    // blocks * h doubles: n / 32 bytes for n elements.
    let mut partial = crate::alloc::filled(0f64, blocks * h)?;
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
    Ok(())
}
