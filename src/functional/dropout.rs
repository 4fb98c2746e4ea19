//! Elementwise dropout (SPEC section 3), the elementwise training forward that alpha
//! dropout shares, and the backward of the whole family.

use super::dispatch::{
    check_index_range, on_backend, run_forward, train_or_identity, ForwardOp, OnBackend, Operand,
    Placed, TrainResult,
};
use super::state::{DropoutState, Saved};
use crate::backend::{Forwarded, SavedMask};
use crate::element::{to_compute_f64, Element};
use crate::error::Result;
use crate::mask::Probability;
use crate::plan::{Decisions, Kept, MaskMode, StreamPos};
use crate::tensor::Tensor;

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
        let saved = saved_mask::<B>(&state.saved);
        let dx = B::dropout_backward(B::buffer(grad), saved, &state.prob, &state.decisions, scale)?;
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
