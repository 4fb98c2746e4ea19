//! `DropPath` (stochastic depth): a whole sample of a residual branch is dropped, one
//! decision per index along the first dimension (SPEC section 6, j = n).

use super::core::{grouped, layer_common, shard_builder, LayerCore};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::functional::DropoutState;
use crate::plan::GroupedKind;
use crate::tensor::Tensor;

/// Drops each sample (index of the first dimension) with probability p and scales kept
/// samples by 1/q; the identity in eval mode.
///
/// ```
/// use dropkit::{Device, DropPath, Generator, Tensor};
/// use std::sync::Arc;
///
/// let layer = DropPath::new(0.25)?.with_generator(Arc::new(Generator::new(5)));
/// let x = Tensor::<f32>::ones(&[8, 3, 4], &Device::Cpu)?;
/// let (y, _) = layer.forward(&x)?;
/// for sample in y.to_vec()?.chunks(12) {
///     assert!(sample.iter().all(|&v| v == sample[0]));
///     assert!(sample[0] == 0.0 || sample[0] == 1.0 / 0.75);
/// }
/// # Ok::<(), dropkit::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct DropPath {
    core: LayerCore,
}

layer_common!(DropPath, backward);
shard_builder!(DropPath);

impl DropPath {
    fn group(shape: &[usize]) -> Result<usize> {
        if shape.is_empty() {
            return Err(Error::InvalidShape {
                op: "DropPath",
                shape: Vec::new(),
                reason: "expected (N, ...): at least one dimension".into(),
            });
        }
        Ok(crate::tensor::group_elements(&shape[1..]))
    }

    /// Forward; a scalar (rank 0) input is an error.
    pub fn forward<T: Element>(&self, x: &Tensor<T>) -> Result<(Tensor<T>, DropoutState)> {
        let group = Self::group(x.shape())?;
        self.core
            .forward(x, grouped(&self.core, group, 1, GroupedKind::Scale))
    }

    /// Forward writing the output over `x`.
    pub fn forward_in_place<T: Element>(&self, x: &mut Tensor<T>) -> Result<DropoutState> {
        let group = Self::group(x.shape())?;
        self.core
            .forward_in_place(x, grouped(&self.core, group, 1, GroupedKind::Scale))
    }

    /// Forward into preallocated buffers, as [`crate::Dropout::forward_into`].
    pub fn forward_into<T: Element>(
        &self,
        x: &Tensor<T>,
        out: &mut Tensor<T>,
        state: &mut DropoutState,
    ) -> Result<()> {
        let train = grouped(&self.core, Self::group(x.shape())?, 1, GroupedKind::Scale);
        self.core.forward_into(x, out, state, train)
    }
}
