//! Alpha dropout of candle tensors (SPEC section 6): the stateless [`alpha_dropout`],
//! `AlphaDropout` and `FeatureAlphaDropout` (one decision per feature map), each a
//! `candle_nn::ModuleT` over [`MaskOp`].

use super::op::{train_call, MaskOp};
use super::util::{candle_layer, to_candle_error};
use crate::error::Error;
use crate::layers::LayerCore;
use crate::mask::Probability;
use crate::plan::{GroupedKind, StreamPos};
use candle_core::Tensor;

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
    MaskOp::alpha(prob, pos).apply(x)
}

/// Alpha dropout for candle tensors (self-normalising SELU networks), the candle form of
/// [`crate::AlphaDropout`]: kept elements become a*x + b, dropped ones a*A + b with
/// A = -lambda*alpha of SELU; the identity with `train = false`. Its gradient is the
/// upstream gradient times a where kept, +0 where dropped.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::ModuleT;
/// use dropkit::{candle::AlphaDropout, Generator};
/// use std::sync::Arc;
///
/// let layer = AlphaDropout::new(0.2)?.with_generator(Arc::new(Generator::new(3)));
/// let x = Tensor::zeros(1000, DType::F64, &Device::Cpu)?;
/// let y = layer.forward_t(&x, true)?.to_vec1::<f64>()?;
/// // Two values only: b for kept zeros, a*A + b for dropped ones.
/// let kept = y.iter().copied().fold(f64::MIN, f64::max);
/// assert!(y.iter().all(|&v| v == kept || v < kept));
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct AlphaDropout {
    core: LayerCore,
}

candle_layer!(AlphaDropout);

impl candle_nn::ModuleT for AlphaDropout {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        if !train {
            return Ok(xs.clone());
        }
        train_call(&self.core, xs, |pos| MaskOp::alpha(self.core.prob, pos))
    }
}

/// Alpha dropout with one decision per (sample, channel) of an (N, C, *spatial) candle
/// tensor (rank 2 or more), the candle form of [`crate::FeatureAlphaDropout`]: whole
/// feature maps take the dropped value. A rank below 2 is an error.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::ModuleT;
/// use dropkit::{candle::FeatureAlphaDropout, Generator};
/// use std::sync::Arc;
///
/// let layer = FeatureAlphaDropout::new(0.5)?.with_generator(Arc::new(Generator::new(3)));
/// let x = Tensor::zeros((4, 8, 16), DType::F32, &Device::Cpu)?;
/// let y = layer.forward_t(&x, true)?;
/// for map in y.flatten_all()?.to_vec1::<f32>()?.chunks(16) {
///     assert!(map.iter().all(|&v| v == map[0]));
/// }
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct FeatureAlphaDropout {
    core: LayerCore,
}

candle_layer!(FeatureAlphaDropout);

impl candle_nn::ModuleT for FeatureAlphaDropout {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let dims = xs.dims();
        if dims.len() < 2 {
            return Err(to_candle_error(Error::InvalidShape {
                op: "FeatureAlphaDropout",
                shape: dims.to_vec(),
                reason: "expected (N, C, *spatial): rank 2 or more".into(),
            }));
        }
        let group = crate::tensor::group_elements(&dims[2..]);
        if !train {
            return Ok(xs.clone());
        }
        train_call(&self.core, xs, |pos| {
            MaskOp::grouped(self.core.prob, pos, group, GroupedKind::Alpha)
        })
    }
}
