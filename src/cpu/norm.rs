//! The fused dropout + residual add + LayerNorm / RMSNorm on the CPU (docs/spec.md,
//! section 6.3): rows of H, the 32-lane row sum, and the backward with its blocked f64
//! column sums. Every value is the spec's, operation for operation, so the CUDA kernels
//! (`kernels/dropout_add_norm.cu`) give the same bits.
//!
//! Work is split by rows: forward chunks of 32 rows (32 * H decisions fill whole mask
//! words), backward blocks of [`COLUMN_SUM_BLOCK_ROWS`](crate::plan::COLUMN_SUM_BLOCK_ROWS)
//! rows (in `norm_backward.rs`), each with its own f64 partial column sums, added in block
//! order at the end. Neither depends on the thread count.

use super::rows::{
    bits_at, call_keep_bits, for_chunks, for_tasks, lane_tree, regenerate, row_sum, widened,
};
use super::Cpu;
use crate::backend::{
    NormBackward, NormBackwardInto, NormBuffers, NormForward, NormForwardInto, NormGradBuffers,
    NormKernels, Wanted,
};
use crate::element::{ComputeFloat, Element};
use crate::error::Result;
use crate::plan::MaskMode;
use crate::plan::{Norm, NormCall, ROW_SUM_LANES};
use rayon::prelude::*;

pub use super::norm_backward::{backward, NormGradInputs, NormGrads};

impl NormKernels for Cpu {
    fn norm_forward<T: Element, R: Element<Compute = T::Compute>>(
        b: NormBuffers<'_, Self, T, R>,
        call: &NormCall,
        mode: MaskMode,
    ) -> Result<NormForward<Self, T, R>> {
        let n = b.x.len();
        let rows = n.checked_div(call.hidden).unwrap_or(0);
        let mut z = super::alloc_output::<T>(n)?;
        let mut s = super::alloc_output::<R>(n)?;
        let mut stats = crate::alloc::filled(0f64, 2 * rows)?;
        let out = NormForwardInto {
            z: &mut z,
            s: &mut s,
            stats: &mut stats,
            mask: None,
        };
        let mask = Self::norm_forward_into(b, call, mode, out)?;
        Ok(NormForward { z, s, stats, mask })
    }

    fn norm_backward<T: Element, R: Element<Compute = T::Compute>>(
        b: NormGradBuffers<'_, Self, T, R>,
        call: &NormCall,
        want: Wanted,
    ) -> Result<NormBackward<Self, T, R>> {
        let (n, h) = (b.dz.len(), call.hidden);
        let mut x = super::alloc_output::<T>(n)?;
        let mut residual = want
            .residual
            .then(|| super::alloc_output::<R>(n))
            .transpose()?;
        let mut bias = want
            .bias
            .then(|| crate::alloc::zeroed::<T>(h))
            .transpose()?;
        let mut gamma = crate::alloc::zeroed::<T>(h)?;
        let is_layer = call.norm == Norm::LayerNorm;
        let mut beta = is_layer.then(|| crate::alloc::zeroed::<T>(h)).transpose()?;
        let out = NormBackwardInto {
            x: &mut x,
            residual: residual.as_mut(),
            bias: bias.as_mut(),
            gamma: &mut gamma,
            beta: beta.as_mut(),
            // The CPU backward keeps its own partials.
            partial: &mut Vec::new(),
            scratch: None,
        };
        Self::norm_backward_into(b, call, out)?;
        Ok(NormBackward {
            x,
            residual,
            bias,
            gamma,
            beta,
        })
    }

    /// Writes straight into the given buffers; the decisions are drawn inline, so the
    /// regenerate form keeps no scratch.
    fn norm_forward_into<T: Element, R: Element<Compute = T::Compute>>(
        b: NormBuffers<'_, Self, T, R>,
        call: &NormCall,
        mode: MaskMode,
        out: NormForwardInto<'_, Self, T, R>,
    ) -> Result<Option<Vec<u32>>> {
        let n = b.x.len();
        let mut mask = match (mode, out.mask) {
            (MaskMode::Bits, Some(m)) if m.len() == crate::mask::mask_words(n) => Some(m),
            _ => super::mask_for(n, mode)?,
        };
        let inputs = NormInputs {
            x: b.x,
            bias: b.bias.map(|v| v.as_slice()),
            residual: b.residual.map(|v| v.as_slice()),
            gamma: b.gamma,
            beta: b.beta.map(|v| v.as_slice()),
        };
        let outputs = NormOutputs {
            z: out.z,
            s: out.s,
            stats: out.stats,
            bits: mask.as_deref_mut(),
        };
        forward(inputs, outputs, call)?;
        Ok(mask.filter(|_| call.training))
    }

    fn norm_backward_into<T: Element, R: Element<Compute = T::Compute>>(
        b: NormGradBuffers<'_, Self, T, R>,
        call: &NormCall,
        out: NormBackwardInto<'_, Self, T, R>,
    ) -> Result<()> {
        let inputs = NormGradInputs {
            dz: b.dz,
            ds: b.ds.map(|v| v.as_slice()),
            s: b.s,
            gamma: b.gamma,
            stats: b.stats,
            bits: b.mask.map(|v| v.as_slice()),
        };
        let grads = NormGrads {
            x: out.x,
            residual: out.residual.map(|v| v.as_mut_slice()),
            bias: out.bias.map(|v| v.as_mut_slice()),
            gamma: out.gamma,
            beta: out.beta.map(|v| v.as_mut_slice()),
        };
        backward(inputs, grads, call)
    }
}

/// The forward's inputs: x of rows x H; bias, gamma and beta of H; residual of rows x H.
#[derive(Clone, Copy)]
pub struct NormInputs<'a, T, R> {
    /// The input, rows x H.
    pub x: &'a [T],
    /// Added to every row of x before the dropout.
    pub bias: Option<&'a [T]>,
    /// The residual stream, rows x H.
    pub residual: Option<&'a [R]>,
    /// The norm's scale.
    pub gamma: &'a [T],
    /// The norm's shift (LayerNorm only).
    pub beta: Option<&'a [T]>,
}

/// The forward's outputs: z and s (rows x H), the row statistics (`stats[2r]` = mean,
/// `stats[2r + 1]` = rstd, compute-type values widened to f64, so exact), and the packed
/// mask when it is saved.
pub struct NormOutputs<'a, T, R> {
    /// The normalized output.
    pub z: &'a mut [T],
    /// The new residual stream.
    pub s: &'a mut [R],
    /// Mean and rstd of each row.
    pub stats: &'a mut [f64],
    /// One bit per element (section 4), or `None` to save nothing.
    pub bits: Option<&'a mut [u32]>,
}

/// The row statistics of section 6.3 from the row's s values in C: (mean, rstd). `d` is
/// scratch of the row's length (it ends holding v - mean for LayerNorm).
#[inline(always)]
fn row_stats<C: ComputeFloat>(norm: Norm, v: &[C], d: &mut [C], h_c: C, eps: C) -> (C, C) {
    let one = C::from_f64(1.0);
    match norm {
        Norm::LayerNorm => {
            let mean = row_sum(v, |x| x).div(h_c);
            for (d, &x) in d.iter_mut().zip(v) {
                *d = x.sub(mean);
            }
            let var = row_sum(d, |x| x.mul(x)).div(h_c);
            (mean, one.div(var.add(eps).sqrt()))
        }
        Norm::RmsNorm => {
            let ms = row_sum(v, |x| x.mul(x)).div(h_c);
            (C::ZERO, one.div(ms.add(eps).sqrt()))
        }
    }
}

/// The forward of section 6.3 over `rows = x.len() / H` rows. The slices' lengths are the
/// caller's to check (the functional layer does). [`Error::OutOfMemory`] when the
/// compute-type copies of bias, gamma and beta cannot be allocated (nothing written then).
///
/// [`Error::OutOfMemory`]: crate::Error::OutOfMemory
pub fn forward<T, R>(
    inputs: NormInputs<'_, T, R>,
    out: NormOutputs<'_, T, R>,
    call: &NormCall,
) -> Result<()>
where
    T: Element,
    R: Element<Compute = T::Compute>,
{
    let h = call.hidden;
    let bias = widened(inputs.bias)?;
    let gamma = widened(Some(inputs.gamma))?.unwrap_or_default();
    let beta = widened(inputs.beta)?;
    let scale = <T::Compute as ComputeFloat>::from_f64(call.prob.scale_f64());
    let h_c = <T::Compute as ComputeFloat>::from_f64(h as f64);
    let eps = <T::Compute as ComputeFloat>::from_f64(call.eps);
    let zero = <T::Compute as ComputeFloat>::ZERO;
    let one = <T::Compute as ComputeFloat>::from_f64(1.0);
    const CHUNK_ROWS: usize = 32;
    let n = inputs.x.len();
    let chunk = CHUNK_ROWS * h;
    let bits_chunks: Vec<Option<&mut [u32]>> = match out.bits {
        Some(b) => b.chunks_mut(chunk / 32).map(Some).collect(),
        None => (0..n.div_ceil(chunk)).map(|_| None).collect(),
    };
    let tasks: Vec<FwdTask<'_, T, R>> = out
        .z
        .chunks_mut(chunk)
        .zip(out.s.chunks_mut(chunk))
        .zip(out.stats.chunks_mut(2 * CHUNK_ROWS))
        .zip(bits_chunks)
        .enumerate()
        .map(|(c, (((z, s), stats), bits))| FwdTask {
            first: c * chunk,
            z,
            s,
            stats,
            bits,
        })
        .collect();
    let parallel = n > super::SERIAL_MAX;
    #[cfg(target_arch = "x86_64")]
    let (avx512_rows, consts) = (
        crate::host::simd::level() == crate::host::simd::SimdLevel::Avx512
            && super::avx512::norm_rows::has_row_kernel::<T, R>(),
        super::avx512::norm_rows::RowConsts {
            norm: call.norm,
            h,
            bias: bias.as_deref(),
            gamma: &gamma,
            beta: beta.as_deref(),
            scale,
            h_c,
            eps,
        },
    );
    for_tasks(
        tasks,
        parallel,
        #[inline(always)]
        |FwdTask {
             first,
             z,
             s,
             stats,
             bits,
         }: FwdTask<'_, T, R>| {
            let mut scratch = Vec::new();
            let keep: Option<&[u32]> = if !call.training {
                None
            } else if let Some(b) = bits {
                call_keep_bits(call, first, z.len(), b);
                Some(b)
            } else {
                Some(regenerate(call, first, z.len(), &mut scratch))
            };
            #[cfg(target_arch = "x86_64")]
            if avx512_rows {
                let rows = super::avx512::norm_rows::TaskRows {
                    x: &inputs.x[first..first + z.len()],
                    residual: inputs.residual.map(|r| &r[first..first + z.len()]),
                    keep,
                    z,
                    s,
                    stats,
                };
                // SAFETY: the AVX-512 level is chosen only when `simd::has_avx512()`; the
                // task's slices hold its rows (the caller checked the lengths), the
                // vectors h elements each; the pair has a kernel (`has_row_kernel`).
                let done = unsafe { super::avx512::norm_rows::forward_rows_any(rows, &consts) };
                debug_assert!(done, "has_row_kernel said the pair has a kernel");
                return;
            }
            // Three passes over each row, in chunks of 32 columns (a chunk is the 32 lanes of
            // the row sum): s and the lane sums of v (or v * v); the variance; z. v, the row
            // in C, stays in this scratch (L1 / L2) between them.
            let mut v = vec![zero; h];
            for (r, (zr, sr)) in z.chunks_mut(h).zip(s.chunks_mut(h)).enumerate() {
                let e0 = first + r * h;
                let (xr, rr) = (
                    &inputs.x[e0..e0 + h],
                    inputs.residual.map(|res| &res[e0..e0 + h]),
                );
                let mut acc = [zero; ROW_SUM_LANES];
                let mut blk = [zero; ROW_SUM_LANES];
                let mut res = [zero; ROW_SUM_LANES];
                for_chunks!(h, |c0, len| {
                    let (a, rb) = (&mut blk[..len], &mut res[..len]);
                    T::to_compute_block(&xr[c0..c0 + len], a);
                    if let Some(b) = &bias {
                        for (a, &b) in a.iter_mut().zip(&b[c0..c0 + len]) {
                            *a = a.add(b);
                        }
                    }
                    if let Some(k) = keep {
                        let word = bits_at(k, r * h + c0);
                        for (j, a) in a.iter_mut().enumerate() {
                            *a = a.mul(scale).kept_or_zero((word >> j) & 1 != 0);
                        }
                    }
                    if let Some(rr) = rr {
                        R::to_compute_block(&rr[c0..c0 + len], rb);
                        for (a, &r) in a.iter_mut().zip(rb.iter()) {
                            *a = r.add(*a);
                        }
                    }
                    let (sc, vc) = (&mut sr[c0..c0 + len], &mut v[c0..c0 + len]);
                    R::from_compute_block(a, sc);
                    // v = to_C(s): exact (the identity when R is C).
                    R::to_compute_block(sc, vc);
                    match call.norm {
                        Norm::LayerNorm => {
                            for (acc, &x) in acc.iter_mut().zip(vc.iter()) {
                                *acc = acc.add(x);
                            }
                        }
                        Norm::RmsNorm => {
                            for (acc, &x) in acc.iter_mut().zip(vc.iter()) {
                                *acc = acc.add(x.mul(x));
                            }
                        }
                    }
                });
                let (mean, rstd) = match call.norm {
                    Norm::LayerNorm => {
                        let mean = lane_tree(acc).div(h_c);
                        let mut acc2 = [zero; ROW_SUM_LANES];
                        for_chunks!(h, |c0, len| {
                            for (acc, &x) in acc2.iter_mut().zip(&v[c0..c0 + len]) {
                                let d = x.sub(mean);
                                *acc = acc.add(d.mul(d));
                            }
                        });
                        let var = lane_tree(acc2).div(h_c);
                        (mean, one.div(var.add(eps).sqrt()))
                    }
                    Norm::RmsNorm => (zero, one.div(lane_tree(acc).div(h_c).add(eps).sqrt())),
                };
                for_chunks!(h, |c0, len| {
                    let a = &mut blk[..len];
                    let (vc, gc) = (&v[c0..c0 + len], &gamma[c0..c0 + len]);
                    match call.norm {
                        Norm::LayerNorm => {
                            for ((a, &x), &g) in a.iter_mut().zip(vc).zip(gc) {
                                *a = x.sub(mean).mul(rstd).mul(g);
                            }
                        }
                        Norm::RmsNorm => {
                            for ((a, &x), &g) in a.iter_mut().zip(vc).zip(gc) {
                                *a = x.mul(rstd).mul(g);
                            }
                        }
                    }
                    if let Some(b) = &beta {
                        for (a, &b) in a.iter_mut().zip(&b[c0..c0 + len]) {
                            *a = a.add(b);
                        }
                    }
                    T::from_compute_block(a, &mut zr[c0..c0 + len]);
                });
                stats[2 * r] = mean.to_f64();
                stats[2 * r + 1] = rstd.to_f64();
            }
        },
    );
    Ok(())
}

/// The row statistics (mean, rstd per row, as [`forward`] saves them) recomputed from a
/// forward's s: the same function of the same values, so the same bits. For callers that
/// keep s but not the statistics (the candle form's backward).
/// [`Error::OutOfMemory`](crate::Error::OutOfMemory) when they cannot be allocated.
pub fn row_stats_from_s<T, R>(s: &[R], call: &NormCall) -> Result<Vec<f64>>
where
    T: Element,
    R: Element<Compute = T::Compute>,
{
    let h = call.hidden;
    let h_c = <T::Compute as ComputeFloat>::from_f64(h as f64);
    let eps = <T::Compute as ComputeFloat>::from_f64(call.eps);
    let mut stats = crate::alloc::filled(0f64, 2 * (s.len() / h))?;
    stats
        .par_chunks_mut(2)
        .zip(s.par_chunks(h))
        .for_each(|(st, row)| {
            let mut v = vec![<T::Compute as ComputeFloat>::ZERO; h];
            let mut d = v.clone();
            R::to_compute_block(row, &mut v);
            let (mean, rstd) = row_stats(call.norm, &v, &mut d, h_c, eps);
            st[0] = mean.to_f64();
            st[1] = rstd.to_f64();
        });
    Ok(stats)
}

/// One forward task: the rows from local element `first`, with their outputs.
struct FwdTask<'a, T, R> {
    first: usize,
    z: &'a mut [T],
    s: &'a mut [R],
    stats: &'a mut [f64],
    bits: Option<&'a mut [u32]>,
}
