//! What a forward saves for its backward ([`DropoutState`]): the decisions (packed bits on
//! the device that made them, or the stream position to regenerate them), how elements map
//! to decisions, and the gradient factor of kept elements.

use crate::backend::Backend;
use crate::cuda;
use crate::cuda::Cuda;
use crate::device::Device;
use crate::element::{DType, Element};
use crate::error::{Error, Result};
use crate::mask::{mask_words, Probability};
use crate::plan::{Decisions, MaskMode, StreamPos};
use crate::shard::ShardLayout;
use crate::tensor::Tensor;
use std::sync::{Arc, Mutex};

/// A forward's output (`None` when written in place) with the input's shape and device.
pub(crate) struct ForwardOut<T: Element> {
    pub output: Option<Tensor<T>>,
    pub shape: Vec<usize>,
    pub device: Device,
}

/// Packed keep bits on the device that produced them.
#[derive(Debug)]
pub(crate) enum MaskBuffer {
    Cpu(CpuMask),
    Cuda(cuda::MaskSlice),
}

/// A CPU mask; dropped, it goes to [`crate::cpu::recycle`], for the next mask of its size.
#[derive(Debug)]
pub(crate) struct CpuMask(pub Vec<u32>);

impl Drop for CpuMask {
    fn drop(&mut self) {
        crate::cpu::recycle::give(std::mem::take(&mut self.0));
    }
}

impl MaskBuffer {
    pub(super) fn to_vec(&self) -> Result<Vec<u32>> {
        match self {
            MaskBuffer::Cpu(v) => crate::alloc::copied(&v.0),
            MaskBuffer::Cuda(s) => Cuda::download_mask(s),
        }
    }

    /// The device mask, to be reused by a forward that writes into preallocated buffers
    /// (a CPU mask goes back to the recycler).
    pub(crate) fn into_cuda(self) -> Option<cuda::MaskSlice> {
        match self {
            MaskBuffer::Cuda(s) => Some(s),
            MaskBuffer::Cpu(_) => None,
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
    /// The layout of a shard that is not one contiguous range (its decisions are read
    /// through it when regenerated); `None` otherwise.
    pub(crate) shard: Option<Arc<ShardLayout>>,
    /// A grouped regenerate-form forward's decision mask, kept only as scratch: an
    /// `_into` forward or backward of the same layout draws into it instead of
    /// allocating (behind a lock: a backward borrows the state).
    pub(crate) scratch: Mutex<Option<MaskBuffer>>,
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
            shard: None,
            scratch: Mutex::new(None),
        }
    }

    /// The saved mask (or the scratch one), taken out for reuse (the state is left as an
    /// eval-mode one).
    pub(crate) fn take_mask(&mut self) -> Option<MaskBuffer> {
        let scratch = self.scratch_mut().take();
        match std::mem::replace(&mut self.saved, Saved::Identity) {
            Saved::Bits(m) => Some(m),
            _ => scratch,
        }
    }

    /// The scratch mask, locked.
    pub(crate) fn scratch(&self) -> std::sync::MutexGuard<'_, Option<MaskBuffer>> {
        // A mask buffer is valid whatever a panicking holder did with it.
        self.scratch
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn scratch_mut(&mut self) -> &mut Option<MaskBuffer> {
        self.scratch
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A grouped forward's state: the mask saved (bits form) or kept as scratch.
    pub(crate) fn trained_grouped<T: Element>(
        out: &ForwardOut<T>,
        mask: Option<MaskBuffer>,
        pos: StreamPos,
        prob: &Probability,
        mode: MaskMode,
        decisions: Decisions,
        grad_scale: f64,
    ) -> Self {
        let (saved, scratch) = match mode {
            MaskMode::Bits => (mask, None),
            MaskMode::Regenerate => (None, mask),
        };
        let state = Self::trained(out, saved, pos, prob, decisions, grad_scale);
        *state.scratch() = scratch;
        state
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
            shard: None,
            scratch: Mutex::new(None),
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
            Saved::Regenerate(pos) if pos.is_captured() => Err(Error::InvalidArgument {
                op: "keep bits",
                reason: "the state was saved by a call captured into a CUDA graph: its \
                         (seed, offset) are known only when the graph runs (use the bits \
                         form to read the mask)"
                    .into(),
            }),
            Saved::Regenerate(pos) => match &self.shard {
                Some(layout) => layout.keep_bits(pos.seed, pos.offset, &self.prob).map(Some),
                None => self.decisions.keep_bits(pos, &self.prob, n).map(Some),
            },
        }
    }

    /// The drop probability of the forward.
    pub fn p(&self) -> f64 {
        self.prob.p()
    }

    /// Bytes held by the saved mask (0 for the regenerate form and eval mode).
    pub fn saved_bytes(&self) -> usize {
        match &self.saved {
            // The shape is that of a tensor that existed, so its count fits.
            Saved::Bits(_) => crate::tensor::element_count(&self.shape)
                .map_or(0, |n| 4 * mask_words(self.decisions.span(0, n).1)),
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
