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

mod family;
mod op;
mod residual;

#[cfg(feature = "candle-cuda")]
mod cuda;

pub use family::{AlphaDropout, DropPath, Dropout1d, Dropout2d, Dropout3d, FeatureAlphaDropout};
pub use residual::{bias_dropout_residual, BiasDropoutResidual};

use crate::element::DType;
use crate::functional::{check_index_range, GroupedKind, StreamPos};
use crate::layers::LayerCore;
use crate::mask::Probability;
use candle_core::{Layout, Tensor};
use op::{Grouping, Kept, MaskOp};

/// Turns a dropkit error into a candle error whose message says where it came from.
pub fn to_candle_error(e: crate::Error) -> candle_core::Error {
    candle_core::Error::Msg(format!("dropkit dropout: {e}")).bt()
}

/// Elementwise dropout of a candle tensor (SPEC section 3) at stream position `pos`.
///
/// Same contract as [`crate::functional::dropout`]: in training, each element is dropped
/// with probability `p` and the rest are scaled by 1/q; with `training = false` the result
/// is `x` itself (no copy, nothing random used). The result tracks gradients: its backward
/// applies the same mask and scale. Dtypes f32, f64, f16 and bf16; the decision index of an
/// element is its row-major position in the logical tensor, so a non-contiguous `x` (a
/// transpose, a narrow) is first made contiguous by candle and gets the same bits as
/// `x.contiguous()` would.
pub fn dropout(x: &Tensor, p: f64, training: bool, pos: StreamPos) -> candle_core::Result<Tensor> {
    let prob = Probability::new(p).map_err(to_candle_error)?;
    if !training {
        return Ok(x.clone());
    }
    MaskOp::dropout(prob, pos).apply(x)
}

/// Alpha dropout of a candle tensor (SPEC section 6), like
/// [`crate::functional::alpha_dropout`]: kept elements become a*x + b, dropped ones
/// a*A + b; the identity when `training` is false. Backward: kept gradients times a.
pub fn alpha_dropout(
    x: &Tensor,
    p: f64,
    training: bool,
    pos: StreamPos,
) -> candle_core::Result<Tensor> {
    let prob = Probability::new(p).map_err(to_candle_error)?;
    if !training {
        return Ok(x.clone());
    }
    MaskOp::new(
        "dropkit-alpha-dropout",
        prob,
        pos,
        Grouping::Elementwise,
        Kept::Alpha,
    )
    .apply(x)
}

/// Dropout with one decision per `group` consecutive elements of a candle tensor, like
/// [`crate::functional::grouped_dropout`]: channel dropout (group = the spatial size),
/// DropPath (group = one sample's size), or feature alpha dropout with
/// [`GroupedKind::Alpha`]. The identity when `training` is false.
pub fn grouped_dropout(
    x: &Tensor,
    p: f64,
    training: bool,
    group: usize,
    kind: GroupedKind,
    pos: StreamPos,
) -> candle_core::Result<Tensor> {
    let prob = Probability::new(p).map_err(to_candle_error)?;
    if !training {
        return Ok(x.clone());
    }
    if group == 0 && x.elem_count() > 0 {
        return Err(to_candle_error(crate::Error::InvalidShape {
            op: "grouped dropout",
            shape: x.dims().to_vec(),
            reason: "a decision must cover at least one element".into(),
        }));
    }
    MaskOp::grouped(prob, pos, group, kind).apply(x)
}

/// What every op refuses: a dtype other than the four floats, or decision indices past
/// 2^64. Checked before a layer takes its offset, so a refused call takes none.
fn check_input(x: &Tensor, index_base: u64) -> candle_core::Result<()> {
    check_dtype(x.dtype())?;
    check_index_range(index_base, x.elem_count()).map_err(to_candle_error)
}

/// dropkit's dtype for one of candle's, if it is one of the four floats.
fn dropkit_dtype(dtype: candle_core::DType) -> Option<DType> {
    use candle_core::DType as D;
    match dtype {
        D::F32 => Some(DType::F32),
        D::F64 => Some(DType::F64),
        D::F16 => Some(DType::F16),
        D::BF16 => Some(DType::BF16),
        _ => None,
    }
}

fn check_dtype(dtype: candle_core::DType) -> candle_core::Result<DType> {
    dropkit_dtype(dtype).ok_or_else(|| unsupported_dtype(dtype))
}

fn unsupported_dtype(dtype: candle_core::DType) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "dropkit dropout: dtype {dtype:?} is not supported (f32, f64, f16 or bf16)"
    ))
    .bt()
}

/// The element range of a contiguous layout; every op makes its inputs contiguous before
/// it is applied, so this only fails for a caller that bypassed that.
fn contiguous_range(layout: &Layout) -> candle_core::Result<(usize, usize)> {
    layout.contiguous_offsets().ok_or_else(|| {
        candle_core::Error::Msg(
            "dropkit dropout: the op needs a contiguous layout (call .contiguous() first)".into(),
        )
        .bt()
    })
}

/// A training call of a single-input layer: bad input is refused before the layer's
/// generator moves, then exactly one offset is taken (SPEC section 5).
fn train_call(
    core: &LayerCore,
    xs: &Tensor,
    op: impl FnOnce(StreamPos) -> MaskOp,
) -> candle_core::Result<Tensor> {
    check_input(xs, core.index_base)?;
    op(core.next_pos()).apply(xs)
}

/// The constructor and builders every candle layer shares (a layer has a
/// `core: LayerCore`; its train/eval flag and mask mode are unused, `forward_t` says).
macro_rules! candle_layer {
    ($layer:ident) => {
        impl $layer {
            /// A layer using the default generator; `p` must be a finite number in [0, 1]
            /// (a candle error otherwise).
            pub fn new(p: f64) -> candle_core::Result<Self> {
                Ok(Self {
                    core: $crate::layers::LayerCore::new(p)
                        .map_err($crate::candle::to_candle_error)?,
                })
            }

            /// Uses `generator` instead of the process-wide default.
            pub fn with_generator(mut self, generator: std::sync::Arc<$crate::Generator>) -> Self {
                self.core.generator = Some(generator);
                self
            }

            /// For a shard holding elements `[index_base, index_base + n)` of a larger
            /// tensor: the shard gets exactly its slice of the whole tensor's mask.
            pub fn with_index_base(mut self, index_base: u64) -> Self {
                self.core.index_base = index_base;
                self
            }

            /// The drop probability.
            pub fn p(&self) -> f64 {
                self.core.prob.p()
            }
        }
    };
}
use candle_layer;

/// Dropout as a candle module: `forward_t(x, true)` drops, `forward_t(x, false)` is the
/// identity. Every training call takes a fresh offset from the layer's
/// [`Generator`](crate::Generator) (SPEC section 5), so a run replays from (seed, offset);
/// eval calls take none.
///
/// Carries a dropkit generator (`Arc`, shareable with dropkit layers); without one, the
/// process-wide default generator of [`crate::manual_seed`] is used.
#[derive(Debug, Clone)]
pub struct Dropout {
    core: LayerCore,
}

candle_layer!(Dropout);

impl candle_nn::ModuleT for Dropout {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        if !train {
            return Ok(xs.clone());
        }
        train_call(&self.core, xs, |pos| MaskOp::dropout(self.core.prob, pos))
    }
}
