//! The fused `out = residual + dropout(x + bias)` (SPEC section 6) and its backward, which
//! also returns the bias and residual gradients.

use super::dispatch::{check_index_range, new_output, run_forward, ForwardOp, Operand};
use super::dropout::dropout_backward;
use super::state::{DropoutState, MaskBuffer, Saved};
use crate::backend::{DeviceBuffers, Forwarded, ResidualKernels, SavedMask};
use crate::cpu;
use crate::cuda;
use crate::cuda::Cuda;
use crate::element::{to_compute_f64, Element};
use crate::error::{Error, Result};
use crate::mask::Probability;
use crate::plan::{Decisions, MaskMode, StreamPos};
use crate::tensor::{Storage, Tensor};

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
    residual.expect_shape(x.shape(), OP)?;
    let hidden = *x.shape().last().ok_or_else(|| Error::InvalidShape {
        op: OP,
        shape: x.shape().to_vec(),
        reason: "x must have at least one dimension (the hidden size H)".into(),
    })?;
    bias.expect_shape(&[hidden], OP)?;
    x.device().expect_same(&bias.device(), OP)?;
    x.device().expect_same(&residual.device(), OP)?;
    check_index_range(index_base, x.len())?;
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
    Ok((new_output(out), state))
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
    fn cpu(self, residual: cpu::Source<'_, T>, out: &mut [T]) -> Result<Option<Vec<u32>>> {
        let (Storage::Cpu(x), Storage::Cpu(bias)) = (&self.x.storage, &self.bias.storage) else {
            return Err(Error::DeviceMismatch {
                op: OP,
                expected: "cpu".into(),
                got: "cuda (x or bias)".into(),
            });
        };
        let n = out.len();
        let mut bits = match self.mode {
            MaskMode::Bits => Some(cpu::alloc_mask(n)?),
            MaskMode::Regenerate => None,
        };
        let scale = to_compute_f64::<T>(self.prob.scale_f64());
        let inputs = cpu::residual::FusedInputs { x, bias, residual };
        let (pos, prob) = (self.pos, self.prob);
        cpu::residual::bias_dropout_residual(inputs, out, bits.as_deref_mut(), pos, prob, scale)?;
        Ok(bits)
    }

    fn cuda(self, residual: <Cuda as DeviceBuffers>::Operand<'_, T>) -> Result<Forwarded<Cuda, T>> {
        let (x, bias) = (on_cuda(self.x, "x")?, on_cuda(self.bias, "bias")?);
        let scale = to_compute_f64::<T>(self.prob.scale_f64());
        let (pos, prob) = (self.pos, self.prob);
        Cuda::residual_forward(x, bias, residual, pos, prob, scale, self.mode)
    }
}

/// The device buffer of an input of the fused layer on CUDA.
fn on_cuda<'a, T: Element>(t: &'a Tensor<T>, what: &str) -> Result<&'a cuda::CudaBuffer<T>> {
    match &t.storage {
        Storage::Cuda(b) => Ok(b),
        Storage::Cpu(_) => Err(Error::DeviceMismatch {
            op: OP,
            expected: "cuda".into(),
            got: format!("cpu ({what})"),
        }),
    }
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
    let hidden = check_fused(x, bias, residual.tensor(), pos.index_base)?;
    // Eval: the same arithmetic with nothing dropped and s = 1 (z * 1 = z exactly).
    let eval = Probability::new(0.0)?;
    let applied = if training { prob } else { &eval };
    let mode = if training { mode } else { MaskMode::Regenerate };
    let op = Fused {
        x,
        bias,
        prob: applied,
        pos,
        mode,
    };
    let (out, mask) = run_forward(residual, op)?;
    let grad_scale = applied.scale_f64();
    let mut dropout =
        DropoutState::trained(&out, mask, pos, applied, Decisions::Elementwise, grad_scale);
    if !training {
        dropout.saved = Saved::Identity;
    }
    Ok((out.output, BiasDropoutResidualState { dropout, hidden }))
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

/// The gradients of x and of the bias. On CUDA, with a mask saved there or a stream
/// position, one kernel writes dx and the bias gradient's block sums together (dx is not
/// read back); otherwise dx through the dropout backward, then its column sums. Both give
/// the same bits.
fn input_gradients<T: Element>(
    grad: &Tensor<T>,
    state: &BiasDropoutResidualState,
) -> Result<(Tensor<T>, Tensor<T>)> {
    const OP: &str = "bias_dropout_residual backward";
    let (h, dropout) = (state.hidden, &state.dropout);
    if let (Storage::Cuda(g), Decisions::Elementwise) = (&grad.storage, &dropout.decisions) {
        let mask = match &dropout.saved {
            Saved::Bits(MaskBuffer::Cuda(bits)) => Some(SavedMask::Bits(bits)),
            Saved::Regenerate(pos) => Some(SavedMask::Regenerate(*pos)),
            _ => None,
        };
        if let Some(mask) = mask {
            dropout.check_grad(grad, OP)?;
            let scale = to_compute_f64::<T>(dropout.grad_scale);
            let (dx, db) = Cuda::residual_backward(g, mask, &dropout.prob, scale, h)?;
            return Ok((
                Tensor::from_storage(Storage::Cuda(dx), grad.shape().to_vec()),
                Tensor::from_storage(Storage::Cuda(db), vec![h]),
            ));
        }
    }
    let dx = dropout_backward(grad, dropout)?;
    let bias_storage = match &dx.storage {
        Storage::Cpu(g) => {
            let mut db = crate::alloc::zeroed::<T>(h)?;
            cpu::residual::column_sum(g, &mut db, h)?;
            Storage::Cpu(db)
        }
        Storage::Cuda(g) => Storage::Cuda(Cuda::column_sum(g, h)?),
    };
    Ok((dx, Tensor::from_storage(bias_storage, vec![h])))
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
            let (_, state) =
                bias_dropout_residual(&x, &bias, &residual, 0.3, true, pos, mode).unwrap();
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
