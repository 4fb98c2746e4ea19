//! The `_into` forms of the fused dropout + add + norm: the forward writes z, s and the
//! row statistics into an earlier call's [`AddNormOutput`] (its mask reused), the backward
//! writes into preallocated [`AddNormGrads`] through the state's column-sum partials. On
//! CUDA they then allocate nothing and need no host round trip, so a CUDA graph can
//! capture them. Same bits as the allocating forms (`tests/add_norm.rs`).

use super::dispatch::{check_captured, on_backend, OnBackend, Placed};
use super::norm::{
    check_add_norm, check_backward, grad_buffers, norm_call, place_norm_shard, AddNormConfig,
    AddNormGrads, AddNormInputs, AddNormOutput, AddNormSaved, AddNormState,
};
use super::state::{MaskBuffer, Saved};
use crate::backend::{NormBackwardInto, NormBuffers, NormForwardInto};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::plan::{MaskMode, Norm, NormCall, StreamPos, COLUMN_SUM_BLOCK_ROWS};
use crate::shard::ShardLayout;
use crate::tensor::Tensor;
use std::sync::MutexGuard;

const OP: &str = "dropout_add_norm into";
const OP_BWD: &str = "dropout_add_norm backward into";

fn locked<T>(m: &std::sync::Mutex<T>) -> MutexGuard<'_, T> {
    // The buffers behind the lock are valid whatever a panicking holder did.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// [`super::dropout_add_norm`] writing into `out`, the output of an earlier call of the
/// same shapes (z, s and the row statistics are overwritten, the mask reused; the state
/// becomes this call's). A call that fails leaves `out` as it was, but for a mask it may
/// have given up.
pub fn dropout_add_norm_into<T, R>(
    inputs: AddNormInputs<'_, T, R>,
    config: &AddNormConfig,
    pos: StreamPos,
    mode: MaskMode,
    out: &mut AddNormOutput<T, R>,
) -> Result<()>
where
    T: Element,
    R: Element<Compute = T::Compute>,
{
    dropout_add_norm_into_placed(inputs, config, pos, None, mode, out)
}

/// [`dropout_add_norm_into`] with the shard's place, if any (as
/// [`super::dropout_add_norm_shard`]).
pub(crate) fn dropout_add_norm_into_placed<T, R>(
    inputs: AddNormInputs<'_, T, R>,
    config: &AddNormConfig,
    pos: StreamPos,
    shard: Option<&ShardLayout>,
    mode: MaskMode,
    out: &mut AddNormOutput<T, R>,
) -> Result<()>
where
    T: Element,
    R: Element<Compute = T::Compute>,
{
    let (pos, shard) = place_norm_shard(inputs.x, pos, shard)?;
    let hidden = check_add_norm(&inputs, config, pos.index_base)?;
    let x = inputs.x;
    let dev = x.device();
    out.z.expect_shape(x.shape(), OP)?;
    out.s.expect_shape(x.shape(), OP)?;
    dev.expect_same(&out.z.device(), OP)?;
    dev.expect_same(&out.s.device(), OP)?;
    check_captured(x, pos)?;
    if config.training && !pos.is_captured() {
        // Refused before the state's buffers are taken (dropping them would free device
        // memory inside the capture).
        dev.refuse_capture("a fused forward with a position by value")?;
    }
    let rows = x.len() / hidden;
    let state = &mut out.state;
    if state.stats.len() != 2 * rows || !state.stats.device().same_as(&dev) {
        state.stats = Tensor::zeros(&[rows, 2], &dev)?;
    }
    let (call, mode) = norm_call(config, hidden, pos, mode, shard)?;
    let scratch = locked(&state.scratch).take();
    let reuse = match std::mem::replace(&mut state.saved, Saved::Identity) {
        Saved::Bits(m) => Some(m),
        _ => scratch,
    };
    let op = ForwardInto {
        inputs: &inputs,
        call: &call,
        mode,
        z: &mut out.z,
        s: &mut out.s,
        stats: &mut state.stats,
        reuse,
    };
    let mask = on_backend(x, op)?;
    let (saved, scratch) = match (config.training, mode, mask) {
        (false, _, _) => (Saved::Identity, None),
        (true, MaskMode::Bits, Some(bits)) => (Saved::Bits(bits), None),
        (true, _, scratch) => (Saved::Regenerate(pos), scratch),
    };
    state.saved = saved;
    *locked(&state.scratch) = scratch;
    state.call = call;
    state.has_bias = inputs.bias.is_some();
    state.has_residual = inputs.residual.is_some();
    state.shape = x.shape().to_vec();
    state.device = dev;
    Ok(())
}

/// The forward into the output's buffers on the backend that holds x.
struct ForwardInto<'a, 'b, T: Element, R: Element> {
    inputs: &'a AddNormInputs<'b, T, R>,
    call: &'a NormCall,
    mode: MaskMode,
    z: &'a mut Tensor<T>,
    s: &'a mut Tensor<R>,
    stats: &'a mut Tensor<f64>,
    reuse: Option<MaskBuffer>,
}

impl<T, R> OnBackend for ForwardInto<'_, '_, T, R>
where
    T: Element,
    R: Element<Compute = T::Compute>,
{
    type Output = Option<MaskBuffer>;

    fn run<B: Placed>(self) -> Result<Option<MaskBuffer>> {
        let inputs = self.inputs;
        let buffers = NormBuffers::<B, T, R> {
            x: B::buffer(inputs.x),
            bias: inputs.bias.map(B::buffer),
            residual: inputs.residual.map(B::buffer),
            gamma: B::buffer(inputs.gamma),
            beta: inputs.beta.map(B::buffer),
        };
        let out = NormForwardInto::<B, T, R> {
            z: B::buffer_mut(self.z),
            s: B::buffer_mut(self.s),
            stats: B::buffer_mut(self.stats),
            mask: self.reuse.and_then(B::take_mask),
        };
        Ok(B::norm_forward_into(buffers, self.call, self.mode, out)?.map(B::mask))
    }
}

/// [`super::dropout_add_norm_backward`] into `grads`, preallocated gradients as the
/// forward's inputs call for (a residual gradient if it had a residual, a bias gradient if
/// it had a bias, a beta gradient for LayerNorm; the others `None`), of the forward's
/// shapes, dtypes and device. The column sums go through the state's partial buffer,
/// allocated by the first call: later calls allocate nothing on CUDA.
pub fn dropout_add_norm_backward_into<T, R>(
    dz: &Tensor<T>,
    ds: Option<&Tensor<R>>,
    saved: AddNormSaved<'_, T, R>,
    state: &AddNormState,
    grads: &mut AddNormGrads<T, R>,
) -> Result<()>
where
    T: Element,
    R: Element<Compute = T::Compute>,
{
    check_backward(dz, ds, &saved, state)?;
    check_grads(state, grads)?;
    let h = state.call.hidden;
    let blocks = (dz.len() / h).div_ceil(COLUMN_SUM_BLOCK_ROWS);
    let mut partial = locked(&state.partial);
    let fits = |p: &Tensor<f64>| p.len() >= blocks * h && p.device().same_as(&state.device);
    if !partial.as_ref().is_some_and(fits) {
        *partial = Some(Tensor::zeros(&[blocks * h], &state.device)?);
    }
    let partial = partial
        .as_mut()
        .unwrap_or_else(|| unreachable!("the partial buffer was made above"));
    let mut scratch = locked(&state.scratch);
    let op = BackwardInto {
        dz,
        ds,
        saved,
        state,
        grads,
        partial,
        scratch: scratch.as_mut(),
    };
    on_backend(dz, op)
}

/// The gradients match what the forward's inputs call for, in shape and device.
fn check_grads<T: Element, R: Element>(
    state: &AddNormState,
    grads: &AddNormGrads<T, R>,
) -> Result<()> {
    let h = [state.call.hidden];
    let dev = &state.device;
    let presence = |name: &str, want: bool, got: bool| {
        if want == got {
            Ok(())
        } else {
            Err(Error::InvalidArgument {
                op: OP_BWD,
                reason: format!(
                    "the {name} gradient must be {} (as the forward's inputs call for)",
                    if want { "given" } else { "None" }
                ),
            })
        }
    };
    presence("residual", state.has_residual, grads.residual.is_some())?;
    presence("bias", state.has_bias, grads.bias.is_some())?;
    let is_layer = state.call.norm == Norm::LayerNorm;
    presence("beta", is_layer, grads.beta.is_some())?;
    grads.x.expect_shape(&state.shape, OP_BWD)?;
    dev.expect_same(&grads.x.device(), OP_BWD)?;
    if let Some(r) = &grads.residual {
        r.expect_shape(&state.shape, OP_BWD)?;
        dev.expect_same(&r.device(), OP_BWD)?;
    }
    for v in [grads.bias.as_ref(), Some(&grads.gamma), grads.beta.as_ref()]
        .into_iter()
        .flatten()
    {
        v.expect_shape(&h, OP_BWD)?;
        dev.expect_same(&v.device(), OP_BWD)?;
    }
    Ok(())
}

/// The backward into `grads` on the backend that holds dz.
struct BackwardInto<'a, T: Element, R: Element> {
    dz: &'a Tensor<T>,
    ds: Option<&'a Tensor<R>>,
    saved: AddNormSaved<'a, T, R>,
    state: &'a AddNormState,
    grads: &'a mut AddNormGrads<T, R>,
    partial: &'a mut Tensor<f64>,
    scratch: Option<&'a mut MaskBuffer>,
}

impl<T, R> OnBackend for BackwardInto<'_, T, R>
where
    T: Element,
    R: Element<Compute = T::Compute>,
{
    type Output = ();

    fn run<B: Placed>(self) -> Result<()> {
        let state = self.state;
        let buffers = grad_buffers::<B, T, R>(self.dz, self.ds, self.saved, state);
        let g = self.grads;
        let out = NormBackwardInto::<B, T, R> {
            x: B::buffer_mut(&mut g.x),
            residual: g.residual.as_mut().map(B::buffer_mut),
            bias: g.bias.as_mut().map(B::buffer_mut),
            gamma: B::buffer_mut(&mut g.gamma),
            beta: g.beta.as_mut().map(B::buffer_mut),
            partial: B::buffer_mut(self.partial),
            scratch: self.scratch.map(B::saved_mask_mut),
        };
        B::norm_backward_into(buffers, &state.call, out)
    }
}
