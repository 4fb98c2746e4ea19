//! Elementwise dropout (SPEC section 3), the elementwise training forward that alpha
//! dropout shares, and the backward of the whole family.

use super::dispatch::{
    check_index_range, mask_elsewhere, run_forward, train_or_identity, ForwardOp, Operand,
    TrainResult,
};
use super::state::DropoutState;
use super::state::{regenerate_bits, MaskBuffer, Saved};
use crate::backend::{DeviceBuffers, DropoutKernels, Forwarded, SavedMask};
use crate::cpu;
use crate::cuda::Cuda;
use crate::element::{to_compute_f64, Element};
use crate::error::Result;
use crate::mask::Probability;
use crate::plan::{Decisions, Kept, MaskMode, StreamPos};
use crate::tensor::{Storage, Tensor};

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
    fn cpu(self, src: cpu::Source<'_, T>, out: &mut [T]) -> Result<Option<Vec<u32>>> {
        let mut bits = match self.mode {
            MaskMode::Bits => Some(cpu::alloc_mask(out.len())?),
            MaskMode::Regenerate => None,
        };
        let kept = self.kept.for_element::<T>();
        cpu::dropout::forward_with(src, out, bits.as_deref_mut(), self.pos, self.prob, kept);
        Ok(bits)
    }

    fn cuda(self, x: <Cuda as DeviceBuffers>::Operand<'_, T>) -> Result<Forwarded<Cuda, T>> {
        let kept = self.kept.for_element::<T>();
        Cuda::dropout_forward(x, self.pos, self.prob, kept, self.mode)
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
    let scale = to_compute_f64::<T>(state.grad_scale);
    let n = grad.len();
    let prob = &state.prob;
    let storage = match (&grad.storage, &state.saved) {
        (_, Saved::Identity) => return grad.try_clone(),
        (Storage::Cpu(g), saved) => {
            let mut dx = cpu::alloc_output::<T>(n)?;
            let src = cpu::Source::Slice(g);
            match (saved, &state.decisions) {
                (Saved::Regenerate(pos), Decisions::Elementwise) => {
                    cpu::dropout::forward(src, &mut dx, None, *pos, prob, scale)
                }
                (Saved::Bits(MaskBuffer::Cpu(bits)), Decisions::Elementwise) => {
                    cpu::dropout::backward_bits(src, &mut dx, bits, scale)
                }
                (Saved::Bits(MaskBuffer::Cpu(bits)), Decisions::Grouped(layout)) => {
                    cpu::grouped::grouped_apply(src, &mut dx, bits, layout, Kept::Scale(scale))
                }
                (Saved::Regenerate(pos), Decisions::Grouped(layout)) => {
                    let bits = regenerate_bits(pos, prob, state.decisions, n)?;
                    cpu::grouped::grouped_apply(src, &mut dx, &bits, layout, Kept::Scale(scale))
                }
                _ => mask_elsewhere(),
            }
            Storage::Cpu(dx)
        }
        (Storage::Cuda(g), saved) => {
            let mask = match saved {
                Saved::Bits(MaskBuffer::Cuda(bits)) => SavedMask::Bits(bits),
                Saved::Regenerate(pos) => SavedMask::Regenerate(*pos),
                _ => mask_elsewhere(),
            };
            Storage::Cuda(Cuda::dropout_backward(
                g,
                mask,
                prob,
                &state.decisions,
                scale,
            )?)
        }
    };
    Ok(Tensor::from_storage(storage, grad.shape().to_vec()))
}
