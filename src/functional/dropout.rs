//! Elementwise dropout (SPEC section 3), the elementwise training forward that alpha
//! dropout shares, and the backward of the whole family.

use super::dispatch::{
    check_index_range, new_output, on_backend, run_forward, train_into, train_or_identity,
    CallArgs, ForwardOp, OnBackend, Operand, Placed, TrainResult,
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

/// [`dropout`] writing into preallocated buffers: the output into `out` (the shape and
/// device of `x`), the saved state into `state`, whose mask buffer is reused when it has
/// the right size (pass the state of an earlier call of this shape; any state works, a
/// new mask is then allocated). On CUDA, with a reusable state or the regenerate form,
/// it allocates nothing and needs no host round trip, so it may run while the stream
/// captures a CUDA graph, with a position from [`crate::Generator::next_pos`].
pub fn dropout_into<T: Element>(
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
    train_into(x, (out, state), call, dropout_train)
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
    let dx = on_backend(
        grad,
        Backward {
            grad,
            state,
            out: None,
        },
    )?;
    Ok(new_output(dx))
}

/// [`dropout_backward`] writing the gradient into `dx`, a preallocated tensor of the
/// gradient's shape, dtype and device. On CUDA it allocates nothing and needs no host
/// round trip, so it may run while the stream captures a CUDA graph (a regenerate-form
/// state of a shard of any layout is the exception: it draws its mask into a new buffer).
pub fn dropout_backward_into<T: Element>(
    grad: &Tensor<T>,
    state: &DropoutState,
    dx: &mut Tensor<T>,
) -> Result<()> {
    const OP: &str = "dropout backward into";
    state.check_grad(grad, OP)?;
    check_output(grad, dx, OP)?;
    if let Saved::Identity = state.saved {
        return dx.copy_from(grad);
    }
    on_backend(
        grad,
        Backward {
            grad,
            state,
            out: Some(dx),
        },
    )
    .map(drop)
}

/// [`dropout_backward`] once its state is checked and not the identity: into `out`, or a
/// new tensor (returned).
struct Backward<'a, 'o, T: Element> {
    grad: &'a Tensor<T>,
    state: &'a DropoutState,
    out: Option<&'o mut Tensor<T>>,
}

impl<T: Element> OnBackend for Backward<'_, '_, T> {
    type Output = Option<Tensor<T>>;

    fn run<B: Placed>(self) -> Result<Option<Tensor<T>>> {
        let Backward { grad, state, out } = self;
        let scale = to_compute_f64::<T>(state.grad_scale);
        let g = B::buffer(grad);
        let regenerated;
        let mut scratch = state.scratch();
        let saved = match (
            &state.saved,
            &state.shard,
            &state.decisions,
            scratch.as_mut(),
        ) {
            // A shard's decisions come through its layout.
            (Saved::Regenerate(pos), Some(layout), _, _) => {
                regenerated = B::shard_keep_bits(&B::input(g), *pos, &state.prob, layout)?;
                SavedMask::Bits(&regenerated)
            }
            // Grouped decisions are redrawn into the forward's scratch mask: nothing is
            // allocated (the `_into` form inside a CUDA graph capture).
            (Saved::Regenerate(pos), None, Decisions::Grouped(layout), Some(mask)) => {
                let mask = B::saved_mask_mut(mask);
                B::grouped_keep_bits_into(&B::input(g), mask, *pos, &state.prob, layout)?;
                SavedMask::Bits(&*mask)
            }
            (saved, _, _, _) => saved_mask::<B>(saved),
        };
        let dy = match out {
            Some(out) => B::operand(Operand::Into {
                x: grad,
                out,
                mask: None,
            }),
            None => B::input(g),
        };
        let dx = B::dropout_backward(dy, saved, &state.prob, &state.decisions, scale)?;
        Ok(dx.map(|dx| Tensor::from_storage(B::storage(dx), grad.shape().to_vec())))
    }
}

/// The checks of a preallocated output: the input's shape and device.
pub(crate) fn check_output<T: Element>(
    x: &Tensor<T>,
    out: &Tensor<T>,
    op: &'static str,
) -> Result<()> {
    out.expect_shape(x.shape(), op)?;
    x.device().expect_same(&out.device(), op)
}

/// The decisions of a trained state as backend `B` reads them.
pub(crate) fn saved_mask<B: Placed>(saved: &Saved) -> SavedMask<'_, B::Mask> {
    match saved {
        Saved::Bits(m) => SavedMask::Bits(B::saved_mask(m)),
        Saved::Regenerate(pos) => SavedMask::Regenerate(*pos),
        Saved::Identity => unreachable!("an eval-mode state has no decisions to read"),
    }
}
