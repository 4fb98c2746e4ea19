//! The fused dropout + residual add + LayerNorm / RMSNorm on the CPU (docs/spec.md,
//! section 6.3): rows of H, the 32-lane row sum, and the backward with its blocked f64
//! column sums. Every value is the spec's, operation for operation, so the CUDA kernels
//! (`kernels/dropout_add_norm.cu`) give the same bits.
//!
//! Work is split by rows: forward chunks of 32 rows (32 * H decisions fill whole mask
//! words), backward blocks of [`COLUMN_SUM_BLOCK_ROWS`] rows, each with its own f64
//! partial column sums, added in block order at the end. Neither depends on the thread
//! count.

use crate::element::{ComputeFloat, Element};
use crate::error::Result;
use crate::mask::{fill_keep_bits, mask_words};
use crate::plan::{Norm, NormCall, COLUMN_SUM_BLOCK_ROWS, ROW_SUM_LANES};
use rayon::prelude::*;

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

/// The backward's inputs. `bits` is the forward's saved mask, or `None` to regenerate the
/// decisions from `NormCall::pos` (in eval mode there are none).
#[derive(Clone, Copy)]
pub struct NormGradInputs<'a, T, R> {
    /// The gradient of z.
    pub dz: &'a [T],
    /// The gradient that reaches s from the residual path.
    pub ds: Option<&'a [R]>,
    /// The forward's s.
    pub s: &'a [R],
    /// The forward's gamma.
    pub gamma: &'a [T],
    /// The forward's row statistics.
    pub stats: &'a [f64],
    /// The forward's mask, if saved.
    pub bits: Option<&'a [u32]>,
}

/// The backward's outputs; `None` for the gradients of inputs the forward did not have.
pub struct NormGrads<'a, T, R> {
    /// d/dx, rows x H.
    pub x: &'a mut [T],
    /// d/dresidual, rows x H.
    pub residual: Option<&'a mut [R]>,
    /// d/dbias, H.
    pub bias: Option<&'a mut [T]>,
    /// d/dgamma, H.
    pub gamma: &'a mut [T],
    /// d/dbeta, H.
    pub beta: Option<&'a mut [T]>,
}

/// The row sum S(f) of section 6.3: 32 lanes striding by 32, then the fixed tree.
#[inline(always)]
fn row_sum<C: ComputeFloat>(h: usize, f: impl Fn(usize) -> C) -> C {
    let mut acc = [C::ZERO; ROW_SUM_LANES];
    let mut c0 = 0;
    while c0 + ROW_SUM_LANES <= h {
        for (k, a) in acc.iter_mut().enumerate() {
            *a = a.add(f(c0 + k));
        }
        c0 += ROW_SUM_LANES;
    }
    for (k, a) in acc.iter_mut().enumerate().take(h - c0) {
        *a = a.add(f(c0 + k));
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
fn widened<T: Element>(vals: Option<&[T]>) -> Result<Option<Vec<T::Compute>>> {
    vals.map(|v| {
        let mut c = crate::alloc::filled(<T::Compute as ComputeFloat>::ZERO, v.len())?;
        T::to_compute_block(v, &mut c);
        Ok(c)
    })
    .transpose()
}

/// Whether local element `e` of a mask piece starting at a word boundary is kept.
#[inline(always)]
fn kept_at(bits: &[u32], e: usize) -> bool {
    bits[e / 32] >> (e % 32) & 1 != 0
}

/// The decisions of `count` elements from local element `first` (a multiple of 32):
/// computed into `scratch`.
fn regenerate<'b>(
    call: &NormCall,
    first: usize,
    count: usize,
    scratch: &'b mut Vec<u32>,
) -> &'b [u32] {
    scratch.clear();
    scratch.resize(mask_words(count), 0);
    let (pos, prob) = (call.pos, &call.prob);
    let global = pos.index_base.wrapping_add(first as u64);
    fill_keep_bits(pos.seed, pos.offset, global, prob, count, scratch);
    scratch
}

/// The row statistics of section 6.3 from the row's s values in C: (mean, rstd).
#[inline(always)]
fn row_stats<C: ComputeFloat>(norm: Norm, v: &[C], h_c: C, eps: C) -> (C, C) {
    let h = v.len();
    let one = C::from_f64(1.0);
    match norm {
        Norm::LayerNorm => {
            let mean = row_sum(h, |j| v[j]).div(h_c);
            let var = row_sum(h, |j| {
                let d = v[j].sub(mean);
                d.mul(d)
            })
            .div(h_c);
            (mean, one.div(var.add(eps).sqrt()))
        }
        Norm::RmsNorm => {
            let ms = row_sum(h, |j| v[j].mul(v[j])).div(h_c);
            (C::ZERO, one.div(ms.add(eps).sqrt()))
        }
    }
}

/// The normalized value y_j of section 6.3.
#[inline(always)]
fn normalized<C: ComputeFloat>(norm: Norm, v: C, mean: C, rstd: C) -> C {
    match norm {
        Norm::LayerNorm => v.sub(mean).mul(rstd),
        Norm::RmsNorm => v.mul(rstd),
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
    let run = |FwdTask {
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
            let pos = call.pos;
            let global = pos.index_base.wrapping_add(first as u64);
            fill_keep_bits(pos.seed, pos.offset, global, &call.prob, z.len(), b);
            Some(b)
        } else {
            Some(regenerate(call, first, z.len(), &mut scratch))
        };
        let mut v = vec![zero; h];
        for (r, (zr, sr)) in z.chunks_mut(h).zip(s.chunks_mut(h)).enumerate() {
            let e0 = first + r * h;
            for j in 0..h {
                let mut a = inputs.x[e0 + j].to_compute();
                if let Some(b) = &bias {
                    a = a.add(b[j]);
                }
                let m = match keep {
                    None => a,
                    Some(k) if kept_at(k, r * h + j) => a.mul(scale),
                    Some(_) => zero,
                };
                let sum = match inputs.residual {
                    Some(res) => res[e0 + j].to_compute().add(m),
                    None => m,
                };
                sr[j] = R::from_compute(sum);
                v[j] = sr[j].to_compute();
            }
            let (mean, rstd) = row_stats(call.norm, &v, h_c, eps);
            for j in 0..h {
                let y = normalized(call.norm, v[j], mean, rstd).mul(gamma[j]);
                zr[j] = T::from_compute(match &beta {
                    Some(b) => y.add(b[j]),
                    None => y,
                });
            }
            stats[2 * r] = mean.to_f64();
            stats[2 * r + 1] = rstd.to_f64();
        }
    };
    if n <= super::SERIAL_MAX {
        tasks.into_iter().for_each(run);
    } else {
        tasks.into_par_iter().for_each(run);
    }
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
            let v: Vec<T::Compute> = row.iter().map(|x| x.to_compute()).collect();
            let (mean, rstd) = row_stats(call.norm, &v, h_c, eps);
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

/// One backward task: a column-sum block of rows from local element `first`.
struct BwdTask<'a, T, R> {
    first: usize,
    dx: &'a mut [T],
    dres: Option<&'a mut [R]>,
    part: &'a mut Partials,
}

/// One block's f64 partial column sums (H each): dbias, dgamma, dbeta.
struct Partials {
    bias: Vec<f64>,
    gamma: Vec<f64>,
    beta: Vec<f64>,
}

/// The backward of section 6.3, writing every gradient the outputs ask for.
/// [`Error::OutOfMemory`] when the partial column sums (about `24 * n / 256` bytes) or the
/// compute-type copy of gamma cannot be allocated (nothing written then).
///
/// [`Error::OutOfMemory`]: crate::Error::OutOfMemory
pub fn backward<T, R>(
    inputs: NormGradInputs<'_, T, R>,
    out: NormGrads<'_, T, R>,
    call: &NormCall,
) -> Result<()>
where
    T: Element,
    R: Element<Compute = T::Compute>,
{
    let h = call.hidden;
    let n = inputs.dz.len();
    let rows = n / h;
    let blocks = rows.div_ceil(COLUMN_SUM_BLOCK_ROWS);
    let gamma = widened(Some(inputs.gamma))?.unwrap_or_default();
    let scale = <T::Compute as ComputeFloat>::from_f64(call.prob.scale_f64());
    let h_c = <T::Compute as ComputeFloat>::from_f64(h as f64);
    let zero = <T::Compute as ComputeFloat>::ZERO;
    let (want_bias, want_beta) = (out.bias.is_some(), out.beta.is_some());
    let mut partials = Vec::new();
    partials
        .try_reserve_exact(blocks)
        .map_err(|_| crate::error::Error::OutOfMemory {
            bytes: blocks.saturating_mul(std::mem::size_of::<Partials>()),
            device: "cpu".into(),
        })?;
    for _ in 0..blocks {
        let sized = |want: bool| crate::alloc::filled(0f64, if want { h } else { 0 });
        partials.push(Partials {
            bias: sized(want_bias)?,
            gamma: sized(true)?,
            beta: sized(want_beta)?,
        });
    }
    let block = COLUMN_SUM_BLOCK_ROWS * h;
    let res_chunks: Vec<Option<&mut [R]>> = match out.residual {
        Some(r) => r.chunks_mut(block).map(Some).collect(),
        None => (0..blocks).map(|_| None).collect(),
    };
    let tasks: Vec<BwdTask<'_, T, R>> = out
        .x
        .chunks_mut(block)
        .zip(res_chunks)
        .zip(partials.iter_mut())
        .enumerate()
        .map(|(b, ((dx, dres), part))| BwdTask {
            first: b * block,
            dx,
            dres,
            part,
        })
        .collect();
    let run = |BwdTask {
                   first,
                   dx,
                   mut dres,
                   part,
               }: BwdTask<'_, T, R>| {
        let mut scratch = Vec::new();
        let keep: Option<&[u32]> = match (call.training, inputs.bits) {
            (false, _) => None,
            (true, Some(bits)) => Some(&bits[first / 32..]),
            (true, None) => Some(regenerate(call, first, dx.len(), &mut scratch)),
        };
        let (mut y, mut g) = (vec![zero; h], vec![zero; h]);
        for (r, dxr) in dx.chunks_mut(h).enumerate() {
            let e0 = first + r * h;
            let row = e0 / h;
            let mean = <T::Compute as ComputeFloat>::from_f64(inputs.stats[2 * row]);
            let rstd = <T::Compute as ComputeFloat>::from_f64(inputs.stats[2 * row + 1]);
            for j in 0..h {
                let v = inputs.s[e0 + j].to_compute();
                y[j] = normalized(call.norm, v, mean, rstd);
                g[j] = inputs.dz[e0 + j].to_compute().mul(gamma[j]);
            }
            let c1 = row_sum(h, |j| g[j].mul(y[j])).div(h_c);
            let c2 = match call.norm {
                Norm::LayerNorm => row_sum(h, |j| g[j]).div(h_c),
                Norm::RmsNorm => zero,
            };
            for j in 0..h {
                let w = g[j].sub(y[j].mul(c1));
                let t = match call.norm {
                    Norm::LayerNorm => w.sub(c2).mul(rstd),
                    Norm::RmsNorm => w.mul(rstd),
                };
                let u = match inputs.ds {
                    Some(ds) => t.add(ds[e0 + j].to_compute()),
                    None => t,
                };
                if let Some(dr) = dres.as_deref_mut() {
                    dr[r * h + j] = R::from_compute(u);
                }
                dxr[j] = match keep {
                    None => T::from_compute(u),
                    Some(k) if kept_at(k, r * h + j) => T::from_compute(u.mul(scale)),
                    Some(_) => T::from_compute(zero),
                };
                let dz = inputs.dz[e0 + j].to_compute();
                part.gamma[j] += dz.mul(y[j]).to_f64();
                if want_beta {
                    part.beta[j] += dz.to_f64();
                }
                if want_bias {
                    part.bias[j] += dxr[j].to_compute().to_f64();
                }
            }
        }
    };
    if n <= super::SERIAL_MAX {
        tasks.into_iter().for_each(run);
    } else {
        tasks.into_par_iter().for_each(run);
    }
    finish_columns(&partials, |p| &p.gamma, out.gamma);
    if let Some(db) = out.beta {
        finish_columns(&partials, |p| &p.beta, db);
    }
    if let Some(db) = out.bias {
        finish_columns(&partials, |p| &p.bias, db);
    }
    Ok(())
}

/// out_c = round_T(the f64 sum of the blocks' partial_c in block order, from +0.0).
fn finish_columns<T: Element>(
    partials: &[Partials],
    which: impl Fn(&Partials) -> &Vec<f64>,
    out: &mut [T],
) {
    for (c, o) in out.iter_mut().enumerate() {
        let mut acc = 0f64;
        for p in partials {
            acc += which(p)[c];
        }
        *o = T::from_f64(acc);
    }
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
        assert_eq!(row_sum(40, |j| vals[j]).to_bits(), acc[0].to_bits());
        // And it is not the plain left-to-right sum for these values.
        let plain: f32 = vals.iter().sum();
        assert_ne!(plain.to_bits(), acc[0].to_bits());
        // Fewer than 32 values: idle lanes stay +0, so -0 becomes +0.
        assert_eq!(row_sum(1, |_| -0.0f32).to_bits(), 0.0f32.to_bits());
    }
}
