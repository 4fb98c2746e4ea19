//! `Tensor<T>`: contiguous row-major data with a shape, on a [`Device`].
//!
//! Deliberately small: dropkit applies layers to tensors, it is not a tensor library. On
//! CUDA a tensor wraps a cudarc `CudaSlice<T>` (optionally starting at an element offset),
//! so cudarc users can hand their own buffers in and take them back without a copy.

use crate::device::Device;
use crate::element::Element;
use crate::error::{Error, Result};

/// A contiguous tensor of `T` (f32, f64, f16 or bf16).
#[derive(Debug)]
pub struct Tensor<T: Element> {
    pub(crate) storage: Storage<T>,
    shape: Vec<usize>,
}

#[derive(Debug)]
pub(crate) enum Storage<T: Element> {
    Cpu(Vec<T>),
    /// Without the `cuda` feature this variant holds a type with no values (never built).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    Cuda(crate::cuda::CudaBuffer<T>),
}

/// Number of elements of `shape`, or an error if the product overflows `usize`. A shape
/// with a zero dimension has no elements, however large the others are.
pub(crate) fn element_count(shape: &[usize]) -> Result<usize> {
    if shape.contains(&0) {
        return Ok(0);
    }
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            Error::OutOfRange(format!(
                "shape {shape:?} has more elements than fit in usize"
            ))
        })
}

/// Elements per decision of a grouped layer: the product of `dims`, some trailing
/// dimensions of a tensor's shape. It fits whenever the tensor has elements; it can only
/// overflow for an empty tensor (a zero among the other dimensions), which has no
/// decisions, so any group size serves and the product saturates.
pub(crate) fn group_elements(dims: &[usize]) -> usize {
    if dims.contains(&0) {
        return 0;
    }
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .unwrap_or(usize::MAX)
}

impl<T: Element> Tensor<T> {
    /// A CPU tensor from row-major data; `data.len()` must equal the product of `shape`.
    pub fn from_vec(data: Vec<T>, shape: &[usize]) -> Result<Self> {
        let expected = element_count(shape)?;
        if data.len() != expected {
            return Err(Error::LengthMismatch {
                shape: shape.to_vec(),
                expected,
                got: data.len(),
            });
        }
        Ok(Self {
            storage: Storage::Cpu(data),
            shape: shape.to_vec(),
        })
    }

    /// A tensor filled with `value` on `device`. A shape whose size overflows is
    /// [`Error::OutOfRange`]; memory the allocator refuses is [`Error::OutOfMemory`].
    pub fn full(value: T, shape: &[usize], device: &Device) -> Result<Self> {
        let n = element_count(shape)?;
        let host = Tensor::from_vec(crate::alloc::filled(value, n)?, shape)?;
        match device {
            Device::Cpu => Ok(host),
            #[cfg(feature = "cuda")]
            Device::Cuda(_) => host.to_device(device),
        }
    }

    /// A tensor of +0.0 (errors as [`Tensor::full`]), allocated where it lives.
    pub fn zeros(shape: &[usize], device: &Device) -> Result<Self> {
        let n = element_count(shape)?;
        match device {
            Device::Cpu => Self::from_vec(crate::alloc::zeroed(n)?, shape),
            #[cfg(feature = "cuda")]
            Device::Cuda(d) => Ok(Self::from_storage(
                Storage::Cuda(d.zeros(n)?),
                shape.to_vec(),
            )),
        }
    }

    /// A tensor of 1.0.
    pub fn ones(shape: &[usize], device: &Device) -> Result<Self> {
        Self::full(T::ONE, shape, device)
    }

    pub(crate) fn from_storage(storage: Storage<T>, shape: Vec<usize>) -> Self {
        Self { storage, shape }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match &self.storage {
            Storage::Cpu(v) => v.len(),
            Storage::Cuda(b) => b.len(),
        }
    }

    /// True when the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The device the data lives on.
    pub fn device(&self) -> Device {
        match &self.storage {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Cuda(b) => Device::of_cuda_buffer(b),
        }
    }

    /// The same data with another shape of the same element count.
    pub fn reshape(mut self, shape: &[usize]) -> Result<Self> {
        let expected = element_count(shape)?;
        if expected != self.len() {
            return Err(Error::LengthMismatch {
                shape: shape.to_vec(),
                expected,
                got: self.len(),
            });
        }
        self.shape = shape.to_vec();
        Ok(self)
    }

    /// The data of a CPU tensor, `None` for a CUDA tensor.
    pub fn as_slice(&self) -> Option<&[T]> {
        match &self.storage {
            Storage::Cpu(v) => Some(v),
            Storage::Cuda(_) => None,
        }
    }

    /// Copies the data to a host `Vec` (waits for queued work on CUDA).
    pub fn to_vec(&self) -> Result<Vec<T>> {
        match &self.storage {
            Storage::Cpu(v) => crate::alloc::copied(v),
            Storage::Cuda(b) => b.to_host(),
        }
    }

    /// A copy on `device`.
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        let storage = match (device, &self.storage) {
            (Device::Cpu, Storage::Cpu(v)) => Storage::Cpu(crate::alloc::copied(v)?),
            (Device::Cpu, Storage::Cuda(b)) => Storage::Cpu(b.to_host()?),
            #[cfg(feature = "cuda")]
            (Device::Cuda(d), Storage::Cpu(v)) => Storage::Cuda(d.upload(v)?),
            #[cfg(feature = "cuda")]
            (Device::Cuda(d), Storage::Cuda(b)) => Storage::Cuda(d.copy_from(b)?),
        };
        Ok(Self::from_storage(storage, self.shape.clone()))
    }

    /// A copy on the same device.
    pub fn try_clone(&self) -> Result<Self> {
        self.to_device(&self.device())
    }

    /// Overwrites this tensor with `src`, of the same shape and device (on CUDA a
    /// device-to-device copy queued on the stream, which a CUDA graph can hold).
    pub fn copy_from(&mut self, src: &Self) -> Result<()> {
        const OP: &str = "copy";
        src.expect_shape(&self.shape, OP)?;
        self.device().expect_same(&src.device(), OP)?;
        match (&mut self.storage, &src.storage) {
            (Storage::Cpu(d), Storage::Cpu(s)) => d.copy_from_slice(s),
            (Storage::Cuda(d), Storage::Cuda(s)) => d.copy_over(s)?,
            _ => unreachable!("the devices were compared"),
        }
        Ok(())
    }

    /// Fails with [`Error::ShapeMismatch`] unless `other` has this tensor's shape.
    pub(crate) fn expect_shape(&self, expected: &[usize], op: &'static str) -> Result<()> {
        if self.shape != expected {
            return Err(Error::ShapeMismatch {
                op,
                expected: expected.to_vec(),
                got: self.shape.clone(),
            });
        }
        Ok(())
    }
}

#[cfg(feature = "cuda")]
impl<T: Element> Tensor<T> {
    /// Wraps a cudarc buffer without copying; dropkit's work on it is queued on the slice's
    /// stream. The slice length must equal the product of `shape`.
    pub fn from_cuda_slice(slice: cudarc::driver::CudaSlice<T>, shape: &[usize]) -> Result<Self> {
        let len = slice.len();
        Self::from_cuda_slice_range(slice, 0, shape).map_err(|e| match e {
            Error::LengthMismatch {
                shape, expected, ..
            } => Error::LengthMismatch {
                shape,
                expected,
                got: len,
            },
            other => other,
        })
    }

    /// A tensor over elements `[start, start + product(shape))` of a cudarc buffer, without
    /// copying. `start` may be any element (16-byte alignment is not required).
    pub fn from_cuda_slice_range(
        slice: cudarc::driver::CudaSlice<T>,
        start: usize,
        shape: &[usize],
    ) -> Result<Self> {
        let n = element_count(shape)?;
        if start.checked_add(n).is_none_or(|end| end > slice.len()) {
            return Err(Error::LengthMismatch {
                shape: shape.to_vec(),
                expected: n,
                got: slice.len().saturating_sub(start),
            });
        }
        let device = crate::cuda::CudaDevice::from_stream(slice.stream().clone())?;
        let buffer = crate::cuda::CudaBuffer::new(device, slice, start, n);
        Ok(Self::from_storage(Storage::Cuda(buffer), shape.to_vec()))
    }

    /// A view of the tensor's device data, `None` for a CPU tensor.
    pub fn cuda_view(&self) -> Option<cudarc::driver::CudaView<'_, T>> {
        match &self.storage {
            Storage::Cuda(b) => Some(b.view()),
            Storage::Cpu(_) => None,
        }
    }

    /// Gives the cudarc buffer back with the element the tensor starts at.
    pub fn into_cuda_slice(mut self) -> Result<(cudarc::driver::CudaSlice<T>, usize)> {
        // Tensor has a Drop impl, so the storage is swapped out rather than moved.
        match std::mem::replace(&mut self.storage, Storage::Cpu(Vec::new())) {
            Storage::Cuda(b) => Ok(b.into_parts()),
            Storage::Cpu(_) => Err(Error::Unsupported {
                op: "into_cuda_slice",
                device: "cpu".into(),
            }),
        }
    }
}

/// A CPU tensor's buffer goes to [`crate::cpu::recycle`], for the next output of its size.
impl<T: Element> Drop for Tensor<T> {
    fn drop(&mut self) {
        match &mut self.storage {
            Storage::Cpu(v) => crate::cpu::recycle::give(std::mem::take(v)),
            Storage::Cuda(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_check_lengths() {
        let t = Tensor::from_vec(vec![1.0f32; 6], &[2, 3]).unwrap();
        assert_eq!((t.shape(), t.len()), (&[2usize, 3][..], 6));
        assert!(matches!(
            Tensor::from_vec(vec![1.0f32; 5], &[2, 3]),
            Err(Error::LengthMismatch {
                expected: 6,
                got: 5,
                ..
            })
        ));
        assert!(matches!(
            Tensor::<f32>::zeros(&[usize::MAX, 2], &Device::Cpu),
            Err(Error::OutOfRange(_))
        ));
        let z = Tensor::<f64>::zeros(&[0, 4], &Device::Cpu).unwrap();
        assert!(z.is_empty());
        let o = Tensor::<half::bf16>::ones(&[3], &Device::Cpu).unwrap();
        assert_eq!(o.to_vec().unwrap(), vec![half::bf16::ONE; 3]);
        assert!(o.reshape(&[2]).is_err());
    }
}
