//! What every layer shares: [`LayerCore`] (probability, mask mode, train/eval flag,
//! generator, shard position), the grouped layers' training forward, and the
//! `layer_common!` macro with the builder and mode methods.

use crate::element::Element;
use crate::error::Result;
use crate::functional::{self, new_output, DropoutState, Operand, TrainResult};
use crate::generator::{default_generator, Generator};
use crate::mask::Probability;
use crate::plan::{GroupedKind, Kept, MaskMode, StreamPos};
use crate::shard::ShardLayout;
use crate::tensor::Tensor;
use std::sync::Arc;

/// What every layer of the family carries.
#[derive(Debug, Clone)]
pub(crate) struct LayerCore {
    pub prob: Probability,
    pub mode: MaskMode,
    pub training: bool,
    pub generator: Option<Arc<Generator>>,
    pub index_base: u64,
    /// The place of a shard of any layout (elementwise layers; `index_base` is 0 then).
    pub shard: Option<Arc<ShardLayout>>,
}

impl LayerCore {
    pub fn new(p: f64) -> Result<Self> {
        Ok(Self {
            prob: Probability::new(p)?,
            mode: MaskMode::default(),
            training: true,
            generator: None,
            index_base: 0,
            shard: None,
        })
    }

    /// The stream position of one training call, advancing the layer's generator.
    pub fn next_pos(&self) -> StreamPos {
        let generator = self
            .generator
            .as_ref()
            .unwrap_or_else(|| default_generator());
        generator.next_pos().with_index_base(self.index_base)
    }

    /// [`Self::next_pos`] for a front end that cannot run inside a CUDA graph (candle
    /// allocates its outputs): an error, taking no call, while the generator captures.
    #[cfg_attr(not(feature = "candle"), allow(dead_code))]
    pub fn next_eager_pos(&self) -> Result<StreamPos> {
        if self.capturing() {
            return Err(crate::error::Error::InvalidArgument {
                op: "a candle layer",
                reason: "its generator is capturing a CUDA graph, and candle allocates its \
                         outputs, so candle layers cannot be captured (dropkit's own layers \
                         can, with their _into forms)"
                    .into(),
            });
        }
        Ok(self.next_pos())
    }

    /// Before a call that allocates nothing takes its position: with a capturing
    /// generator, the tensor must be on CUDA (the call is captured); otherwise the stream
    /// must not be capturing (the call would be captured with a position by value).
    pub fn check_capturable<T: Element>(&self, x: &Tensor<T>) -> Result<()> {
        if !self.capturing() {
            return x.device().refuse_capture("a training forward");
        }
        functional::check_graph_tensor(x)
    }

    /// Whether the layer's generator is capturing a CUDA graph (its calls then read their
    /// random state on the device, so a captured kernel launch is legal).
    pub fn capturing(&self) -> bool {
        self.generator
            .as_ref()
            .unwrap_or_else(|| default_generator())
            .is_capturing()
    }

    /// The checks of the shard's place: the decision range, or the layout's shape.
    pub fn check_place<T: Element>(&self, x: &Tensor<T>) -> Result<()> {
        match &self.shard {
            Some(layout) => functional::check_shard(x, StreamPos::new(0, 0), layout),
            None => functional::check_index_range(self.index_base, x.len()),
        }
    }

    /// The elementwise training forward (Dropout, AlphaDropout) of `kept`, through the
    /// layer's shard layout when it has one.
    pub fn elementwise<T: Element>(
        &self,
        kept: fn(&Probability) -> Kept<f64>,
    ) -> impl FnOnce(Operand<'_, T>, &Probability, StreamPos, MaskMode) -> TrainResult<T> + '_ {
        move |x, prob, pos, mode| match &self.shard {
            Some(layout) => functional::shard_train(x, prob, pos, mode, kept(prob), layout),
            None => functional::elementwise_train(x, prob, pos, mode, kept(prob)),
        }
    }

    /// A layer's forward: the identity in eval mode (no offset taken), else `train` at the
    /// next offset.
    pub fn forward<T: Element>(
        &self,
        x: &Tensor<T>,
        train: impl FnOnce(Operand<'_, T>, &Probability, StreamPos, MaskMode) -> TrainResult<T>,
    ) -> Result<(Tensor<T>, DropoutState)> {
        if !self.training {
            return Ok((x.try_clone()?, DropoutState::identity(x, self.prob)));
        }
        // A call that fails takes no offset: the range is checked before one is taken
        // (the layers check ranks and shapes before they get here).
        self.check_place(x)?;
        x.device().refuse_capture("a training forward")?;
        let pos = self.next_pos();
        functional::check_captured(x, pos)?;
        let (y, state) = train(Operand::Input(x), &self.prob, pos, self.mode)?;
        Ok((new_output(y), state))
    }

    /// [`LayerCore::forward`] writing into preallocated buffers: the output into `out`,
    /// the state into `state` (whose mask is reused). Legal while the stream captures a
    /// CUDA graph when the layer's generator is capturing with it.
    pub fn forward_into<T: Element>(
        &self,
        x: &Tensor<T>,
        out: &mut Tensor<T>,
        state: &mut DropoutState,
        train: impl FnOnce(Operand<'_, T>, &Probability, StreamPos, MaskMode) -> TrainResult<T>,
    ) -> Result<()> {
        functional::check_output(x, out, "a layer's forward into")?;
        if !self.training {
            out.copy_from(x)?;
            *state = DropoutState::identity(x, self.prob);
            return Ok(());
        }
        self.check_place(x)?;
        self.check_capturable(x)?;
        let pos = self.next_pos();
        let mask = state.take_mask();
        *state = train(Operand::Into { x, out, mask }, &self.prob, pos, self.mode)?.1;
        Ok(())
    }

    /// [`LayerCore::forward`] writing the output over `x`.
    pub fn forward_in_place<T: Element>(
        &self,
        x: &mut Tensor<T>,
        train: impl FnOnce(Operand<'_, T>, &Probability, StreamPos, MaskMode) -> TrainResult<T>,
    ) -> Result<DropoutState> {
        if !self.training {
            return Ok(DropoutState::identity(x, self.prob));
        }
        self.check_place(x)?;
        self.check_capturable(x)?;
        let pos = self.next_pos();
        train(Operand::InPlace(x), &self.prob, pos, self.mode).map(|(_, state)| state)
    }
}

/// The training forward of a grouped layer with `group` elements per decision: the first
/// `lead_axes` axes index the decisions, which a shard of any layout reads through its
/// layout.
pub(crate) fn grouped<T: Element>(
    core: &LayerCore,
    group: usize,
    lead_axes: usize,
    kind: GroupedKind,
) -> impl FnOnce(Operand<'_, T>, &Probability, StreamPos, MaskMode) -> TrainResult<T> + '_ {
    move |x, prob, pos, mode| match &core.shard {
        Some(layout) => {
            functional::grouped_shard_train(x, prob, lead_axes, kind, pos, mode, layout)
        }
        None => functional::grouped_train(x, prob, group, kind, pos, mode),
    }
}

/// The builder and mode methods every layer shares (a layer has a `core: LayerCore`);
/// with `backward`, also the backward of layers whose state is a [`DropoutState`].
macro_rules! layer_common {
    ($layer:ident, backward) => {
        layer_common!($layer);

        impl $layer {
            /// The input gradient from the upstream gradient and the forward's state:
            /// `dx = kept ? dy * g : +0` through the saved mask.
            pub fn backward<T: $crate::element::Element>(
                &self,
                grad: &$crate::tensor::Tensor<T>,
                state: &$crate::functional::DropoutState,
            ) -> $crate::error::Result<$crate::tensor::Tensor<T>> {
                $crate::functional::dropout_backward(grad, state)
            }

            /// [`Self::backward`] into a preallocated `dx` (allocates nothing on CUDA:
            /// legal while the stream captures a CUDA graph).
            pub fn backward_into<T: $crate::element::Element>(
                &self,
                grad: &$crate::tensor::Tensor<T>,
                state: &$crate::functional::DropoutState,
                dx: &mut $crate::tensor::Tensor<T>,
            ) -> $crate::error::Result<()> {
                $crate::functional::dropout_backward_into(grad, state, dx)
            }
        }
    };
    ($layer:ident) => {
        impl $layer {
            /// A layer in training mode using the default generator; p must be in [0, 1].
            pub fn new(p: f64) -> $crate::error::Result<Self> {
                Ok(Self {
                    core: $crate::layers::core::LayerCore::new(p)?,
                })
            }
        }
        layer_common!($layer, custom_new);
    };
    // A layer with constructors of its own: the builder and mode methods only.
    ($layer:ident, custom_new) => {
        impl $layer {
            /// Uses `generator` instead of the process-wide default.
            pub fn with_generator(
                mut self,
                generator: std::sync::Arc<$crate::generator::Generator>,
            ) -> Self {
                self.core.generator = Some(generator);
                self
            }

            /// How the mask is saved for backward (bits by default).
            pub fn with_mask_mode(mut self, mode: $crate::plan::MaskMode) -> Self {
                self.core.mode = mode;
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
        }
    };
}
pub(crate) use layer_common;

/// `with_shard` for the layers of the family but the fused ones (a layer has a
/// `core: LayerCore`).
macro_rules! shard_builder {
    ($layer:ident) => {
        impl $layer {
            /// For a shard of any layout of a larger tensor (any axes split, as tensor,
            /// sequence and context parallelism split them): each element decides by its
            /// index in the whole tensor, so the shards' outputs put together are the
            /// unsharded output. Replaces a `with_index_base`; a forward of a tensor whose
            /// shape is not `layout.shape()` is an error and takes no offset.
            pub fn with_shard(mut self, layout: $crate::shard::ShardLayout) -> Self {
                self.core.index_base = 0;
                self.core.shard = Some(std::sync::Arc::new(layout));
                self
            }
        }
    };
}
pub(crate) use shard_builder;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    /// A generator in a CUDA graph capture hands out captured positions: a CPU tensor and
    /// a candle layer refuse them (their calls would read the wrong words), taking no call.
    #[test]
    fn captured_positions_are_refused_where_no_graph_can_read_them() {
        let g = Arc::new(Generator::new(1));
        let mut core = LayerCore::new(0.5).unwrap();
        core.generator = Some(g.clone());
        assert!(g.begin_capture(0x1000));
        let refused = core.next_eager_pos();
        assert!(
            matches!(refused, Err(Error::InvalidArgument { .. })),
            "{refused:?}"
        );
        let mut x = Tensor::from_vec(vec![1.0f32; 64], &[64]).unwrap();
        let train = core.elementwise(Kept::dropout);
        let e = core.forward_in_place(&mut x, train);
        assert!(matches!(e, Err(Error::InvalidArgument { .. })), "{e:?}");
        assert_eq!(
            x.to_vec().unwrap(),
            vec![1.0f32; 64],
            "the CPU tensor was written"
        );
        // Neither refused call took a place in the capture.
        assert_eq!(g.end_capture(), 0);
        assert_eq!(core.next_eager_pos().unwrap(), StreamPos::new(1, 0));
    }
}
