//! What every kernel launch shares: the per-call random draw ([`DkDraw`], one kernel
//! parameter), the device addresses of a pass ([`Io`]), kernel lookup by typed module,
//! the grid, and NVTX ranges.
//!
//! Kernel names follow `<op>_<dtype>` (`dropout_fwd_f32`), so the dtype picks the kernel.

use super::buffer::MaskSlice;
use super::device::{driver_error, CudaDevice};
use super::kernels::KernelOp;
use crate::element::Element;
use crate::error::Result;
use crate::mask::Probability;
use crate::plan::{Kept, StreamPos};
use cudarc::driver::{CudaFunction, DevicePtrMut, DeviceRepr, LaunchArgs, PushKernelArg};

/// The random draw of one call as every kernel takes it, by value: Philox (seed, offset),
/// the global index of the first decision, the keep threshold, and for a call captured
/// into a CUDA graph the device address of its generator's state (the kernel then reads
/// (seed, offset) there, `offset` being the call's increment). The same layout as
/// `struct DkDraw` in kernels/dk_draw.cuh, so the contract is a struct, not an argument
/// order. For `dropout_mask_bits`, `index_base` is the first decision of the mask.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DkDraw {
    pub seed: u64,
    pub offset: u64,
    pub index_base: u64,
    pub threshold: u64,
    pub state: u64,
}

// SAFETY: `DkDraw` is `#[repr(C)]` with five `u64` fields, so it has C's layout: 40 bytes,
// 8-byte aligned, fields at offsets 0, 8, 16, 24 and 32 and no padding (asserted in the
// tests below), exactly `struct DkDraw` of kernels/dk_draw.cuh. It is plain data (`state`
// is an address the kernel reads, never dereferenced here; no drop), so cudarc may copy its
// bytes into the kernel's parameter buffer.
unsafe impl DeviceRepr for DkDraw {}

impl DkDraw {
    /// The draw of a call at `pos` with drop probability `prob`.
    pub(crate) fn new(pos: StreamPos, prob: &Probability) -> Self {
        Self {
            seed: pos.seed,
            offset: pos.offset,
            index_base: pos.index_base,
            threshold: prob.threshold(),
            state: pos.device_state,
        }
    }

    /// The same draw starting at decision `index_base`.
    pub(crate) fn at(self, index_base: u64) -> Self {
        Self { index_base, ..self }
    }
}

/// Device addresses of one elementwise pass: `n` elements read at `x`, written at `y` (may
/// equal `x`), and the packed keep bits written or read at `bits` (0: none).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Io {
    pub x: u64,
    pub y: u64,
    pub bits: u64,
    pub n: u64,
}

/// Elements one thread handles per loop iteration in the elementwise kernels.
pub(crate) const PER_THREAD: u64 = 4;

/// What a launch's grid is sized for. Every kernel strides over its work by the grid, so
/// the grid changes the speed, never the bits (the tests cap it at 1-3 blocks to show it).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Work {
    /// Elementwise: this many elements, [`PER_THREAD`] per thread per iteration.
    Elements(u64),
    /// Row kernels (the fused norm): this many rows, one warp per row at a time; a full
    /// grid has each warp take [`PER_THREAD`] rows in turn.
    Rows(u64),
    /// One work item per thread (mask words, column partial sums).
    Threads(u64),
}

impl Work {
    /// The work as (items, items per thread) for [`CudaDevice::launch_config`].
    pub(crate) fn items(self) -> (u64, u64) {
        match self {
            Work::Elements(n) => (n, PER_THREAD),
            Work::Rows(rows) => (rows.saturating_mul(32), PER_THREAD),
            Work::Threads(n) => (n, 1),
        }
    }
}

/// The kernel `<op>_<dtype of T>` of a per-dtype op of kernels/kernels.list, and its
/// name for messages.
pub(crate) fn kernel<T: Element>(
    dev: &CudaDevice,
    op: &KernelOp,
) -> Result<(CudaFunction, String)> {
    debug_assert!(
        !op.suffixes.is_empty(),
        "{} has one entry for every dtype",
        op.op
    );
    let name = format!("{}_{}", op.op, T::DTYPE.name());
    Ok((dev.function(op.module, &name)?, name))
}

/// The kernel of a per-residual-dtype op for inputs `T` and a residual stream `R` (T, or
/// f32 for f16 / bf16: `<op>_<T>_rf32`), and its name for messages.
pub(crate) fn pair_kernel<T: Element, R: Element>(
    dev: &CudaDevice,
    op: &KernelOp,
) -> Result<(CudaFunction, String)> {
    debug_assert!(
        op.suffixes.len() == 6,
        "{} has one entry per (T, R) pair",
        op.op
    );
    let name = if R::DTYPE == T::DTYPE {
        format!("{}_{}", op.op, T::DTYPE.name())
    } else {
        format!("{}_{}_r{}", op.op, T::DTYPE.name(), R::DTYPE.name())
    };
    Ok((dev.function(op.module, &name)?, name))
}

/// The kernel of an op of kernels/kernels.list with a single entry (no dtype).
pub(crate) fn single_kernel(dev: &CudaDevice, op: &KernelOp) -> Result<CudaFunction> {
    debug_assert!(op.suffixes.is_empty(), "{} has one entry per dtype", op.op);
    dev.function(op.module, op.op)
}

/// Queues a built launch over `work`; `draw` is the random draw among its parameters
/// (`None` for a kernel that draws nothing).
///
/// While the stream captures a CUDA graph, a kernel that draws must read its (seed,
/// offset) from a generator's device state (a captured [`StreamPos`]): one taking them by
/// value would replay a single mask forever, so it is refused with
/// [`Error::StreamCapturing`](crate::Error::StreamCapturing) before anything is queued.
/// Kernels that draw nothing are captured as they are.
///
/// # Safety
/// `args` holds exactly the parameters of the kernel's `extern "C"` signature in
/// kernels/*.cu, in order and of those types; every device pointer among them covers the
/// elements the kernel reaches for the sizes passed beside it (the kernels bound-check by
/// those sizes, not by the buffers), is in `dev`'s context, and stays alive until the
/// kernel is done in stream order (its guard is held until this returns, and cudarc orders
/// the frees after the work queued).
pub(crate) unsafe fn launch(
    dev: &CudaDevice,
    mut args: LaunchArgs<'_>,
    work: Work,
    name: &str,
    draw: Option<&DkDraw>,
) -> Result<()> {
    if draw.is_some_and(|d| d.state == 0) {
        dev.refuse_capture(
            "a kernel launch with (seed, offset) by value (a graph would replay one mask \
             forever; take the position from a generator bound with GraphSafeGenerator)",
        )?;
    }
    let (items, per_thread) = work.items();
    // SAFETY: the caller's contract above is what cudarc's `launch` asks for.
    unsafe { args.launch(dev.launch_config(items, per_thread)) }
        .map_err(driver_error(format!("launching {name}")))?;
    Ok(())
}

/// Pushes the parameters of a kept map: `scale`, or `a, b, dropped`.
pub(crate) fn push_kept<'a, C: DeviceRepr>(args: &mut LaunchArgs<'a>, kept: &'a Kept<C>) {
    match kept {
        Kept::Scale(s) => {
            args.arg(s);
        }
        Kept::Affine { a, b, dropped } => {
            args.arg(a).arg(b).arg(dropped);
        }
    }
}

/// The device address of an optional mask (0 = no mask) and the guard that keeps it.
pub(crate) fn bits_ptr<'a>(
    dev: &'a CudaDevice,
    bits: Option<&'a mut MaskSlice>,
) -> (u64, Option<impl Drop + 'a>) {
    match bits {
        Some(b) => {
            let (p, g) = b.slice_mut().device_ptr_mut(dev.stream());
            (p, Some(g))
        }
        None => (0, None),
    }
}

/// NVTX range for an op when the `nvtx` feature is on and libnvToolsExt loads; a no-op
/// otherwise.
pub(crate) struct OpRange {
    #[cfg(feature = "nvtx")]
    _range: Option<cudarc::nvtx::safe::Range>,
}

pub(crate) fn op_range(name: &str) -> OpRange {
    #[cfg(feature = "nvtx")]
    {
        // Under candle's dynamic linking the library is linked, hence present.
        #[cfg(feature = "candle-cuda")]
        let present = true;
        // SAFETY: only probes whether the shared library can be opened.
        #[cfg(not(feature = "candle-cuda"))]
        let present = unsafe { cudarc::nvtx::sys::is_culib_present() };
        OpRange {
            _range: present.then(|| cudarc::nvtx::safe::scoped_range(format!("dropkit::{name}"))),
        }
    }
    #[cfg(not(feature = "nvtx"))]
    {
        let _ = name;
        OpRange {}
    }
}

#[cfg(test)]
mod tests {
    use super::DkDraw;
    use std::mem::{align_of, offset_of, size_of};

    #[test]
    fn draw_has_the_layout_of_the_kernels_struct() {
        assert_eq!(size_of::<DkDraw>(), 40);
        assert_eq!(align_of::<DkDraw>(), 8);
        assert_eq!(offset_of!(DkDraw, state), 32);
        assert_eq!(offset_of!(DkDraw, seed), 0);
        assert_eq!(offset_of!(DkDraw, offset), 8);
        assert_eq!(offset_of!(DkDraw, index_base), 16);
        assert_eq!(offset_of!(DkDraw, threshold), 24);
    }
}
