//! Alpha dropout (SPEC section 6): the elementwise forward of [`super::dropout`] with the
//! affine map of self-normalising networks; its backward is [`super::dropout_backward`].

use super::dispatch::{train_into, train_or_identity, CallArgs, Operand, TrainResult};
use super::dropout::{elementwise_shard, elementwise_train};
use super::state::DropoutState;
use crate::element::Element;
use crate::error::Result;
use crate::mask::Probability;
use crate::plan::{Kept, MaskMode, StreamPos};
use crate::shard::ShardLayout;
use crate::tensor::Tensor;

/// AlphaDropout (SPEC section 6): keeps the mean and variance of a SELU network's
/// activations. Kept: a*x + b; dropped: a*A + b. Eval mode is the identity.
pub fn alpha_dropout<T: Element>(
    x: &Tensor<T>,
    p: f64,
    training: bool,
    pos: StreamPos,
    mode: MaskMode,
) -> Result<(Tensor<T>, DropoutState)> {
    train_or_identity(x, p, training, pos, mode, alpha_train)
}

/// [`alpha_dropout`] writing into preallocated buffers, as [`super::dropout_into`].
pub fn alpha_dropout_into<T: Element>(
    x: &Tensor<T>,
    out: &mut Tensor<T>,
    state: &mut DropoutState,
    p: f64,
    training: bool,
    pos: StreamPos,
    mode: MaskMode,
) -> Result<()> {
    let call = CallArgs {
        p,
        training,
        pos,
        mode,
    };
    train_into(x, (out, state), call, alpha_train)
}

pub(crate) fn alpha_train<T: Element>(
    x: Operand<'_, T>,
    prob: &Probability,
    pos: StreamPos,
    mode: MaskMode,
) -> TrainResult<T> {
    elementwise_train(x, prob, pos, mode, Kept::alpha(prob))
}

/// [`alpha_dropout`] of one shard of a larger tensor, placed by `layout`: each element
/// decides by its index in the whole tensor (as [`super::dropout_shard`]).
pub fn alpha_dropout_shard<T: Element>(
    x: &Tensor<T>,
    p: f64,
    training: bool,
    pos: StreamPos,
    layout: &ShardLayout,
    mode: MaskMode,
) -> Result<(Tensor<T>, DropoutState)> {
    elementwise_shard(x, p, training, pos, layout, mode, Kept::alpha)
}
