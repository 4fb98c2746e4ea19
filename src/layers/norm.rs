//! `DropoutAddNorm`: the pre-norm transformer step `s = residual + dropout(x + bias)`,
//! `z = LayerNorm(s)` or `RMSNorm(s)`, in one pass (docs/spec.md section 6.3), with every
//! gradient.

use super::core::{layer_common, LayerCore};
use crate::element::Element;
use crate::error::Result;
use crate::functional::{
    check_add_norm, check_eps, dropout_add_norm_backward, dropout_add_norm_backward_into,
    dropout_add_norm_into_placed, dropout_add_norm_placed, place_norm_shard, AddNormConfig,
    AddNormGrads, AddNormInputs, AddNormOutput, AddNormSaved, AddNormState,
};
use crate::plan::{Norm, StreamPos};
use crate::shard::ShardLayout;
use crate::tensor::Tensor;

/// Fused dropout + residual add + LayerNorm / RMSNorm. The layer holds p, eps, the norm
/// and the random state; gamma and beta are the caller's tensors (they are what an
/// optimizer updates), passed to each call.
///
/// ```
/// use dropkit::functional::{AddNormInputs, AddNormSaved};
/// use dropkit::{Device, DropoutAddNorm, Generator, Tensor};
/// use std::sync::Arc;
///
/// let layer = DropoutAddNorm::layer_norm(0.1, 1e-5)?.with_generator(Arc::new(Generator::new(3)));
/// let dev = Device::Cpu;
/// let x = Tensor::from_vec((0..32).map(|i| i as f32 * 0.1).collect(), &[4, 8])?;
/// let residual = Tensor::<f32>::ones(&[4, 8], &dev)?;
/// let (gamma, beta) = (Tensor::<f32>::ones(&[8], &dev)?, Tensor::<f32>::zeros(&[8], &dev)?);
/// let inputs = AddNormInputs {
///     x: &x,
///     bias: None,
///     residual: Some(&residual),
///     gamma: &gamma,
///     beta: Some(&beta),
/// };
/// let out = layer.forward(inputs)?;
/// // Each row of z has mean ~0 (gamma 1, beta 0).
/// let z = out.z.to_vec()?;
/// assert!(z.chunks(8).all(|row| row.iter().sum::<f32>().abs() < 1e-4));
/// let dz = Tensor::<f32>::ones(&[4, 8], &dev)?;
/// let saved = AddNormSaved { s: &out.s, gamma: &gamma };
/// let grads = layer.backward(&dz, Some(&dz), saved, &out.state)?;
/// assert_eq!(grads.gamma.shape(), &[8]);
/// # Ok::<(), dropkit::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct DropoutAddNorm {
    core: LayerCore,
    norm: Norm,
    eps: f64,
}

layer_common!(DropoutAddNorm, custom_new);

impl DropoutAddNorm {
    /// Dropout + add + LayerNorm, in training mode with the default generator.
    pub fn layer_norm(p: f64, eps: f64) -> Result<Self> {
        Self::with_norm(Norm::LayerNorm, p, eps)
    }

    /// Dropout + add + RMSNorm, in training mode with the default generator.
    pub fn rms_norm(p: f64, eps: f64) -> Result<Self> {
        Self::with_norm(Norm::RmsNorm, p, eps)
    }

    fn with_norm(norm: Norm, p: f64, eps: f64) -> Result<Self> {
        // eps is checked here too, so a bad one fails at construction.
        check_eps("DropoutAddNorm", eps)?;
        Ok(Self {
            core: LayerCore::new(p)?,
            norm,
            eps,
        })
    }

    /// The norm.
    pub fn norm(&self) -> Norm {
        self.norm
    }

    /// For a shard of whole rows of a larger tensor, any leading axes split (as
    /// [`crate::functional::dropout_add_norm_shard`]): each element decides by its index in
    /// the whole tensor. Replaces a `with_index_base`; a forward of a tensor that is not
    /// the layout's shard, or a layout that splits H, is an error and takes no offset.
    pub fn with_shard(mut self, layout: ShardLayout) -> Self {
        self.core.index_base = 0;
        self.core.shard = Some(std::sync::Arc::new(layout));
        self
    }

    /// The checks of a call's place before it takes an offset.
    fn check_place<T: Element, R: Element>(
        &self,
        inputs: &AddNormInputs<'_, T, R>,
        config: &AddNormConfig,
    ) -> Result<()> {
        let core = &self.core;
        let origin = StreamPos::new(0, 0);
        let base = match &core.shard {
            Some(layout) => {
                place_norm_shard(inputs.x, origin, Some(layout))?
                    .0
                    .index_base
            }
            None => core.index_base,
        };
        check_add_norm(inputs, config, base).map(drop)
    }

    fn config(&self) -> AddNormConfig {
        AddNormConfig {
            norm: self.norm,
            p: self.core.prob.p(),
            eps: self.eps,
            training: self.core.training,
        }
    }

    /// Forward. A training call takes one offset from the generator, an eval call none.
    pub fn forward<T, R>(&self, inputs: AddNormInputs<'_, T, R>) -> Result<AddNormOutput<T, R>>
    where
        T: Element,
        R: Element<Compute = T::Compute>,
    {
        let (core, config) = (&self.core, self.config());
        // A call that fails takes no offset: validate first.
        self.check_place(&inputs, &config)?;
        inputs.x.device().refuse_capture("a fused forward")?;
        let pos = if core.training {
            core.next_pos()
        } else {
            StreamPos::new(0, 0).with_index_base(core.index_base)
        };
        dropout_add_norm_placed(inputs, &config, pos, core.shard.as_deref(), core.mode)
    }

    /// Forward into `out`, the output of an earlier call of the same shapes (same bits as
    /// [`Self::forward`]: z, s and the row statistics overwritten, the mask reused). On
    /// CUDA it then allocates nothing: the form to call while a CUDA graph is captured
    /// (`dropkit::cuda::CapturedGraph`), with the layer's generator in the capture.
    pub fn forward_into<T, R>(
        &self,
        inputs: AddNormInputs<'_, T, R>,
        out: &mut AddNormOutput<T, R>,
    ) -> Result<()>
    where
        T: Element,
        R: Element<Compute = T::Compute>,
    {
        let (core, config) = (&self.core, self.config());
        self.check_place(&inputs, &config)?;
        match core.training {
            true => core.check_capturable(inputs.x)?,
            false => inputs
                .x
                .device()
                .refuse_capture("a fused forward in eval mode")?,
        }
        let pos = if core.training {
            core.next_pos()
        } else {
            StreamPos::new(0, 0).with_index_base(core.index_base)
        };
        let shard = core.shard.as_deref();
        dropout_add_norm_into_placed(inputs, &config, pos, shard, core.mode, out)
    }

    /// [`Self::backward`] into preallocated gradients (`grads`, as the forward's inputs
    /// call for); after the first call on a state it allocates nothing on CUDA (legal while
    /// a CUDA graph is captured).
    pub fn backward_into<T, R>(
        &self,
        dz: &Tensor<T>,
        ds: Option<&Tensor<R>>,
        saved: AddNormSaved<'_, T, R>,
        state: &AddNormState,
        grads: &mut AddNormGrads<T, R>,
    ) -> Result<()>
    where
        T: Element,
        R: Element<Compute = T::Compute>,
    {
        dropout_add_norm_backward_into(dz, ds, saved, state, grads)
    }

    /// Gradients from dz and, in the pre-norm form, ds (the gradient reaching s along the
    /// residual path); `saved` is the forward's s and gamma.
    pub fn backward<T, R>(
        &self,
        dz: &Tensor<T>,
        ds: Option<&Tensor<R>>,
        saved: AddNormSaved<'_, T, R>,
        state: &AddNormState,
    ) -> Result<AddNormGrads<T, R>>
    where
        T: Element,
        R: Element<Compute = T::Compute>,
    {
        dropout_add_norm_backward(dz, ds, saved, state)
    }
}
