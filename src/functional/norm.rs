//! The fused dropout + residual add + LayerNorm / RMSNorm (docs/spec.md, section 6.3):
//! `s = residual + dropout(x + bias)`, `z = norm(s)`, in one pass, and its backward. This
//! is where a call is checked (once: shapes, dtypes, devices, eps, the decision range)
//! and handed to the backend that holds its tensors.

use super::dispatch::{on_backend, OnBackend, Placed};
use super::state::{MaskBuffer, Saved};
use crate::backend::{NormBuffers, NormGradBuffers, Wanted};
use crate::device::Device;
use crate::element::{DType, Element};
use crate::error::{Error, Result};
use crate::mask::{mask_words, Probability};
use crate::plan::{MaskMode, Norm, NormCall, StreamPos};
use crate::shard::ShardLayout;
use crate::tensor::{Storage, Tensor};
use std::sync::{Arc, Mutex};

const OP: &str = "dropout_add_norm";
const OP_BWD: &str = "dropout_add_norm backward";

/// The tensors of one forward: x (..., H); bias, gamma, beta (H); residual like x.
#[derive(Debug, Clone, Copy)]
pub struct AddNormInputs<'a, T: Element, R: Element> {
    /// The input, (..., H).
    pub x: &'a Tensor<T>,
    /// Added to every row of x before the dropout.
    pub bias: Option<&'a Tensor<T>>,
    /// The residual stream, x's shape, in `R` (T, or f32 for f16 / bf16 inputs).
    pub residual: Option<&'a Tensor<R>>,
    /// The norm's scale, (H).
    pub gamma: &'a Tensor<T>,
    /// The norm's shift, (H): LayerNorm only.
    pub beta: Option<&'a Tensor<T>>,
}

/// The scalars of one forward.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AddNormConfig {
    /// LayerNorm or RMSNorm.
    pub norm: Norm,
    /// The drop probability, in [0, 1].
    pub p: f64,
    /// Added to the variance (or mean square) under the square root: finite, >= 0.
    pub eps: f64,
    /// Eval mode (false): nothing is dropped; the add and the norm still run.
    pub training: bool,
}

/// What a forward returns: the normalized output, the new residual stream and the state
/// its backward needs.
#[derive(Debug)]
pub struct AddNormOutput<T: Element, R: Element> {
    /// `norm(s) * gamma (+ beta)`, x's shape and dtype.
    pub z: Tensor<T>,
    /// `residual + dropout(x + bias)`, x's shape, in the residual stream's dtype.
    pub s: Tensor<R>,
    /// The decisions and row statistics for [`dropout_add_norm_backward`].
    pub state: AddNormState,
}

/// What the forward saves: the decisions (packed bits, or how to regenerate them), the
/// per-row mean and rstd, and what the call looked like (all checked by backward).
#[derive(Debug)]
pub struct AddNormState {
    pub(super) saved: Saved,
    pub(super) call: NormCall,
    /// mean and rstd of row r at 2r and 2r + 1: compute-type values, widened exactly.
    pub(super) stats: Tensor<f64>,
    pub(super) has_bias: bool,
    pub(super) has_residual: bool,
    pub(super) shape: Vec<usize>,
    pub(super) dtype: DType,
    pub(super) residual_dtype: DType,
    pub(super) device: Device,
    /// The regenerate form's decision mask on CUDA, kept as scratch for the `_into`
    /// forms to draw into (`super::norm_into`); the allocating forms leave it empty.
    pub(super) scratch: Mutex<Option<MaskBuffer>>,
    /// The column sums' f64 block partials of `dropout_add_norm_backward_into`, made by
    /// its first call and kept across `_into` forwards.
    pub(super) partial: Mutex<Option<Tensor<f64>>>,
}

impl AddNormState {
    /// The saved form, `None` for an eval-mode forward.
    pub fn mask_mode(&self) -> Option<MaskMode> {
        match self.saved {
            Saved::Identity => None,
            Saved::Bits(_) => Some(MaskMode::Bits),
            Saved::Regenerate(_) => Some(MaskMode::Regenerate),
        }
    }

    /// The norm of the forward.
    pub fn norm(&self) -> Norm {
        self.call.norm
    }

    /// The packed keep bits (docs/spec.md section 4), downloaded or regenerated; `None`
    /// in eval mode.
    pub fn keep_bits(&self) -> Result<Option<Vec<u32>>> {
        let n = crate::tensor::element_count(&self.shape)?;
        match &self.saved {
            Saved::Identity => Ok(None),
            Saved::Bits(m) => m.to_vec().map(Some),
            Saved::Regenerate(pos) => {
                let decisions = crate::plan::Decisions::Elementwise;
                decisions.keep_bits(pos, &self.call.prob, n).map(Some)
            }
        }
    }

    /// Per row, (mean, rstd) as the compute type held them (mean is +0 for RMSNorm).
    pub fn row_stats(&self) -> Result<Vec<(f64, f64)>> {
        let v = self.stats.to_vec()?;
        Ok(v.chunks_exact(2).map(|p| (p[0], p[1])).collect())
    }

    /// Bytes held by the saved mask (0 for the regenerate form and eval mode), not
    /// counting the row statistics (16 bytes a row).
    pub fn saved_bytes(&self) -> usize {
        match &self.saved {
            Saved::Bits(_) => {
                crate::tensor::element_count(&self.shape).map_or(0, |n| 4 * mask_words(n))
            }
            _ => 0,
        }
    }
}

/// The gradients of [`dropout_add_norm`]; `None` where the forward had no such input.
#[derive(Debug)]
pub struct AddNormGrads<T: Element, R: Element> {
    /// d/dx (through the mask and scale).
    pub x: Tensor<T>,
    /// d/dresidual: the gradient at s, in the residual stream's dtype.
    pub residual: Option<Tensor<R>>,
    /// d/dbias: column sums of dx (blocked f64 order, docs/spec.md 6.2's note).
    pub bias: Option<Tensor<T>>,
    /// d/dgamma: column sums of dz * y.
    pub gamma: Tensor<T>,
    /// d/dbeta: column sums of dz (LayerNorm only).
    pub beta: Option<Tensor<T>>,
}

/// The residual stream's dtype is the input's, or f32 for f16 / bf16 inputs.
fn check_residual_dtype<T: Element, R: Element>(op: &'static str) -> Result<()> {
    let ok = R::DTYPE == T::DTYPE
        || (R::DTYPE == DType::F32 && matches!(T::DTYPE, DType::F16 | DType::BF16));
    if ok {
        Ok(())
    } else {
        Err(Error::DTypeMismatch {
            op,
            expected: T::DTYPE,
            got: R::DTYPE,
        })
    }
}

/// The shapes of one forward, for the checks the dropkit and candle front ends share.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AddNormShapes<'a> {
    pub x: &'a [usize],
    pub bias: Option<&'a [usize]>,
    pub residual: Option<&'a [usize]>,
    pub gamma: &'a [usize],
    pub beta: Option<&'a [usize]>,
}

fn expect_dims(got: &[usize], expected: &[usize]) -> Result<()> {
    if got == expected {
        Ok(())
    } else {
        Err(Error::ShapeMismatch {
            op: OP,
            expected: expected.to_vec(),
            got: got.to_vec(),
        })
    }
}

/// Everything but dtypes and devices: shapes, beta for the norm, eps, p, the shard's row
/// start and the decision range. Returns H.
pub(crate) fn check_add_norm_shapes(
    shapes: AddNormShapes<'_>,
    config: &AddNormConfig,
    index_base: u64,
) -> Result<usize> {
    let x = shapes.x;
    let hidden = x.last().copied().unwrap_or(0);
    if hidden == 0 || hidden >= 1 << 31 {
        return Err(Error::InvalidShape {
            op: OP,
            shape: x.to_vec(),
            reason: "x must be (..., H) with 1 <= H < 2^31: the norm runs over the last axis"
                .into(),
        });
    }
    for v in [Some(shapes.gamma), shapes.bias, shapes.beta]
        .into_iter()
        .flatten()
    {
        expect_dims(v, &[hidden])?;
    }
    if let Some(r) = shapes.residual {
        expect_dims(r, x)?;
    }
    match (config.norm, shapes.beta.is_some()) {
        (Norm::LayerNorm, false) => return Err(beta_error("LayerNorm needs beta (H)")),
        (Norm::RmsNorm, true) => return Err(beta_error("RMSNorm has no beta; pass None")),
        _ => {}
    }
    check_eps(OP, config.eps)?;
    Probability::new(config.p)?;
    if !index_base.is_multiple_of(hidden as u64) {
        return Err(Error::InvalidArgument {
            op: OP,
            reason: format!(
                "a shard of a norm layer starts on a row: index_base {index_base} is not a \
                 multiple of H = {hidden}"
            ),
        });
    }
    let n = crate::tensor::element_count(x)?;
    super::check_index_range(index_base, n)?;
    Ok(hidden)
}

/// eps is finite and >= 0.
pub(crate) fn check_eps(op: &'static str, eps: f64) -> Result<()> {
    if eps.is_finite() && eps >= 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidArgument {
            op,
            reason: format!("eps = {eps} must be a finite number >= 0"),
        })
    }
}

/// Checks a forward; returns H. Nothing is taken from a generator before this passes.
pub(crate) fn check_add_norm<T: Element, R: Element>(
    inputs: &AddNormInputs<'_, T, R>,
    config: &AddNormConfig,
    index_base: u64,
) -> Result<usize> {
    check_residual_dtype::<T, R>(OP)?;
    let x = inputs.x;
    let dev = x.device();
    let row_vectors = [Some(inputs.gamma), inputs.bias, inputs.beta];
    for v in row_vectors.into_iter().flatten() {
        dev.expect_same(&v.device(), OP)?;
    }
    if let Some(r) = inputs.residual {
        dev.expect_same(&r.device(), OP)?;
    }
    let shapes = AddNormShapes {
        x: x.shape(),
        bias: inputs.bias.map(|t| t.shape()),
        residual: inputs.residual.map(|t| t.shape()),
        gamma: inputs.gamma.shape(),
        beta: inputs.beta.map(|t| t.shape()),
    };
    check_add_norm_shapes(shapes, config, index_base)
}

fn beta_error(reason: &str) -> Error {
    Error::InvalidArgument {
        op: OP,
        reason: reason.into(),
    }
}

/// `s = residual + dropout(x + bias)`, `z = norm(s) * gamma (+ beta)` in one pass
/// (docs/spec.md section 6.3), at `pos` (one offset of a generator per training call).
/// With [`MaskMode::Bits`] the state holds a bit per element; with
/// [`MaskMode::Regenerate`], nothing but the stream position. Either way it holds the
/// row statistics.
pub fn dropout_add_norm<T, R>(
    inputs: AddNormInputs<'_, T, R>,
    config: &AddNormConfig,
    pos: StreamPos,
    mode: MaskMode,
) -> Result<AddNormOutput<T, R>>
where
    T: Element,
    R: Element<Compute = T::Compute>,
{
    dropout_add_norm_placed(inputs, config, pos, None, mode)
}

/// [`dropout_add_norm`] of one shard of a larger tensor, placed by `layout`: each element
/// decides by its row-major index in the whole tensor, so the shards' z, s and gradients
/// put together are the unsharded ones, bit for bit. The norm runs over whole rows, so
/// the shard must hold the whole last axis (split the leading axes: batch, sequence or
/// context parallelism; a split of H would need the row statistics of other ranks).
/// bias, gamma and beta are then the whole (H) vectors; `pos.index_base` must be 0. The
/// column sums (dgamma, dbeta, dbias) are over the shard's own rows: the ranks add theirs
/// up.
pub fn dropout_add_norm_shard<T, R>(
    inputs: AddNormInputs<'_, T, R>,
    config: &AddNormConfig,
    pos: StreamPos,
    layout: &ShardLayout,
    mode: MaskMode,
) -> Result<AddNormOutput<T, R>>
where
    T: Element,
    R: Element<Compute = T::Compute>,
{
    dropout_add_norm_placed(inputs, config, pos, Some(layout), mode)
}

/// Where a norm call's decisions come from: the position itself without a shard; for a
/// shard (checked here: x is its shard, of whole rows, and `pos` has no index base of its
/// own) its first index when it is one range of the tensor, else its layout.
pub(crate) fn place_norm_shard<T: Element>(
    x: &Tensor<T>,
    pos: StreamPos,
    shard: Option<&ShardLayout>,
) -> Result<(StreamPos, Option<Arc<ShardLayout>>)> {
    let Some(layout) = shard else {
        return Ok((pos, None));
    };
    super::check_shard(x, pos, layout)?;
    let axis = layout.shape().len() - 1;
    let (len, whole) = (layout.shape()[axis], layout.global_shape()[axis]);
    if len != whole {
        return Err(Error::InvalidArgument {
            op: OP,
            reason: format!(
                "a norm normalizes whole rows, so a shard must hold the whole last axis                  (H = {whole}), not {len} of it from {}; split the leading axes",
                layout.start()[axis]
            ),
        });
    }
    Ok(match layout.contiguous_start() {
        Some(start) => (pos.with_index_base(start), None),
        None => (pos, Some(Arc::new(layout.clone()))),
    })
}

/// [`dropout_add_norm`] with the shard's place, if any.
pub(crate) fn dropout_add_norm_placed<T, R>(
    inputs: AddNormInputs<'_, T, R>,
    config: &AddNormConfig,
    pos: StreamPos,
    shard: Option<&ShardLayout>,
    mode: MaskMode,
) -> Result<AddNormOutput<T, R>>
where
    T: Element,
    R: Element<Compute = T::Compute>,
{
    let (pos, shard) = place_norm_shard(inputs.x, pos, shard)?;
    let hidden = check_add_norm(&inputs, config, pos.index_base)?;
    let (call, mode) = norm_call(config, hidden, pos, mode, shard)?;
    let shape = inputs.x.shape().to_vec();
    let rows = inputs.x.len() / hidden;
    let (z, s, stats, mask) = on_backend(
        inputs.x,
        Forward {
            inputs: &inputs,
            call: &call,
            mode,
        },
    )?;
    let saved = match (config.training, mask) {
        (false, _) => Saved::Identity,
        (true, Some(bits)) => Saved::Bits(bits),
        (true, None) => Saved::Regenerate(pos),
    };
    let state = AddNormState {
        saved,
        call,
        stats: Tensor::from_storage(stats, vec![rows, 2]),
        has_bias: inputs.bias.is_some(),
        has_residual: inputs.residual.is_some(),
        shape: shape.clone(),
        dtype: T::DTYPE,
        residual_dtype: R::DTYPE,
        device: inputs.x.device(),
        scratch: Mutex::new(None),
        partial: Mutex::new(None),
    };
    Ok(AddNormOutput {
        z: Tensor::from_storage(z, shape.clone()),
        s: Tensor::from_storage(s, shape),
        state,
    })
}

/// What the kernels take for a forward of `config`, and its saved form (eval mode: p = 0,
/// nothing saved).
pub(super) fn norm_call(
    config: &AddNormConfig,
    hidden: usize,
    pos: StreamPos,
    mode: MaskMode,
    shard: Option<Arc<ShardLayout>>,
) -> Result<(NormCall, MaskMode)> {
    let prob = Probability::new(if config.training { config.p } else { 0.0 })?;
    let call = NormCall {
        norm: config.norm,
        hidden,
        eps: config.eps,
        pos,
        prob,
        training: config.training,
        // Eval mode draws nothing.
        shard: shard.filter(|_| config.training),
    };
    let mode = if config.training {
        mode
    } else {
        MaskMode::Regenerate
    };
    Ok((call, mode))
}

/// The forward on the backend that holds x (check_add_norm put every input there).
struct Forward<'a, 'b, T: Element, R: Element> {
    inputs: &'a AddNormInputs<'b, T, R>,
    call: &'a NormCall,
    mode: MaskMode,
}

type Stored<T, R> = (Storage<T>, Storage<R>, Storage<f64>, Option<MaskBuffer>);

impl<T, R> OnBackend for Forward<'_, '_, T, R>
where
    T: Element,
    R: Element<Compute = T::Compute>,
{
    type Output = Stored<T, R>;

    fn run<B: Placed>(self) -> Result<Stored<T, R>> {
        let inputs = self.inputs;
        let buffers = NormBuffers::<B, T, R> {
            x: B::buffer(inputs.x),
            bias: inputs.bias.map(B::buffer),
            residual: inputs.residual.map(B::buffer),
            gamma: B::buffer(inputs.gamma),
            beta: inputs.beta.map(B::buffer),
        };
        let out = B::norm_forward(buffers, self.call, self.mode)?;
        Ok((
            B::storage(out.z),
            B::storage(out.s),
            B::storage(out.stats),
            out.mask.map(B::mask),
        ))
    }
}

/// The forward's tensors that backward reads again: s (which the forward returned) and
/// gamma.
#[derive(Debug, Clone, Copy)]
pub struct AddNormSaved<'a, T: Element, R: Element> {
    /// The forward's s.
    pub s: &'a Tensor<R>,
    /// The forward's gamma.
    pub gamma: &'a Tensor<T>,
}

/// Gradients of [`dropout_add_norm`] from dz and, optionally, ds (the gradient reaching s
/// from the residual path), with the same decisions as the forward (docs/spec.md 6.3).
pub fn dropout_add_norm_backward<T, R>(
    dz: &Tensor<T>,
    ds: Option<&Tensor<R>>,
    saved: AddNormSaved<'_, T, R>,
    state: &AddNormState,
) -> Result<AddNormGrads<T, R>>
where
    T: Element,
    R: Element<Compute = T::Compute>,
{
    check_backward(dz, ds, &saved, state)?;
    let call = &state.call;
    let h = call.hidden;
    let (x, residual, bias, gamma, beta) = on_backend(
        dz,
        Backward {
            dz,
            ds,
            saved,
            state,
        },
    )?;
    let shape = state.shape.clone();
    Ok(AddNormGrads {
        x: Tensor::from_storage(x, shape.clone()),
        residual: residual.map(|r| Tensor::from_storage(r, shape)),
        bias: bias.map(|b| Tensor::from_storage(b, vec![h])),
        gamma: Tensor::from_storage(gamma, vec![h]),
        beta: beta.map(|b| Tensor::from_storage(b, vec![h])),
    })
}

/// The backward on the backend that holds dz (check_backward put everything there).
struct Backward<'a, T: Element, R: Element> {
    dz: &'a Tensor<T>,
    ds: Option<&'a Tensor<R>>,
    saved: AddNormSaved<'a, T, R>,
    state: &'a AddNormState,
}

type GradStorage<T, R> = (
    Storage<T>,
    Option<Storage<R>>,
    Option<Storage<T>>,
    Storage<T>,
    Option<Storage<T>>,
);

impl<T, R> OnBackend for Backward<'_, T, R>
where
    T: Element,
    R: Element<Compute = T::Compute>,
{
    type Output = GradStorage<T, R>;

    fn run<B: Placed>(self) -> Result<GradStorage<T, R>> {
        let state = self.state;
        let buffers = grad_buffers::<B, T, R>(self.dz, self.ds, self.saved, state);
        let want = Wanted {
            residual: state.has_residual,
            bias: state.has_bias,
        };
        let g = B::norm_backward(buffers, &state.call, want)?;
        Ok((
            B::storage(g.x),
            g.residual.map(B::storage),
            g.bias.map(B::storage),
            B::storage(g.gamma),
            g.beta.map(B::storage),
        ))
    }
}

/// The backward's inputs on backend `B` (the caller checked every device).
pub(super) fn grad_buffers<'a, B: Placed, T: Element, R: Element>(
    dz: &'a Tensor<T>,
    ds: Option<&'a Tensor<R>>,
    saved: AddNormSaved<'a, T, R>,
    state: &'a AddNormState,
) -> NormGradBuffers<'a, B, T, R> {
    let mask = match &state.saved {
        Saved::Bits(m) => Some(B::saved_mask(m)),
        _ => None,
    };
    NormGradBuffers {
        dz: B::buffer(dz),
        ds: ds.map(B::buffer),
        s: B::buffer(saved.s),
        gamma: B::buffer(saved.gamma),
        stats: B::buffer(&state.stats),
        mask,
    }
}

/// dz, ds and s must be the forward's shape, dtypes and device; gamma (H).
pub(super) fn check_backward<T: Element, R: Element>(
    dz: &Tensor<T>,
    ds: Option<&Tensor<R>>,
    saved: &AddNormSaved<'_, T, R>,
    state: &AddNormState,
) -> Result<()> {
    let mismatch = |expected, got| Error::DTypeMismatch {
        op: OP_BWD,
        expected,
        got,
    };
    if T::DTYPE != state.dtype {
        return Err(mismatch(state.dtype, T::DTYPE));
    }
    if R::DTYPE != state.residual_dtype {
        return Err(mismatch(state.residual_dtype, R::DTYPE));
    }
    dz.expect_shape(&state.shape, OP_BWD)?;
    saved.s.expect_shape(&state.shape, OP_BWD)?;
    saved.gamma.expect_shape(&[state.call.hidden], OP_BWD)?;
    let dev = &state.device;
    dev.expect_same(&dz.device(), OP_BWD)?;
    dev.expect_same(&saved.s.device(), OP_BWD)?;
    dev.expect_same(&saved.gamma.device(), OP_BWD)?;
    if let Some(ds) = ds {
        ds.expect_shape(&state.shape, OP_BWD)?;
        dev.expect_same(&ds.device(), OP_BWD)?;
    }
    Ok(())
}
