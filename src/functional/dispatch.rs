//! What every functional entry point shares: the operand of a forward (a separate input
//! or the output itself), validation helpers, and [`run_forward`], which hands a forward to
//! the backend that holds its tensor by matching on the tensor's storage.

use super::state::{DropoutState, ForwardOut, MaskBuffer};
use crate::backend::{DeviceBuffers, Forwarded};
use crate::cpu;
use crate::cuda;
use crate::cuda::Cuda;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::mask::Probability;
use crate::plan::{MaskMode, StreamPos};
use crate::tensor::{Storage, Tensor};

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
    Ok((new_output(y), state))
}

/// One validated training forward as each backend runs it; [`run_forward`] calls the arm
/// of the backend that holds the operand.
pub(crate) trait ForwardOp<T: Element> {
    /// Fills `out` from `src` (`Source::Output` when in place); returns the saved bits.
    fn cpu(self, src: cpu::Source<'_, T>, out: &mut [T]) -> Result<Option<Vec<u32>>>;
    /// Launches on the operand's stream; returns the new output (if not in place) and the
    /// saved bits.
    fn cuda(self, x: <Cuda as DeviceBuffers>::Operand<'_, T>) -> Result<Forwarded<Cuda, T>>;
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
                let mut y = cpu::alloc_output::<T>(xs.len())?;
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

/// The output of a forward over a separate input: every backend allocates one for such a
/// forward, so `None` is a bug in dropkit, not in the call.
pub(crate) fn new_output<T: Element>(y: Option<Tensor<T>>) -> Tensor<T> {
    match y {
        Some(y) => y,
        None => unreachable!("a forward over a separate input returned no output"),
    }
}

/// A saved mask on another device than its gradient. Every backward compares the state's
/// device with the gradient's first (`DeviceMismatch`), and a state's mask and statistics
/// live where it was made, so reaching this is a bug in dropkit.
pub(crate) fn mask_elsewhere() -> ! {
    unreachable!("the saved mask lives on another device than the gradient, after the device check")
}

/// Decision indices are u64: `index_base + n` must not wrap.
pub(crate) fn check_index_range(index_base: u64, n: usize) -> Result<()> {
    index_base.checked_add(n as u64).map(|_| ()).ok_or_else(|| {
        Error::OutOfRange(format!(
            "index_base {index_base} + {n} elements overflows the 64-bit decision index"
        ))
    })
}
