//! Kernel launches for elementwise dropout. Each op is one launch on the tensor's stream,
//! asynchronous, with no host round trip and no full-size temporary.
//!
//! Kernel names follow `<op>_<dtype>` (`dropout_fwd_f32`), so the dtype picks the kernel.

use super::{driver_error, op_range, CudaBuffer, CudaDevice};
use crate::element::Element;
use crate::error::Result;
use crate::functional::{MaskMode, StreamPos};
use crate::mask::{mask_words, Probability};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, PushKernelArg};

/// Elements one thread handles per loop iteration in the elementwise kernels.
const PER_THREAD: u64 = 4;

fn kernel_name<T: Element>(op: &str) -> String {
    format!("{op}_{}", T::DTYPE.name())
}

/// Byte address of element `start` of a device allocation.
fn at<T>(base: u64, start: usize) -> u64 {
    base + (start * std::mem::size_of::<T>()) as u64
}

fn alloc_bits(dev: &CudaDevice, n: usize, mode: MaskMode) -> Result<Option<CudaSlice<u32>>> {
    match mode {
        MaskMode::Bits => dev.alloc_uninit::<u32>(mask_words(n)).map(Some),
        MaskMode::Regenerate => Ok(None),
    }
}

/// Launches `dropout_fwd_<T>` reading `x_ptr` and writing `y_ptr` (they may be equal).
#[allow(clippy::too_many_arguments)]
fn launch_forward<T: Element>(
    dev: &CudaDevice,
    x_ptr: u64,
    y_ptr: u64,
    bits: Option<&mut CudaSlice<u32>>,
    n: usize,
    pos: StreamPos,
    prob: &Probability,
    scale: T::Compute,
) -> Result<()> {
    let name = kernel_name::<T>("dropout_fwd");
    let f = dev.function("dropout", &name)?;
    let stream = dev.stream();
    let (bits_ptr, _bits_guard) = match bits {
        Some(b) => {
            let (p, g) = b.device_ptr_mut(stream);
            (p, Some(g))
        }
        None => (0, None),
    };
    let (n64, threshold) = (n as u64, prob.threshold());
    let mut launch = stream.launch_builder(&f);
    launch
        .arg(&x_ptr)
        .arg(&y_ptr)
        .arg(&bits_ptr)
        .arg(&n64)
        .arg(&pos.seed)
        .arg(&pos.offset)
        .arg(&pos.index_base)
        .arg(&threshold)
        .arg(&scale);
    // SAFETY: the argument list matches the kernel's signature in kernels/dropout.cu; the
    // pointers cover n elements (and ceil(n/32) mask words) and outlive the launch, whose
    // stream orders it after their producers.
    unsafe { launch.launch(dev.launch_config(n64, PER_THREAD)) }
        .map_err(driver_error(format!("launching {name}")))?;
    Ok(())
}

/// Training forward: a new output (and mask in the bits form), one launch.
pub(crate) fn dropout_forward<T: Element>(
    x: &CudaBuffer<T>,
    pos: StreamPos,
    prob: &Probability,
    scale: T::Compute,
    mode: MaskMode,
) -> Result<(CudaBuffer<T>, Option<CudaSlice<u32>>)> {
    let _range = op_range("dropout_forward");
    let dev = x.device();
    let n = x.len();
    let mut y = dev.alloc_uninit::<T>(n)?;
    let mut bits = alloc_bits(dev, n, mode)?;
    if n > 0 {
        let stream = dev.stream();
        let xv = x.view();
        let (x_base, _gx) = xv.device_ptr(stream);
        let (y_ptr, _gy) = y.device_ptr_mut(stream);
        launch_forward::<T>(dev, x_base, y_ptr, bits.as_mut(), n, pos, prob, scale)?;
    }
    Ok((CudaBuffer::new(dev.clone(), y, 0, n), bits))
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
    launch_forward::<T>(dev, x_ptr, y_ptr, None, n, pos, prob, scale)
}

/// Training forward written over `x`.
pub(crate) fn dropout_forward_in_place<T: Element>(
    x: &mut CudaBuffer<T>,
    pos: StreamPos,
    prob: &Probability,
    scale: T::Compute,
    mode: MaskMode,
) -> Result<Option<CudaSlice<u32>>> {
    let _range = op_range("dropout_forward_in_place");
    let dev = x.device().clone();
    let (n, start) = (x.len(), x.start());
    let mut bits = alloc_bits(&dev, n, mode)?;
    if n > 0 {
        let (base, _g) = x.slice_mut().device_ptr_mut(dev.stream());
        let ptr = at::<T>(base, start);
        launch_forward::<T>(&dev, ptr, ptr, bits.as_mut(), n, pos, prob, scale)?;
    }
    Ok(bits)
}

/// Backward from packed bits: dx = bit ? dy * s : +0, one launch.
pub(crate) fn dropout_backward_bits<T: Element>(
    dy: &CudaBuffer<T>,
    bits: &CudaSlice<u32>,
    scale: T::Compute,
) -> Result<CudaBuffer<T>> {
    let _range = op_range("dropout_backward_bits");
    let dev = dy.device();
    let n = dy.len();
    let mut dx = dev.alloc_uninit::<T>(n)?;
    if n > 0 {
        let name = kernel_name::<T>("dropout_bwd_bits");
        let f = dev.function("dropout", &name)?;
        let stream = dev.stream();
        let dyv = dy.view();
        let (dy_ptr, _g1) = dyv.device_ptr(stream);
        let (dx_ptr, _g2) = dx.device_ptr_mut(stream);
        let (bits_ptr, _g3) = bits.device_ptr(stream);
        let n64 = n as u64;
        let mut launch = stream.launch_builder(&f);
        launch
            .arg(&dy_ptr)
            .arg(&dx_ptr)
            .arg(&bits_ptr)
            .arg(&n64)
            .arg(&scale);
        // SAFETY: matches `dropout_bwd_bits_<T>` in kernels/dropout.cu; dy and dx hold n
        // elements, bits ceil(n/32) words, all alive until the launch is queued.
        unsafe { launch.launch(dev.launch_config(n64, PER_THREAD)) }
            .map_err(driver_error(format!("launching {name}")))?;
    }
    Ok(CudaBuffer::new(dev.clone(), dx, 0, n))
}
