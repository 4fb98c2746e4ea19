//! `BiasDropoutResidual`: the transformer epilogue `out = residual + dropout(x + bias)` in
//! one pass (SPEC section 6), with the gradients for x, residual and bias.

use super::core::{layer_common, LayerCore};
use crate::element::Element;
use crate::error::Result;
use crate::functional::{
    bias_dropout_residual_backward, bias_dropout_residual_backward_into,
    bias_dropout_residual_backward_owned, bias_dropout_residual_run,
    bias_dropout_residual_run_into, check_fused, new_output, BiasDropoutResidualGrads,
    BiasDropoutResidualState, FusedRun, Operand,
};
use crate::shard::ShardLayout;
use crate::tensor::Tensor;

/// Fused bias + dropout + residual add: x and residual of shape (..., H), bias of shape
/// (H). In eval mode, `out = residual + (x + bias)` with the same roundings.
///
/// ```
/// use dropkit::{BiasDropoutResidual, Device, Generator, Tensor};
/// use std::sync::Arc;
///
/// let layer = BiasDropoutResidual::new(0.1)?.with_generator(Arc::new(Generator::new(9)));
/// let x = Tensor::<f32>::ones(&[4, 8], &Device::Cpu)?;
/// let bias = Tensor::<f32>::ones(&[8], &Device::Cpu)?;
/// let residual = Tensor::<f32>::zeros(&[4, 8], &Device::Cpu)?;
/// let (out, state) = layer.forward(&x, &bias, &residual)?;
/// let grads = layer.backward(&Tensor::<f32>::ones(&[4, 8], &Device::Cpu)?, &state)?;
/// // The bias gradient sums the kept rows of each column, scaled by 1/q.
/// let kept = out.to_vec()?.iter().filter(|&&v| v != 0.0).count() as f32;
/// let total: f32 = grads.bias.to_vec()?.iter().sum();
/// assert!((total - kept / 0.9).abs() < 1e-3);
/// # Ok::<(), dropkit::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct BiasDropoutResidual {
    core: LayerCore,
}

layer_common!(BiasDropoutResidual);

impl BiasDropoutResidual {
    /// For a shard of any layout of a larger tensor (as
    /// [`crate::functional::bias_dropout_residual_shard`]): each element decides by its
    /// index in the whole tensor, and the bias passed to a forward is the shard's slice of
    /// the whole bias. Replaces a `with_index_base`; a forward of tensors whose shape is not
    /// `layout.shape()` is an error and takes no offset.
    pub fn with_shard(mut self, layout: ShardLayout) -> Self {
        self.core.index_base = 0;
        self.core.shard = Some(std::sync::Arc::new(layout));
        self
    }

    /// Forward. A training call takes one offset from the generator, an eval call none.
    pub fn forward<T: Element>(
        &self,
        x: &Tensor<T>,
        bias: &Tensor<T>,
        residual: &Tensor<T>,
    ) -> Result<(Tensor<T>, BiasDropoutResidualState)> {
        let (out, state) = self.run(x, bias, Operand::Input(residual))?;
        Ok((new_output(out), state))
    }

    /// Forward writing the output over `residual` (the residual stream), same bits.
    pub fn forward_in_place<T: Element>(
        &self,
        x: &Tensor<T>,
        bias: &Tensor<T>,
        residual: &mut Tensor<T>,
    ) -> Result<BiasDropoutResidualState> {
        self.run(x, bias, Operand::InPlace(residual))
            .map(|(_, state)| state)
    }

    /// Forward into preallocated buffers (same bits as [`Self::forward`]): the output into
    /// `out` (the residual's shape and device), the state into `state`, whose mask and
    /// partial-sum buffers are reused (pass the state of an earlier call). On CUDA it then
    /// allocates nothing: the form to call while a CUDA graph is captured
    /// (`dropkit::cuda::CapturedGraph`), with the layer's generator in the capture.
    pub fn forward_into<T: Element>(
        &self,
        x: &Tensor<T>,
        bias: &Tensor<T>,
        residual: &Tensor<T>,
        out: &mut Tensor<T>,
        state: &mut BiasDropoutResidualState,
    ) -> Result<()> {
        let core = &self.core;
        check_fused(x, bias, residual, core.index_base)?;
        core.check_place(x)?;
        crate::functional::check_output(residual, out, "a fused forward into")?;
        match core.training {
            true => core.check_capturable(x)?,
            false => x.device().refuse_capture("a fused forward in eval mode")?,
        }
        let run = self.fused_run(self.pos());
        bias_dropout_residual_run_into(x, bias, residual, out, state, run)
    }

    /// The position of a call: the next offset in training, none taken in eval mode.
    fn pos(&self) -> crate::plan::StreamPos {
        let core = &self.core;
        if core.training {
            core.next_pos()
        } else {
            // No offset taken, but a shard still needs its place for the bias column.
            crate::plan::StreamPos::new(0, 0).with_index_base(core.index_base)
        }
    }

    fn run<T: Element>(
        &self,
        x: &Tensor<T>,
        bias: &Tensor<T>,
        residual: Operand<'_, T>,
    ) -> Result<(Option<Tensor<T>>, BiasDropoutResidualState)> {
        let core = &self.core;
        // A call that fails takes no offset: validate first.
        check_fused(x, bias, residual.tensor(), core.index_base)?;
        core.check_place(x)?;
        x.device().refuse_capture("a fused forward")?;
        // Eval calls take no offset (SPEC section 5).
        let pos = self.pos();
        bias_dropout_residual_run(x, bias, residual, self.fused_run(pos))
    }

    /// How a call at `pos` runs: the layer's probability, mode, saved form and shard.
    fn fused_run(&self, pos: crate::plan::StreamPos) -> FusedRun<'_> {
        let core = &self.core;
        FusedRun {
            prob: &core.prob,
            training: core.training,
            pos,
            mode: core.mode,
            shard: core.shard.as_deref(),
        }
    }

    /// Gradients for x, residual and bias from the upstream gradient. The residual
    /// gradient is a copy of `grad`; [`Self::backward_owned`] avoids that copy.
    pub fn backward<T: Element>(
        &self,
        grad: &Tensor<T>,
        state: &BiasDropoutResidualState,
    ) -> Result<BiasDropoutResidualGrads<T>> {
        bias_dropout_residual_backward(grad, state)
    }

    /// [`Self::backward`] into preallocated gradients (`grads.x`, `grads.residual` of the
    /// gradient's shape, `grads.bias` of (H)); after the first call on a state it allocates
    /// nothing on CUDA (legal while a CUDA graph is captured).
    pub fn backward_into<T: Element>(
        &self,
        grad: &Tensor<T>,
        state: &BiasDropoutResidualState,
        grads: &mut BiasDropoutResidualGrads<T>,
    ) -> Result<()> {
        bias_dropout_residual_backward_into(grad, state, grads)
    }

    /// [`Self::backward`] taking `grad` by value: it is returned as the residual gradient,
    /// with no copy.
    pub fn backward_owned<T: Element>(
        &self,
        grad: Tensor<T>,
        state: &BiasDropoutResidualState,
    ) -> Result<BiasDropoutResidualGrads<T>> {
        bias_dropout_residual_backward_owned(grad, state)
    }
}
