//! `Dropout`: elementwise dropout with PyTorch's module semantics.

use super::core::{layer_common, shard_builder, LayerCore};
use crate::element::Element;
use crate::error::Result;
use crate::functional::DropoutState;
use crate::plan::Kept;
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

layer_common!(Dropout, backward);
shard_builder!(Dropout);

impl Dropout {
    /// Forward; the state is what [`Dropout::backward`] needs. A training call takes one
    /// offset from the generator, an eval call takes none.
    pub fn forward<T: Element>(&self, x: &Tensor<T>) -> Result<(Tensor<T>, DropoutState)> {
        self.core.forward(x, self.core.elementwise(Kept::dropout))
    }

    /// Forward into preallocated buffers (same bits as [`Dropout::forward`]): the output
    /// into `out` (the shape and device of `x`), the state into `state`, whose mask buffer
    /// is reused (pass the state of an earlier call). On CUDA it then allocates nothing
    /// and needs no host round trip: the form to call while a CUDA graph is captured
    /// (`dropkit::cuda::CapturedGraph`), with the layer's generator in the capture.
    pub fn forward_into<T: Element>(
        &self,
        x: &Tensor<T>,
        out: &mut Tensor<T>,
        state: &mut DropoutState,
    ) -> Result<()> {
        self.core
            .forward_into(x, out, state, self.core.elementwise(Kept::dropout))
    }

    /// Forward writing the output over `x` (same bits as [`Dropout::forward`]).
    pub fn forward_in_place<T: Element>(&self, x: &mut Tensor<T>) -> Result<DropoutState> {
        self.core
            .forward_in_place(x, self.core.elementwise(Kept::dropout))
    }
}
