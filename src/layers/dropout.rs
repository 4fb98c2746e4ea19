//! `Dropout`: elementwise dropout with PyTorch's module semantics.

use super::LayerCore;
use crate::element::Element;
use crate::error::Result;
use crate::functional::{self, DropoutState, MaskMode, StreamPos};
use crate::generator::Generator;
use crate::mask::Probability;
use crate::tensor::Tensor;
use std::sync::Arc;

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
    prob: Probability,
    mode: MaskMode,
    core: LayerCore,
}

impl Dropout {
    /// A dropout layer in training mode using the default generator; p must be in [0, 1].
    pub fn new(p: f64) -> Result<Self> {
        Ok(Self {
            prob: Probability::new(p)?,
            mode: MaskMode::default(),
            core: LayerCore::new(),
        })
    }

    /// Uses `generator` instead of the process-wide default.
    pub fn with_generator(mut self, generator: Arc<Generator>) -> Self {
        self.core.generator = Some(generator);
        self
    }

    /// How the mask is saved for backward.
    pub fn with_mask_mode(mut self, mode: MaskMode) -> Self {
        self.mode = mode;
        self
    }

    /// For a shard holding elements `[index_base, index_base + n)` of a larger tensor.
    pub fn with_index_base(mut self, index_base: u64) -> Self {
        self.core.index_base = index_base;
        self
    }

    /// The drop probability.
    pub fn p(&self) -> f64 {
        self.prob.p()
    }

    /// Training mode (the default).
    pub fn train(&mut self) -> &mut Self {
        self.core.training = true;
        self
    }

    /// Eval mode: forward is the identity.
    pub fn eval(&mut self) -> &mut Self {
        self.core.training = false;
        self
    }

    /// Sets the mode.
    pub fn set_training(&mut self, training: bool) -> &mut Self {
        self.core.training = training;
        self
    }

    /// True in training mode.
    pub fn is_training(&self) -> bool {
        self.core.training
    }

    fn next_pos(&self) -> StreamPos {
        let (seed, offset) = self.core.next_call();
        StreamPos::new(seed, offset).with_index_base(self.core.index_base)
    }

    /// Forward; the state is what [`Dropout::backward`] needs. A training call takes one
    /// offset from the generator, an eval call takes none.
    pub fn forward<T: Element>(&self, x: &Tensor<T>) -> Result<(Tensor<T>, DropoutState)> {
        if !self.core.training {
            return functional::dropout(x, self.prob.p(), false, StreamPos::new(0, 0), self.mode);
        }
        functional::dropout_train(x, &self.prob, self.next_pos(), self.mode)
    }

    /// Forward writing the output over `x` (same bits as [`Dropout::forward`]).
    pub fn forward_in_place<T: Element>(&self, x: &mut Tensor<T>) -> Result<DropoutState> {
        if !self.core.training {
            return Ok(functional::identity_state(x, self.prob));
        }
        functional::dropout_train_in_place(x, &self.prob, self.next_pos(), self.mode)
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
