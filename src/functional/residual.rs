//! The fused `out = residual + dropout(x + bias)` (SPEC section 6) and its backward, which
//! also returns the bias and residual gradients.

use super::dispatch::{
    check_index_range, new_output, on_backend, run_forward, ForwardOp, OnBackend, Operand, Placed,
};
use super::dropout::{check_shard, saved_mask};
use super::state::{DropoutState, Saved};
use crate::backend::{Forwarded, SavedMask};
use crate::element::{to_compute_f64, Element};
use crate::error::{Error, Result};
use crate::mask::Probability;
use crate::plan::{Decisions, MaskMode, StreamPos};
use crate::shard::ShardLayout;
use crate::tensor::Tensor;
use std::sync::{Arc, Mutex};

/// What the fused forward saves: the dropout state of `x + bias` and the bias length.
#[derive(Debug)]
pub struct BiasDropoutResidualState {
    pub(crate) dropout: DropoutState,
    pub(crate) hidden: usize,
    /// The f64 block partial sums of [`bias_dropout_residual_backward_into`]'s column sums,
    /// allocated by its first call and reused (kept across `_into` forwards), so later
    /// calls allocate nothing: a CUDA graph can capture them.
    pub(crate) partial: Mutex<Option<Tensor<f64>>>,
}

impl BiasDropoutResidualState {
    fn partial_mut(&mut self) -> &mut Option<Tensor<f64>> {
        self.partial
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The dropout part of the state (mask, probability, saved form).
    pub fn dropout_state(&self) -> &DropoutState {
        &self.dropout
    }
}

/// The three gradients of the fused layer.
#[derive(Debug)]
pub struct BiasDropoutResidualGrads<T: Element> {
    /// d out / d x: the upstream gradient through the mask and scale.
    pub x: Tensor<T>,
    /// d out / d residual: the upstream gradient itself (a copy of it from
    /// [`bias_dropout_residual_backward`], the tensor passed in, moved, from
    /// [`bias_dropout_residual_backward_owned`]).
    pub residual: Tensor<T>,
    /// d out / d bias: the column sums of `x`'s gradient over all rows, accumulated in f64
    /// in fixed blocks of rows (deterministic, the same bits on CPU and CUDA; outside the
    /// bit-exact contract of the spec, see docs/spec.md).
    pub bias: Tensor<T>,
}

const OP: &str = "bias_dropout_residual";

/// Everything a fused call checks before it computes (and a layer before it takes an
/// offset): shapes, devices and the decision range. Returns the hidden size H.
pub(crate) fn check_fused<T: Element>(
    x: &Tensor<T>,
    bias: &Tensor<T>,
    residual: &Tensor<T>,
    index_base: u64,
) -> Result<usize> {
    x.device().expect_same(&bias.device(), OP)?;
    x.device().expect_same(&residual.device(), OP)?;
    check_fused_shapes(x.shape(), bias.shape(), residual.shape(), index_base)
}

/// The fused layer's shape checks, shared with the candle adapter (which checks dtypes
/// and devices on candle's types first): residual shaped like x, x of rank 1 or more, bias
/// of shape (H), and the decision range. Returns H.
pub(crate) fn check_fused_shapes(
    x: &[usize],
    bias: &[usize],
    residual: &[usize],
    index_base: u64,
) -> Result<usize> {
    if residual != x {
        return Err(Error::ShapeMismatch {
            op: OP,
            expected: x.to_vec(),
            got: residual.to_vec(),
        });
    }
    let hidden = *x.last().ok_or_else(|| Error::InvalidShape {
        op: OP,
        shape: x.to_vec(),
        reason: "x must have at least one dimension (the hidden size H)".into(),
    })?;
    if bias != [hidden] {
        return Err(Error::ShapeMismatch {
            op: OP,
            expected: vec![hidden],
            got: bias.to_vec(),
        });
    }
    check_index_range(index_base, crate::tensor::element_count(x)?)?;
    Ok(hidden)
}

/// The tensors of the fused bias + dropout + residual, `residual + dropout(x + bias)`.
#[derive(Debug, Clone, Copy)]
pub struct ResidualInputs<'a, T: Element> {
    /// The input, (..., H).
    pub x: &'a Tensor<T>,
    /// Added to every row of x before the dropout, (H).
    pub bias: &'a Tensor<T>,
    /// The residual stream, x's shape.
    pub residual: &'a Tensor<T>,
}

/// `out = residual + dropout(x + bias)` in one pass (SPEC section 6): x and residual of
/// shape (..., H), bias of shape (H). In eval mode the dropout is the identity (the sum is
/// still computed with the same roundings).
pub fn bias_dropout_residual<T: Element>(
    inputs: ResidualInputs<'_, T>,
    p: f64,
    training: bool,
    pos: StreamPos,
    mode: MaskMode,
) -> Result<(Tensor<T>, BiasDropoutResidualState)> {
    let prob = Probability::new(p)?;
    let run = FusedRun {
        prob: &prob,
        training,
        pos,
        mode,
        shard: None,
    };
    let ResidualInputs { x, bias, residual } = inputs;
    let (out, state) = bias_dropout_residual_run(x, bias, Operand::Input(residual), run)?;
    Ok((new_output(out), state))
}

/// [`bias_dropout_residual`] of one shard of a larger tensor, placed by `layout` (any axes
/// split, as [`super::dropout_shard`]): each element decides by its row-major index in the
/// whole tensor, so the shards' outputs put together are the unsharded output, bit for
/// bit. `bias` is the shard's slice of the whole bias (its length is the shard's last
/// axis), and `pos.index_base` must be 0. The gradients of x and residual are the
/// unsharded ones' slices too; the bias gradient is the column sum over the shard's own
/// rows (the unsharded one's slice when the shard holds every row, as a split of the
/// hidden axis does; with rows split, the ranks add theirs up).
pub fn bias_dropout_residual_shard<T: Element>(
    inputs: ResidualInputs<'_, T>,
    p: f64,
    training: bool,
    pos: StreamPos,
    layout: &ShardLayout,
    mode: MaskMode,
) -> Result<(Tensor<T>, BiasDropoutResidualState)> {
    let prob = Probability::new(p)?;
    let run = FusedRun {
        prob: &prob,
        training,
        pos,
        mode,
        shard: Some(layout),
    };
    let ResidualInputs { x, bias, residual } = inputs;
    let (out, state) = bias_dropout_residual_run(x, bias, Operand::Input(residual), run)?;
    Ok((new_output(out), state))
}

/// The fused forward of a shard that is not one range starting at a row (or whose first
/// element is not the bias's first column): its keep bits through the layout, then the
/// fused arithmetic through them (the bits are the saved mask of the bits form).
struct FusedShard<'a, T: Element> {
    x: &'a Tensor<T>,
    bias: &'a Tensor<T>,
    prob: &'a Probability,
    pos: StreamPos,
    layout: &'a ShardLayout,
}

impl<T: Element> ForwardOp<T> for FusedShard<'_, T> {
    fn run<B: Placed>(self, residual: B::Operand<'_, T>) -> Result<Forwarded<B, T>> {
        let (x, bias) = (B::buffer(self.x), B::buffer(self.bias));
        let scale = to_compute_f64::<T>(self.prob.scale_f64());
        let bits = B::shard_keep_bits(&residual, self.pos, self.prob, self.layout)?;
        let out = B::residual_forward_bits(x, bias, residual, &bits, scale)?;
        Ok((out, Some(bits)))
    }
}

/// One fused training (or eval) forward over x and bias, reading the residual operand.
struct Fused<'a, T: Element> {
    x: &'a Tensor<T>,
    bias: &'a Tensor<T>,
    prob: &'a Probability,
    pos: StreamPos,
    mode: MaskMode,
}

impl<T: Element> ForwardOp<T> for Fused<'_, T> {
    fn run<B: Placed>(self, residual: B::Operand<'_, T>) -> Result<Forwarded<B, T>> {
        // check_fused put x and bias on the residual's device.
        let (x, bias) = (B::buffer(self.x), B::buffer(self.bias));
        let scale = to_compute_f64::<T>(self.prob.scale_f64());
        let (pos, prob) = (self.pos, self.prob);
        B::residual_forward(x, bias, residual, pos, prob, scale, self.mode)
    }
}

/// The fused forward; with `Operand::InPlace` the output is written over the residual. A
/// `run.shard` places the tensors in a larger one (checked here).
pub(crate) fn bias_dropout_residual_run<T: Element>(
    x: &Tensor<T>,
    bias: &Tensor<T>,
    residual: Operand<'_, T>,
    run: FusedRun<'_>,
) -> Result<(Option<Tensor<T>>, BiasDropoutResidualState)> {
    let FusedRun {
        prob,
        training,
        pos,
        mode,
        shard,
    } = run;
    let hidden = check_fused(x, bias, residual.tensor(), pos.index_base)?;
    if let Some(layout) = shard {
        check_shard(x, pos, layout)?;
    }
    // Eval: the same arithmetic with nothing dropped and s = 1 (z * 1 = z exactly).
    let eval = Probability::new(0.0)?;
    let applied = if training { prob } else { &eval };
    let mode = if training { mode } else { MaskMode::Regenerate };
    // A shard that is one range starting at a bias column 0 draws its decisions in the
    // fused kernel at its first global index (its bias column, that index mod H, is then
    // the local one); any other reads its bits through its layout.
    let (pos, through_layout) = match shard.filter(|_| training) {
        None => (pos, None),
        Some(layout) => match layout.contiguous_start() {
            Some(start) if hidden == 0 || start % hidden as u64 == 0 => {
                (pos.with_index_base(start), None)
            }
            _ => (pos, Some(layout)),
        },
    };
    let (out, mask) = match through_layout {
        None => {
            let op = Fused {
                x,
                bias,
                prob: applied,
                pos,
                mode,
            };
            run_forward(residual, op)?
        }
        Some(layout) => {
            let op = FusedShard {
                x,
                bias,
                prob: applied,
                pos,
                layout,
            };
            let (out, mask) = run_forward(residual, op)?;
            (out, mask.filter(|_| mode == MaskMode::Bits))
        }
    };
    let grad_scale = applied.scale_f64();
    let mut dropout =
        DropoutState::trained(&out, mask, pos, applied, Decisions::Elementwise, grad_scale);
    dropout.shard = through_layout.map(|layout| Arc::new(layout.clone()));
    if !training {
        dropout.saved = Saved::Identity;
    }
    let partial = Mutex::new(None);
    Ok((
        out.output,
        BiasDropoutResidualState {
            dropout,
            hidden,
            partial,
        },
    ))
}

/// [`bias_dropout_residual`] writing into preallocated buffers: the output into `out`
/// (the residual's shape and device), the state into `state`, whose mask and partial-sum
/// buffers are reused (pass the state of an earlier call of this shape). On CUDA it then
/// allocates nothing and needs no host round trip, so it may run while the stream captures
/// a CUDA graph, with a position from [`crate::Generator::next_pos`].
pub fn bias_dropout_residual_into<T: Element>(
    inputs: ResidualInputs<'_, T>,
    out: &mut Tensor<T>,
    state: &mut BiasDropoutResidualState,
    p: f64,
    training: bool,
    pos: StreamPos,
    mode: MaskMode,
) -> Result<()> {
    let prob = Probability::new(p)?;
    let run = FusedRun {
        prob: &prob,
        training,
        pos,
        mode,
        shard: None,
    };
    let ResidualInputs { x, bias, residual } = inputs;
    bias_dropout_residual_run_into(x, bias, residual, out, state, run)
}

/// How a fused forward runs: the probability, the mode, its position and the shard's
/// place, if any.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FusedRun<'a> {
    pub prob: &'a Probability,
    pub training: bool,
    pub pos: StreamPos,
    pub mode: MaskMode,
    pub shard: Option<&'a ShardLayout>,
}

/// The `_into` forward of the functional call and of the layer (validated here).
pub(crate) fn bias_dropout_residual_run_into<T: Element>(
    x: &Tensor<T>,
    bias: &Tensor<T>,
    residual: &Tensor<T>,
    out: &mut Tensor<T>,
    state: &mut BiasDropoutResidualState,
    run: FusedRun<'_>,
) -> Result<()> {
    let FusedRun {
        training,
        pos,
        shard,
        ..
    } = run;
    check_fused(x, bias, residual, pos.index_base)?;
    if let Some(layout) = shard {
        check_shard(x, pos, layout)?;
    }
    super::dropout::check_output(residual, out, OP)?;
    super::dispatch::check_captured(x, pos)?;
    if training && !pos.is_captured() {
        // Refused before the state's buffers are taken (dropping them would free device
        // memory inside the capture).
        x.device()
            .refuse_capture("a fused forward with a position by value")?;
    }
    let mask = state.dropout.take_mask();
    let partial = state.partial_mut().take();
    let operand = Operand::Into {
        x: residual,
        out,
        mask,
    };
    let (_, mut new) = bias_dropout_residual_run(x, bias, operand, run)?;
    *new.partial_mut() = partial;
    *state = new;
    Ok(())
}

/// Gradients of [`bias_dropout_residual`] for the upstream gradient `grad`. The residual
/// gradient is `grad` itself, so this copies it (one read and one write of the whole
/// tensor); [`bias_dropout_residual_backward_owned`] hands `grad` over instead.
pub fn bias_dropout_residual_backward<T: Element>(
    grad: &Tensor<T>,
    state: &BiasDropoutResidualState,
) -> Result<BiasDropoutResidualGrads<T>> {
    let (x, bias) = input_gradients(grad, state)?;
    Ok(BiasDropoutResidualGrads {
        residual: grad.try_clone()?,
        bias,
        x,
    })
}

/// [`bias_dropout_residual_backward`] taking the upstream gradient by value: it becomes
/// the residual gradient as it is, with no copy (the same values, the same buffer).
pub fn bias_dropout_residual_backward_owned<T: Element>(
    grad: Tensor<T>,
    state: &BiasDropoutResidualState,
) -> Result<BiasDropoutResidualGrads<T>> {
    let (x, bias) = input_gradients(&grad, state)?;
    Ok(BiasDropoutResidualGrads {
        residual: grad,
        bias,
        x,
    })
}

/// The gradients of x and of the bias. On CUDA one kernel writes dx and the bias
/// gradient's block sums together (dx is not read back); on the CPU dx through the
/// dropout backward, then its column sums. Both give the same bits.
/// [`bias_dropout_residual_backward`] into preallocated gradients (`grads.x` and
/// `grads.residual` of the gradient's shape, `grads.bias` of (H), all on its device); the
/// residual gradient is a device copy of `grad`. The column sums' partial buffer is the
/// state's: allocated by the first call, reused after, so on CUDA a call after the first
/// allocates nothing and may run while the stream captures a CUDA graph.
pub fn bias_dropout_residual_backward_into<T: Element>(
    grad: &Tensor<T>,
    state: &BiasDropoutResidualState,
    grads: &mut BiasDropoutResidualGrads<T>,
) -> Result<()> {
    const OP: &str = "bias_dropout_residual backward into";
    state.dropout.check_grad(grad, OP)?;
    super::dropout::check_output(grad, &grads.x, OP)?;
    super::dropout::check_output(grad, &grads.residual, OP)?;
    grads.bias.expect_shape(&[state.hidden], OP)?;
    grad.device().expect_same(&grads.bias.device(), OP)?;
    let h = state.hidden;
    let blocks = grad
        .len()
        .checked_div(h)
        .map_or(0, |rows| rows.div_ceil(crate::plan::COLUMN_SUM_BLOCK_ROWS));
    let mut partial = state
        .partial
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if partial
        .as_ref()
        .is_none_or(|p| p.len() < blocks * h || !p.device().same_as(&grad.device()))
    {
        *partial = Some(Tensor::zeros(&[blocks * h], &grad.device())?);
    }
    let partial = partial
        .as_mut()
        .unwrap_or_else(|| unreachable!("the partial buffer was made above"));
    let BiasDropoutResidualGrads { x, residual, bias } = grads;
    on_backend(
        grad,
        GradientsInto {
            grad,
            state,
            dx: x,
            db: bias,
            partial,
        },
    )?;
    residual.copy_from(grad)
}

/// [`bias_dropout_residual_backward_into`] once checked.
struct GradientsInto<'a, T: Element> {
    grad: &'a Tensor<T>,
    state: &'a BiasDropoutResidualState,
    dx: &'a mut Tensor<T>,
    db: &'a mut Tensor<T>,
    partial: &'a mut Tensor<f64>,
}

impl<T: Element> OnBackend for GradientsInto<'_, T> {
    type Output = ();

    fn run<B: Placed>(self) -> Result<()> {
        let dropout = &self.state.dropout;
        let g = B::buffer(self.grad);
        let redrawn = redrawn_shard_bits::<B, T>(g, dropout)?;
        let saved = match (&dropout.saved, &redrawn) {
            (Saved::Identity, _) => None,
            (_, Some(bits)) => Some(SavedMask::Bits(bits)),
            (saved, None) => Some(saved_mask::<B>(saved)),
        };
        let grads = crate::backend::ResidualGradsInto::<B, T> {
            dx: B::buffer_mut(self.dx),
            db: B::buffer_mut(self.db),
            partial: B::buffer_mut(self.partial),
        };
        let scale = to_compute_f64::<T>(dropout.grad_scale);
        B::residual_backward_into(g, grads, saved, &dropout.prob, scale, self.state.hidden)
    }
}

/// The decisions of a regenerate-form state of a shard placed through its layout, redrawn
/// (the fused kernels would draw `index_base + i`, not the layout's indices); `None` for
/// any other state.
fn redrawn_shard_bits<B: Placed, T: Element>(
    g: &B::Buffer<T>,
    dropout: &DropoutState,
) -> Result<Option<B::Mask>> {
    match (&dropout.saved, &dropout.shard) {
        (Saved::Regenerate(pos), Some(layout)) => {
            B::shard_keep_bits(&B::input(g), *pos, &dropout.prob, layout).map(Some)
        }
        _ => Ok(None),
    }
}

fn input_gradients<T: Element>(
    grad: &Tensor<T>,
    state: &BiasDropoutResidualState,
) -> Result<(Tensor<T>, Tensor<T>)> {
    const OP: &str = "bias_dropout_residual backward";
    state.dropout.check_grad(grad, OP)?;
    on_backend(grad, InputGradients { grad, state })
}

/// [`input_gradients`] once the state is checked.
struct InputGradients<'a, T: Element> {
    grad: &'a Tensor<T>,
    state: &'a BiasDropoutResidualState,
}

impl<T: Element> OnBackend for InputGradients<'_, T> {
    type Output = (Tensor<T>, Tensor<T>);

    fn run<B: Placed>(self) -> Result<(Tensor<T>, Tensor<T>)> {
        let InputGradients { grad, state } = self;
        let (h, dropout) = (state.hidden, &state.dropout);
        let g = B::buffer(grad);
        let (dx, db) = match &dropout.saved {
            // Eval mode: dx is the gradient itself.
            Saved::Identity => {
                let dx = grad.try_clone()?;
                let db = B::column_sum(B::buffer(&dx), h)?;
                return Ok((dx, Tensor::from_storage(B::storage(db), vec![h])));
            }
            saved => {
                let scale = to_compute_f64::<T>(dropout.grad_scale);
                let redrawn = redrawn_shard_bits::<B, T>(g, dropout)?;
                let saved = match &redrawn {
                    Some(bits) => SavedMask::Bits(bits),
                    None => saved_mask::<B>(saved),
                };
                B::residual_backward(g, saved, &dropout.prob, scale, h)?
            }
        };
        Ok((
            Tensor::from_storage(B::storage(dx), grad.shape().to_vec()),
            Tensor::from_storage(B::storage(db), vec![h]),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_backward_hands_the_gradient_over_with_the_same_gradients() {
        let (rows, h) = (300, 5);
        let n = rows * h;
        let x = Tensor::from_vec((0..n).map(|i| i as f32 * 0.25).collect(), &[rows, h]).unwrap();
        let bias = Tensor::from_vec(vec![0.5f32, -1.0, 2.0, 0.0, 3.5], &[h]).unwrap();
        let residual = Tensor::from_vec(vec![1.0f32; n], &[rows, h]).unwrap();
        let grad =
            Tensor::from_vec((0..n).map(|i| (i % 7) as f32 - 3.5).collect(), &[rows, h]).unwrap();
        for mode in [MaskMode::Bits, MaskMode::Regenerate] {
            let pos = StreamPos::new(11, 3);
            let (_, state) = bias_dropout_residual(
                ResidualInputs {
                    x: &x,
                    bias: &bias,
                    residual: &residual,
                },
                0.3,
                true,
                pos,
                mode,
            )
            .unwrap();
            let copied = bias_dropout_residual_backward(&grad, &state).unwrap();
            let moved_grad = grad.try_clone().unwrap();
            let address = moved_grad.as_slice().unwrap().as_ptr();
            let owned = bias_dropout_residual_backward_owned(moved_grad, &state).unwrap();
            // The residual gradient is the very buffer passed in: no copy.
            assert_eq!(owned.residual.as_slice().unwrap().as_ptr(), address);
            assert_eq!(owned.residual.to_vec().unwrap(), grad.to_vec().unwrap());
            assert_eq!(copied.residual.to_vec().unwrap(), grad.to_vec().unwrap());
            assert_eq!(owned.x.to_vec().unwrap(), copied.x.to_vec().unwrap());
            let bits = |t: &Tensor<f32>| {
                t.to_vec()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>()
            };
            assert_eq!(bits(&owned.bias), bits(&copied.bias));
            // Some gradient was dropped and some kept, so the sums are not trivial.
            let dx = owned.x.to_vec().unwrap();
            assert!(dx.contains(&0.0) && dx.iter().any(|&v| v != 0.0));
        }
    }
}
