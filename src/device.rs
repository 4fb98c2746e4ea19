//! Where tensors live and kernels run: the CPU, or one CUDA device with its stream.

use crate::error::{Error, Result};
use std::fmt;

/// A compute device.
#[derive(Clone, Debug, Default)]
pub enum Device {
    /// The host, using all cores.
    #[default]
    Cpu,
    /// A CUDA GPU: its context, the stream work is queued on, and its loaded kernels.
    #[cfg(feature = "cuda")]
    Cuda(crate::cuda::CudaDevice),
}

impl Device {
    /// CUDA device `ordinal`, or an error when there is no driver, no device, the ordinal is
    /// out of range, or the crate was built without the `cuda` feature. Never panics.
    pub fn cuda(ordinal: usize) -> Result<Device> {
        #[cfg(feature = "cuda")]
        {
            crate::cuda::CudaDevice::new(ordinal).map(Device::Cuda)
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = ordinal;
            Err(Error::CudaUnavailable(
                "dropkit was built without its `cuda` feature".into(),
            ))
        }
    }

    /// CUDA device 0 when one is usable (driver, device, and kernels that load), else the
    /// CPU.
    pub fn best_available() -> Device {
        #[cfg(feature = "cuda")]
        if let Ok(d) = crate::cuda::CudaDevice::new(0) {
            if d.kernels_ready().is_ok() {
                return Device::Cuda(d);
            }
        }
        Device::Cpu
    }

    /// True for a CUDA device.
    pub fn is_cuda(&self) -> bool {
        !matches!(self, Device::Cpu)
    }

    /// Same device (same CUDA context for CUDA devices).
    pub fn same_as(&self, other: &Device) -> bool {
        match (self, other) {
            (Device::Cpu, Device::Cpu) => true,
            #[cfg(feature = "cuda")]
            (Device::Cuda(a), Device::Cuda(b)) => a.same_as(b),
            #[cfg(feature = "cuda")]
            _ => false,
        }
    }

    /// The device a CUDA buffer lives on (there is none without the `cuda` feature).
    pub(crate) fn of_cuda_buffer<T: crate::element::Element>(
        buffer: &crate::cuda::CudaBuffer<T>,
    ) -> Device {
        #[cfg(feature = "cuda")]
        {
            Device::Cuda(buffer.device().clone())
        }
        #[cfg(not(feature = "cuda"))]
        {
            buffer.unreachable()
        }
    }

    /// [`Error::StreamCapturing`] while this device's stream captures a CUDA graph (never
    /// on the CPU): layers check it before they take an offset, so a refused call leaves
    /// their generator where it was.
    pub(crate) fn refuse_capture(&self, op: &'static str) -> Result<()> {
        #[cfg(not(feature = "cuda"))]
        let _ = op;
        match self {
            Device::Cpu => Ok(()),
            #[cfg(feature = "cuda")]
            Device::Cuda(d) => d.refuse_capture(op),
        }
    }

    pub(crate) fn expect_same(&self, other: &Device, op: &'static str) -> Result<()> {
        if self.same_as(other) {
            Ok(())
        } else {
            Err(Error::DeviceMismatch {
                op,
                expected: self.to_string(),
                got: other.to_string(),
            })
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu ({} threads)", rayon::current_num_threads()),
            #[cfg(feature = "cuda")]
            Device::Cuda(d) => write!(f, "{d}"),
        }
    }
}
