//! Grouped kernels (channel dropout, DropPath, FeatureAlphaDropout): one small launch of
//! `dropout_mask_bits` for the per-group decisions, then one pass of `grouped_scale_<T>` or
//! `grouped_alpha_<T>` reading them.

use super::buffer::Cuda;
use super::buffer::{CudaOperand, Forward, MaskSlice};
use super::device::CudaDevice;
use super::kernels::ops::{DROPOUT_MASK_BITS, GROUPED_ALPHA, GROUPED_SCALE};
use super::launch::{kernel, launch, op_range, push_kept, single_kernel, DkDraw, Io, Work};
use crate::backend::GroupedKernels;
use crate::element::Element;
use crate::error::Result;
use crate::mask::{mask_words, Probability};
use crate::plan::{GroupLayout, Kept, MaskMode, StreamPos};
use cudarc::driver::{DevicePtr, DevicePtrMut, PushKernelArg};

/// `dropout_mask_bits`: the keep bits of `count` decisions starting at `draw.index_base`.
pub(super) fn mask_bits(
    dev: &CudaDevice,
    bits: &mut MaskSlice,
    draw: DkDraw,
    count: usize,
) -> Result<()> {
    if count == 0 {
        return Ok(());
    }
    let f = single_kernel(dev, &DROPOUT_MASK_BITS)?;
    let (b_ptr, _guard) = bits.slice_mut().device_ptr_mut(dev.stream());
    let count = count as u64;
    let mut args = dev.stream().launch_builder(&f);
    args.arg(&b_ptr).arg(&count).arg(&draw);
    // One thread per mask word (32 decisions).
    let words = count.div_ceil(32);
    // SAFETY: dropout_mask_bits (bits, n_decisions, draw): `bits` holds ceil(count / 32)
    // words (MaskSlice's length), guarded until queued.
    unsafe { launch(dev, args, Work::Threads(words), "dropout_mask_bits") }
}

/// `grouped_scale_<T>` / `grouped_alpha_<T>` reading decision bits at `io.bits`.
pub(super) fn apply<T: Element>(
    dev: &CudaDevice,
    io: Io,
    layout: &GroupLayout,
    kept: &Kept<T::Compute>,
) -> Result<()> {
    let (f, name) = match kept {
        Kept::Scale(_) => kernel::<T>(dev, &GROUPED_SCALE)?,
        Kept::Affine { .. } => kernel::<T>(dev, &GROUPED_ALPHA)?,
    };
    let mut args = dev.stream().launch_builder(&f);
    args.arg(&io.x)
        .arg(&io.y)
        .arg(&io.bits)
        .arg(&io.n)
        .arg(&layout.group)
        .arg(&layout.lead);
    push_kept(&mut args, kept);
    // SAFETY: grouped_scale / grouped_alpha (x, y, bits, n, layout..., kept...): n elements at
    // x and y, bits covers the layout's decisions; guarded by the caller for the call.
    unsafe { launch(dev, args, Work::Elements(io.n), &name) }
}

impl GroupedKernels for Cuda {
    /// Grouped forward: the decision mask (one bit per channel or sample), then one pass.
    fn grouped_forward<T: Element>(
        x: CudaOperand<'_, T>,
        pos: StreamPos,
        prob: &Probability,
        layout: &GroupLayout,
        kept: Kept<T::Compute>,
        mode: MaskMode,
    ) -> Result<Forward<T>> {
        let _range = op_range("grouped_dropout_forward");
        let draw = DkDraw::new(pos, prob);
        let dev = x.device().clone();
        let n = x.len() as u64;
        let mut bits = None;
        let y = x.launch_io(|x_ptr, y_ptr| {
            let io = Io {
                x: x_ptr,
                y: y_ptr,
                bits: 0,
                n,
            };
            bits = Some(queue::<T>(&dev, io, draw, layout, &kept)?);
            Ok(())
        })?;
        match (mode, bits) {
            (MaskMode::Bits, Some(bits)) => Ok((y, Some(bits))),
            // Empty input: no launch, an empty mask.
            (MaskMode::Bits, None) => Ok((y, Some(MaskSlice::alloc(&dev, 0)?))),
            (MaskMode::Regenerate, _) => Ok((y, None)),
        }
    }
}

/// Queues the decision mask (`dropout_mask_bits`, count / 8 bytes) and the grouped pass
/// from `io.x` to `io.y` (`io.bits` is ignored: the mask is made here); returns the mask
/// (freed in stream order if dropped). `draw.index_base` is the first element's index.
fn queue<T: Element>(
    dev: &CudaDevice,
    io: Io,
    draw: DkDraw,
    layout: &GroupLayout,
    kept: &Kept<T::Compute>,
) -> Result<MaskSlice> {
    let mut bits = MaskSlice::alloc(dev, mask_words(layout.count))?;
    mask_bits(dev, &mut bits, draw.at(layout.first), layout.count)?;
    let (b_ptr, guard) = bits.slice().device_ptr(dev.stream());
    apply::<T>(dev, Io { bits: b_ptr, ..io }, layout, kept)?;
    drop(guard);
    Ok(bits)
}

/// Grouped dropout over device memory dropkit does not own (candle's buffers): the
/// decision bits into a small temporary (freed in stream order), then the pass from `io.x`
/// to `io.y`.
///
/// # Safety
/// `io.x` and `io.y` must be device addresses in `dev`'s context holding `io.n` elements
/// of `T` each, readable and writable in stream order on `dev`'s stream.
#[cfg(feature = "candle-cuda")]
pub(crate) unsafe fn forward_raw<T: Element>(
    dev: &CudaDevice,
    io: Io,
    draw: DkDraw,
    layout: &GroupLayout,
    kept: Kept<T::Compute>,
) -> Result<()> {
    let _range = op_range("candle_grouped_dropout_forward");
    if io.n == 0 {
        return Ok(());
    }
    queue::<T>(dev, io, draw, layout, &kept).map(drop)
}
