//! dropkit's dropout family for [candle](https://crates.io/crates/candle-core) tensors
//! (features `candle` and `candle-cuda`).
//!
//! candle's own `candle_nn::ops::dropout` is built from ordinary ops (a random tensor, a
//! comparison, a cast, two multiplies), with several full-size temporaries. Here each layer
//! is one candle custom op: one pass over the data on the CPU (dropkit's CPU backend) or
//! dropkit's kernels on CUDA (on candle's stream), with the same bits as dropkit's own
//! tensors for the same (seed, offset). Nothing is saved for backward but (seed, offset, p)
//! and the decision layout: the gradient regenerates the same decisions (SPEC section 4,
//! regenerate form), so autograd through `loss.backward()` works and costs no mask memory.
//!
//! | candle form | dropkit layer | input |
//! |---|---|---|
//! | [`Dropout`] | [`crate::Dropout`] | any |
//! | [`Dropout1d`], [`Dropout2d`], [`Dropout3d`] | channel dropout | (N, C, *spatial) or (C, *spatial) |
//! | [`DropPath`] | [`crate::DropPath`] | (N, ...) |
//! | [`AlphaDropout`] | [`crate::AlphaDropout`] | any |
//! | [`FeatureAlphaDropout`] | [`crate::FeatureAlphaDropout`] | (N, C, ...) |
//! | [`BiasDropoutResidual`] (three inputs, not a `ModuleT`) | [`crate::BiasDropoutResidual`] | x, residual (..., H); bias (H) |
//! | [`DropoutAddNorm`] (five inputs, two outputs; CPU storage) | [`crate::DropoutAddNorm`] | x, residual (..., H); bias, gamma, beta (H) |
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use candle_nn::ModuleT;
//! use dropkit::{candle::Dropout, Generator};
//! use std::sync::Arc;
//!
//! let layer = Dropout::new(0.5)?.with_generator(Arc::new(Generator::new(7)));
//! let x = Tensor::ones((2, 8), candle_core::DType::F32, &Device::Cpu)?;
//! let y = layer.forward_t(&x, true)?; // training: each element is 0 or 2
//! assert!(y.flatten_all()?.to_vec1::<f32>()?.iter().all(|&v| v == 0.0 || v == 2.0));
//! let same = layer.forward_t(&x, false)?; // eval: the identity
//! assert_eq!(same.to_vec2::<f32>()?, x.to_vec2::<f32>()?);
//! # Ok::<(), candle_core::Error>(())
//! ```
mod alpha;
mod dropout;
mod grouped;
mod norm;
mod op;
mod residual;
mod util;

pub use alpha::{alpha_dropout, AlphaDropout, FeatureAlphaDropout};
pub use dropout::{dropout, Dropout};
pub use grouped::{grouped_dropout, DropPath, Dropout1d, Dropout2d, Dropout3d};
pub use norm::DropoutAddNorm;
pub use residual::{bias_dropout_residual, BiasDropoutResidual};
pub use util::to_candle_error;
