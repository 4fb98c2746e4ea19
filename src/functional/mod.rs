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
//! | `state.rs` | [`DropoutState`]: what a forward saves for its backward |
//! | `dropout.rs` | [`dropout`], the elementwise forward shared with alpha dropout, [`dropout_backward`] |
//! | `alpha.rs` | [`alpha_dropout`] |
//! | `grouped.rs` | [`grouped_dropout`] (channel dropout, DropPath, feature alpha dropout) |
//! | `residual.rs` | [`bias_dropout_residual`] and its backward |

mod alpha;
mod dropout;
mod grouped;
mod residual;
mod state;

pub use crate::plan::{GroupedKind, MaskMode, StreamPos};
pub use alpha::alpha_dropout;
pub use dropout::{dropout, dropout_backward};
pub use grouped::grouped_dropout;
pub use residual::{
    bias_dropout_residual, bias_dropout_residual_backward, BiasDropoutResidualGrads,
    BiasDropoutResidualState,
};
pub use state::DropoutState;

pub(crate) use alpha::alpha_train;
pub(crate) use dropout::dropout_train;
pub(crate) use grouped::grouped_train;
pub(crate) use residual::bias_dropout_residual_run;

use crate::cpu;
use crate::cuda;
use crate::device::Device;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::mask::Probability;
use crate::tensor::{Storage, Tensor};
use state::MaskBuffer;

/// The tensor a forward reads: a separate input (a new output is allocated) or the output
/// itself (in-place).
pub(crate) enum Operand<'a, T: Element> {
    Input(&'a Tensor<T>),
    InPlace(&'a mut Tensor<T>),
}

impl<T: Element> Operand<'_, T> {
    pub(crate) fn tensor(&self) -> &Tensor<T> {
        match self {
            Operand::Input(t) => t,
            Operand::InPlace(t) => t,
        }
    }
}

/// A layer's training forward: input (or in-place output), probability, where its random
/// words start, saved form -> new output (if not in place) and state.
pub(crate) type TrainResult<T> = Result<(Option<Tensor<T>>, DropoutState)>;

/// The functional entry points: validate p, then the identity in eval mode or `train`.
pub(crate) fn train_or_identity<T: Element>(
    x: &Tensor<T>,
    p: f64,
    training: bool,
    pos: StreamPos,
    mode: MaskMode,
    train: impl FnOnce(Operand<'_, T>, &Probability, StreamPos, MaskMode) -> TrainResult<T>,
) -> Result<(Tensor<T>, DropoutState)> {
    let prob = Probability::new(p)?;
    if !training {
        return Ok((x.try_clone()?, DropoutState::identity(x, prob)));
    }
    let (y, state) = train(Operand::Input(x), &prob, pos, mode)?;
    Ok((new_output(y)?, state))
}

/// One validated training forward as each backend runs it; [`run_forward`] calls the arm
/// of the backend that holds the operand.
pub(crate) trait ForwardOp<T: Element> {
    /// Fills `out` from `src` (`Source::Output` when in place); returns the saved bits.
    fn cpu(self, src: cpu::Source<'_, T>, out: &mut [T]) -> Result<Option<Vec<u32>>>;
    /// Launches on the operand's stream; returns the new output (if not in place) and the
    /// saved bits.
    fn cuda(self, x: cuda::CudaOperand<'_, T>) -> Result<cuda::Forward<T>>;
}

/// A forward's output (`None` when written in place) with the input's shape and device.
pub(crate) struct ForwardOut<T: Element> {
    pub output: Option<Tensor<T>>,
    pub shape: Vec<usize>,
    pub device: Device,
}

/// Runs `op` on the backend that holds `x`; returns the output and the saved mask.
pub(crate) fn run_forward<T: Element>(
    x: Operand<'_, T>,
    op: impl ForwardOp<T>,
) -> Result<(ForwardOut<T>, Option<MaskBuffer>)> {
    let (shape, device) = (x.tensor().shape().to_vec(), x.tensor().device());
    let (storage, mask) = match x {
        Operand::Input(t) => match &t.storage {
            Storage::Cpu(xs) => {
                let mut y = cpu::alloc_output::<T>(xs.len());
                let mask = op.cpu(cpu::Source::Slice(xs), &mut y)?;
                (Some(Storage::Cpu(y)), mask.map(MaskBuffer::Cpu))
            }
            Storage::Cuda(xb) => {
                let (y, mask) = op.cuda(cuda::CudaOperand::Input(xb))?;
                (y.map(Storage::Cuda), mask.map(MaskBuffer::Cuda))
            }
        },
        Operand::InPlace(t) => match &mut t.storage {
            Storage::Cpu(xs) => (None, op.cpu(cpu::Source::Output, xs)?.map(MaskBuffer::Cpu)),
            Storage::Cuda(xb) => {
                let (_, mask) = op.cuda(cuda::CudaOperand::InPlace(xb))?;
                (None, mask.map(MaskBuffer::Cuda))
            }
        },
    };
    let output = storage.map(|s| Tensor::from_storage(s, shape.clone()));
    Ok((
        ForwardOut {
            output,
            shape,
            device,
        },
        mask,
    ))
}

/// The output of a forward over a separate input (always `Some`).
pub(crate) fn new_output<T: Element>(y: Option<Tensor<T>>) -> Result<Tensor<T>> {
    y.ok_or_else(|| {
        Error::StateMismatch("a forward over a separate input returned no output".into())
    })
}

pub(crate) fn mask_elsewhere() -> Error {
    Error::StateMismatch("the saved mask lives on another device than the gradient".into())
}

/// Decision indices are u64: `index_base + n` must not wrap.
pub(crate) fn check_index_range(index_base: u64, n: usize) -> Result<()> {
    index_base.checked_add(n as u64).map(|_| ()).ok_or_else(|| {
        Error::OutOfRange(format!(
            "index_base {index_base} + {n} elements overflows the 64-bit decision index"
        ))
    })
}
