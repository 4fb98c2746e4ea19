//! The layers users hold: PyTorch-style modules with a train/eval mode, a generator, a
//! saved-mask form and a shard position. Each forward returns the output and the state its
//! backward needs.

mod alpha;
mod channel;
mod drop_path;
mod dropout;
mod residual;

pub use alpha::{AlphaDropout, FeatureAlphaDropout};
pub use channel::{Dropout1d, Dropout2d, Dropout3d};
pub use drop_path::DropPath;
pub use dropout::Dropout;
pub use residual::BiasDropoutResidual;

use crate::element::Element;
use crate::error::Result;
use crate::functional::{
    self, new_output, DropoutState, GroupedKind, MaskMode, Operand, StreamPos,
};
use crate::generator::{default_generator, Generator};
use crate::mask::Probability;
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
}

impl LayerCore {
    pub fn new(p: f64) -> Result<Self> {
        Ok(Self {
            prob: Probability::new(p)?,
            mode: MaskMode::default(),
            training: true,
            generator: None,
            index_base: 0,
        })
    }

    /// The stream position of one training call, advancing the layer's generator.
    pub fn next_pos(&self) -> StreamPos {
        let generator = self
            .generator
            .as_ref()
            .unwrap_or_else(|| default_generator());
        let (seed, offset) = generator.next_call();
        StreamPos::new(seed, offset).with_index_base(self.index_base)
    }
}

/// Forward of a grouped layer (one decision per `group` elements); identity in eval mode.
pub(crate) fn grouped_forward<T: Element>(
    core: &LayerCore,
    x: &Tensor<T>,
    group: usize,
    kind: GroupedKind,
) -> Result<(Tensor<T>, DropoutState)> {
    if !core.training {
        return Ok((x.try_clone()?, DropoutState::identity(x, core.prob)));
    }
    let pos = core.next_pos();
    let (y, state) =
        functional::grouped_train(Operand::Input(x), &core.prob, group, kind, pos, core.mode)?;
    Ok((new_output(y)?, state))
}

/// [`grouped_forward`] writing the output over `x`.
pub(crate) fn grouped_forward_in_place<T: Element>(
    core: &LayerCore,
    x: &mut Tensor<T>,
    group: usize,
    kind: GroupedKind,
) -> Result<DropoutState> {
    if !core.training {
        return Ok(DropoutState::identity(x, core.prob));
    }
    let pos = core.next_pos();
    functional::grouped_train(Operand::InPlace(x), &core.prob, group, kind, pos, core.mode)
        .map(|(_, state)| state)
}

/// The builder and mode methods every layer shares (a layer has a `core: LayerCore`).
macro_rules! layer_common {
    ($layer:ident) => {
        impl $layer {
            /// Uses `generator` instead of the process-wide default.
            pub fn with_generator(mut self, generator: std::sync::Arc<$crate::Generator>) -> Self {
                self.core.generator = Some(generator);
                self
            }

            /// How the mask is saved for backward (bits by default).
            pub fn with_mask_mode(mut self, mode: $crate::MaskMode) -> Self {
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
