//! Stateless dropout functions: the caller supplies (seed, offset) and keeps the saved
//! state. The layers in [`crate::layers`] call these; users who manage their own random
//! state can too. This is where a call is validated and handed to a backend.

use crate::cpu;
use crate::device::Device;
use crate::element::{to_compute_f64, DType, Element};
use crate::error::{Error, Result};
use crate::mask::{mask_words, Probability};
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
    /// its decision i is `index_base + i`, so shards reproduce the whole tensor's mask.
    pub fn with_index_base(mut self, index_base: u64) -> Self {
        self.index_base = index_base;
        self
    }
}

/// How forward hands the decisions to backward (SPEC section 4). Both give identical
/// gradients: `Bits` costs n/8 bytes, `Regenerate` re-runs Philox in backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MaskMode {
    /// Save one bit per element (the default, like PyTorch saving its mask).
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

/// What a forward saves for its backward: the mask (bits or how to regenerate it), the
/// probability, and the shape, dtype and device it applies to (checked by backward).
#[derive(Debug)]
pub struct DropoutState {
    pub(crate) saved: Saved,
    pub(crate) prob: Probability,
    pub(crate) shape: Vec<usize>,
    pub(crate) dtype: DType,
    pub(crate) device: Device,
}

impl DropoutState {
    /// The saved form, `None` for an eval-mode forward.
    pub fn mask_mode(&self) -> Option<MaskMode> {
        match self.saved {
            Saved::Identity => None,
            Saved::Bits(_) => Some(MaskMode::Bits),
            Saved::Regenerate(_) => Some(MaskMode::Regenerate),
        }
    }

    /// The packed keep bits, downloaded or regenerated (`None` in eval mode).
    pub fn keep_bits(&self) -> Result<Option<Vec<u32>>> {
        let n = crate::tensor::element_count(&self.shape)?;
        match &self.saved {
            Saved::Identity => Ok(None),
            Saved::Bits(m) => m.to_vec().map(Some),
            Saved::Regenerate(pos) => Ok(Some(crate::mask::keep_bits_from(
                pos.seed,
                pos.offset,
                pos.index_base,
                &self.prob,
                n,
            ))),
        }
    }

    /// The drop probability of the forward.
    pub fn p(&self) -> f64 {
        self.prob.p()
    }

    /// Bytes held by the saved mask (0 for the regenerate form).
    pub fn saved_bytes(&self) -> usize {
        match &self.saved {
            Saved::Bits(_) => 4 * mask_words(self.shape.iter().product()),
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
    let prob = Probability::new(p)?;
    if !training {
        return Ok((x.try_clone()?, identity_state(x, prob)));
    }
    dropout_train(x, &prob, pos, mode)
}

pub(crate) fn identity_state<T: Element>(x: &Tensor<T>, prob: Probability) -> DropoutState {
    DropoutState {
        saved: Saved::Identity,
        prob,
        shape: x.shape().to_vec(),
        dtype: T::DTYPE,
        device: x.device(),
    }
}

pub(crate) fn dropout_train<T: Element>(
    x: &Tensor<T>,
    prob: &Probability,
    pos: StreamPos,
    mode: MaskMode,
) -> Result<(Tensor<T>, DropoutState)> {
    check_index_range(pos.index_base, x.len())?;
    let scale = to_compute_f64::<T>(prob.scale_f64());
    let (storage, mask) = match &x.storage {
        Storage::Cpu(xs) => {
            let mut y = vec![T::ZERO; xs.len()];
            let mut bits = (mode == MaskMode::Bits).then(|| vec![0u32; mask_words(xs.len())]);
            cpu::dropout::forward(
                cpu::Source::Slice(xs),
                &mut y,
                bits.as_deref_mut(),
                pos,
                prob,
                scale,
            );
            (Storage::Cpu(y), bits.map(MaskBuffer::Cpu))
        }
        #[cfg(feature = "cuda")]
        Storage::Cuda(xb) => {
            let (y, bits) = crate::cuda::ops::dropout_forward(xb, pos, prob, scale, mode)?;
            (Storage::Cuda(y), bits.map(MaskBuffer::Cuda))
        }
    };
    let saved = match mask {
        Some(m) => Saved::Bits(m),
        None => Saved::Regenerate(pos),
    };
    let state = DropoutState {
        saved,
        prob: *prob,
        shape: x.shape().to_vec(),
        dtype: T::DTYPE,
        device: x.device(),
    };
    Ok((Tensor::from_storage(storage, x.shape().to_vec()), state))
}

/// In-place training forward: `x` is overwritten with the output (same bits as
/// [`dropout`]), saving a full-size allocation.
pub(crate) fn dropout_train_in_place<T: Element>(
    x: &mut Tensor<T>,
    prob: &Probability,
    pos: StreamPos,
    mode: MaskMode,
) -> Result<DropoutState> {
    check_index_range(pos.index_base, x.len())?;
    let scale = to_compute_f64::<T>(prob.scale_f64());
    let shape = x.shape().to_vec();
    let device = x.device();
    let mask = match &mut x.storage {
        Storage::Cpu(xs) => {
            let mut bits = (mode == MaskMode::Bits).then(|| vec![0u32; mask_words(xs.len())]);
            cpu::dropout::forward(
                cpu::Source::Output,
                xs,
                bits.as_deref_mut(),
                pos,
                prob,
                scale,
            );
            bits.map(MaskBuffer::Cpu)
        }
        #[cfg(feature = "cuda")]
        Storage::Cuda(xb) => {
            crate::cuda::ops::dropout_forward_in_place(xb, pos, prob, scale, mode)?
                .map(MaskBuffer::Cuda)
        }
    };
    Ok(DropoutState {
        saved: mask.map_or(Saved::Regenerate(pos), Saved::Bits),
        prob: *prob,
        shape,
        dtype: T::DTYPE,
        device,
    })
}

/// The gradient of [`dropout`]: `dx = dropped ? +0 : dy * s`, through the saved mask.
pub fn dropout_backward<T: Element>(grad: &Tensor<T>, state: &DropoutState) -> Result<Tensor<T>> {
    const OP: &str = "dropout backward";
    state.check_grad(grad, OP)?;
    let scale = to_compute_f64::<T>(state.prob.scale_f64());
    let storage = match (&grad.storage, &state.saved) {
        (_, Saved::Identity) => return grad.try_clone(),
        (Storage::Cpu(g), Saved::Bits(MaskBuffer::Cpu(bits))) => {
            let mut dx = vec![T::ZERO; g.len()];
            cpu::dropout::backward_bits(cpu::Source::Slice(g), &mut dx, bits, scale);
            Storage::Cpu(dx)
        }
        (Storage::Cpu(g), Saved::Regenerate(pos)) => {
            let mut dx = vec![T::ZERO; g.len()];
            cpu::dropout::forward(
                cpu::Source::Slice(g),
                &mut dx,
                None,
                *pos,
                &state.prob,
                scale,
            );
            Storage::Cpu(dx)
        }
        #[cfg(feature = "cuda")]
        (Storage::Cuda(g), Saved::Bits(MaskBuffer::Cuda(bits))) => {
            Storage::Cuda(crate::cuda::ops::dropout_backward_bits(g, bits, scale)?)
        }
        #[cfg(feature = "cuda")]
        (Storage::Cuda(g), Saved::Regenerate(pos)) => {
            let (dx, _) = crate::cuda::ops::dropout_forward(
                g,
                *pos,
                &state.prob,
                scale,
                MaskMode::Regenerate,
            )?;
            Storage::Cuda(dx)
        }
        #[cfg(feature = "cuda")]
        _ => {
            return Err(Error::StateMismatch(
                "the saved mask lives on another device than the gradient".into(),
            ))
        }
    };
    Ok(Tensor::from_storage(storage, grad.shape().to_vec()))
}

/// Decision indices are u64: `index_base + n` must not wrap.
pub(crate) fn check_index_range(index_base: u64, n: usize) -> Result<()> {
    index_base.checked_add(n as u64).map(|_| ()).ok_or_else(|| {
        Error::OutOfRange(format!(
            "index_base {index_base} + {n} elements overflows the 64-bit decision index"
        ))
    })
}
