//! Kernel launches for the whole family. Each forward is one launch on the tensor's stream
//! (grouped layers: one small launch for the per-channel mask, then one pass), each
//! backward one launch, asynchronous, with no host round trip and no full-size temporary.
//!
//! Kernel names follow `<op>_<dtype>` (`dropout_fwd_f32`), so the dtype picks the kernel.

use super::{driver_error, op_range, CudaBuffer, CudaDevice, CudaOperand};
use crate::cpu::Affine;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::functional::{Decisions, MaskBuffer, MaskMode, Saved, StreamPos};
use crate::mask::{mask_words, Probability};
use crate::tensor::{Storage, Tensor};
use cudarc::driver::{CudaFunction, CudaSlice, DevicePtr, DevicePtrMut, LaunchArgs, PushKernelArg};

/// A forward's new output (`None` when in place) and its saved mask (`None` for the
/// regenerate form).
type Forward<T> = (Option<CudaBuffer<T>>, Option<CudaSlice<u32>>);

/// Elements one thread handles per loop iteration in the elementwise kernels.
const PER_THREAD: u64 = 4;

fn kernel<T: Element>(dev: &CudaDevice, module: &str, op: &str) -> Result<(CudaFunction, String)> {
    let name = format!("{op}_{}", T::DTYPE.name());
    Ok((dev.function(module, &name)?, name))
}

/// Queues a built launch over `items` work items.
fn launch(dev: &CudaDevice, mut args: LaunchArgs<'_>, items: u64, name: &str) -> Result<()> {
    // SAFETY: every caller pushes exactly the arguments of the kernel's extern "C"
    // signature in kernels/*.cu, with device pointers that cover the sizes it passes and
    // stay alive (their guards are held) until this returns; kernels bound-check by n.
    unsafe { args.launch(dev.launch_config(items, PER_THREAD)) }
        .map_err(driver_error(format!("launching {name}")))?;
    Ok(())
}

fn alloc_bits(dev: &CudaDevice, count: usize, mode: MaskMode) -> Result<Option<CudaSlice<u32>>> {
    match mode {
        MaskMode::Bits => dev.alloc_uninit::<u32>(mask_words(count)).map(Some),
        MaskMode::Regenerate => Ok(None),
    }
}

/// The device address of an optional mask (0 = no mask) and the guard that keeps it.
fn bits_ptr<'a>(
    dev: &'a CudaDevice,
    bits: Option<&'a mut CudaSlice<u32>>,
) -> (u64, Option<impl Drop + 'a>) {
    match bits {
        Some(b) => {
            let (p, g) = b.device_ptr_mut(dev.stream());
            (p, Some(g))
        }
        None => (0, None),
    }
}

/// `dropout_fwd_<T>`: elementwise dropout (also the regenerate-form backward).
pub(crate) fn dropout_forward<T: Element>(
    x: CudaOperand<'_, T>,
    pos: StreamPos,
    prob: &Probability,
    scale: T::Compute,
    mode: MaskMode,
) -> Result<Forward<T>> {
    let _range = op_range("dropout_forward");
    let dev = x.device().clone();
    let n = x.len() as u64;
    let mut bits = alloc_bits(&dev, x.len(), mode)?;
    let y = x.launch_io(|x_ptr, y_ptr| {
        let (b_ptr, _guard) = bits_ptr(&dev, bits.as_mut());
        launch_dropout_fwd::<T>(&dev, x_ptr, y_ptr, b_ptr, n, pos, prob, scale)
    })?;
    Ok((y, bits))
}

/// Queues `dropout_fwd_<T>` on raw device addresses (`bits_ptr` 0: no mask written).
#[allow(clippy::too_many_arguments)]
fn launch_dropout_fwd<T: Element>(
    dev: &CudaDevice,
    x_ptr: u64,
    y_ptr: u64,
    bits_ptr: u64,
    n: u64,
    pos: StreamPos,
    prob: &Probability,
    scale: T::Compute,
) -> Result<()> {
    let (f, name) = kernel::<T>(dev, "dropout", "dropout_fwd")?;
    let threshold = prob.threshold();
    let mut args = dev.stream().launch_builder(&f);
    args.arg(&x_ptr).arg(&y_ptr).arg(&bits_ptr).arg(&n);
    args.arg(&pos.seed).arg(&pos.offset).arg(&pos.index_base);
    args.arg(&threshold).arg(&scale);
    launch(dev, args, n, &name)
}

/// Training forward over device memory that dropkit does not own (candle's buffers): reads
/// `n` elements at `x_ptr`, writes `n` at `y_ptr`, on `dev`'s stream, saving no mask.
///
/// # Safety
/// `x_ptr` and `y_ptr` must be device addresses in `dev`'s context holding `n` elements of
/// `T` each, readable and writable in stream order on `dev`'s stream until the kernel ends.
#[cfg(feature = "candle-cuda")]
pub(crate) unsafe fn dropout_forward_raw<T: Element>(
    dev: &CudaDevice,
    x_ptr: u64,
    y_ptr: u64,
    n: usize,
    pos: StreamPos,
    prob: &Probability,
    scale: T::Compute,
) -> Result<()> {
    let _range = op_range("candle_dropout_forward");
    if n == 0 {
        return Ok(());
    }
    launch_dropout_fwd::<T>(dev, x_ptr, y_ptr, 0, n as u64, pos, prob, scale)
}

/// `alpha_dropout_fwd_<T>`: elementwise alpha dropout.
pub(crate) fn alpha_forward<T: Element>(
    x: CudaOperand<'_, T>,
    pos: StreamPos,
    prob: &Probability,
    op: Affine<T::Compute>,
    mode: MaskMode,
) -> Result<Forward<T>> {
    let _range = op_range("alpha_dropout_forward");
    let dev = x.device().clone();
    let n = x.len() as u64;
    let mut bits = alloc_bits(&dev, x.len(), mode)?;
    let y = x.launch_io(|x_ptr, y_ptr| {
        let (b_ptr, _guard) = bits_ptr(&dev, bits.as_mut());
        launch_alpha_fwd::<T>(&dev, x_ptr, y_ptr, b_ptr, n, pos, prob, op)
    })?;
    Ok((y, bits))
}

/// Queues `alpha_dropout_fwd_<T>` on raw device addresses (`bits_ptr` 0: no mask written).
#[allow(clippy::too_many_arguments)]
fn launch_alpha_fwd<T: Element>(
    dev: &CudaDevice,
    x_ptr: u64,
    y_ptr: u64,
    bits_ptr: u64,
    n: u64,
    pos: StreamPos,
    prob: &Probability,
    op: Affine<T::Compute>,
) -> Result<()> {
    let (f, name) = kernel::<T>(dev, "alpha_dropout", "alpha_dropout_fwd")?;
    let threshold = prob.threshold();
    let mut args = dev.stream().launch_builder(&f);
    args.arg(&x_ptr).arg(&y_ptr).arg(&bits_ptr).arg(&n);
    args.arg(&pos.seed)
        .arg(&pos.offset)
        .arg(&pos.index_base)
        .arg(&threshold);
    args.arg(&op.a).arg(&op.b).arg(&op.dropped);
    launch(dev, args, n, &name)
}

/// What a grouped kernel does to kept elements.
#[derive(Debug, Clone, Copy)]
pub(crate) enum GroupedOp<C> {
    Scale(C),
    Affine(Affine<C>),
}

/// `dropout_mask_bits`: the keep bits of `count` decisions starting at `first`.
fn mask_bits(
    dev: &CudaDevice,
    bits: &mut CudaSlice<u32>,
    pos: StreamPos,
    prob: &Probability,
    first: u64,
    count: usize,
) -> Result<()> {
    if count == 0 {
        return Ok(());
    }
    let f = dev.function("grouped_dropout", "dropout_mask_bits")?;
    let (b_ptr, _guard) = bits.device_ptr_mut(dev.stream());
    let (count, threshold) = (count as u64, prob.threshold());
    let mut args = dev.stream().launch_builder(&f);
    args.arg(&b_ptr)
        .arg(&count)
        .arg(&pos.seed)
        .arg(&pos.offset)
        .arg(&first)
        .arg(&threshold);
    // One thread per 32 decisions: PER_THREAD elements per thread would over-count.
    launch(
        dev,
        args,
        count.div_ceil(32) * PER_THREAD,
        "dropout_mask_bits",
    )
}

/// `grouped_scale_<T>` / `grouped_alpha_<T>` reading decision bits at `bits_ptr`.
#[allow(clippy::too_many_arguments)]
fn grouped_apply<T: Element>(
    dev: &CudaDevice,
    x_ptr: u64,
    y_ptr: u64,
    bits_ptr: u64,
    n: u64,
    group: u64,
    lead: u64,
    op: GroupedOp<T::Compute>,
) -> Result<()> {
    let (f, name) = match op {
        GroupedOp::Scale(_) => kernel::<T>(dev, "grouped_dropout", "grouped_scale")?,
        GroupedOp::Affine(_) => kernel::<T>(dev, "grouped_dropout", "grouped_alpha")?,
    };
    let mut args = dev.stream().launch_builder(&f);
    args.arg(&x_ptr)
        .arg(&y_ptr)
        .arg(&bits_ptr)
        .arg(&n)
        .arg(&group)
        .arg(&lead);
    match &op {
        GroupedOp::Scale(s) => {
            args.arg(s);
        }
        GroupedOp::Affine(a) => {
            args.arg(&a.a).arg(&a.b).arg(&a.dropped);
        }
    }
    launch(dev, args, n, &name)
}

/// Grouped forward: the decision mask (one bit per channel or sample), then one pass.
pub(crate) fn grouped_forward<T: Element>(
    x: CudaOperand<'_, T>,
    pos: StreamPos,
    prob: &Probability,
    decisions: Decisions,
    op: GroupedOp<T::Compute>,
    mode: MaskMode,
) -> Result<Forward<T>> {
    let _range = op_range("grouped_dropout_forward");
    let dev = x.device().clone();
    let n = x.len() as u64;
    let mut bits = None;
    let y = x.launch_io(|x_ptr, y_ptr| {
        bits = Some(queue_grouped::<T>(
            &dev, x_ptr, y_ptr, n, pos, prob, decisions, op,
        )?);
        Ok(())
    })?;
    match (mode, bits) {
        (MaskMode::Bits, Some(bits)) => Ok((y, Some(bits))),
        // Empty input: no launch, an empty mask.
        (MaskMode::Bits, None) => Ok((y, Some(dev.alloc_uninit::<u32>(0)?))),
        (MaskMode::Regenerate, _) => Ok((y, None)),
    }
}

/// Queues the decision mask (`dropout_mask_bits`, count / 8 bytes) and the grouped pass
/// from `x_ptr` to `y_ptr` (n elements); returns the mask (freed in stream order if
/// dropped).
#[allow(clippy::too_many_arguments)]
fn queue_grouped<T: Element>(
    dev: &CudaDevice,
    x_ptr: u64,
    y_ptr: u64,
    n: u64,
    pos: StreamPos,
    prob: &Probability,
    decisions: Decisions,
    op: GroupedOp<T::Compute>,
) -> Result<CudaSlice<u32>> {
    let Decisions::Grouped {
        group,
        lead,
        first,
        count,
    } = decisions
    else {
        return Err(Error::StateMismatch(
            "grouped forward without a grouped layout".into(),
        ));
    };
    let mut bits = dev.alloc_uninit::<u32>(mask_words(count))?;
    mask_bits(dev, &mut bits, pos, prob, first, count)?;
    let (b_ptr, guard) = bits.device_ptr(dev.stream());
    grouped_apply::<T>(dev, x_ptr, y_ptr, b_ptr, n, group, lead, op)?;
    drop(guard);
    Ok(bits)
}

/// The backward of every layer: dx = kept ? dy * scale : +0 through the saved mask.
pub(crate) fn backward<T: Element>(
    dy: &CudaBuffer<T>,
    saved: &Saved,
    prob: &Probability,
    decisions: Decisions,
    scale: T::Compute,
) -> Result<CudaBuffer<T>> {
    let _range = op_range("dropout_backward");
    let dev = dy.device().clone();
    let n = dy.len() as u64;
    let input = CudaOperand::Input(dy);
    let dx = match (saved, decisions) {
        (Saved::Regenerate(pos), Decisions::Elementwise) => {
            dropout_forward(input, *pos, prob, scale, MaskMode::Regenerate)?.0
        }
        (Saved::Bits(MaskBuffer::Cuda(bits)), Decisions::Elementwise) => {
            let (f, name) = kernel::<T>(&dev, "dropout", "dropout_bwd_bits")?;
            input.launch_io(|dy_ptr, dx_ptr| {
                let (b_ptr, _guard) = bits.device_ptr(dev.stream());
                let mut args = dev.stream().launch_builder(&f);
                args.arg(&dy_ptr)
                    .arg(&dx_ptr)
                    .arg(&b_ptr)
                    .arg(&n)
                    .arg(&scale);
                launch(&dev, args, n, &name)
            })?
        }
        (Saved::Bits(MaskBuffer::Cuda(bits)), Decisions::Grouped { group, lead, .. }) => input
            .launch_io(|dy_ptr, dx_ptr| {
                let (b_ptr, _guard) = bits.device_ptr(dev.stream());
                grouped_apply::<T>(
                    &dev,
                    dy_ptr,
                    dx_ptr,
                    b_ptr,
                    n,
                    group,
                    lead,
                    GroupedOp::Scale(scale),
                )
            })?,
        (Saved::Regenerate(pos), d @ Decisions::Grouped { .. }) => {
            let op = GroupedOp::Scale(scale);
            grouped_forward(input, *pos, prob, d, op, MaskMode::Regenerate)?.0
        }
        _ => return Err(crate::functional::mask_elsewhere()),
    };
    dx.ok_or_else(|| Error::StateMismatch("backward produced no gradient".into()))
}

fn cuda_buffer<'a, T: Element>(t: &'a Tensor<T>, what: &str) -> Result<&'a CudaBuffer<T>> {
    match &t.storage {
        Storage::Cuda(b) => Ok(b),
        Storage::Cpu(_) => Err(Error::DeviceMismatch {
            op: "bias_dropout_residual",
            expected: "cuda".into(),
            got: format!("cpu ({what})"),
        }),
    }
}

/// `bias_dropout_residual_fwd_<T>`: out = residual + dropout(x + bias), one pass.
#[allow(clippy::too_many_arguments)]
pub(crate) fn bias_dropout_residual_forward<T: Element>(
    x: &Tensor<T>,
    bias: &Tensor<T>,
    residual: CudaOperand<'_, T>,
    hidden: usize,
    pos: StreamPos,
    prob: &Probability,
    scale: T::Compute,
    mode: MaskMode,
) -> Result<Forward<T>> {
    let _range = op_range("bias_dropout_residual_forward");
    let (xb, bb) = (cuda_buffer(x, "x")?, cuda_buffer(bias, "bias")?);
    let dev = residual.device().clone();
    let n = residual.len() as u64;
    let mut bits = alloc_bits(&dev, residual.len(), mode)?;
    let out = residual.launch_io(|r_ptr, out_ptr| {
        let (xv, bv) = (xb.view(), bb.view());
        let (x_ptr, _gx) = xv.device_ptr(dev.stream());
        let (bias_ptr, _gb) = bv.device_ptr(dev.stream());
        let (b_ptr, _guard) = bits_ptr(&dev, bits.as_mut());
        let ptrs = [x_ptr, bias_ptr, r_ptr, out_ptr, b_ptr];
        launch_bias_dropout_residual_fwd::<T>(&dev, ptrs, n, hidden, pos, prob, scale)
    })?;
    Ok((out, bits))
}

/// Queues `bias_dropout_residual_fwd_<T>` on raw device addresses `[x, bias, residual,
/// out, bits]` (bits 0: no mask written).
fn launch_bias_dropout_residual_fwd<T: Element>(
    dev: &CudaDevice,
    [x_ptr, bias_ptr, r_ptr, out_ptr, bits_ptr]: [u64; 5],
    n: u64,
    hidden: usize,
    pos: StreamPos,
    prob: &Probability,
    scale: T::Compute,
) -> Result<()> {
    let (f, name) = kernel::<T>(dev, "bias_dropout_residual", "bias_dropout_residual_fwd")?;
    let (h, threshold) = (hidden as u64, prob.threshold());
    let mut args = dev.stream().launch_builder(&f);
    args.arg(&x_ptr)
        .arg(&bias_ptr)
        .arg(&r_ptr)
        .arg(&out_ptr)
        .arg(&bits_ptr);
    args.arg(&n)
        .arg(&h)
        .arg(&pos.seed)
        .arg(&pos.offset)
        .arg(&pos.index_base);
    args.arg(&threshold).arg(&scale);
    launch(dev, args, n, &name)
}

/// `column_sum_partial_<T>` then `column_sum_finish_<T>`: the `hidden` column sums of
/// `rows` rows at `g_ptr` into `out_ptr` in the blocked order of docs/spec.md (the bias
/// gradient; the same adds as `cpu::family::column_sum`), through a temporary of
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
    // R comes from one place, so the buffer size and the kernels' blocking agree.
    let block_rows = crate::cpu::family::COLUMN_SUM_BLOCK_ROWS;
    let blocks = rows.div_ceil(block_rows);
    let mut partial = dev.alloc_uninit::<f64>(blocks * hidden)?;
    let (p_ptr, _gp) = partial.device_ptr_mut(dev.stream());
    let (rows, h, block_rows, blocks) =
        (rows as u64, hidden as u64, block_rows as u64, blocks as u64);
    let (f, name) = kernel::<T>(dev, "bias_dropout_residual", "column_sum_partial")?;
    let mut args = dev.stream().launch_builder(&f);
    args.arg(&g_ptr)
        .arg(&p_ptr)
        .arg(&rows)
        .arg(&h)
        .arg(&block_rows);
    // One thread per (block, column) pair.
    launch(dev, args, blocks * h * PER_THREAD, &name)?;
    let (f, name) = kernel::<T>(dev, "bias_dropout_residual", "column_sum_finish")?;
    let mut args = dev.stream().launch_builder(&f);
    args.arg(&p_ptr).arg(&out_ptr).arg(&blocks).arg(&h);
    // One thread per column.
    launch(dev, args, h * PER_THREAD, &name)
}

/// The bias gradient: the `hidden` column sums of `g` ([`queue_column_sum`]).
pub(crate) fn column_sum<T: Element>(g: &CudaBuffer<T>, hidden: usize) -> Result<CudaBuffer<T>> {
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

/// Launches of the rest of the family over device memory that dropkit does not own
/// (candle's buffers), for `dropkit::candle`, as [`dropout_forward_raw`] is for dropout
/// (and [`queue_column_sum`] for the bias gradient): raw addresses in, no mask saved, on
/// `dev`'s stream, through the same launchers as dropkit's own tensors.
#[cfg(feature = "candle-cuda")]
pub(crate) mod candle_raw {
    use super::{
        launch_alpha_fwd, launch_bias_dropout_residual_fwd, op_range, queue_grouped, Affine,
        CudaDevice, Decisions, Element, GroupedOp, Probability, Result, StreamPos,
    };

    /// `alpha_dropout_fwd_<T>`: n elements at `x_ptr` to n at `y_ptr`.
    ///
    /// # Safety
    /// `x_ptr` and `y_ptr` must be device addresses in `dev`'s context holding `n` elements
    /// of `T` each, readable and writable in stream order on `dev`'s stream.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn alpha_forward<T: Element>(
        dev: &CudaDevice,
        x_ptr: u64,
        y_ptr: u64,
        n: usize,
        pos: StreamPos,
        prob: &Probability,
        op: Affine<T::Compute>,
    ) -> Result<()> {
        let _range = op_range("candle_alpha_dropout_forward");
        if n == 0 {
            return Ok(());
        }
        launch_alpha_fwd::<T>(dev, x_ptr, y_ptr, 0, n as u64, pos, prob, op)
    }

    /// Grouped dropout: the decision bits into a small temporary (freed in stream order),
    /// then `grouped_scale_<T>` / `grouped_alpha_<T>` from `x_ptr` to `y_ptr`.
    ///
    /// # Safety
    /// As [`alpha_forward`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn grouped_forward<T: Element>(
        dev: &CudaDevice,
        x_ptr: u64,
        y_ptr: u64,
        n: usize,
        pos: StreamPos,
        prob: &Probability,
        decisions: Decisions,
        op: GroupedOp<T::Compute>,
    ) -> Result<()> {
        let _range = op_range("candle_grouped_dropout_forward");
        if n == 0 {
            return Ok(());
        }
        queue_grouped::<T>(dev, x_ptr, y_ptr, n as u64, pos, prob, decisions, op).map(drop)
    }

    /// `bias_dropout_residual_fwd_<T>`: `out = residual + dropout(x + bias)` over n
    /// elements, bias of `hidden` elements.
    ///
    /// # Safety
    /// `x_ptr`, `residual_ptr` and `out_ptr` must be device addresses in `dev`'s context
    /// holding `n` elements of `T` each and `bias_ptr` `hidden` of them, readable (`out`:
    /// writable) in stream order on `dev`'s stream; `hidden > 0` when `n > 0`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn bias_dropout_residual_forward<T: Element>(
        dev: &CudaDevice,
        x_ptr: u64,
        bias_ptr: u64,
        residual_ptr: u64,
        out_ptr: u64,
        n: usize,
        hidden: usize,
        pos: StreamPos,
        prob: &Probability,
        scale: T::Compute,
    ) -> Result<()> {
        let _range = op_range("candle_bias_dropout_residual_forward");
        if n == 0 {
            return Ok(());
        }
        let ptrs = [x_ptr, bias_ptr, residual_ptr, out_ptr, 0];
        launch_bias_dropout_residual_fwd::<T>(dev, ptrs, n as u64, hidden, pos, prob, scale)
    }
}
