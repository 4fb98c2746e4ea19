//! Stateless dropout functions: the caller supplies (seed, offset) and keeps the saved
//! state. The layers in [`crate::layers`] call these; users who manage their own random
//! state can too. This is where a call is validated and handed to a backend, by matching
//! on where its tensor lives (the CPU backend, or the CUDA backend: a stub whose buffers
//! cannot exist when the `cuda` feature is off, so the match arms need no `cfg`).
//!
//! Every layer of the family saves the same kind of [`DropoutState`]: which decisions were
//! kept (packed bits, or how to regenerate them), how elements map to decisions
//! (elementwise or one per group), and the factor kept gradients are scaled by. So one
//! backward, [`dropout_backward`], serves them all.
//!
//! | file | what |
//! |---|---|
//! | `dispatch.rs` | the operand of a forward, validation, the match on where a tensor lives |
//! | `state.rs` | [`DropoutState`]: what a forward saves for its backward |
//! | `dropout.rs` | [`dropout`], the elementwise forward shared with alpha dropout, [`dropout_backward`] |
//! | `alpha.rs` | [`alpha_dropout`] |
//! | `grouped.rs` | [`grouped_dropout`] (channel dropout, DropPath, feature alpha dropout) |
//! | `residual.rs` | [`bias_dropout_residual`] and its backward |
//! | `norm.rs` | [`dropout_add_norm`] (fused dropout + add + LayerNorm / RMSNorm) and its backward |
//! | `norm_into.rs` | the fused norm's `_into` forms (preallocated outputs; CUDA-graph safe) |

mod alpha;
mod dispatch;
mod dropout;
mod grouped;
mod norm;
mod norm_into;
mod residual;
mod state;

pub use crate::plan::{GroupedKind, Grouping, MaskMode, Norm, StreamPos};
pub use alpha::{alpha_dropout, alpha_dropout_into, alpha_dropout_shard};
pub(crate) use dispatch::{check_captured, check_graph_tensor};
pub(crate) use dropout::{check_output, check_shard, elementwise_train, shard_train};
pub use dropout::{dropout, dropout_backward, dropout_backward_into, dropout_into, dropout_shard};
pub use grouped::{grouped_dropout, grouped_dropout_into, GroupedConfig};
pub use norm::{
    dropout_add_norm, dropout_add_norm_backward, dropout_add_norm_shard, AddNormConfig,
    AddNormGrads, AddNormInputs, AddNormOutput, AddNormSaved, AddNormState,
};
pub(crate) use norm_into::dropout_add_norm_into_placed;
pub use norm_into::{dropout_add_norm_backward_into, dropout_add_norm_into};
pub use residual::{
    bias_dropout_residual, bias_dropout_residual_backward, bias_dropout_residual_backward_into,
    bias_dropout_residual_backward_owned, bias_dropout_residual_into, bias_dropout_residual_shard,
    BiasDropoutResidualGrads, BiasDropoutResidualState, ResidualInputs,
};
pub use state::DropoutState;

/// Layers (and the candle ops) check decision indices before they take an offset.
pub(crate) use dispatch::check_index_range;
pub(crate) use dispatch::{new_output, Operand, TrainResult};
pub(crate) use grouped::{grouped_shard_train, grouped_train};
pub(crate) use norm::{check_add_norm, check_eps, dropout_add_norm_placed, place_norm_shard};
/// The candle form checks shapes with the same function.
#[cfg(feature = "candle")]
pub(crate) use norm::{check_add_norm_shapes, AddNormShapes};
#[cfg(feature = "candle")]
pub(crate) use residual::check_fused_shapes;
pub(crate) use residual::{
    bias_dropout_residual_run, bias_dropout_residual_run_into, check_fused, FusedRun,
};
