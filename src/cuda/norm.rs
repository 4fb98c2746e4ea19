//! The fused dropout + residual add + LayerNorm / RMSNorm on CUDA (docs/spec.md section
//! 6.3): `dropout_add_norm_fwd_<T>[_rf32]` and `dropout_add_norm_bwd_<T>[_rf32]` (one warp
//! per row), the column sums of dbias and dbeta (`column_sum_partial/finish`) and of dgamma
//! (`add_norm_dgamma_partial`, then `column_sum_finish`). Each kernel takes one argument
//! struct, laid out as its twin in kernels/dropout_add_norm.cu.

use super::buffer::{Cuda, CudaBuffer, MaskSlice};
use super::device::CudaDevice;
use super::grouped::{mask_bits, mask_bits_shard};
use super::kernels::ops::{
    ADD_NORM_DGAMMA_PARTIAL, COLUMN_SUM_FINISH, DROPOUT_ADD_NORM_BWD, DROPOUT_ADD_NORM_FWD,
};
use super::launch::{kernel, launch, op_range, pair_kernel, DkDraw, Work};
use super::residual::queue_column_sum_into;
use crate::backend::NormKernels;
use crate::backend::{self, Wanted};
use crate::element::Element;
use crate::error::Result;
use crate::mask::mask_words;
use crate::plan::{MaskMode, Norm, NormCall, COLUMN_SUM_BLOCK_ROWS};
use cudarc::driver::{CudaView, DevicePtr, DeviceRepr, PushKernelArg};

/// The fused norm's device buffers: the backend interface's types on CUDA.
pub(crate) type NormBuffers<'a, T, R> = backend::NormBuffers<'a, Cuda, T, R>;
pub(crate) type NormForward<T, R> = backend::NormForward<Cuda, T, R>;
pub(crate) type NormGradBuffers<'a, T, R> = backend::NormGradBuffers<'a, Cuda, T, R>;
pub(crate) type NormBackward<T, R> = backend::NormBackward<Cuda, T, R>;

/// `struct DkNormFwdArgs` of kernels/dropout_add_norm.cu: device addresses (0 = absent)
/// and scalars, 112 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct NormFwdArgs {
    x: u64,
    bias: u64,
    residual: u64,
    gamma: u64,
    beta: u64,
    keep: u64,
    z: u64,
    s: u64,
    stats: u64,
    rows: u64,
    h: u64,
    eps: f64,
    scale: f64,
    norm: u32,
    training: u32,
}

/// `struct DkNormBwdArgs`, 96 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct NormBwdArgs {
    dz: u64,
    ds: u64,
    s: u64,
    gamma: u64,
    stats: u64,
    keep: u64,
    dx: u64,
    dresidual: u64,
    rows: u64,
    h: u64,
    scale: f64,
    norm: u32,
    training: u32,
}

/// `struct DkNormDgammaArgs`, 64 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct NormDgammaArgs {
    dz: u64,
    s: u64,
    stats: u64,
    partial: u64,
    rows: u64,
    h: u64,
    block_rows: u64,
    norm: u32,
    pad: u32,
}

// SAFETY: each struct is `#[repr(C)]` over u64, f64 and u32 fields, so
// it has C's layout with no padding: the sizes and offsets are asserted in the tests
// below, and the .cu twins static_assert the same sizes. Plain data (device addresses as
// integers), so cudarc may copy its bytes into the kernel's parameter buffer.
unsafe impl DeviceRepr for NormFwdArgs {}
// SAFETY: as above.
unsafe impl DeviceRepr for NormBwdArgs {}
// SAFETY: as above.
unsafe impl DeviceRepr for NormDgammaArgs {}

fn norm_code(norm: Norm) -> u32 {
    match norm {
        Norm::LayerNorm => 0,
        Norm::RmsNorm => 1,
    }
}

/// The device address of an optional view, and its guard.
fn optional_ptr<'a, T>(
    dev: &'a CudaDevice,
    view: Option<&'a CudaView<'a, T>>,
) -> (u64, Option<impl Drop + 'a>) {
    match view {
        Some(v) => {
            let (p, g) = v.device_ptr(dev.stream());
            (p, Some(g))
        }
        None => (0, None),
    }
}

/// The decisions of a training call: `dropout_mask_bits` into `reuse` when it has the
/// size (an `_into` call's), else into a new mask (kept by the caller for the bits form,
/// scratch or a transient buffer for the regenerate form); `None` in eval mode.
fn draw_mask(
    dev: &CudaDevice,
    call: &NormCall,
    n: usize,
    reuse: Option<MaskSlice>,
) -> Result<Option<MaskSlice>> {
    if !call.training {
        return Ok(None);
    }
    let mut mask = MaskSlice::reuse_or_alloc(dev, mask_words(n), reuse)?;
    draw_bits(dev, &mut mask, call, n)?;
    Ok(Some(mask))
}

/// The `n` decisions of a training call into `mask`: `dropout_mask_bits` from the call's
/// index base, or `dropout_mask_bits_shard` through its shard's layout.
fn draw_bits(dev: &CudaDevice, mask: &mut MaskSlice, call: &NormCall, n: usize) -> Result<()> {
    let draw = DkDraw::new(call.pos, &call.prob);
    match &call.shard {
        None => mask_bits(dev, mask, draw, n),
        Some(layout) => mask_bits_shard(dev, mask, draw, layout, n),
    }
}

/// A new buffer of `len` elements that a kernel fills.
fn new_buffer<T: Element>(dev: &CudaDevice, len: usize) -> Result<CudaBuffer<T>> {
    Ok(CudaBuffer::new(
        dev.clone(),
        dev.alloc_uninit::<T>(len)?,
        0,
        len,
    ))
}

impl NormKernels for Cuda {
    fn norm_forward<T: Element, R: Element<Compute = T::Compute>>(
        b: NormBuffers<'_, T, R>,
        call: &NormCall,
        mode: MaskMode,
    ) -> Result<NormForward<T, R>> {
        let dev = b.x.device().clone();
        let n = b.x.len();
        let rows = n / call.hidden;
        let (mut z, mut s) = (new_buffer::<T>(&dev, n)?, new_buffer::<R>(&dev, n)?);
        let mut stats = new_buffer::<f64>(&dev, 2 * rows)?;
        let out = backend::NormForwardInto {
            z: &mut z,
            s: &mut s,
            stats: &mut stats,
            mask: None,
        };
        let mask = Self::norm_forward_into(b, call, mode, out)?;
        Ok(NormForward {
            z,
            s,
            stats,
            // The regenerate form keeps nothing: the transient mask is freed in stream order.
            mask: mask.filter(|_| mode == MaskMode::Bits),
        })
    }

    /// The forward: the decisions first ([`draw_mask`]), then one row pass. No host sync;
    /// nothing allocated when `out.mask` fits.
    fn norm_forward_into<T: Element, R: Element>(
        b: NormBuffers<'_, T, R>,
        call: &NormCall,
        _mode: MaskMode,
        out: backend::NormForwardInto<'_, Cuda, T, R>,
    ) -> Result<Option<MaskSlice>> {
        let _range = op_range("dropout_add_norm_forward");
        let dev = b.x.device().clone();
        let n = b.x.len();
        let rows = n / call.hidden;
        let mask = draw_mask(&dev, call, n, out.mask)?;
        if rows > 0 {
            let st = dev.stream();
            let (xv, gv) = (b.x.view(), b.gamma.view());
            let (bias, residual, beta) = (
                b.bias.map(|t| t.view()),
                b.residual.map(|t| t.view()),
                b.beta.map(|t| t.view()),
            );
            let (x, _g1) = xv.device_ptr(st);
            let (gamma, _g2) = gv.device_ptr(st);
            let (bias, _g3) = optional_ptr(&dev, bias.as_ref());
            let (residual, _g4) = optional_ptr(&dev, residual.as_ref());
            let (beta, _g5) = optional_ptr(&dev, beta.as_ref());
            let (keep, _g6) = match &mask {
                Some(m) => {
                    let (p, g) = m.slice().device_ptr(st);
                    (p, Some(g))
                }
                None => (0, None),
            };
            let (z_ptr, _g7) = out.z.ptr_mut();
            let (s_ptr, _g8) = out.s.ptr_mut();
            let (stats_ptr, _g9) = out.stats.ptr_mut();
            let args = NormFwdArgs {
                x,
                bias,
                residual,
                gamma,
                beta,
                keep,
                z: z_ptr,
                s: s_ptr,
                stats: stats_ptr,
                rows: rows as u64,
                h: call.hidden as u64,
                eps: call.eps,
                scale: call.prob.scale_f64(),
                norm: norm_code(call.norm),
                training: u32::from(call.training),
            };
            let (f, name) = pair_kernel::<T, R>(&dev, &DROPOUT_ADD_NORM_FWD)?;
            let mut builder = dev.stream().launch_builder(&f);
            builder.arg(&args);
            // SAFETY: dropout_add_norm_fwd_<T>[_rf32] takes one DkNormFwdArgs<T, R>, which
            // NormFwdArgs mirrors; x, residual, z, s hold rows * h elements, bias, gamma, beta
            // h, stats 2 * rows doubles, keep the mask words of rows * h decisions (checked by
            // the functional layer and drawn above), all guarded until queued.
            unsafe { launch(&dev, builder, Work::Rows(rows as u64), &name, None)? };
        }
        Ok(mask)
    }

    fn norm_backward<T: Element, R: Element<Compute = T::Compute>>(
        b: NormGradBuffers<'_, T, R>,
        call: &NormCall,
        want: Wanted,
    ) -> Result<NormBackward<T, R>> {
        let dev = b.dz.device().clone();
        let (h, n) = (call.hidden, b.dz.len());
        let rows = n / h;
        let is_layer = call.norm == Norm::LayerNorm;
        let mut x = new_buffer::<T>(&dev, n)?;
        let mut residual = want
            .residual
            .then(|| new_buffer::<R>(&dev, n))
            .transpose()?;
        let mut bias = want.bias.then(|| new_buffer::<T>(&dev, h)).transpose()?;
        let mut gamma = new_buffer::<T>(&dev, h)?;
        let mut beta = is_layer.then(|| new_buffer::<T>(&dev, h)).transpose()?;
        let mut partial = new_buffer::<f64>(&dev, rows.div_ceil(COLUMN_SUM_BLOCK_ROWS) * h)?;
        let out = backend::NormBackwardInto {
            x: &mut x,
            residual: residual.as_mut(),
            bias: bias.as_mut(),
            gamma: &mut gamma,
            beta: beta.as_mut(),
            partial: &mut partial,
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

    /// The backward: `dropout_add_norm_bwd` (dx, dresidual), then the column sums of dz * y
    /// (dgamma), dz (dbeta) and dx (dbias) in the blocked order, one after another through
    /// the one partial buffer (stream order keeps them apart). No host sync; nothing
    /// allocated when the regenerate form has its scratch mask.
    fn norm_backward_into<T: Element, R: Element>(
        b: NormGradBuffers<'_, T, R>,
        call: &NormCall,
        out: backend::NormBackwardInto<'_, Cuda, T, R>,
    ) -> Result<()> {
        let _range = op_range("dropout_add_norm_backward");
        let dev = b.dz.device().clone();
        let st = dev.stream();
        let h = call.hidden;
        let n = b.dz.len();
        let rows = n / h;
        // The regenerate form draws its decisions again: into the scratch, else a transient.
        let transient;
        let mask = match (b.mask, out.scratch) {
            (Some(m), _) => Some(m),
            (None, Some(scratch)) if call.training => {
                draw_bits(&dev, scratch, call, n)?;
                Some(&*scratch)
            }
            (None, _) => {
                transient = draw_mask(&dev, call, n, None)?;
                transient.as_ref()
            }
        };
        // The guards of the device addresses live in this block, until every launch is queued.
        let (dzv, sv, gv, statv) = (b.dz.view(), b.s.view(), b.gamma.view(), b.stats.view());
        let (dz, _g1) = dzv.device_ptr(st);
        let (s, _g2) = sv.device_ptr(st);
        let (gamma, _g3) = gv.device_ptr(st);
        let (stats, _g4) = statv.device_ptr(st);
        let dsv = b.ds.map(|t| t.view());
        let (ds, _g5) = optional_ptr(&dev, dsv.as_ref());
        let (keep, _g6) = match mask {
            Some(m) => {
                let (p, g) = m.slice().device_ptr(st);
                (p, Some(g))
            }
            None => (0, None),
        };
        let (dx_ptr, _g7) = out.x.ptr_mut();
        let (dres_ptr, _g8) = match out.residual {
            Some(d) => {
                let (p, g) = d.ptr_mut();
                (p, Some(g))
            }
            None => (0, None),
        };
        if rows > 0 {
            let args = NormBwdArgs {
                dz,
                ds,
                s,
                gamma,
                stats,
                keep,
                dx: dx_ptr,
                dresidual: dres_ptr,
                rows: rows as u64,
                h: h as u64,
                scale: call.prob.scale_f64(),
                norm: norm_code(call.norm),
                training: u32::from(call.training),
            };
            let (f, name) = pair_kernel::<T, R>(&dev, &DROPOUT_ADD_NORM_BWD)?;
            let mut builder = st.launch_builder(&f);
            builder.arg(&args);
            // SAFETY: dropout_add_norm_bwd_<T>[_rf32] takes one DkNormBwdArgs<T, R>, mirrored
            // by NormBwdArgs; dz, ds, s, dx, dresidual hold rows * h elements, gamma h, stats
            // 2 * rows doubles, keep the forward's mask (or 0); all guarded until queued.
            unsafe { launch(&dev, builder, Work::Rows(rows as u64), &name, None)? };
        }
        // dgamma: block partials of dz * y, then the finish of the bias gradient's sums.
        let blocks = rows.div_ceil(COLUMN_SUM_BLOCK_ROWS);
        let (p_ptr, _gp) = out.partial.ptr_mut();
        let (dg_ptr, _gg) = out.gamma.ptr_mut();
        let dgamma_args = NormDgammaArgs {
            dz,
            s,
            stats,
            partial: p_ptr,
            rows: rows as u64,
            h: h as u64,
            block_rows: COLUMN_SUM_BLOCK_ROWS as u64,
            norm: norm_code(call.norm),
            pad: 0,
        };
        let (f, name) = pair_kernel::<T, R>(&dev, &ADD_NORM_DGAMMA_PARTIAL)?;
        let mut builder = st.launch_builder(&f);
        builder.arg(&dgamma_args);
        // SAFETY: add_norm_dgamma_partial_<T>[_rf32] takes one DkNormDgammaArgs<T, R>; dz and s
        // hold rows * h elements, stats 2 * rows doubles, partial blocks * h (the caller's).
        unsafe {
            launch(
                &dev,
                builder,
                Work::Elements((blocks * h) as u64),
                &name,
                None,
            )?
        };
        let (fin, fin_name) = kernel::<T>(&dev, &COLUMN_SUM_FINISH)?;
        let mut builder = st.launch_builder(&fin);
        let (blocks_u, h_u) = (blocks as u64, h as u64);
        builder.arg(&p_ptr).arg(&dg_ptr).arg(&blocks_u).arg(&h_u);
        // SAFETY: column_sum_finish (partial, out, blocks, h): partial holds blocks * h doubles,
        // out (dgamma) h elements.
        unsafe { launch(&dev, builder, Work::Elements(h_u), &fin_name, None)? };
        if let Some(db) = out.beta {
            let (o, _g) = db.ptr_mut();
            // SAFETY: dz holds rows * h elements, dbeta h, partial blocks * h doubles (its
            // earlier use is ordered before this on the stream), guarded until queued.
            unsafe { queue_column_sum_into::<T>(&dev, dz, o, p_ptr, rows, h)? };
        }
        if let Some(db) = out.bias {
            let (o, _g) = db.ptr_mut();
            // SAFETY: dx (written above, in stream order) holds rows * h elements, dbias h,
            // partial as above.
            unsafe { queue_column_sum_into::<T>(&dev, dx_ptr, o, p_ptr, rows, h)? };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{NormBwdArgs, NormDgammaArgs, NormFwdArgs};
    use std::mem::{offset_of, size_of};

    #[test]
    fn argument_structs_have_the_kernels_layout() {
        // The sizes kernels/dropout_add_norm.cu static_asserts, and the offsets of the
        // fields after the pointers (the pointers are 8 bytes each, in order).
        assert_eq!(size_of::<NormFwdArgs>(), 112);
        assert_eq!(offset_of!(NormFwdArgs, rows), 72);
        assert_eq!(offset_of!(NormFwdArgs, eps), 88);
        assert_eq!(offset_of!(NormFwdArgs, norm), 104);
        assert_eq!(offset_of!(NormFwdArgs, training), 108);
        assert_eq!(size_of::<NormBwdArgs>(), 96);
        assert_eq!(offset_of!(NormBwdArgs, rows), 64);
        assert_eq!(offset_of!(NormBwdArgs, scale), 80);
        assert_eq!(offset_of!(NormBwdArgs, training), 92);
        assert_eq!(size_of::<NormDgammaArgs>(), 64);
        assert_eq!(offset_of!(NormDgammaArgs, block_rows), 48);
        assert_eq!(offset_of!(NormDgammaArgs, norm), 56);
    }
}
