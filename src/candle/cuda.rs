//! The CUDA forwards of the candle ops: dropkit's kernels launched on candle's stream over
//! candle's buffers (read at each layout's start offset), each writing a new buffer that
//! candle then owns. The kernels are the ones dropkit's own tensors use, so the bits are
//! the same.

use super::op::{alpha_affine, Kept, MaskOp};
use super::residual::{fused_dtype_error, FusedOp};
use super::{contiguous_range, to_candle_error, unsupported_dtype};
use crate::cuda::ops::{candle_raw, dropout_forward_raw, queue_column_sum, GroupedOp};
use crate::cuda::CudaDevice;
use crate::element::{to_compute_f64, Element};
use crate::functional::Decisions;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaStorageSlice;
use candle_core::{CudaStorage, Layout, Shape};
use cudarc::driver::{CudaSlice, CudaView, DevicePtr, DevicePtrMut};

/// Our device handle over the storage's stream: launches are ordered after whatever
/// candle queued before, and candle's later work is ordered after them.
fn device_of(storage: &CudaStorage) -> candle_core::Result<CudaDevice> {
    CudaDevice::from_stream(storage.device.cuda_stream()).map_err(to_candle_error)
}

/// Runs `$body` with `$x` bound to the storage's typed slice, for the four dtypes, and
/// wraps the new slice it returns as candle storage.
macro_rules! by_dtype {
    ($storage:expr, |$x:ident| $body:expr) => {{
        let owner = $storage.device.clone();
        match &$storage.slice {
            CudaStorageSlice::F32($x) => CudaStorage::wrap_cuda_slice($body?, owner),
            CudaStorageSlice::F64($x) => CudaStorage::wrap_cuda_slice($body?, owner),
            CudaStorageSlice::F16($x) => CudaStorage::wrap_cuda_slice($body?, owner),
            CudaStorageSlice::BF16($x) => CudaStorage::wrap_cuda_slice($body?, owner),
            _ => return Err(unsupported_dtype($storage.dtype())),
        }
    }};
}

pub(super) fn mask_forward(
    op: &MaskOp,
    storage: &CudaStorage,
    layout: &Layout,
) -> candle_core::Result<(CudaStorage, Shape)> {
    let (start, end) = contiguous_range(layout)?;
    let dev = device_of(storage)?;
    let out = by_dtype!(storage, |x| launch_mask(op, &dev, &x.slice(start..end)));
    Ok((out, layout.shape().clone()))
}

fn launch_mask<T: Element>(
    op: &MaskOp,
    dev: &CudaDevice,
    x: &CudaView<'_, T>,
) -> candle_core::Result<CudaSlice<T>> {
    let n = x.len();
    let mut y = dev.alloc_uninit::<T>(n).map_err(to_candle_error)?;
    if n == 0 {
        return Ok(y);
    }
    let (pos, prob) = (op.pos, &op.prob);
    {
        // The guards record the read and the write for cudarc's event tracking; they live
        // until the launch is queued, and end before `y` is handed over.
        let (x_ptr, _gx) = x.device_ptr(dev.stream());
        let (y_ptr, _gy) = y.device_ptr_mut(dev.stream());
        // SAFETY: x_ptr covers the n live input elements and y_ptr a fresh n-element
        // allocation, both in the context of `dev`'s stream and alive until the launches
        // are queued.
        unsafe {
            match (op.decisions(n), op.kept) {
                (Decisions::Elementwise, Kept::Scale(f)) => {
                    let scale = to_compute_f64::<T>(f);
                    dropout_forward_raw::<T>(dev, x_ptr, y_ptr, n, pos, prob, scale)
                }
                (Decisions::Elementwise, Kept::Alpha) => {
                    let affine = alpha_affine::<T>(prob);
                    candle_raw::alpha_forward::<T>(dev, x_ptr, y_ptr, n, pos, prob, affine)
                }
                (d @ Decisions::Grouped { .. }, kept) => {
                    let kernel_op = match kept {
                        Kept::Scale(f) => GroupedOp::Scale(to_compute_f64::<T>(f)),
                        Kept::Alpha => GroupedOp::Affine(alpha_affine::<T>(prob)),
                    };
                    candle_raw::grouped_forward::<T>(dev, x_ptr, y_ptr, n, pos, prob, d, kernel_op)
                }
            }
        }
        .map_err(to_candle_error)?;
    }
    Ok(y)
}

pub(super) fn fused_forward(
    op: &FusedOp,
    args: [(&CudaStorage, &Layout); 3],
) -> candle_core::Result<(CudaStorage, Shape)> {
    let [(sx, lx), (sb, lb), (sr, lr)] = args;
    let ((x0, x1), (b0, b1), (r0, r1)) = (
        contiguous_range(lx)?,
        contiguous_range(lb)?,
        contiguous_range(lr)?,
    );
    let dev = device_of(sx)?;
    let owner = sx.device.clone();
    use CudaStorageSlice as S;
    macro_rules! launch {
        ($x:expr, $b:expr, $r:expr) => {
            CudaStorage::wrap_cuda_slice(
                launch_fused(
                    op,
                    &dev,
                    &$x.slice(x0..x1),
                    &$b.slice(b0..b1),
                    &$r.slice(r0..r1),
                )?,
                owner,
            )
        };
    }
    let out = match (&sx.slice, &sb.slice, &sr.slice) {
        (S::F32(x), S::F32(b), S::F32(r)) => launch!(x, b, r),
        (S::F64(x), S::F64(b), S::F64(r)) => launch!(x, b, r),
        (S::F16(x), S::F16(b), S::F16(r)) => launch!(x, b, r),
        (S::BF16(x), S::BF16(b), S::BF16(r)) => launch!(x, b, r),
        _ => return Err(fused_dtype_error([sx.dtype(), sb.dtype(), sr.dtype()])),
    };
    Ok((out, lx.shape().clone()))
}

fn launch_fused<T: Element>(
    op: &FusedOp,
    dev: &CudaDevice,
    x: &CudaView<'_, T>,
    bias: &CudaView<'_, T>,
    residual: &CudaView<'_, T>,
) -> candle_core::Result<CudaSlice<T>> {
    let (n, hidden) = (x.len(), bias.len());
    let mut out = dev.alloc_uninit::<T>(n).map_err(to_candle_error)?;
    if n == 0 {
        return Ok(out);
    }
    let scale = to_compute_f64::<T>(op.prob.scale_f64());
    let stream = dev.stream();
    {
        let (x_ptr, _gx) = x.device_ptr(stream);
        let (b_ptr, _gb) = bias.device_ptr(stream);
        let (r_ptr, _gr) = residual.device_ptr(stream);
        let (o_ptr, _go) = out.device_ptr_mut(stream);
        // SAFETY: x, residual and out hold n elements, bias `hidden` (checked to be x's
        // last dimension before the op, so nonzero when n is), all in the context of
        // `dev`'s stream and alive until the launch is queued.
        unsafe {
            candle_raw::bias_dropout_residual_forward::<T>(
                dev, x_ptr, b_ptr, r_ptr, o_ptr, n, hidden, op.pos, &op.prob, scale,
            )
        }
        .map_err(to_candle_error)?;
    }
    Ok(out)
}

pub(super) fn column_sum(
    hidden: usize,
    storage: &CudaStorage,
    layout: &Layout,
) -> candle_core::Result<(CudaStorage, Shape)> {
    let (start, end) = contiguous_range(layout)?;
    let dev = device_of(storage)?;
    let out = by_dtype!(storage, |g| launch_column_sum(
        &dev,
        &g.slice(start..end),
        hidden
    ));
    Ok((out, Shape::from(hidden)))
}

fn launch_column_sum<T: Element>(
    dev: &CudaDevice,
    g: &CudaView<'_, T>,
    hidden: usize,
) -> candle_core::Result<CudaSlice<T>> {
    let mut out = dev.alloc_uninit::<T>(hidden).map_err(to_candle_error)?;
    if hidden == 0 {
        return Ok(out);
    }
    let rows = g.len() / hidden;
    let stream = dev.stream();
    {
        let (g_ptr, _gg) = g.device_ptr(stream);
        let (o_ptr, _go) = out.device_ptr_mut(stream);
        // SAFETY: g holds rows * hidden elements and out a fresh `hidden`-element
        // allocation, in the context of `dev`'s stream and alive until the launches are
        // queued. Every column is written, zero rows included. The launcher is the one
        // dropkit's own bias gradient uses, so the order of the adds is the same.
        unsafe { queue_column_sum::<T>(dev, g_ptr, o_ptr, rows, hidden) }
            .map_err(to_candle_error)?;
    }
    Ok(out)
}
