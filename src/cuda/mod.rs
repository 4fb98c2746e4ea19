//! The CUDA backend: device and stream handles, device buffers, the kernel cache and one
//! launcher file per operation.
//!
//! Everything goes through cudarc with dynamic loading, so nothing here needs CUDA at
//! build time, and a machine without a driver gets [`Error::CudaUnavailable`], never a
//! panic: `is_culib_present()` is checked before the first driver call. Kernels are the
//! newest PTX flavour build.rs embedded that the device can run (compute_80 from compute
//! capability 8.0 on, else the portable one); when there is none, or the driver rejects
//! it (a CUDA 12 driver and nvcc 13 PTX), the embedded sources are compiled by the
//! machine's NVRTC, a cubin for the device first, then PTX. Modules are loaded once per
//! context and cached. docs/CUDA.md says what each driver gets.
//!
//! | file | what |
//! |---|---|
//! | `device.rs` | [`CudaDevice`]: context, stream, module and function cache, grid size |
//! | `buffer.rs` | [`CudaBuffer`], the operand of a forward, and `Cuda`, the backend as a type (each launcher file implements its family's trait of `crate::backend` for it) |
//! | `kernels.rs` | the embedded modules, one typed constant each |
//! | `launch.rs` | the per-call draw passed to every kernel, launch helpers, NVTX |
//! | `dropout.rs` | elementwise forwards (dropout, alpha dropout) and every backward |
//! | `grouped.rs` | grouped forwards (channel dropout, DropPath, feature alpha) |
//! | `residual.rs` | fused bias + dropout + residual, its one-pass backward, and the bias gradient's column sum |
//! | `norm.rs` | fused dropout + add + LayerNorm / RMSNorm, forward and backward |
//! | `graph.rs` | [`GraphSafeGenerator`] and [`CapturedGraph`]: CUDA graphs with fresh masks on every replay |
//! | `nvrtc.rs` | run-time compilation of the embedded sources (cubin or PTX) |
//!
//! It depends only on the leaf modules (`plan`, `mask`, `element`, `error`), never on
//! `functional` or the CPU backend.
//!
//! [`Error::CudaUnavailable`]: crate::Error::CudaUnavailable

pub(crate) mod buffer;
mod device;
pub(crate) mod dropout;
mod graph;
pub(crate) mod grouped;
pub mod kernels;
pub(crate) mod launch;
pub(crate) mod norm;
pub mod nvrtc;
pub(crate) mod residual;

pub(crate) use buffer::Cuda;
pub use buffer::CudaBuffer;
pub(crate) use buffer::{CudaOperand, MaskSlice};
pub use device::{embedded_ptx, kernels_built, CudaDevice};
pub use graph::{CapturedGraph, GraphSafeGenerator};
