//! The layers users hold: PyTorch-style modules with a train/eval mode, a generator, a
//! saved-mask form and a shard position. Each forward returns the output and the state its
//! backward needs.

mod alpha;
pub(crate) mod channel;
mod core;
mod drop_path;
mod dropout;
mod norm;
mod residual;

pub use alpha::{AlphaDropout, FeatureAlphaDropout};
pub use channel::{Dropout1d, Dropout2d, Dropout3d};
pub use drop_path::DropPath;
pub use dropout::Dropout;
pub use norm::DropoutAddNorm;
pub use residual::BiasDropoutResidual;

/// The candle layers carry the same core as dropkit's own.
#[cfg(feature = "candle")]
pub(crate) use self::core::LayerCore;
