//! `Dropout`: elementwise dropout with PyTorch's module semantics.

use super::{layer_common, LayerCore};
use crate::element::Element;
use crate::error::Result;
use crate::functional::{self, new_output, DropoutState, Operand};
use crate::tensor::Tensor;

/// Zeroes each element with probability `p` in training and scales the rest by 1/(1-p)
/// (exactly: by 1/q, SPEC section 2); the identity in eval mode.
///
/// ```
/// use dropkit::{Device, Dropout, Generator, Tensor};
/// use std::sync::Arc;
///
/// let layer = Dropout::new(0.5)?.with_generator(Arc::new(Generator::new(7)));
/// let x = Tensor::<f32>::ones(&[1, 10], &Device::Cpu)?;
/// let (y, state) = layer.forward(&x)?;
/// assert!(y.to_vec()?.iter().all(|&v| v == 0.0 || v == 2.0));
/// let dx = layer.backward(&Tensor::<f32>::ones(&[1, 10], &Device::Cpu)?, &state)?;
/// assert_eq!(dx.to_vec()?, y.to_vec()?); // same mask, same scale
/// # Ok::<(), dropkit::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Dropout {
    core: LayerCore,
}

layer_common!(Dropout);

impl Dropout {
    /// A dropout layer in training mode using the default generator; p must be in [0, 1].
    pub fn new(p: f64) -> Result<Self> {
        Ok(Self {
            core: LayerCore::new(p)?,
        })
    }

    /// Forward; the state is what [`Dropout::backward`] needs. A training call takes one
    /// offset from the generator, an eval call takes none.
    pub fn forward<T: Element>(&self, x: &Tensor<T>) -> Result<(Tensor<T>, DropoutState)> {
        if !self.core.training {
            return Ok((x.try_clone()?, DropoutState::identity(x, self.core.prob)));
        }
        let pos = self.core.next_pos();
        let (y, state) =
            functional::dropout_train(Operand::Input(x), &self.core.prob, pos, self.core.mode)?;
        Ok((new_output(y)?, state))
    }

    /// Forward writing the output over `x` (same bits as [`Dropout::forward`]).
    pub fn forward_in_place<T: Element>(&self, x: &mut Tensor<T>) -> Result<DropoutState> {
        if !self.core.training {
            return Ok(DropoutState::identity(x, self.core.prob));
        }
        let pos = self.core.next_pos();
        let (_, state) =
            functional::dropout_train(Operand::InPlace(x), &self.core.prob, pos, self.core.mode)?;
        Ok(state)
    }

    /// The input gradient from the upstream gradient and the forward's state.
    pub fn backward<T: Element>(
        &self,
        grad: &Tensor<T>,
        state: &DropoutState,
    ) -> Result<Tensor<T>> {
        functional::dropout_backward(grad, state)
    }
}
