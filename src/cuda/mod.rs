//! The CUDA backend: device and stream handles, device buffers, the kernel cache and one
//! launcher file per operation.
//!
//! Everything goes through cudarc with dynamic loading, so nothing here needs CUDA at
//! build time, and a machine without a driver gets [`Error::CudaUnavailable`], never a
//! panic: `is_culib_present()` is checked before the first driver call. Kernels are the
//! PTX that build.rs embedded (or the embedded sources through NVRTC); they are loaded
//! once per context and cached.
//!
//! | file | what |
//! |---|---|
//! | `device.rs` | [`CudaDevice`]: context, stream, module and function cache, grid size |
//! | `buffer.rs` | [`CudaBuffer`] and the operand of a forward |
//! | `kernels.rs` | the embedded modules, one typed constant each |
//! | `launch.rs` | the per-call draw passed to every kernel, launch helpers, NVTX |
//! | `dropout.rs` | elementwise forwards (dropout, alpha dropout) and every backward |
//! | `grouped.rs` | grouped forwards (channel dropout, DropPath, feature alpha) |
//! | `residual.rs` | fused bias + dropout + residual, and the bias gradient's column sum |
//! | `nvrtc.rs` | run-time compilation of the embedded sources |
//!
//! It depends only on the leaf modules (`plan`, `mask`, `element`, `error`), never on
//! `functional` or the CPU backend.
//!
//! [`Error::CudaUnavailable`]: crate::Error::CudaUnavailable

pub(crate) mod buffer;
mod device;
pub(crate) mod dropout;
pub(crate) mod grouped;
pub mod kernels;
pub(crate) mod launch;
pub mod nvrtc;
pub(crate) mod residual;

pub use buffer::CudaBuffer;
pub(crate) use buffer::Forward;
pub(crate) use buffer::{download_u32, CudaOperand, MaskSlice};
pub use device::{embedded_ptx, kernels_built, CudaDevice};
