//! Device memory as dropkit's tensors hold it: a cudarc slice and the element range a
//! tensor covers, and the operand of a forward (a separate input or the output itself).

use super::device::{driver_error, CudaDevice};
use crate::backend::Backend;
use crate::element::Element;
use crate::error::Result;
use cudarc::driver::{CudaSlice, CudaView};
use std::fmt;

impl CudaDevice {
    /// Uploads host data into a new device buffer.
    pub(crate) fn upload<T: Element>(&self, data: &[T]) -> Result<CudaBuffer<T>> {
        self.refuse_capture("a host to device copy")?;
        let slice = if data.is_empty() {
            // One unused element, never a 0-byte allocation (see `alloc_uninit`).
            self.alloc_uninit::<T>(0)?
        } else {
            let bytes = self.byte_size::<T>(data.len())?;
            self.stream()
                .clone_htod(data)
                .map_err(self.alloc_error(bytes, "host to device copy"))?
        };
        Ok(CudaBuffer::new(self.clone(), slice, 0, data.len()))
    }

    /// A new buffer of `len` zeros (+0.0 in every element type), allocated on the device:
    /// memory the driver refuses is [`crate::error::Error::OutOfMemory`] naming the bytes.
    pub(crate) fn zeros<T: Element>(&self, len: usize) -> Result<CudaBuffer<T>> {
        if len == 0 {
            return self.upload::<T>(&[]);
        }
        let bytes = self.byte_size::<T>(len)?;
        self.refuse_capture("allocating a device buffer")?;
        let slice = self
            .stream()
            .alloc_zeros::<T>(len)
            .map_err(self.alloc_error(bytes, "zeroed allocation"))?;
        Ok(CudaBuffer::new(self.clone(), slice, 0, len))
    }

    /// Device-to-device copy of a buffer (its live range only).
    pub(crate) fn copy_from<T: Element>(&self, src: &CudaBuffer<T>) -> Result<CudaBuffer<T>> {
        if src.is_empty() {
            return self.upload::<T>(&[]);
        }
        let bytes = self.byte_size::<T>(src.len())?;
        self.refuse_capture("allocating a device buffer")?;
        let slice = self
            .stream()
            .clone_dtod(&src.view())
            .map_err(self.alloc_error(bytes, "device to device copy"))?;
        Ok(CudaBuffer::new(self.clone(), slice, 0, src.len()))
    }
}

/// A tensor's device data: a cudarc slice and the element range `[start, start + len)` of
/// it that the tensor covers (a view may start at any element, aligned or not).
pub struct CudaBuffer<T> {
    device: CudaDevice,
    slice: CudaSlice<T>,
    start: usize,
    len: usize,
}

impl<T> fmt::Debug for CudaBuffer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CudaBuffer({} elements at {} on {})",
            self.len, self.start, self.device
        )
    }
}

impl<T: Element> CudaBuffer<T> {
    pub(crate) fn new(device: CudaDevice, slice: CudaSlice<T>, start: usize, len: usize) -> Self {
        Self {
            device,
            slice,
            start,
            len,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn device(&self) -> &CudaDevice {
        &self.device
    }

    pub(crate) fn view(&self) -> CudaView<'_, T> {
        self.slice.slice(self.start..self.start + self.len)
    }

    pub(crate) fn slice_mut(&mut self) -> &mut CudaSlice<T> {
        &mut self.slice
    }

    /// The device address of the live range's first element, to write through, and the
    /// guard that records the write (held until the launch is queued).
    pub(crate) fn ptr_mut(&mut self) -> (u64, impl Drop + '_) {
        use cudarc::driver::DevicePtrMut;
        let offset = (self.start * std::mem::size_of::<T>()) as u64;
        let CudaBuffer { device, slice, .. } = self;
        let (base, guard) = slice.device_ptr_mut(device.stream());
        (base + offset, guard)
    }

    pub(crate) fn start(&self) -> usize {
        self.start
    }

    /// Device-to-device copy of `src`'s live range over this buffer's (the same length,
    /// checked by the caller): queued on the stream, no allocation, so a CUDA graph can
    /// hold it.
    pub(crate) fn copy_over(&mut self, src: &CudaBuffer<T>) -> Result<()>
    where
        T: Element,
    {
        if src.is_empty() {
            return Ok(());
        }
        let stream = self.device.stream().clone();
        let range = self.start..self.start + self.len;
        let mut dst = self.slice.slice_mut(range);
        stream
            .memcpy_dtod(&src.view(), &mut dst)
            .map_err(driver_error("device to device copy"))
    }

    pub(crate) fn into_parts(self) -> (CudaSlice<T>, usize) {
        (self.slice, self.start)
    }

    /// Copies the live range to the host (synchronises the stream).
    pub(crate) fn to_host(&self) -> Result<Vec<T>> {
        if self.is_empty() {
            return Ok(Vec::new());
        }
        self.device.refuse_capture("a device to host copy")?;
        self.device
            .stream()
            .clone_dtoh(&self.view())
            .map_err(driver_error("device to host copy"))
    }
}

/// The CUDA backend, as a type: what implements the backend interface (`crate::backend`:
/// its types here, each operation family in its launcher file). A marker, since the
/// device travels with each buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cuda;

impl Backend for Cuda {
    type Buffer<T: Element> = CudaBuffer<T>;
    type Mask = MaskSlice;
    type Operand<'a, T: Element> = CudaOperand<'a, T>;

    fn download_mask(mask: &MaskSlice) -> Result<Vec<u32>> {
        download_u32(mask)
    }

    fn input<T: Element>(b: &CudaBuffer<T>) -> CudaOperand<'_, T> {
        CudaOperand::Input(b)
    }
}

/// The tensor a CUDA forward reads: a separate input or the output itself (in place).
pub(crate) enum CudaOperand<'a, T> {
    Input(&'a CudaBuffer<T>),
    InPlace(&'a mut CudaBuffer<T>),
    /// A separate input written into a preallocated output of its length (nothing is
    /// allocated: legal inside a CUDA graph capture), with a mask to reuse, if any.
    Into {
        x: &'a CudaBuffer<T>,
        out: &'a mut CudaBuffer<T>,
        mask: Option<MaskSlice>,
    },
}

impl<T: Element> CudaOperand<'_, T> {
    pub(crate) fn device(&self) -> &CudaDevice {
        match self {
            CudaOperand::Input(b) => b.device(),
            CudaOperand::InPlace(b) => b.device(),
            CudaOperand::Into { x, .. } => x.device(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            CudaOperand::Input(b) => b.len(),
            CudaOperand::InPlace(b) => b.len(),
            CudaOperand::Into { x, .. } => x.len(),
        }
    }

    /// The mask of `words` words a bits-form forward writes: the operand's own to reuse
    /// when it has that size, else a new one (refused while the stream captures).
    pub(crate) fn mask_of(&mut self, words: usize) -> Result<MaskSlice> {
        let dev = self.device().clone();
        let reuse = match self {
            CudaOperand::Into { mask, .. } => mask.take(),
            _ => None,
        };
        MaskSlice::reuse_or_alloc(&dev, words, reuse)
    }

    /// Runs `launch(x_ptr, y_ptr)` (skipped when empty) with the device pointers of the
    /// input and the output; allocates the output for a separate input and returns it.
    pub(crate) fn launch_io(
        self,
        launch: impl FnOnce(u64, u64) -> Result<()>,
    ) -> Result<Option<CudaBuffer<T>>> {
        use cudarc::driver::{DevicePtr, DevicePtrMut};
        let dev = self.device().clone();
        let n = self.len();
        match self {
            CudaOperand::Input(x) => {
                let mut y = dev.alloc_uninit::<T>(n)?;
                if n > 0 {
                    let xv = x.view();
                    let (x_ptr, _x_guard) = xv.device_ptr(dev.stream());
                    let (y_ptr, _y_guard) = y.device_ptr_mut(dev.stream());
                    launch(x_ptr, y_ptr)?;
                }
                Ok(Some(CudaBuffer::new(dev, y, 0, n)))
            }
            CudaOperand::InPlace(x) => {
                if n > 0 {
                    let start = x.start();
                    let (base, _guard) = x.slice_mut().device_ptr_mut(dev.stream());
                    let ptr = base + (start * std::mem::size_of::<T>()) as u64;
                    launch(ptr, ptr)?;
                }
                Ok(None)
            }
            CudaOperand::Into { x, out, .. } => {
                if n > 0 {
                    let xv = x.view();
                    let (x_ptr, _x_guard) = xv.device_ptr(dev.stream());
                    let start = out.start();
                    let (base, _guard) = out.slice_mut().device_ptr_mut(dev.stream());
                    let y_ptr = base + (start * std::mem::size_of::<T>()) as u64;
                    launch(x_ptr, y_ptr)?;
                }
                Ok(None)
            }
        }
    }
}

/// Packed keep bits on a device: `words` live words at the start of `slice`, which holds
/// at least one word (an empty mask allocates one unused word, never 0 bytes).
#[derive(Debug)]
pub(crate) struct MaskSlice {
    slice: CudaSlice<u32>,
    words: usize,
}

impl MaskSlice {
    /// A new mask of `words` words that a kernel will fill.
    pub(crate) fn alloc(dev: &CudaDevice, words: usize) -> Result<Self> {
        Ok(Self {
            slice: dev.alloc_uninit::<u32>(words)?,
            words,
        })
    }

    /// `reuse` when it holds `words` words on `dev`, else a new mask (refused while the
    /// stream captures).
    pub(crate) fn reuse_or_alloc(
        dev: &CudaDevice,
        words: usize,
        reuse: Option<MaskSlice>,
    ) -> Result<Self> {
        match reuse {
            Some(m) if m.words == words && dev.same_context_as(m.slice.stream()) => Ok(m),
            _ => Self::alloc(dev, words),
        }
    }

    pub(crate) fn slice(&self) -> &CudaSlice<u32> {
        &self.slice
    }

    pub(crate) fn slice_mut(&mut self) -> &mut CudaSlice<u32> {
        &mut self.slice
    }
}

/// Downloads a mask's live words (synchronises the stream).
pub(crate) fn download_u32(mask: &MaskSlice) -> Result<Vec<u32>> {
    if mask.words == 0 {
        return Ok(Vec::new());
    }
    super::device::refuse_capture_on(mask.slice.stream(), "a device to host copy")?;
    mask.slice
        .stream()
        .clone_dtoh(&mask.slice.slice(..mask.words))
        .map_err(driver_error("device to host copy"))
}

/// A forward's new output (`None` when in place) and its saved mask (`None` for the
/// regenerate form).
pub(crate) type Forward<T> = (Option<CudaBuffer<T>>, Option<MaskSlice>);
