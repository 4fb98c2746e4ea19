//! Grouped kernels (channel dropout, DropPath, FeatureAlphaDropout): one small launch of
//! `dropout_mask_bits` for the per-group decisions, then one pass of `grouped_scale_<T>` or
//! `grouped_alpha_<T>` reading them. Also the mask of a shard of any layout
//! (`dropout_mask_bits_shard`), which the elementwise layers then read the same way.

use super::buffer::Cuda;
use super::buffer::{CudaBuffer, CudaOperand, Forward, MaskSlice};
use super::device::CudaDevice;
use super::kernels::ops::{
    DROPOUT_MASK_BITS, DROPOUT_MASK_BITS_SHARD, GROUPED_ALPHA, GROUPED_SCALE,
};
use super::launch::{kernel, launch, op_range, push_kept, single_kernel, DkDraw, Io, Work};
use crate::backend::GroupedKernels;
use crate::element::Element;
use crate::error::Result;
use crate::mask::{mask_words, Probability};
use crate::plan::{GroupLayout, Kept, StreamPos};
use crate::shard::{ShardLayout, MAX_SHARD_RANK};
use cudarc::driver::{DevicePtr, DevicePtrMut, DeviceRepr, PushKernelArg};

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
    unsafe {
        launch(
            dev,
            args,
            Work::Threads(words),
            "dropout_mask_bits",
            Some(&draw),
        )
    }
}

/// `struct DkShard` of kernels/grouped_dropout.cu: the shard's shape (row-major, unused
/// axes 1) and the whole tensor's strides of those axes, 136 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct DkShard {
    rank: u64,
    len: [u64; 8],
    stride: [u64; 8],
}

// SAFETY: `DkShard` is `#[repr(C)]` over u64 fields only: C's layout, 136 bytes, no padding
// (asserted in the tests below and by the kernel's static_assert), plain data.
unsafe impl DeviceRepr for DkShard {}

impl DkShard {
    fn new(layout: &ShardLayout) -> Self {
        let rank = layout.shape().len();
        debug_assert!(rank <= MAX_SHARD_RANK, "ShardLayout::new bounds the rank");
        let strides = layout.global_strides();
        let (mut len, mut stride) = ([1u64; 8], [0u64; 8]);
        for a in 0..rank {
            len[a] = layout.shape()[a] as u64;
            stride[a] = strides[a];
        }
        Self {
            rank: rank as u64,
            len,
            stride,
        }
    }
}

/// `dropout_mask_bits_shard`: the local keep bits of the `n` elements of the shard that
/// `layout` places, element 0 deciding at `layout`'s first index (draw.index_base is set
/// from it).
pub(super) fn mask_bits_shard(
    dev: &CudaDevice,
    bits: &mut MaskSlice,
    draw: DkDraw,
    layout: &ShardLayout,
    n: usize,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let f = single_kernel(dev, &DROPOUT_MASK_BITS_SHARD)?;
    let (b_ptr, _guard) = bits.slice_mut().device_ptr_mut(dev.stream());
    let (n, draw, shard) = (
        n as u64,
        draw.at(layout.first_index()),
        DkShard::new(layout),
    );
    let mut args = dev.stream().launch_builder(&f);
    args.arg(&b_ptr).arg(&n).arg(&draw).arg(&shard);
    // SAFETY: dropout_mask_bits_shard (bits, n, draw, shard): `bits` holds ceil(n / 32)
    // words (allocated for this shard's element count), guarded until queued.
    unsafe {
        launch(
            dev,
            args,
            Work::Threads(n.div_ceil(32)),
            "dropout_mask_bits_shard",
            Some(&draw),
        )
    }
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
    unsafe { launch(dev, args, Work::Elements(io.n), &name, None) }
}

impl GroupedKernels for Cuda {
    /// Grouped forward: the decision mask (one bit per channel or sample), then one pass.
    fn grouped_forward<T: Element>(
        x: CudaOperand<'_, T>,
        pos: StreamPos,
        prob: &Probability,
        layout: &GroupLayout,
        kept: Kept<T::Compute>,
    ) -> Result<Forward<T>> {
        let _range = op_range("grouped_dropout_forward");
        let draw = DkDraw::new(pos, prob);
        let mut x = x;
        let dev = x.device().clone();
        let n = x.len() as u64;
        // Empty input: no launch, an empty mask.
        let mut bits = x.mask_of(mask_words(layout.count))?;
        let y = x.launch_io(|x_ptr, y_ptr| {
            let io = Io {
                x: x_ptr,
                y: y_ptr,
                bits: 0,
                n,
            };
            queue::<T>(&dev, io, draw, layout, &kept, &mut bits)
        })?;
        Ok((y, Some(bits)))
    }

    fn grouped_keep_bits_into<T: Element>(
        like: &CudaOperand<'_, T>,
        mask: &mut MaskSlice,
        pos: StreamPos,
        prob: &Probability,
        layout: &GroupLayout,
    ) -> Result<()> {
        let draw = DkDraw::new(pos, prob).at(layout.first);
        mask_bits(like.device(), mask, draw, layout.count)
    }

    fn apply_grouped_bits<T: Element>(
        x: CudaOperand<'_, T>,
        bits: &MaskSlice,
        layout: &GroupLayout,
        kept: Kept<T::Compute>,
    ) -> Result<Option<CudaBuffer<T>>> {
        let dev = x.device().clone();
        let n = x.len() as u64;
        x.launch_io(|x_ptr, y_ptr| {
            let (b_ptr, _guard) = bits.slice().device_ptr(dev.stream());
            let io = Io {
                x: x_ptr,
                y: y_ptr,
                bits: b_ptr,
                n,
            };
            apply::<T>(&dev, io, layout, &kept)
        })
    }
}

/// Queues the decision mask (`dropout_mask_bits`, count / 8 bytes, into `bits`) and the
/// grouped pass from `io.x` to `io.y` (`io.bits` is ignored: the mask is made here).
/// `draw.index_base` is the first element's index.
fn queue<T: Element>(
    dev: &CudaDevice,
    io: Io,
    draw: DkDraw,
    layout: &GroupLayout,
    kept: &Kept<T::Compute>,
    bits: &mut MaskSlice,
) -> Result<()> {
    mask_bits(dev, bits, draw.at(layout.first), layout.count)?;
    let (b_ptr, _guard) = bits.slice().device_ptr(dev.stream());
    apply::<T>(dev, Io { bits: b_ptr, ..io }, layout, kept)
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
    let mut bits = MaskSlice::alloc(dev, mask_words(layout.count))?;
    queue::<T>(dev, io, draw, layout, &kept, &mut bits)
}

#[cfg(test)]
mod tests {
    use super::DkShard;
    use std::mem::{align_of, offset_of, size_of};

    #[test]
    fn shard_has_the_layout_of_the_kernels_struct() {
        assert_eq!(size_of::<DkShard>(), 136);
        assert_eq!(align_of::<DkShard>(), 8);
        assert_eq!(offset_of!(DkShard, rank), 0);
        assert_eq!(offset_of!(DkShard, len), 8);
        assert_eq!(offset_of!(DkShard, stride), 72);
    }
}
