//! The backward of the fused dropout + residual add + LayerNorm / RMSNorm on the CPU
//! (docs/spec.md, section 6.3): blocks of [`COLUMN_SUM_BLOCK_ROWS`] rows, each writing its
//! rows' dx and dresidual and its own f64 partial column sums (dbias, dgamma, dbeta), added
//! in block order at the end, so nothing depends on the thread count. The forward and the
//! shared helpers are in `norm.rs`.

use super::rows::{bits_at, for_chunks, for_tasks, lane_tree, regenerate, widened};
use crate::element::{ComputeFloat, Element};
use crate::error::Result;
use crate::plan::{Norm, NormCall, COLUMN_SUM_BLOCK_ROWS, ROW_SUM_LANES};

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
    let parallel = n > super::SERIAL_MAX;
    #[cfg(target_arch = "x86_64")]
    let (avx512_rows, consts) = (
        crate::host::simd::level() == crate::host::simd::SimdLevel::Avx512
            && super::avx512::norm_rows::has_row_kernel::<T, R>(),
        super::avx512::norm_backward_rows::BackwardConsts {
            norm: call.norm,
            h,
            gamma: &gamma,
            scale,
            h_c,
        },
    );
    for_tasks(
        tasks,
        parallel,
        #[inline(always)]
        |BwdTask {
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
            #[cfg(target_arch = "x86_64")]
            if avx512_rows {
                let (end, rows) = (first + dx.len(), dx.len() / h);
                let row0 = first / h;
                let block = super::avx512::norm_backward_rows::BlockRows {
                    dz: &inputs.dz[first..end],
                    ds: inputs.ds.map(|d| &d[first..end]),
                    s: &inputs.s[first..end],
                    stats: &inputs.stats[2 * row0..2 * (row0 + rows)],
                    keep,
                    dx,
                    dres,
                    part_gamma: &mut part.gamma,
                    part_beta: want_beta.then_some(&mut part.beta[..]),
                    part_bias: want_bias.then_some(&mut part.bias[..]),
                };
                use super::avx512::norm_backward_rows::backward_rows_any;
                // SAFETY: the AVX-512 level is chosen only when `simd::has_avx512()`; the
                // block's slices hold its rows (the caller checked the lengths), gamma and
                // the partials h each; the pair has a kernel (`has_row_kernel`).
                let done = unsafe { backward_rows_any(block, &consts) };
                debug_assert!(done, "has_row_kernel said the pair has a kernel");
                return;
            }
            // Two passes over each row in chunks of 32 columns (the row sum's lanes): y, g
            // and the lane sums of g * y and g; then the gradients and the column partials.
            let mut y = vec![zero; h];
            let mut g = y.clone();
            let (mut c_a, mut c_b) = ([zero; ROW_SUM_LANES], [zero; ROW_SUM_LANES]);
            for (r, dxr) in dx.chunks_mut(h).enumerate() {
                let e0 = first + r * h;
                let row = e0 / h;
                let mean = <T::Compute as ComputeFloat>::from_f64(inputs.stats[2 * row]);
                let rstd = <T::Compute as ComputeFloat>::from_f64(inputs.stats[2 * row + 1]);
                let (sr, dzr) = (&inputs.s[e0..e0 + h], &inputs.dz[e0..e0 + h]);
                let (mut acc1, mut acc2) = ([zero; ROW_SUM_LANES], [zero; ROW_SUM_LANES]);
                for_chunks!(h, |c0, len| {
                    let (vb, db) = (&mut c_a[..len], &mut c_b[..len]);
                    R::to_compute_block(&sr[c0..c0 + len], vb);
                    T::to_compute_block(&dzr[c0..c0 + len], db);
                    let (yc, gc) = (&mut y[c0..c0 + len], &mut g[c0..c0 + len]);
                    match call.norm {
                        Norm::LayerNorm => {
                            for (y, &v) in yc.iter_mut().zip(vb.iter()) {
                                *y = v.sub(mean).mul(rstd);
                            }
                        }
                        Norm::RmsNorm => {
                            for (y, &v) in yc.iter_mut().zip(vb.iter()) {
                                *y = v.mul(rstd);
                            }
                        }
                    }
                    for ((g, &d), &gm) in gc.iter_mut().zip(db.iter()).zip(&gamma[c0..c0 + len]) {
                        *g = d.mul(gm);
                    }
                    let accs = acc1.iter_mut().zip(acc2.iter_mut());
                    for ((a1, a2), (&g, &y)) in accs.zip(gc.iter().zip(yc.iter())) {
                        *a1 = a1.add(g.mul(y));
                        *a2 = a2.add(g);
                    }
                });
                let c1 = lane_tree(acc1).div(h_c);
                let c2 = match call.norm {
                    Norm::LayerNorm => lane_tree(acc2).div(h_c),
                    Norm::RmsNorm => zero,
                };
                for_chunks!(h, |c0, len| {
                    let (u, tmp) = (&mut c_a[..len], &mut c_b[..len]);
                    let (yc, gc) = (&y[c0..c0 + len], &g[c0..c0 + len]);
                    match call.norm {
                        Norm::LayerNorm => {
                            for ((u, &g), &y) in u.iter_mut().zip(gc).zip(yc) {
                                *u = g.sub(y.mul(c1)).sub(c2).mul(rstd);
                            }
                        }
                        Norm::RmsNorm => {
                            for ((u, &g), &y) in u.iter_mut().zip(gc).zip(yc) {
                                *u = g.sub(y.mul(c1)).mul(rstd);
                            }
                        }
                    }
                    if let Some(ds) = inputs.ds {
                        R::to_compute_block(&ds[e0 + c0..e0 + c0 + len], tmp);
                        for (u, &d) in u.iter_mut().zip(tmp.iter()) {
                            *u = u.add(d);
                        }
                    }
                    if let Some(dr) = dres.as_deref_mut() {
                        let at = r * h + c0;
                        R::from_compute_block(u, &mut dr[at..at + len]);
                    }
                    // dx: u (eval), or kept ? u * scale : +0.
                    if let Some(k) = keep {
                        let word = bits_at(k, r * h + c0);
                        for (j, u) in u.iter_mut().enumerate() {
                            *u = u.mul(scale).kept_or_zero((word >> j) & 1 != 0);
                        }
                    }
                    let dxc = &mut dxr[c0..c0 + len];
                    T::from_compute_block(u, dxc);
                    T::to_compute_block(&dzr[c0..c0 + len], tmp);
                    let pg = &mut part.gamma[c0..c0 + len];
                    for ((p, &d), &y) in pg.iter_mut().zip(tmp.iter()).zip(yc) {
                        *p += d.mul(y).to_f64();
                    }
                    if want_beta {
                        for (p, &d) in part.beta[c0..c0 + len].iter_mut().zip(tmp.iter()) {
                            *p += d.to_f64();
                        }
                    }
                    if want_bias {
                        // The rounded dx, widened again: the column sums add what dx holds.
                        T::to_compute_block(dxc, tmp);
                        for (p, &d) in part.bias[c0..c0 + len].iter_mut().zip(tmp.iter()) {
                            *p += d.to_f64();
                        }
                    }
                });
            }
        },
    );
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
