//! The fused `bias_dropout_residual_fwd_<T>` (out = residual + dropout(x + bias) in one
//! pass), the two column-sum kernels of its bias gradient, and its backward
//! `bias_dropout_residual_bwd_<T>` (dx and the column sums' block partials in one pass over
//! the upstream gradient, then `column_sum_finish_<T>`).

use super::buffer::Cuda;
use super::buffer::MaskSlice;
use super::buffer::{CudaBuffer, CudaOperand, Forward};
use super::device::CudaDevice;
use super::dropout::SavedMask;
use super::kernels::ops::{
    BIAS_DROPOUT_RESIDUAL_BITS_FWD, BIAS_DROPOUT_RESIDUAL_BWD, BIAS_DROPOUT_RESIDUAL_FWD,
    COLUMN_SUM_FINISH, COLUMN_SUM_PARTIAL,
};
use super::launch::{bits_ptr, kernel, launch, op_range, DkDraw, Work};
use crate::backend::{ResidualGradsInto, ResidualKernels};
use crate::element::Element;
use crate::error::Result;
use crate::mask::{mask_words, Probability};
use crate::plan::{MaskMode, StreamPos, COLUMN_SUM_BLOCK_ROWS};
use cudarc::driver::{DevicePtr, DevicePtrMut, PushKernelArg};

/// Device addresses of the fused pass: x, residual and out hold n elements, bias `hidden`,
/// bits one bit per element (0: no mask written). `out` may equal `residual`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FusedPtrs {
    pub x: u64,
    pub bias: u64,
    pub residual: u64,
    pub out: u64,
    pub bits: u64,
}

impl ResidualKernels for Cuda {
    /// `bias_dropout_residual_fwd_<T>` over dropkit's buffers; the bias has `hidden` elements.
    fn residual_forward<T: Element>(
        x: &CudaBuffer<T>,
        bias: &CudaBuffer<T>,
        residual: CudaOperand<'_, T>,
        pos: StreamPos,
        prob: &Probability,
        scale: T::Compute,
        mode: MaskMode,
    ) -> Result<Forward<T>> {
        let _range = op_range("bias_dropout_residual_forward");
        let draw = DkDraw::new(pos, prob);
        let mut residual = residual;
        let dev = residual.device().clone();
        let n = residual.len() as u64;
        let hidden = bias.len() as u64;
        let mut bits = match mode {
            MaskMode::Bits => Some(residual.mask_of(mask_words(residual.len()))?),
            MaskMode::Regenerate => None,
        };
        let out = residual.launch_io(|r_ptr, out_ptr| {
            let (xv, bv) = (x.view(), bias.view());
            let (x_ptr, _gx) = xv.device_ptr(dev.stream());
            let (bias_ptr, _gb) = bv.device_ptr(dev.stream());
            let (b_ptr, _guard) = bits_ptr(&dev, bits.as_mut());
            let ptrs = FusedPtrs {
                x: x_ptr,
                bias: bias_ptr,
                residual: r_ptr,
                out: out_ptr,
                bits: b_ptr,
            };
            launch_forward::<T>(&dev, ptrs, [n, hidden], draw, scale)
        })?;
        Ok((out, bits))
    }
    /// `bias_dropout_residual_bits_fwd_<T>`: the fused forward of a shard of any layout,
    /// its decisions read from `bits` (drawn through the layout).
    fn residual_forward_bits<T: Element>(
        x: &CudaBuffer<T>,
        bias: &CudaBuffer<T>,
        residual: CudaOperand<'_, T>,
        bits: &MaskSlice,
        scale: T::Compute,
    ) -> Result<Option<CudaBuffer<T>>> {
        let _range = op_range("bias_dropout_residual_forward_bits");
        let dev = residual.device().clone();
        let (n, hidden) = (residual.len() as u64, bias.len() as u64);
        let (f, name) = kernel::<T>(&dev, &BIAS_DROPOUT_RESIDUAL_BITS_FWD)?;
        residual.launch_io(|r_ptr, out_ptr| {
            let (xv, bv) = (x.view(), bias.view());
            let (x_ptr, _gx) = xv.device_ptr(dev.stream());
            let (bias_ptr, _gb) = bv.device_ptr(dev.stream());
            let (k_ptr, _gk) = bits.slice().device_ptr(dev.stream());
            let mut args = dev.stream().launch_builder(&f);
            args.arg(&x_ptr).arg(&bias_ptr).arg(&r_ptr).arg(&out_ptr);
            args.arg(&k_ptr).arg(&n).arg(&hidden).arg(&scale);
            // SAFETY: bias_dropout_residual_bits_fwd (x, bias, residual, out, keep, n, h,
            // scale): x, residual and out hold n elements, bias h (checked by the caller),
            // keep ceil(n / 32) words (the shard's mask); guards held across the call.
            unsafe { launch(&dev, args, Work::Threads(n), &name, None) }
        })
    }

    /// The backward of the fused layer for the upstream gradient `dy` of `rows x hidden`
    /// elements: (dx, bias gradient). `bias_dropout_residual_bwd_<T>` writes dx (kept ? dy *
    /// scale : +0 through the saved mask) and, in the same pass, the f64 block partial sums of
    /// dx's columns, so dx is never read back; `column_sum_finish_<T>` adds them up. The same
    /// adds as [`column_sum`] over dx, hence the same bits. No host sync.
    fn residual_backward<T: Element>(
        dy: &CudaBuffer<T>,
        saved: SavedMask<'_>,
        prob: &Probability,
        scale: T::Compute,
        hidden: usize,
    ) -> Result<(CudaBuffer<T>, CudaBuffer<T>)> {
        let dev = dy.device().clone();
        let n = dy.len();
        let blocks = n
            .checked_div(hidden)
            .map_or(0, |rows| rows.div_ceil(COLUMN_SUM_BLOCK_ROWS));
        let mut dx = CudaBuffer::new(dev.clone(), dev.alloc_uninit::<T>(n)?, 0, n);
        let mut db = CudaBuffer::new(dev.clone(), dev.alloc_uninit::<T>(hidden)?, 0, hidden);
        let partial = dev.alloc_uninit::<f64>(blocks * hidden)?;
        let mut partial = CudaBuffer::new(dev, partial, 0, blocks * hidden);
        let grads = ResidualGradsInto {
            dx: &mut dx,
            db: &mut db,
            partial: &mut partial,
        };
        Self::residual_backward_into(dy, grads, Some(saved), prob, scale, hidden)?;
        Ok((dx, db))
    }

    /// The backward of the fused layer for the upstream gradient `dy` of `rows x hidden`
    /// elements. `bias_dropout_residual_bwd_<T>` writes dx (kept ? dy * scale : +0 through
    /// the saved mask) and, in the same pass, the f64 block partial sums of dx's columns,
    /// so dx is never read back; `column_sum_finish_<T>` adds them up. The same adds as
    /// [`column_sum`] over dx, hence the same bits. No host sync, no allocation (eval mode:
    /// dx is a device copy of dy, then its column sums).
    fn residual_backward_into<T: Element>(
        dy: &CudaBuffer<T>,
        grads: ResidualGradsInto<'_, Self, T>,
        saved: Option<SavedMask<'_>>,
        prob: &Probability,
        scale: T::Compute,
        hidden: usize,
    ) -> Result<()> {
        let _range = op_range("bias_dropout_residual_backward");
        let dev = dy.device().clone();
        let n = dy.len();
        let Some(rows) = n.checked_div(hidden) else {
            return Ok(());
        };
        let blocks = rows.div_ceil(COLUMN_SUM_BLOCK_ROWS);
        let Some(saved) = saved else {
            grads.dx.copy_over(dy)?;
            let xv = grads.dx.view();
            let (g_ptr, _gg) = xv.device_ptr(dev.stream());
            let (o_ptr, _go) = grads.db.ptr_mut();
            let (p_ptr, _gp) = grads.partial.ptr_mut();
            // SAFETY: dx holds rows * hidden elements, db hidden, partial at least blocks *
            // hidden doubles; all guarded until the launches are queued.
            return unsafe { queue_column_sum_into::<T>(&dev, g_ptr, o_ptr, p_ptr, rows, hidden) };
        };
        let dyv = dy.view();
        let (dy_ptr, _gy) = dyv.device_ptr(dev.stream());
        let (dx_ptr, _gx) = grads.dx.ptr_mut();
        let (p_ptr, _gp) = grads.partial.ptr_mut();
        let (db_ptr, _gb) = grads.db.ptr_mut();
        // Saved bits, or (null bits) the stream position to redraw the decisions from.
        let (bits_ptr, _gk, draw, draws) = match saved {
            SavedMask::Bits(bits) => {
                let (p, g) = bits.slice().device_ptr(dev.stream());
                let unused = DkDraw::new(crate::plan::StreamPos::new(0, 0), prob);
                (p, Some(g), unused, false)
            }
            SavedMask::Regenerate(pos) => (0, None, DkDraw::new(pos, prob), true),
        };
        let (rows, h, block_rows, blocks) = (
            rows as u64,
            hidden as u64,
            COLUMN_SUM_BLOCK_ROWS as u64,
            blocks as u64,
        );
        let (f, name) = kernel::<T>(&dev, &BIAS_DROPOUT_RESIDUAL_BWD)?;
        let mut args = dev.stream().launch_builder(&f);
        args.arg(&dy_ptr)
            .arg(&dx_ptr)
            .arg(&bits_ptr)
            .arg(&p_ptr)
            .arg(&rows)
            .arg(&h)
            .arg(&block_rows)
            .arg(&draw)
            .arg(&scale);
        // One thread per (block, column) pair.
        // SAFETY: bias_dropout_residual_bwd (dy, dx, bits, partial, rows, h, block_rows, draw,
        // scale): dy and dx hold rows * h elements, partial blocks * h doubles, bits the
        // saved mask (or null); all guarded until queued.
        unsafe {
            launch(
                &dev,
                args,
                Work::Threads(blocks * h),
                &name,
                draws.then_some(&draw),
            )?
        };
        queue_column_finish::<T>(&dev, p_ptr, db_ptr, blocks, h)
    }
    /// The bias gradient: the `hidden` column sums of `g` ([`queue_column_sum`]).
    fn column_sum<T: Element>(g: &CudaBuffer<T>, hidden: usize) -> Result<CudaBuffer<T>> {
        let _range = op_range("column_sum");
        let dev = g.device().clone();
        let mut out = dev.alloc_uninit::<T>(hidden)?;
        if let Some(rows) = g.len().checked_div(hidden) {
            let gv = g.view();
            let (g_ptr, _gg) = gv.device_ptr(dev.stream());
            let (o_ptr, _go) = out.device_ptr_mut(dev.stream());
            // SAFETY: g's view holds rows * hidden elements and out hidden, on dev's stream;
            // their guards are held until both launches are queued.
            unsafe { queue_column_sum::<T>(&dev, g_ptr, o_ptr, rows, hidden)? };
        }
        Ok(CudaBuffer::new(dev, out, 0, hidden))
    }
}

/// Queues `bias_dropout_residual_fwd_<T>` on raw device addresses for `[n, hidden]`.
fn launch_forward<T: Element>(
    dev: &CudaDevice,
    ptrs: FusedPtrs,
    [n, hidden]: [u64; 2],
    draw: DkDraw,
    scale: T::Compute,
) -> Result<()> {
    let (f, name) = kernel::<T>(dev, &BIAS_DROPOUT_RESIDUAL_FWD)?;
    let mut args = dev.stream().launch_builder(&f);
    args.arg(&ptrs.x)
        .arg(&ptrs.bias)
        .arg(&ptrs.residual)
        .arg(&ptrs.out)
        .arg(&ptrs.bits);
    args.arg(&n).arg(&hidden).arg(&draw).arg(&scale);
    // SAFETY: bias_dropout_residual_fwd (x, bias, residual, out, bits, n, hidden, draw,
    // scale): the caller's pointers hold n, hidden, n, n elements and the mask words.
    unsafe { launch(dev, args, Work::Elements(n), &name, Some(&draw)) }
}

/// The fused forward over device memory that dropkit does not own (candle's buffers):
/// `n` elements, bias of `hidden`, no mask saved (`ptrs.bits` is ignored).
///
/// # Safety
/// `ptrs.x`, `ptrs.residual` and `ptrs.out` must be device addresses in `dev`'s context
/// holding `n` elements of `T` each and `ptrs.bias` `hidden` of them, readable (`out`:
/// writable) in stream order on `dev`'s stream; `hidden > 0` when `n > 0`.
#[cfg(feature = "candle-cuda")]
pub(crate) unsafe fn forward_raw<T: Element>(
    dev: &CudaDevice,
    ptrs: FusedPtrs,
    [n, hidden]: [usize; 2],
    draw: DkDraw,
    scale: T::Compute,
) -> Result<()> {
    let _range = op_range("candle_bias_dropout_residual_forward");
    if n == 0 {
        return Ok(());
    }
    let ptrs = FusedPtrs { bits: 0, ..ptrs };
    launch_forward::<T>(dev, ptrs, [n as u64, hidden as u64], draw, scale)
}

/// `column_sum_partial_<T>` then `column_sum_finish_<T>`: the `hidden` column sums of
/// `rows` rows at `g_ptr` into `out_ptr` in the blocked order of docs/spec.md (the bias
/// gradient; the same adds as `cpu::residual::column_sum`), through a temporary of
/// ceil(rows / R) * hidden doubles, freed in stream order after both launches. No host
/// sync. `out_ptr` may equal `g_ptr`.
///
/// # Safety
/// `g_ptr` must hold `rows * hidden` elements of `T` and `out_ptr` `hidden`, device
/// addresses in `dev`'s context, usable in stream order on `dev`'s stream.
pub(crate) unsafe fn queue_column_sum<T: Element>(
    dev: &CudaDevice,
    g_ptr: u64,
    out_ptr: u64,
    rows: usize,
    hidden: usize,
) -> Result<()> {
    if hidden == 0 {
        return Ok(());
    }
    let mut partial = dev.alloc_uninit::<f64>(rows.div_ceil(COLUMN_SUM_BLOCK_ROWS) * hidden)?;
    let (p_ptr, _gp) = partial.device_ptr_mut(dev.stream());
    // SAFETY: the caller's contract, and partial holds the blocks * hidden doubles.
    unsafe { queue_column_sum_into::<T>(dev, g_ptr, out_ptr, p_ptr, rows, hidden) }
}

/// [`queue_column_sum`] through the caller's partial sums at `p_ptr` (nothing allocated).
///
/// # Safety
/// As [`queue_column_sum`], and `p_ptr` holds ceil(rows / R) * hidden doubles.
pub(crate) unsafe fn queue_column_sum_into<T: Element>(
    dev: &CudaDevice,
    g_ptr: u64,
    out_ptr: u64,
    p_ptr: u64,
    rows: usize,
    hidden: usize,
) -> Result<()> {
    if hidden == 0 {
        return Ok(());
    }
    // R comes from one place, so the buffer size and the kernels' blocking agree.
    let block_rows = COLUMN_SUM_BLOCK_ROWS;
    let blocks = rows.div_ceil(block_rows);
    let (rows, h, block_rows, blocks) =
        (rows as u64, hidden as u64, block_rows as u64, blocks as u64);
    let (f, name) = kernel::<T>(dev, &COLUMN_SUM_PARTIAL)?;
    let mut args = dev.stream().launch_builder(&f);
    args.arg(&g_ptr)
        .arg(&p_ptr)
        .arg(&rows)
        .arg(&h)
        .arg(&block_rows);
    // One thread per (block, column) pair.
    // SAFETY: column_sum_partial (g, partial, rows, h, block_rows): g holds rows * h
    // elements and partial blocks * h doubles (the caller's contract).
    unsafe { launch(dev, args, Work::Threads(blocks * h), &name, None)? };
    queue_column_finish::<T>(dev, p_ptr, out_ptr, blocks, h)
}

/// `column_sum_finish_<T>`: out[c] = round_T(the f64 sum of the `blocks` partial sums of
/// column c, in block order).
fn queue_column_finish<T: Element>(
    dev: &CudaDevice,
    p_ptr: u64,
    out_ptr: u64,
    blocks: u64,
    h: u64,
) -> Result<()> {
    let (f, name) = kernel::<T>(dev, &COLUMN_SUM_FINISH)?;
    let mut args = dev.stream().launch_builder(&f);
    args.arg(&p_ptr).arg(&out_ptr).arg(&blocks).arg(&h);
    // One thread per column.
    // SAFETY: column_sum_finish (partial, out, blocks, h): partial holds blocks * h doubles
    // and out h elements, as the callers allocate them.
    unsafe { launch(dev, args, Work::Threads(h), &name, None) }
}
