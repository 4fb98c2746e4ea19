//! Elementwise dropout of candle tensors: the stateless [`dropout`] and the [`Dropout`]
//! module, both over the one custom op of [`super::op`].

use super::op::{train_call, MaskOp};
use super::util::{candle_layer, to_candle_error};
use crate::layers::LayerCore;
use crate::mask::Probability;
use crate::plan::StreamPos;
use candle_core::Tensor;

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
