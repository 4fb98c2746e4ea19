//! # dropkit
//!
//! The dropout family for deep learning, bit-exact across devices: the CPU path and the
//! CUDA kernels produce the same bits for the same seed and offset, whatever the launch
//! shape or thread count. The contract is `docs/spec.md`.
//!
//! Layout, each layer depending only on those below it (`scripts/import-graph.py` checks
//! there is no import cycle between files):
//! - [`philox`] and [`mask`] hold the spec's arithmetic; [`element`], [`error`] and
//!   [`plan`] the vocabulary of a call (stream position, mask mode, decision layout, what a
//!   kept element becomes); `alloc` allocates every host buffer sized by user input,
//!   fallibly;
//! - [`cpu`] and `cuda` are the backends, which know only those leaf modules; `backend` is
//!   the trait the device backend implements (without the `cuda` feature, a stand-in
//!   whose buffers cannot exist implements it in place of `cuda`, so the compiler checks
//!   both against one interface);
//! - [`functional`] validates a call and dispatches on where its tensor lives;
//! - [`layers`] are what users hold, and `candle` the same layers for candle tensors.
//!
//! ```
//! use dropkit::{Device, Dropout, Tensor};
//!
//! dropkit::manual_seed(0);
//! let layer = Dropout::new(0.1)?;
//! let x = Tensor::<f32>::ones(&[4, 8], &Device::best_available())?;
//! let (y, state) = layer.forward(&x)?;
//! let dx = layer.backward(&Tensor::<f32>::ones(&[4, 8], &x.device())?, &state)?;
//! assert_eq!(dx.shape(), y.shape());
//! # Ok::<(), dropkit::Error>(())
//! ```
#![warn(missing_docs)]
// Every unsafe operation sits in its own block with a `SAFETY:` comment saying why it holds,
// also inside an `unsafe fn` (the body of an unsafe fn is not a licence).
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod alloc;
mod backend;
#[cfg(feature = "candle")]
pub mod candle;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(not(feature = "cuda"))]
#[path = "cuda_off.rs"]
mod cuda;
pub mod device;
pub mod element;
pub mod error;
pub mod functional;
pub mod generator;
mod host;
pub mod layers;
pub mod mask;
pub mod philox;
pub mod plan;
pub mod shard;
pub mod tensor;
pub mod tracker;

pub use device::Device;
pub use element::{DType, Element};
pub use error::{DriverError, Error, Result};
pub use functional::DropoutState;
pub use generator::{default_generator, manual_seed, Generator, GeneratorState};
pub use layers::{
    AlphaDropout, BiasDropoutResidual, DropPath, Dropout, Dropout1d, Dropout2d, Dropout3d,
    DropoutAddNorm, FeatureAlphaDropout,
};
pub use plan::{MaskMode, Norm, StreamPos};
pub use shard::ShardLayout;
pub use tensor::Tensor;
pub use tracker::{RegionKind, RngTracker, TrackerState};
