//! Elementwise dropout (SPEC section 3), the elementwise training forward that alpha
//! dropout shares, and the backward of the whole family.

use super::dispatch::{
    check_index_range, on_backend, run_forward, train_or_identity, ForwardOp, OnBackend, Operand,
    Placed, TrainResult,
};
use super::state::{DropoutState, Saved};
use crate::backend::{Forwarded, SavedMask};
use crate::element::{to_compute_f64, Element};
use crate::error::{Error, Result};
use crate::mask::Probability;
use crate::plan::{Decisions, Kept, MaskMode, StreamPos};
use crate::shard::ShardLayout;
use crate::tensor::Tensor;
use std::sync::Arc;

/// Elementwise dropout of `x` with drop probability `p` (SPEC section 3).
///
/// In training, drops each element with probability p and scales the rest by 1/q, using
/// the random words of `pos`; the returned state feeds [`dropout_backward`]. With
/// `training = false` the output is `x` unchanged and nothing random is used.
pub fn dropout<T: Element>(
    x: &Tensor<T>,
    p: f64,
    training: bool,
    pos: StreamPos,
    mode: MaskMode,
) -> Result<(Tensor<T>, DropoutState)> {
    train_or_identity(x, p, training, pos, mode, dropout_train)
}

/// Training-mode elementwise dropout; the output is new (`Some`) or written over the input.
pub(crate) fn dropout_train<T: Element>(
    x: Operand<'_, T>,
    prob: &Probability,
    pos: StreamPos,
    mode: MaskMode,
) -> TrainResult<T> {
    elementwise_train(x, prob, pos, mode, Kept::dropout(prob))
}

/// One elementwise training forward: decision i is `pos.index_base + i`.
struct Elementwise<'a> {
    prob: &'a Probability,
    pos: StreamPos,
    mode: MaskMode,
    kept: Kept<f64>,
}

impl<T: Element> ForwardOp<T> for Elementwise<'_> {
    fn run<B: Placed>(self, x: B::Operand<'_, T>) -> Result<Forwarded<B, T>> {
        let kept = self.kept.for_element::<T>();
        B::dropout_forward(x, self.pos, self.prob, kept, self.mode)
    }
}

/// A training forward with elementwise decisions (Dropout, AlphaDropout): kept elements
/// become `kept` of themselves, and kept gradients are scaled by its gradient factor.
pub(crate) fn elementwise_train<T: Element>(
    x: Operand<'_, T>,
    prob: &Probability,
    pos: StreamPos,
    mode: MaskMode,
    kept: Kept<f64>,
) -> TrainResult<T> {
    check_index_range(pos.index_base, x.tensor().len())?;
    let op = Elementwise {
        prob,
        pos,
        mode,
        kept,
    };
    let (out, mask) = run_forward(x, op)?;
    let grad_scale = kept.grad_factor();
    let state = DropoutState::trained(&out, mask, pos, prob, Decisions::Elementwise, grad_scale);
    Ok((out.output, state))
}

/// [`dropout`] of one shard of a larger tensor: `x` is the part of the whole tensor that
/// `layout` places (its shape is `layout.shape()`), and each element decides by its
/// row-major index in the whole tensor, so the shards' outputs put together are the
/// unsharded output, bit for bit, whatever the sharding. `pos.index_base` must be 0 (the
/// layout places the shard). A shard that is one contiguous range takes the same path as
/// `pos.with_index_base(start)`; any other reads its mask through the layout.
pub fn dropout_shard<T: Element>(
    x: &Tensor<T>,
    p: f64,
    training: bool,
    pos: StreamPos,
    layout: &ShardLayout,
    mode: MaskMode,
) -> Result<(Tensor<T>, DropoutState)> {
    elementwise_shard(x, p, training, pos, layout, mode, Kept::dropout)
}

/// A functional elementwise call of a shard (dropout, alpha dropout): `kept` of
/// the probability `p`.
pub(crate) fn elementwise_shard<T: Element>(
    x: &Tensor<T>,
    p: f64,
    training: bool,
    pos: StreamPos,
    layout: &ShardLayout,
    mode: MaskMode,
    kept: fn(&Probability) -> Kept<f64>,
) -> Result<(Tensor<T>, DropoutState)> {
    check_shard(x, pos, layout)?;
    train_or_identity(x, p, training, pos, mode, |x, prob, pos, mode| {
        shard_train(x, prob, pos, mode, kept(prob), layout)
    })
}

/// What a shard's call checks before it computes (and a layer before it takes an offset):
/// the tensor is the layout's shard, and the stream position adds no index base of its own.
pub(crate) fn check_shard<T: Element>(
    x: &Tensor<T>,
    pos: StreamPos,
    layout: &ShardLayout,
) -> Result<()> {
    layout.expect_shape(x.shape(), "dropout of a shard")?;
    if pos.index_base != 0 {
        return Err(Error::InvalidArgument {
            op: "dropout of a shard",
            reason: format!(
                "the layout places the shard, so the stream position's index_base must be 0 \
                 (got {})",
                pos.index_base
            ),
        });
    }
    Ok(())
}

/// An elementwise training forward of a shard placed by `layout` (already checked by
/// [`check_shard`]).
pub(crate) fn shard_train<T: Element>(
    x: Operand<'_, T>,
    prob: &Probability,
    pos: StreamPos,
    mode: MaskMode,
    kept: Kept<f64>,
    layout: &ShardLayout,
) -> TrainResult<T> {
    if let Some(start) = layout.contiguous_start() {
        return elementwise_train(x, prob, pos.with_index_base(start), mode, kept);
    }
    let op = ShardForward {
        prob,
        pos,
        kept,
        layout,
    };
    let (out, mask) = run_forward(x, op)?;
    let mask = mask.filter(|_| mode == MaskMode::Bits);
    let grad_scale = kept.grad_factor();
    let mut state =
        DropoutState::trained(&out, mask, pos, prob, Decisions::Elementwise, grad_scale);
    state.shard = Some(Arc::new(layout.clone()));
    Ok((out.output, state))
}

/// The forward of a shard that is not one range: its keep bits through the layout, then
/// the kept map through them (the bits are the saved mask of the bits form).
struct ShardForward<'a> {
    prob: &'a Probability,
    pos: StreamPos,
    kept: Kept<f64>,
    layout: &'a ShardLayout,
}

impl<T: Element> ForwardOp<T> for ShardForward<'_> {
    fn run<B: Placed>(self, x: B::Operand<'_, T>) -> Result<Forwarded<B, T>> {
        let bits = B::shard_keep_bits(&x, self.pos, self.prob, self.layout)?;
        let y = B::apply_bits(x, &bits, self.kept.for_element::<T>())?;
        Ok((y, Some(bits)))
    }
}

/// The gradient of any dropout-family forward: `dx = kept ? dy * g : +0` through the saved
/// mask, where g is the layer's gradient factor (1/q for dropout, a for alpha dropout).
pub fn dropout_backward<T: Element>(grad: &Tensor<T>, state: &DropoutState) -> Result<Tensor<T>> {
    const OP: &str = "dropout backward";
    state.check_grad(grad, OP)?;
    if let Saved::Identity = state.saved {
        return grad.try_clone();
    }
    on_backend(grad, Backward { grad, state })
}

/// [`dropout_backward`] once its state is checked and not the identity.
struct Backward<'a, T: Element> {
    grad: &'a Tensor<T>,
    state: &'a DropoutState,
}

impl<T: Element> OnBackend for Backward<'_, T> {
    type Output = Tensor<T>;

    fn run<B: Placed>(self) -> Result<Tensor<T>> {
        let Backward { grad, state } = self;
        let scale = to_compute_f64::<T>(state.grad_scale);
        let g = B::buffer(grad);
        let regenerated;
        let saved = match (&state.saved, &state.shard) {
            // A shard's decisions come through its layout.
            (Saved::Regenerate(pos), Some(layout)) => {
                regenerated = B::shard_keep_bits(&B::input(g), *pos, &state.prob, layout)?;
                SavedMask::Bits(&regenerated)
            }
            (saved, _) => saved_mask::<B>(saved),
        };
        let dx = B::dropout_backward(g, saved, &state.prob, &state.decisions, scale)?;
        Ok(Tensor::from_storage(B::storage(dx), grad.shape().to_vec()))
    }
}

/// The decisions of a trained state as backend `B` reads them.
pub(crate) fn saved_mask<B: Placed>(saved: &Saved) -> SavedMask<'_, B::Mask> {
    match saved {
        Saved::Bits(m) => SavedMask::Bits(B::saved_mask(m)),
        Saved::Regenerate(pos) => SavedMask::Regenerate(*pos),
        Saved::Identity => unreachable!("an eval-mode state has no decisions to read"),
    }
}
