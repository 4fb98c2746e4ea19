//! `AlphaDropout` and `FeatureAlphaDropout`, for self-normalising (SELU) networks: dropped
//! elements take SELU's negative saturation value and an affine map keeps the mean and
//! variance of a standard-normal input (SPEC section 6).

use super::core::{grouped, layer_common, shard_builder, LayerCore};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::functional::DropoutState;
use crate::plan::{GroupedKind, Kept};
use crate::tensor::Tensor;

/// Elementwise alpha dropout: kept a*x + b, dropped a*A + b with A = -lambda*alpha of SELU;
/// the identity in eval mode.
///
/// ```
/// use dropkit::{AlphaDropout, Device, Generator, Tensor};
/// use std::sync::Arc;
///
/// let layer = AlphaDropout::new(0.2)?.with_generator(Arc::new(Generator::new(3)));
/// let x = Tensor::<f64>::zeros(&[1000], &Device::Cpu)?;
/// let (y, _) = layer.forward(&x)?;
/// let y = y.to_vec()?;
/// // Two values only: b for kept zeros, a*A + b for dropped ones.
/// let kept = y[0];
/// assert!(y.iter().all(|&v| v == kept || v < kept));
/// # Ok::<(), dropkit::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct AlphaDropout {
    core: LayerCore,
}

layer_common!(AlphaDropout, backward);
shard_builder!(AlphaDropout);

impl AlphaDropout {
    /// Forward; the state is what [`AlphaDropout::backward`] needs.
    pub fn forward<T: Element>(&self, x: &Tensor<T>) -> Result<(Tensor<T>, DropoutState)> {
        self.core.forward(x, self.core.elementwise(Kept::alpha))
    }

    /// Forward into preallocated buffers, as [`crate::Dropout::forward_into`].
    pub fn forward_into<T: Element>(
        &self,
        x: &Tensor<T>,
        out: &mut Tensor<T>,
        state: &mut DropoutState,
    ) -> Result<()> {
        self.core
            .forward_into(x, out, state, self.core.elementwise(Kept::alpha))
    }

    /// Forward writing the output over `x` (same bits as [`AlphaDropout::forward`]).
    pub fn forward_in_place<T: Element>(&self, x: &mut Tensor<T>) -> Result<DropoutState> {
        self.core
            .forward_in_place(x, self.core.elementwise(Kept::alpha))
    }
}

/// Alpha dropout with one decision per (sample, channel) of an (N, C, *spatial) input
/// (rank 2 or more): whole feature maps take the dropped value.
///
/// ```
/// use dropkit::{Device, FeatureAlphaDropout, Generator, Tensor};
/// use std::sync::Arc;
///
/// let layer = FeatureAlphaDropout::new(0.5)?.with_generator(Arc::new(Generator::new(3)));
/// let x = Tensor::<f32>::zeros(&[4, 8, 16], &Device::Cpu)?;
/// let (y, _) = layer.forward(&x)?;
/// for map in y.to_vec()?.chunks(16) {
///     assert!(map.iter().all(|&v| v == map[0]));
/// }
/// # Ok::<(), dropkit::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct FeatureAlphaDropout {
    core: LayerCore,
}

layer_common!(FeatureAlphaDropout, backward);
shard_builder!(FeatureAlphaDropout);

impl FeatureAlphaDropout {
    fn group(shape: &[usize]) -> Result<usize> {
        if shape.len() < 2 {
            return Err(Error::InvalidShape {
                op: "FeatureAlphaDropout",
                shape: shape.to_vec(),
                reason: "expected (N, C, *spatial): rank 2 or more".into(),
            });
        }
        Ok(crate::tensor::group_elements(&shape[2..]))
    }

    /// Forward; a rank below 2 is an error.
    pub fn forward<T: Element>(&self, x: &Tensor<T>) -> Result<(Tensor<T>, DropoutState)> {
        let group = Self::group(x.shape())?;
        self.core
            .forward(x, grouped(&self.core, group, 2, GroupedKind::Alpha))
    }

    /// Forward writing the output over `x`.
    pub fn forward_in_place<T: Element>(&self, x: &mut Tensor<T>) -> Result<DropoutState> {
        let group = Self::group(x.shape())?;
        self.core
            .forward_in_place(x, grouped(&self.core, group, 2, GroupedKind::Alpha))
    }

    /// Forward into preallocated buffers, as [`crate::Dropout::forward_into`].
    pub fn forward_into<T: Element>(
        &self,
        x: &Tensor<T>,
        out: &mut Tensor<T>,
        state: &mut DropoutState,
    ) -> Result<()> {
        let train = grouped(&self.core, Self::group(x.shape())?, 2, GroupedKind::Alpha);
        self.core.forward_into(x, out, state, train)
    }
}
