//! The one error type of the crate.
//!
//! Every fallible call returns [`Result<T>`]; user input never causes a panic. Messages say
//! what was wrong and, where there is one, what to do about it.

use crate::element::DType;

/// Shorthand for `std::result::Result<T, dropkit::Error>`.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong in dropkit.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `p` is not a finite number in [0, 1].
    #[error("invalid dropout probability p = {0}: p must be a finite number in [0, 1]")]
    InvalidProbability(f64),

    /// A tensor's data length does not match the product of its shape.
    #[error("shape {shape:?} holds {expected} elements but {got} were given")]
    LengthMismatch {
        /// The shape asked for.
        shape: Vec<usize>,
        /// The elements that shape holds.
        expected: usize,
        /// The elements given.
        got: usize,
    },

    /// Two tensors that must have the same shape do not.
    #[error("shape mismatch in {op}: expected {expected:?}, got {got:?}")]
    ShapeMismatch {
        /// The operation that checked.
        op: &'static str,
        /// The shape it needed.
        expected: Vec<usize>,
        /// The shape it got.
        got: Vec<usize>,
    },

    /// A shape that the operation cannot take (wrong rank, zero-sized dimension...).
    #[error("invalid shape {shape:?} for {op}: {reason}")]
    InvalidShape {
        /// The operation that checked.
        op: &'static str,
        /// The shape it got.
        shape: Vec<usize>,
        /// What is wrong with it.
        reason: String,
    },

    /// Two tensors that must have the same dtype do not.
    #[error("dtype mismatch in {op}: expected {expected}, got {got}")]
    DTypeMismatch {
        /// The operation that checked.
        op: &'static str,
        /// The dtype it needed.
        expected: DType,
        /// The dtype it got.
        got: DType,
    },

    /// Tensors or saved state live on different devices.
    #[error("device mismatch in {op}: expected {expected}, got {got}")]
    DeviceMismatch {
        /// The operation that checked.
        op: &'static str,
        /// The device it needed.
        expected: String,
        /// The device it got.
        got: String,
    },

    /// An index or size does not fit the range the operation supports (an element count
    /// or byte size that overflows, decision indices past 2^64).
    #[error("{0}")]
    OutOfRange(String),

    /// The allocator refused a buffer: `bytes` asked for on `device` (host memory, or a
    /// GPU's memory). Nothing was changed; the device stays usable.
    #[error("out of memory on {device}: could not allocate {bytes} bytes")]
    OutOfMemory {
        /// The size asked for.
        bytes: usize,
        /// Where ("cpu", or the CUDA device).
        device: String,
    },

    /// No usable CUDA: no driver library, no device, or an ordinal past the last device.
    #[error("CUDA is not available: {0}")]
    CudaUnavailable(String),

    /// The crate was built without PTX (no nvcc at build time).
    #[error(
        "dropkit was built without CUDA kernels (nvcc was not found at build time) and NVRTC \
         could not compile them at run time. Install nvcc (for example `bash \
         scripts/install-nvcc.sh`, or a CUDA toolkit), point NVCC or CUDA_HOME at it, and \
         rebuild dropkit; or make libnvrtc and the CUDA headers (DROPKIT_CUDA_INCLUDE) available"
    )]
    KernelsNotBuilt,

    /// The driver rejected the embedded PTX (PTX from an nvcc newer than the driver, or none
    /// for this GPU) and compiling the sources at run time with NVRTC did not give code it
    /// loads either; the message says what each try gave.
    #[error(
        "the CUDA driver cannot load dropkit's kernels: {0}. Update the NVIDIA driver; or make \
         the NVRTC of a CUDA toolkit this driver supports available (libnvrtc on the library \
         path, its headers in DROPKIT_CUDA_INCLUDE or CUDA_HOME); or rebuild dropkit with an \
         nvcc no newer than the driver's CUDA version (NVCC=...)"
    )]
    UnsupportedPtx(String),

    /// Any other error from the CUDA driver; [`std::error::Error::source`] gives the
    /// driver's own error, with its code and name.
    #[error("CUDA driver error {} ({}) in {context}", .driver.code, .driver.name)]
    Cuda {
        /// What dropkit was doing.
        context: String,
        /// The driver's error.
        #[source]
        driver: DriverError,
    },

    /// An [`RngTracker`](crate::RngTracker) was asked for a region it does not have.
    #[error("no RNG region named {0:?} is registered in this tracker (add it first)")]
    UnknownRegion(String),

    /// An [`RngTracker`](crate::RngTracker) region name was registered twice.
    #[error("an RNG region named {0:?} is already registered in this tracker")]
    DuplicateRegion(String),

    /// A call that allocates device memory or copies to or from the host was made while
    /// dropkit's CUDA stream is capturing a graph; nothing was queued, and the capture is
    /// intact.
    #[error(
        "{op} is not allowed while dropkit's CUDA stream is capturing a graph (it would \
         invalidate the capture); make allocating calls before begin_capture or after \
         end_capture"
    )]
    StreamCapturing {
        /// What the call was about to do.
        op: &'static str,
    },

    /// A parameter other than p is out of its domain (e.g. a norm's eps).
    #[error("{op}: {reason}")]
    InvalidArgument {
        /// The operation that checked.
        op: &'static str,
        /// What is wrong and what is allowed.
        reason: String,
    },

    /// The operation is not implemented for this device.
    #[error("{op} is not supported on {device}")]
    Unsupported {
        /// The operation asked for.
        op: &'static str,
        /// The device that lacks it.
        device: String,
    },
}

/// An error code returned by the CUDA driver (a `CUresult` other than `CUDA_SUCCESS`), the
/// [source](std::error::Error::source) of [`Error::Cuda`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name} (CUresult {code})")]
pub struct DriverError {
    /// The driver's `CUresult` code.
    pub code: u32,
    /// Its name (`CUDA_ERROR_...`).
    pub name: String,
}

#[cfg(test)]
mod tests {
    use super::{DriverError, Error};

    #[test]
    fn a_driver_error_is_the_source_of_error_cuda() {
        let e = Error::Cuda {
            context: "launching dropout_fwd_f32".into(),
            driver: DriverError {
                code: 700,
                name: "CUDA_ERROR_ILLEGAL_ADDRESS".into(),
            },
        };
        assert_eq!(
            e.to_string(),
            "CUDA driver error 700 (CUDA_ERROR_ILLEGAL_ADDRESS) in launching dropout_fwd_f32"
        );
        let source = std::error::Error::source(&e).expect("the driver's error is the source");
        let driver = source.downcast_ref::<DriverError>().expect("a DriverError");
        assert_eq!(
            (driver.code, driver.name.as_str()),
            (700, "CUDA_ERROR_ILLEGAL_ADDRESS")
        );
        assert_eq!(
            source.to_string(),
            "CUDA_ERROR_ILLEGAL_ADDRESS (CUresult 700)"
        );
    }
}
