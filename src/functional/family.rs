//! Functional forms of the rest of the family (SPEC section 6): alpha dropout, grouped
//! dropout (channel dropout, DropPath, feature alpha dropout) and the fused
//! bias + dropout + residual. Their backward is [`super::dropout_backward`], except the
//! fused layer, which also returns the bias and residual gradients.

use super::{
    check_index_range, new_output, run_forward, train_or_identity, Decisions, DropoutState,
    MaskBuffer, MaskMode, Operand, Saved, StreamPos, TrainResult,
};
use crate::cpu::{self, Affine, Scale};
use crate::element::{to_compute_f64, ComputeFloat, Element};
use crate::error::{Error, Result};
use crate::mask::{fill_keep_bits, Probability};
use crate::tensor::{Storage, Tensor};

/// -lambda * alpha of SELU (SPEC section 6).
pub const SELU_ALPHA_PRIME: f64 = -1.758_099_340_847_376_6;

/// AlphaDropout's a and b for a probability, in f64.
pub(crate) fn alpha_coefficients(prob: &Probability) -> (f64, f64) {
    if prob.drops_all() {
        // Everything is dropped: outputs and gradients are +0 (SPEC section 2), which
        // a = b = 0 gives (0 * A + 0 = +0) where the formula would give inf - inf.
        return (0.0, 0.0);
    }
    let q = prob.keep_probability();
    let a_prime = SELU_ALPHA_PRIME;
    let a = 1.0 / (q * (1.0 + (1.0 - q) * a_prime * a_prime)).sqrt();
    let b = -a * a_prime * (1.0 - q);
    (a, b)
}

/// a, b and the dropped value a*A + b, rounded to the compute type of `T`.
pub(crate) fn alpha_op<T: Element>(prob: &Probability) -> Affine<T::Compute> {
    let (a, b) = alpha_coefficients(prob);
    let (a, b) = (to_compute_f64::<T>(a), to_compute_f64::<T>(b));
    let dropped = to_compute_f64::<T>(SELU_ALPHA_PRIME).mul(a).add(b);
    Affine { a, b, dropped }
}

/// What a grouped layer does to a kept element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupedKind {
    /// x * s, dropped +0 (channel dropout, DropPath).
    Scale,
    /// a * x + b, dropped a*A + b (FeatureAlphaDropout).
    Alpha,
}

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

pub(crate) fn alpha_train<T: Element>(
    x: Operand<'_, T>,
    prob: &Probability,
    pos: StreamPos,
    mode: MaskMode,
) -> TrainResult<T> {
    let op = alpha_op::<T>(prob);
    super::elementwise_train(
        x,
        prob,
        pos,
        mode,
        op,
        alpha_coefficients(prob).0,
        #[cfg(feature = "cuda")]
        |xc| crate::cuda::ops::alpha_forward(xc, pos, prob, op, mode),
    )
}

/// Dropout with one decision per `group` consecutive elements (SPEC section 6): channel
/// dropout (group = the spatial size), DropPath (group = the size of one sample) and
/// FeatureAlphaDropout. Shards use `pos.index_base` as the element where they start.
pub fn grouped_dropout<T: Element>(
    x: &Tensor<T>,
    p: f64,
    training: bool,
    group: usize,
    kind: GroupedKind,
    pos: StreamPos,
    mode: MaskMode,
) -> Result<(Tensor<T>, DropoutState)> {
    train_or_identity(x, p, training, pos, mode, |x, prob, pos, mode| {
        grouped_train(x, prob, group, kind, pos, mode)
    })
}

pub(crate) fn grouped_train<T: Element>(
    x: Operand<'_, T>,
    prob: &Probability,
    group: usize,
    kind: GroupedKind,
    pos: StreamPos,
    mode: MaskMode,
) -> TrainResult<T> {
    let n = x.tensor().len();
    check_index_range(pos.index_base, n)?;
    if group == 0 && n > 0 {
        return Err(Error::InvalidShape {
            op: "grouped dropout",
            shape: x.tensor().shape().to_vec(),
            reason: "a decision must cover at least one element".into(),
        });
    }
    let decisions = Decisions::grouped(group, pos.index_base, n);
    let Decisions::Grouped {
        group,
        lead,
        first,
        count,
    } = decisions
    else {
        unreachable!("Decisions::grouped builds a grouped layout")
    };
    let (scale, affine) = (to_compute_f64::<T>(prob.scale_f64()), alpha_op::<T>(prob));
    let (out, mask) = run_forward(
        x,
        |src, y| {
            // Few decisions (one per channel or sample): draw them first, then apply.
            let mut bits = cpu::alloc_mask(count);
            fill_keep_bits(pos.seed, pos.offset, first, prob, count, &mut bits);
            match kind {
                GroupedKind::Scale => {
                    cpu::family::grouped_apply(src, y, &bits, group, lead, Scale(scale))
                }
                GroupedKind::Alpha => {
                    cpu::family::grouped_apply(src, y, &bits, group, lead, affine)
                }
            }
            Ok((mode == MaskMode::Bits).then_some(MaskBuffer::Cpu(bits)))
        },
        #[cfg(feature = "cuda")]
        |xc| {
            let op = match kind {
                GroupedKind::Scale => crate::cuda::ops::GroupedOp::Scale(scale),
                GroupedKind::Alpha => crate::cuda::ops::GroupedOp::Affine(affine),
            };
            let (y, bits) = crate::cuda::ops::grouped_forward(xc, pos, prob, decisions, op, mode)?;
            Ok((y, bits.map(MaskBuffer::Cuda)))
        },
    )?;
    let grad_scale = match kind {
        GroupedKind::Scale => prob.scale_f64(),
        GroupedKind::Alpha => alpha_coefficients(prob).0,
    };
    let state = DropoutState::trained(&out, mask, pos, prob, decisions, grad_scale);
    Ok((out.output, state))
}

/// What the fused forward saves: the dropout state of `x + bias` and the bias length.
#[derive(Debug)]
pub struct BiasDropoutResidualState {
    pub(crate) dropout: DropoutState,
    pub(crate) hidden: usize,
}

impl BiasDropoutResidualState {
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
    /// d out / d residual: the upstream gradient itself.
    pub residual: Tensor<T>,
    /// d out / d bias: the column sums of `x`'s gradient over all rows, accumulated in f64
    /// in fixed blocks of rows (deterministic, the same bits on CPU and CUDA; outside the
    /// bit-exact contract of the spec, see docs/spec.md).
    pub bias: Tensor<T>,
}

fn check_fused_shapes<T: Element>(
    x: &Tensor<T>,
    bias: &Tensor<T>,
    residual: &Tensor<T>,
) -> Result<usize> {
    const OP: &str = "bias_dropout_residual";
    residual.expect_shape(x.shape(), OP)?;
    let hidden = *x.shape().last().ok_or_else(|| Error::InvalidShape {
        op: OP,
        shape: x.shape().to_vec(),
        reason: "x must have at least one dimension (the hidden size H)".into(),
    })?;
    bias.expect_shape(&[hidden], OP)?;
    x.device().expect_same(&bias.device(), OP)?;
    x.device().expect_same(&residual.device(), OP)?;
    Ok(hidden)
}

/// `out = residual + dropout(x + bias)` in one pass (SPEC section 6): x and residual of
/// shape (..., H), bias of shape (H). In eval mode the dropout is the identity (the sum is
/// still computed with the same roundings).
pub fn bias_dropout_residual<T: Element>(
    x: &Tensor<T>,
    bias: &Tensor<T>,
    residual: &Tensor<T>,
    p: f64,
    training: bool,
    pos: StreamPos,
    mode: MaskMode,
) -> Result<(Tensor<T>, BiasDropoutResidualState)> {
    let prob = Probability::new(p)?;
    let (out, state) = bias_dropout_residual_run(
        x,
        bias,
        Operand::Input(residual),
        &prob,
        training,
        pos,
        mode,
    )?;
    Ok((new_output(out)?, state))
}

/// The fused forward; with `Operand::InPlace` the output is written over the residual.
pub(crate) fn bias_dropout_residual_run<T: Element>(
    x: &Tensor<T>,
    bias: &Tensor<T>,
    residual: Operand<'_, T>,
    prob: &Probability,
    training: bool,
    pos: StreamPos,
    mode: MaskMode,
) -> Result<(Option<Tensor<T>>, BiasDropoutResidualState)> {
    let hidden = check_fused_shapes(x, bias, residual.tensor())?;
    let n = x.len();
    check_index_range(pos.index_base, n)?;
    // Eval: the same arithmetic with nothing dropped and s = 1 (z * 1 = z exactly).
    let eval = Probability::new(0.0)?;
    let applied = if training { prob } else { &eval };
    let mode = if training { mode } else { MaskMode::Regenerate };
    let scale = to_compute_f64::<T>(applied.scale_f64());
    let (out, mask) = run_forward(
        residual,
        |res, out| {
            let (Some(xs), Some(bs)) = (x.as_slice(), bias.as_slice()) else {
                return Err(Error::DeviceMismatch {
                    op: "bias_dropout_residual",
                    expected: "cpu".into(),
                    got: "cuda (x or bias)".into(),
                });
            };
            let mut bits = (mode == MaskMode::Bits).then(|| cpu::alloc_mask(n));
            cpu::family::bias_dropout_residual(
                xs,
                bs,
                res,
                out,
                bits.as_deref_mut(),
                pos,
                applied,
                scale,
            );
            Ok(bits.map(MaskBuffer::Cpu))
        },
        #[cfg(feature = "cuda")]
        |res| {
            let (y, bits) = crate::cuda::ops::bias_dropout_residual_forward(
                x, bias, res, hidden, pos, applied, scale, mode,
            )?;
            Ok((y, bits.map(MaskBuffer::Cuda)))
        },
    )?;
    let grad_scale = applied.scale_f64();
    let mut dropout =
        DropoutState::trained(&out, mask, pos, applied, Decisions::Elementwise, grad_scale);
    if !training {
        dropout.saved = Saved::Identity;
    }
    Ok((out.output, BiasDropoutResidualState { dropout, hidden }))
}

/// Gradients of [`bias_dropout_residual`] for the upstream gradient `grad`.
pub fn bias_dropout_residual_backward<T: Element>(
    grad: &Tensor<T>,
    state: &BiasDropoutResidualState,
) -> Result<BiasDropoutResidualGrads<T>> {
    let dx = super::dropout_backward(grad, &state.dropout)?;
    let h = state.hidden;
    let bias_storage = match &dx.storage {
        Storage::Cpu(g) => {
            let mut db = vec![T::ZERO; h];
            cpu::family::column_sum(g, &mut db, h);
            Storage::Cpu(db)
        }
        #[cfg(feature = "cuda")]
        Storage::Cuda(g) => Storage::Cuda(crate::cuda::ops::column_sum(g, h)?),
    };
    Ok(BiasDropoutResidualGrads {
        residual: grad.try_clone()?,
        bias: Tensor::from_storage(bias_storage, vec![h]),
        x: dx,
    })
}
