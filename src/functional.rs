//! Stateless dropout functions: the caller supplies (seed, offset) and keeps the saved
//! state. The layers in [`crate::layers`] call these; users who manage their own random
//! state can too. This is where a call is validated and handed to a backend.
//!
//! Every layer of the family saves the same kind of [`DropoutState`]: which decisions were
//! kept (packed bits, or how to regenerate them), how elements map to decisions
//! (elementwise or one per group), and the factor kept gradients are scaled by. So one
//! backward, [`dropout_backward`], serves them all.

pub(crate) mod family;

pub(crate) use family::{alpha_train, bias_dropout_residual_run, grouped_train};

pub use family::{
    alpha_dropout, bias_dropout_residual, bias_dropout_residual_backward, grouped_dropout,
    BiasDropoutResidualGrads, BiasDropoutResidualState, GroupedKind,
};

use crate::cpu;
use crate::device::Device;
use crate::element::{to_compute_f64, DType, Element};
use crate::error::{Error, Result};
use crate::mask::{fill_keep_bits, mask_words, Probability};
use crate::tensor::{Storage, Tensor};

pub use crate::cpu::dropout::StreamPos;

impl StreamPos {
    /// Decisions of this call start at index 0 of (seed, offset).
    pub fn new(seed: u64, offset: u64) -> Self {
        Self {
            seed,
            offset,
            index_base: 0,
        }
    }

    /// The tensor is the slice starting at element `index_base` of a larger one (a shard):
    /// its element i is element `index_base + i` of the whole, so shards reproduce the
    /// whole tensor's mask.
    pub fn with_index_base(mut self, index_base: u64) -> Self {
        self.index_base = index_base;
        self
    }
}

/// How forward hands the decisions to backward (SPEC section 4). Both give identical
/// gradients: `Bits` costs one bit per decision, `Regenerate` re-runs Philox in backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MaskMode {
    /// Save one bit per decision (the default, like PyTorch saving its mask).
    #[default]
    Bits,
    /// Save only (seed, offset, p); backward regenerates the mask.
    Regenerate,
}

/// Packed keep bits on the device that produced them.
#[derive(Debug)]
pub(crate) enum MaskBuffer {
    Cpu(Vec<u32>),
    #[cfg(feature = "cuda")]
    Cuda(cudarc::driver::CudaSlice<u32>),
}

/// A CPU mask goes to [`cpu::recycle`], for the next mask of its size.
impl Drop for MaskBuffer {
    fn drop(&mut self) {
        match self {
            MaskBuffer::Cpu(v) => cpu::recycle::give(std::mem::take(v)),
            #[cfg(feature = "cuda")]
            MaskBuffer::Cuda(_) => {}
        }
    }
}

impl MaskBuffer {
    fn to_vec(&self) -> Result<Vec<u32>> {
        match self {
            MaskBuffer::Cpu(v) => Ok(v.clone()),
            #[cfg(feature = "cuda")]
            MaskBuffer::Cuda(s) => crate::cuda::download_u32(s),
        }
    }
}

#[derive(Debug)]
pub(crate) enum Saved {
    /// Eval mode: backward is the identity.
    Identity,
    Bits(MaskBuffer),
    Regenerate(StreamPos),
}

/// How a tensor's elements map to decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decisions {
    /// Element i uses decision `index_base + i` (Dropout, AlphaDropout).
    Elementwise,
    /// Local element i uses local decision `(lead + i) / group`, which is global decision
    /// `first + (lead + i) / group`; `count` decisions in all (channel dropout, DropPath).
    Grouped {
        group: u64,
        lead: u64,
        first: u64,
        count: usize,
    },
}

impl Decisions {
    /// Grouping of a shard starting at element `index_base` of a tensor whose decisions
    /// cover `group` consecutive elements each.
    pub(crate) fn grouped(group: usize, index_base: u64, n: usize) -> Self {
        let group = group.max(1) as u64;
        let lead = index_base % group;
        let count = if n == 0 {
            0
        } else {
            (lead + n as u64).div_ceil(group) as usize
        };
        Decisions::Grouped {
            group,
            lead,
            first: index_base / group,
            count,
        }
    }

    /// Number of decisions (the bits a saved mask holds) for `n` elements.
    fn count(&self, n: usize) -> usize {
        match *self {
            Decisions::Elementwise => n,
            Decisions::Grouped { count, .. } => count,
        }
    }
}

/// What a forward saves for its backward: the mask (bits or how to regenerate it), how
/// elements map to decisions, the gradient factor of kept elements, and the shape, dtype
/// and device it applies to (all checked by backward).
#[derive(Debug)]
pub struct DropoutState {
    pub(crate) saved: Saved,
    pub(crate) prob: Probability,
    pub(crate) decisions: Decisions,
    /// dx = kept ? dy * grad_scale : +0 (s for dropout, a for alpha dropout), in f64,
    /// rounded once to the compute type when used.
    pub(crate) grad_scale: f64,
    pub(crate) shape: Vec<usize>,
    pub(crate) dtype: DType,
    pub(crate) device: Device,
}

impl DropoutState {
    pub(crate) fn identity<T: Element>(x: &Tensor<T>, prob: Probability) -> Self {
        Self {
            saved: Saved::Identity,
            prob,
            decisions: Decisions::Elementwise,
            grad_scale: 1.0,
            shape: x.shape().to_vec(),
            dtype: T::DTYPE,
            device: x.device(),
        }
    }

    /// The state of a training forward.
    pub(crate) fn trained<T: Element>(
        out: &ForwardOut<T>,
        mask: Option<MaskBuffer>,
        pos: StreamPos,
        prob: &Probability,
        decisions: Decisions,
        grad_scale: f64,
    ) -> Self {
        Self {
            saved: mask.map_or(Saved::Regenerate(pos), Saved::Bits),
            prob: *prob,
            decisions,
            grad_scale,
            shape: out.shape.clone(),
            dtype: T::DTYPE,
            device: out.device.clone(),
        }
    }

    /// The saved form, `None` for an eval-mode forward.
    pub fn mask_mode(&self) -> Option<MaskMode> {
        match self.saved {
            Saved::Identity => None,
            Saved::Bits(_) => Some(MaskMode::Bits),
            Saved::Regenerate(_) => Some(MaskMode::Regenerate),
        }
    }

    /// The packed keep bits, one per decision (per element for elementwise layers, per
    /// channel or sample for grouped ones), downloaded or regenerated; `None` in eval mode.
    pub fn keep_bits(&self) -> Result<Option<Vec<u32>>> {
        let n = crate::tensor::element_count(&self.shape)?;
        match &self.saved {
            Saved::Identity => Ok(None),
            Saved::Bits(m) => m.to_vec().map(Some),
            Saved::Regenerate(pos) => Ok(Some(regenerate_bits(pos, &self.prob, self.decisions, n))),
        }
    }

    /// The drop probability of the forward.
    pub fn p(&self) -> f64 {
        self.prob.p()
    }

    /// Bytes held by the saved mask (0 for the regenerate form and eval mode).
    pub fn saved_bytes(&self) -> usize {
        match &self.saved {
            Saved::Bits(_) => {
                let n = self.shape.iter().product();
                4 * mask_words(self.decisions.count(n))
            }
            _ => 0,
        }
    }

    pub(crate) fn check_grad<T: Element>(&self, grad: &Tensor<T>, op: &'static str) -> Result<()> {
        if T::DTYPE != self.dtype {
            return Err(Error::DTypeMismatch {
                op,
                expected: self.dtype,
                got: T::DTYPE,
            });
        }
        grad.expect_shape(&self.shape, op)?;
        self.device.expect_same(&grad.device(), op)
    }
}

/// The decision bits of a regenerate-form state, recomputed on the host.
fn regenerate_bits(
    pos: &StreamPos,
    prob: &Probability,
    decisions: Decisions,
    n: usize,
) -> Vec<u32> {
    let (first, count) = match decisions {
        Decisions::Elementwise => (pos.index_base, n),
        Decisions::Grouped { first, count, .. } => (first, count),
    };
    let mut bits = vec![0u32; mask_words(count)];
    fill_keep_bits(pos.seed, pos.offset, first, prob, count, &mut bits);
    bits
}

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

/// Training-mode elementwise dropout; the output is new (`Some`) or written over the input.
pub(crate) fn dropout_train<T: Element>(
    x: Operand<'_, T>,
    prob: &Probability,
    pos: StreamPos,
    mode: MaskMode,
) -> TrainResult<T> {
    let scale = to_compute_f64::<T>(prob.scale_f64());
    elementwise_train(
        x,
        prob,
        pos,
        mode,
        cpu::Scale(scale),
        prob.scale_f64(),
        #[cfg(feature = "cuda")]
        |xc| crate::cuda::ops::dropout_forward(xc, pos, prob, scale, mode),
    )
}

/// A training forward with elementwise decisions (Dropout, AlphaDropout): `op` is what the
/// CPU does to kept elements, `cuda` launches the matching kernel, and kept gradients are
/// scaled by `grad_scale` in backward.
#[allow(clippy::type_complexity)]
pub(crate) fn elementwise_train<T: Element, K: cpu::KeptOp<T::Compute>>(
    x: Operand<'_, T>,
    prob: &Probability,
    pos: StreamPos,
    mode: MaskMode,
    op: K,
    grad_scale: f64,
    #[cfg(feature = "cuda")] cuda: impl FnOnce(
        crate::cuda::CudaOperand<'_, T>,
    ) -> Result<(
        Option<crate::cuda::CudaBuffer<T>>,
        Option<cudarc::driver::CudaSlice<u32>>,
    )>,
) -> TrainResult<T> {
    let n = x.tensor().len();
    check_index_range(pos.index_base, n)?;
    let (out, mask) = run_forward(
        x,
        |src, y| {
            let mut bits = (mode == MaskMode::Bits).then(|| cpu::alloc_mask(n));
            cpu::dropout::forward_with(src, y, bits.as_deref_mut(), pos, prob, op);
            Ok(bits.map(MaskBuffer::Cpu))
        },
        #[cfg(feature = "cuda")]
        |xc| {
            let (y, bits) = cuda(xc)?;
            Ok((y, bits.map(MaskBuffer::Cuda)))
        },
    )?;
    let state = DropoutState::trained(&out, mask, pos, prob, Decisions::Elementwise, grad_scale);
    Ok((out.output, state))
}

/// A forward's output (`None` when written in place) with the input's shape and device.
pub(crate) struct ForwardOut<T: Element> {
    pub output: Option<Tensor<T>>,
    pub shape: Vec<usize>,
    pub device: Device,
}

/// Runs a forward on the backend that holds `x`. `cpu(src, out)` fills `out` from `src`
/// (`Source::Output` when in place); `cuda(operand)` launches and returns the new output
/// buffer, if any. Both return the mask they saved.
pub(crate) fn run_forward<T: Element, M>(
    x: Operand<'_, T>,
    cpu: impl FnOnce(cpu::Source<'_, T>, &mut [T]) -> Result<M>,
    #[cfg(feature = "cuda")] cuda: impl FnOnce(
        crate::cuda::CudaOperand<'_, T>,
    ) -> Result<(Option<crate::cuda::CudaBuffer<T>>, M)>,
) -> Result<(ForwardOut<T>, M)> {
    let (shape, device) = (x.tensor().shape().to_vec(), x.tensor().device());
    let (storage, mask) = match x {
        Operand::Input(t) => match &t.storage {
            Storage::Cpu(xs) => {
                let mut y = cpu::alloc_output::<T>(xs.len());
                let mask = cpu(cpu::Source::Slice(xs), &mut y)?;
                (Some(Storage::Cpu(y)), mask)
            }
            #[cfg(feature = "cuda")]
            Storage::Cuda(xb) => {
                let (y, mask) = cuda(crate::cuda::CudaOperand::Input(xb))?;
                (y.map(Storage::Cuda), mask)
            }
        },
        Operand::InPlace(t) => match &mut t.storage {
            Storage::Cpu(xs) => (None, cpu(cpu::Source::Output, xs)?),
            #[cfg(feature = "cuda")]
            Storage::Cuda(xb) => {
                let (_, mask) = cuda(crate::cuda::CudaOperand::InPlace(xb))?;
                (None, mask)
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

/// The gradient of any dropout-family forward: `dx = kept ? dy * g : +0` through the saved
/// mask, where g is the layer's gradient factor (1/q for dropout, a for alpha dropout).
pub fn dropout_backward<T: Element>(grad: &Tensor<T>, state: &DropoutState) -> Result<Tensor<T>> {
    const OP: &str = "dropout backward";
    state.check_grad(grad, OP)?;
    let scale = to_compute_f64::<T>(state.grad_scale);
    let n = grad.len();
    let storage = match (&grad.storage, &state.saved) {
        (_, Saved::Identity) => return grad.try_clone(),
        (Storage::Cpu(g), saved) => {
            let mut dx = cpu::alloc_output::<T>(n);
            let src = cpu::Source::Slice(g);
            match (saved, state.decisions) {
                (Saved::Regenerate(pos), Decisions::Elementwise) => {
                    cpu::dropout::forward(src, &mut dx, None, *pos, &state.prob, scale)
                }
                (Saved::Bits(MaskBuffer::Cpu(bits)), Decisions::Elementwise) => {
                    cpu::dropout::backward_bits(src, &mut dx, bits, scale)
                }
                (Saved::Bits(MaskBuffer::Cpu(bits)), Decisions::Grouped { group, lead, .. }) => {
                    cpu::family::grouped_apply(src, &mut dx, bits, group, lead, cpu::Scale(scale))
                }
                (Saved::Regenerate(pos), d @ Decisions::Grouped { group, lead, .. }) => {
                    let bits = regenerate_bits(pos, &state.prob, d, n);
                    cpu::family::grouped_apply(src, &mut dx, &bits, group, lead, cpu::Scale(scale))
                }
                _ => return Err(mask_elsewhere()),
            }
            Storage::Cpu(dx)
        }
        #[cfg(feature = "cuda")]
        (Storage::Cuda(g), saved) => Storage::Cuda(crate::cuda::ops::backward(
            g,
            saved,
            &state.prob,
            state.decisions,
            scale,
        )?),
    };
    Ok(Tensor::from_storage(storage, grad.shape().to_vec()))
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
