//! What every functional entry point shares: the operand of a forward (a separate input
//! or the output itself), validation helpers, and [`run_forward`], which hands a forward to
//! the backend that holds its tensor by matching on the tensor's storage.

use super::state::{CpuMask, DropoutState, ForwardOut, MaskBuffer};
use crate::backend::{DropoutKernels, Forwarded, GroupedKernels, NormKernels, ResidualKernels};
use crate::cpu::{Cpu, CpuOperand};
use crate::cuda;
use crate::cuda::Cuda;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::mask::Probability;
use crate::plan::{MaskMode, StreamPos};
use crate::tensor::{Storage, Tensor};

/// The tensor a forward reads: a separate input (a new output is allocated), the output
/// itself (in-place), or a separate input written into a preallocated output (with the
/// mask of an earlier forward to reuse: the `_into` forms, which allocate nothing on
/// CUDA).
pub(crate) enum Operand<'a, T: Element> {
    Input(&'a Tensor<T>),
    InPlace(&'a mut Tensor<T>),
    Into {
        x: &'a Tensor<T>,
        out: &'a mut Tensor<T>,
        mask: Option<MaskBuffer>,
    },
}

impl<T: Element> Operand<'_, T> {
    pub(crate) fn tensor(&self) -> &Tensor<T> {
        match self {
            Operand::Input(t) => t,
            Operand::InPlace(t) => t,
            Operand::Into { x, .. } => x,
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

/// The scalars of one functional call: p, training or eval, the stream position and the
/// saved form.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallArgs {
    pub p: f64,
    pub training: bool,
    pub pos: StreamPos,
    pub mode: MaskMode,
}

/// The `_into` entry points: validate p and the output, then a copy in eval mode or
/// `train` into `out`, reusing the mask of `state` (which receives the new state).
pub(crate) fn train_into<T: Element>(
    x: &Tensor<T>,
    (out, state): (&mut Tensor<T>, &mut DropoutState),
    call: CallArgs,
    train: impl FnOnce(Operand<'_, T>, &Probability, StreamPos, MaskMode) -> TrainResult<T>,
) -> Result<()> {
    let CallArgs {
        p,
        training,
        pos,
        mode,
    } = call;
    let prob = Probability::new(p)?;
    super::dropout::check_output(x, out, "dropout into")?;
    if !training {
        out.copy_from(x)?;
        *state = DropoutState::identity(x, prob);
        return Ok(());
    }
    check_captured(x, pos)?;
    if !pos.is_captured() {
        // Refused before the state's mask is taken: dropping it would free device memory
        // inside the capture.
        x.device()
            .refuse_capture("a training forward with a position by value")?;
    }
    let mask = state.take_mask();
    let operand = Operand::Into { x, out, mask };
    *state = train(operand, &prob, pos, mode)?.1;
    Ok(())
}

/// A captured position (read on the device when a CUDA graph runs) is for CUDA tensors.
pub(crate) fn check_captured<T: Element>(x: &Tensor<T>, pos: StreamPos) -> Result<()> {
    if pos.is_captured() {
        check_graph_tensor(x)?;
    }
    Ok(())
}

/// A tensor a captured call may read: one on CUDA.
pub(crate) fn check_graph_tensor<T: Element>(x: &Tensor<T>) -> Result<()> {
    if !matches!(x.storage, Storage::Cuda(_)) {
        return Err(Error::InvalidArgument {
            op: "dropout",
            reason: "the position was taken while a CUDA graph was captured (it is read \
                     from the device when the graph runs), but the tensor is on the CPU"
                .into(),
        });
    }
    Ok(())
}

/// A backend as the functional layer uses it: every operation family, and where its
/// buffers sit in a tensor's storage and a state's mask. Implemented for `cpu::Cpu` and
/// `cuda::Cuda`; each op is written once, generic over it, after [`on_backend`] (or
/// [`run_forward`]) has matched on where the tensors live.
pub(crate) trait Placed:
    DropoutKernels + GroupedKernels + ResidualKernels + NormKernels
{
    /// The buffer of a tensor this backend holds (the caller compared the devices).
    fn buffer<T: Element>(t: &Tensor<T>) -> &Self::Buffer<T>;
    /// The same, to write into.
    fn buffer_mut<T: Element>(t: &mut Tensor<T>) -> &mut Self::Buffer<T>;
    /// The operand of a forward over a tensor this backend holds.
    fn operand<'a, T: Element>(x: Operand<'a, T>) -> Self::Operand<'a, T>;
    /// A new buffer as a tensor's storage.
    fn storage<T: Element>(b: Self::Buffer<T>) -> Storage<T>;
    /// A new mask as a state's.
    fn mask(m: Self::Mask) -> MaskBuffer;
    /// A state's mask made by this backend (the caller compared the devices).
    fn saved_mask(m: &MaskBuffer) -> &Self::Mask;
    /// The same, to write into.
    fn saved_mask_mut(m: &mut MaskBuffer) -> &mut Self::Mask;
    /// A state's mask handed over to be drawn into again (`None` if another backend made
    /// it: a new one is then drawn).
    fn take_mask(m: MaskBuffer) -> Option<Self::Mask>;
}

/// Not held by the backend that was matched: the device checks before rule it out.
fn elsewhere() -> ! {
    unreachable!(
        "a tensor or mask on another backend than the one matched, after the device checks"
    )
}

impl Placed for Cpu {
    fn buffer<T: Element>(t: &Tensor<T>) -> &Vec<T> {
        match &t.storage {
            Storage::Cpu(v) => v,
            Storage::Cuda(_) => elsewhere(),
        }
    }

    fn buffer_mut<T: Element>(t: &mut Tensor<T>) -> &mut Vec<T> {
        match &mut t.storage {
            Storage::Cpu(v) => v,
            Storage::Cuda(_) => elsewhere(),
        }
    }

    fn operand<'a, T: Element>(x: Operand<'a, T>) -> CpuOperand<'a, T> {
        match x {
            Operand::Input(Tensor {
                storage: Storage::Cpu(v),
                ..
            }) => CpuOperand::Input(v),
            Operand::InPlace(Tensor {
                storage: Storage::Cpu(v),
                ..
            }) => CpuOperand::InPlace(v),
            Operand::Into {
                x:
                    Tensor {
                        storage: Storage::Cpu(v),
                        ..
                    },
                out:
                    Tensor {
                        storage: Storage::Cpu(o),
                        ..
                    },
                ..
            } => CpuOperand::Into(v, o),
            _ => elsewhere(),
        }
    }

    fn storage<T: Element>(b: Vec<T>) -> Storage<T> {
        Storage::Cpu(b)
    }

    fn mask(m: Vec<u32>) -> MaskBuffer {
        MaskBuffer::Cpu(CpuMask(m))
    }

    fn saved_mask(m: &MaskBuffer) -> &Vec<u32> {
        match m {
            MaskBuffer::Cpu(v) => &v.0,
            MaskBuffer::Cuda(_) => elsewhere(),
        }
    }

    fn saved_mask_mut(m: &mut MaskBuffer) -> &mut Vec<u32> {
        match m {
            MaskBuffer::Cpu(v) => &mut v.0,
            MaskBuffer::Cuda(_) => elsewhere(),
        }
    }

    fn take_mask(m: MaskBuffer) -> Option<Vec<u32>> {
        match m {
            MaskBuffer::Cpu(mut v) => Some(std::mem::take(&mut v.0)),
            MaskBuffer::Cuda(_) => None,
        }
    }
}

impl Placed for Cuda {
    fn buffer<T: Element>(t: &Tensor<T>) -> &cuda::CudaBuffer<T> {
        match &t.storage {
            Storage::Cuda(b) => b,
            Storage::Cpu(_) => elsewhere(),
        }
    }

    fn buffer_mut<T: Element>(t: &mut Tensor<T>) -> &mut cuda::CudaBuffer<T> {
        match &mut t.storage {
            Storage::Cuda(b) => b,
            Storage::Cpu(_) => elsewhere(),
        }
    }

    fn operand<'a, T: Element>(x: Operand<'a, T>) -> cuda::CudaOperand<'a, T> {
        match x {
            Operand::Input(Tensor {
                storage: Storage::Cuda(b),
                ..
            }) => cuda::CudaOperand::Input(b),
            Operand::InPlace(Tensor {
                storage: Storage::Cuda(b),
                ..
            }) => cuda::CudaOperand::InPlace(b),
            Operand::Into {
                x:
                    Tensor {
                        storage: Storage::Cuda(b),
                        ..
                    },
                out:
                    Tensor {
                        storage: Storage::Cuda(o),
                        ..
                    },
                mask,
            } => cuda::CudaOperand::Into {
                x: b,
                out: o,
                mask: mask.and_then(MaskBuffer::into_cuda),
            },
            _ => elsewhere(),
        }
    }

    fn storage<T: Element>(b: cuda::CudaBuffer<T>) -> Storage<T> {
        Storage::Cuda(b)
    }

    fn mask(m: cuda::MaskSlice) -> MaskBuffer {
        MaskBuffer::Cuda(m)
    }

    fn saved_mask(m: &MaskBuffer) -> &cuda::MaskSlice {
        match m {
            MaskBuffer::Cuda(s) => s,
            MaskBuffer::Cpu(_) => elsewhere(),
        }
    }

    fn saved_mask_mut(m: &mut MaskBuffer) -> &mut cuda::MaskSlice {
        match m {
            MaskBuffer::Cuda(s) => s,
            MaskBuffer::Cpu(_) => elsewhere(),
        }
    }

    fn take_mask(m: MaskBuffer) -> Option<cuda::MaskSlice> {
        m.into_cuda()
    }
}

/// An operation written once for every backend: [`on_backend`] runs it on the one that
/// holds the tensors.
pub(crate) trait OnBackend {
    type Output;
    fn run<B: Placed>(self) -> Result<Self::Output>;
}

/// The one storage dispatch: runs `op` on the backend of `t` (whose device the caller
/// checked every other operand against).
pub(crate) fn on_backend<T: Element, O: OnBackend>(t: &Tensor<T>, op: O) -> Result<O::Output> {
    match &t.storage {
        Storage::Cpu(_) => op.run::<Cpu>(),
        Storage::Cuda(_) => op.run::<Cuda>(),
    }
}

/// One validated training forward, written once for every backend: [`run_forward`] calls
/// it on the backend that holds the operand.
pub(crate) trait ForwardOp<T: Element> {
    /// Writes the output (a new one, or over the operand in place); returns it (if new)
    /// and the saved bits.
    fn run<B: Placed>(self, x: B::Operand<'_, T>) -> Result<Forwarded<B, T>>;
}

/// Runs `op` on the backend that holds `x`; returns the output and the saved mask.
pub(crate) fn run_forward<T: Element>(
    x: Operand<'_, T>,
    op: impl ForwardOp<T>,
) -> Result<(ForwardOut<T>, Option<MaskBuffer>)> {
    let (shape, device) = (x.tensor().shape().to_vec(), x.tensor().device());
    let on_cuda = matches!(x.tensor().storage, Storage::Cuda(_));
    let (storage, mask) = if on_cuda {
        forward_on::<Cuda, T>(x, op)?
    } else {
        forward_on::<Cpu, T>(x, op)?
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

type Stored<T> = (Option<Storage<T>>, Option<MaskBuffer>);

fn forward_on<B: Placed, T: Element>(
    x: Operand<'_, T>,
    op: impl ForwardOp<T>,
) -> Result<Stored<T>> {
    let (y, mask) = op.run::<B>(B::operand(x))?;
    Ok((y.map(B::storage), mask.map(B::mask)))
}

/// The output of a forward over a separate input: every backend allocates one for such a
/// forward, so `None` is a bug in dropkit, not in the call.
pub(crate) fn new_output<T: Element>(y: Option<Tensor<T>>) -> Tensor<T> {
    match y {
        Some(y) => y,
        None => unreachable!("a forward over a separate input returned no output"),
    }
}

/// Decision indices are u64: `index_base + n` must not wrap.
pub(crate) fn check_index_range(index_base: u64, n: usize) -> Result<()> {
    index_base.checked_add(n as u64).map(|_| ()).ok_or_else(|| {
        Error::OutOfRange(format!(
            "index_base {index_base} + {n} elements overflows the 64-bit decision index"
        ))
    })
}
