//! Elementwise kernels: `dropout_fwd_<T>` and `alpha_dropout_fwd_<T>` (forwards, and the
//! regenerate-form backward), `dropout_bwd_bits_<T>` (backward from saved bits), and the
//! backward of every layer, which picks among these and the grouped pass. Each is one
//! launch on the tensor's stream, asynchronous, with no host round trip.

use super::buffer::Cuda;
use super::buffer::{CudaBuffer, CudaOperand, Forward, MaskSlice};
use super::device::CudaDevice;
use super::grouped;
use super::kernels::ops::{ALPHA_DROPOUT_FWD, DROPOUT_BWD_BITS, DROPOUT_FWD};
use super::launch::{bits_ptr, kernel, launch, op_range, push_kept, DkDraw, Io, Work};
use crate::backend::{DropoutKernels, GroupedKernels};
use crate::element::Element;
use crate::error::Result;
use crate::mask::mask_words;
use crate::mask::Probability;
use crate::plan::{Decisions, GroupLayout, Kept, MaskMode, StreamPos};
use crate::shard::ShardLayout;
use cudarc::driver::{DevicePtr, PushKernelArg};

impl DropoutKernels for Cuda {
    /// Elementwise forward: kept elements become `kept` of themselves (dropout's scale or
    /// alpha dropout's affine map), with the keep bits saved for [`MaskMode::Bits`].
    fn dropout_forward<T: Element>(
        x: CudaOperand<'_, T>,
        pos: StreamPos,
        prob: &Probability,
        kept: Kept<T::Compute>,
        mode: MaskMode,
    ) -> Result<Forward<T>> {
        let draw = DkDraw::new(pos, prob);
        let _range = op_range(match kept {
            Kept::Scale(_) => "dropout_forward",
            Kept::Affine { .. } => "alpha_dropout_forward",
        });
        let mut x = x;
        let dev = x.device().clone();
        let n = x.len() as u64;
        let mut bits = match mode {
            MaskMode::Bits => Some(x.mask_of(mask_words(x.len()))?),
            MaskMode::Regenerate => None,
        };
        let y = x.launch_io(|x_ptr, y_ptr| {
            let (b_ptr, _guard) = bits_ptr(&dev, bits.as_mut());
            let io = Io {
                x: x_ptr,
                y: y_ptr,
                bits: b_ptr,
                n,
            };
            launch_forward::<T>(&dev, io, draw, &kept)
        })?;
        Ok((y, bits))
    }
    /// The backward of every layer: dx = kept ? dy * scale : +0 through the saved mask.
    fn dropout_backward<T: Element>(
        input: CudaOperand<'_, T>,
        saved: SavedMask<'_>,
        prob: &Probability,
        decisions: &Decisions,
        scale: T::Compute,
    ) -> Result<Option<CudaBuffer<T>>> {
        let _range = op_range("dropout_backward");
        let kept = Kept::Scale(scale);
        let dx = match (saved, decisions) {
            (SavedMask::Regenerate(pos), Decisions::Elementwise) => {
                Self::dropout_forward(input, pos, prob, kept, MaskMode::Regenerate)?.0
            }
            (SavedMask::Bits(bits), Decisions::Elementwise) => Self::apply_bits(input, bits, kept)?,
            (SavedMask::Bits(bits), Decisions::Grouped(layout)) => {
                Self::apply_grouped_bits(input, bits, layout, kept)?
            }
            (SavedMask::Regenerate(pos), Decisions::Grouped(layout)) => {
                Self::grouped_forward(input, pos, prob, layout, kept)?.0
            }
        };
        Ok(dx)
    }

    fn shard_keep_bits<T: Element>(
        like: &CudaOperand<'_, T>,
        pos: StreamPos,
        prob: &Probability,
        layout: &ShardLayout,
    ) -> Result<MaskSlice> {
        let dev = like.device();
        let n: usize = layout.shape().iter().product();
        let mut bits = MaskSlice::alloc(dev, mask_words(n))?;
        grouped::mask_bits_shard(dev, &mut bits, DkDraw::new(pos, prob), layout, n)?;
        Ok(bits)
    }

    fn apply_bits<T: Element>(
        x: CudaOperand<'_, T>,
        bits: &MaskSlice,
        kept: Kept<T::Compute>,
    ) -> Result<Option<CudaBuffer<T>>> {
        let dev = x.device().clone();
        let n = x.len() as u64;
        match kept {
            // The same arithmetic as the forward: dropped ? +0 : x * s.
            Kept::Scale(scale) => {
                let (f, name) = kernel::<T>(&dev, &DROPOUT_BWD_BITS)?;
                x.launch_io(|x_ptr, y_ptr| {
                    let (b_ptr, _guard) = bits.slice().device_ptr(dev.stream());
                    let mut args = dev.stream().launch_builder(&f);
                    args.arg(&x_ptr).arg(&y_ptr).arg(&b_ptr).arg(&n).arg(&scale);
                    // SAFETY: dropout_bwd_bits (dy, dx, bits, n, scale): n elements at x and
                    // y, the mask covers n decisions; guards held across the call.
                    unsafe { launch(&dev, args, Work::Elements(n), &name, None) }
                })
            }
            Kept::Affine { .. } => {
                let one = GroupLayout::new(1, 0, x.len());
                Self::apply_grouped_bits(x, bits, &one, kept)
            }
        }
    }
}

/// Queues `dropout_fwd_<T>` (a scale) or `alpha_dropout_fwd_<T>` (an affine map) on raw
/// device addresses.
fn launch_forward<T: Element>(
    dev: &CudaDevice,
    io: Io,
    draw: DkDraw,
    kept: &Kept<T::Compute>,
) -> Result<()> {
    let (f, name) = match kept {
        Kept::Scale(_) => kernel::<T>(dev, &DROPOUT_FWD)?,
        Kept::Affine { .. } => kernel::<T>(dev, &ALPHA_DROPOUT_FWD)?,
    };
    let mut args = dev.stream().launch_builder(&f);
    args.arg(&io.x)
        .arg(&io.y)
        .arg(&io.bits)
        .arg(&io.n)
        .arg(&draw);
    push_kept(&mut args, kept);
    // SAFETY: dropout_fwd / alpha_dropout_fwd (x, y, bits, n, draw, kept...): io holds n
    // elements at x and y and ceil(n / 32) words at bits (or null), on dev, guarded by the
    // caller for the call.
    unsafe { launch(dev, args, Work::Elements(io.n), &name, Some(&draw)) }
}

/// Training forward over device memory that dropkit does not own (candle's buffers):
/// `io.n` elements from `io.x` to `io.y` on `dev`'s stream, saving no mask (`io.bits` 0).
///
/// # Safety
/// `io.x` and `io.y` must be device addresses in `dev`'s context holding `io.n` elements of
/// `T` each, readable and writable in stream order on `dev`'s stream until the kernel ends.
#[cfg(feature = "candle-cuda")]
pub(crate) unsafe fn forward_raw<T: Element>(
    dev: &CudaDevice,
    io: Io,
    draw: DkDraw,
    kept: Kept<T::Compute>,
) -> Result<()> {
    let _range = op_range(match kept {
        Kept::Scale(_) => "candle_dropout_forward",
        Kept::Affine { .. } => "candle_alpha_dropout_forward",
    });
    if io.n == 0 {
        return Ok(());
    }
    launch_forward::<T>(dev, Io { bits: 0, ..io }, draw, &kept)
}

/// The decisions a backward reads: saved bits on this device, or the stream position to
/// regenerate them from.
pub(crate) type SavedMask<'a> = crate::backend::SavedMask<'a, MaskSlice>;
