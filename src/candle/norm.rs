//! The fused dropout + residual add + LayerNorm / RMSNorm for candle tensors (docs/spec.md
//! section 6.3), with gamma and beta (and bias) as ordinary tensors, so `Var`s get their
//! gradients through `loss.backward()`.
//!
//! One candle `CustomOp3` over (x, residual, params), where params is bias, gamma and beta
//! joined along their one axis (`Tensor::cat`, whose backward hands each its slice of the
//! gradient). Its output stacks z and s as (2, ...x's shape), which [`DropoutAddNorm`]
//! splits again (`get`, differentiable): so the op's backward receives dz and ds together
//! and runs dropkit's fused backward, `u = t + ds` added in the compute type, the same bits
//! as [`crate::functional::dropout_add_norm_backward`]. Nothing is saved: the decisions are
//! regenerated (SPEC section 4) and the row statistics recomputed from s (the same function
//! of the same values).
//!
//! CPU storage only: on candle's CUDA storage the op returns candle's error for a custom
//! op without a CUDA implementation (docs/CANDLE.md).

use super::util::{check_dtype, contiguous_range, to_candle_error};
use crate::cpu;
use crate::element::Element;
use crate::error::Error;
use crate::functional::{check_add_norm_shapes, check_eps, AddNormConfig, AddNormShapes};
use crate::layers::LayerCore;
use crate::mask::Probability;
use crate::plan::{Norm, NormCall, StreamPos};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

const OP: &str = "dropout_add_norm";

/// Fused dropout + residual add + LayerNorm / RMSNorm for candle tensors, the candle form
/// of [`crate::DropoutAddNorm`], with the residual stream in x's dtype. Like
/// [`super::BiasDropoutResidual`], a multi-input layer, not a `ModuleT`.
///
/// ```
/// use candle_core::{DType, Device, Tensor, Var};
/// use dropkit::{candle::DropoutAddNorm, Generator};
/// use std::sync::Arc;
///
/// let layer = DropoutAddNorm::layer_norm(0.1, 1e-5)?.with_generator(Arc::new(Generator::new(4)));
/// let dev = Device::Cpu;
/// let x = Tensor::arange(0f32, 32.0, &dev)?.reshape((4, 8))?;
/// let residual = Tensor::ones((4, 8), DType::F32, &dev)?;
/// let gamma = Var::ones(8, DType::F32, &dev)?;
/// let beta = Var::zeros(8, DType::F32, &dev)?;
/// let (z, s) = layer.forward_t(&x, None, &residual, &gamma, Some(&beta), true)?;
/// // The pre-norm block: the loss sees z, and s goes on as the residual stream.
/// let loss = (z.sum_all()? + s.sum_all()?)?;
/// let grads = loss.backward()?;
/// assert_eq!(grads.get(&gamma).unwrap().dims(), &[8]);
/// // d(sum z)/d(beta) is the number of rows.
/// assert_eq!(grads.get(&beta).unwrap().to_vec1::<f32>()?, vec![4.0; 8]);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct DropoutAddNorm {
    core: LayerCore,
    norm: Norm,
    eps: f64,
}

impl DropoutAddNorm {
    /// Dropout + add + LayerNorm, using the default generator.
    pub fn layer_norm(p: f64, eps: f64) -> candle_core::Result<Self> {
        Self::with_norm(Norm::LayerNorm, p, eps)
    }

    /// Dropout + add + RMSNorm, using the default generator.
    pub fn rms_norm(p: f64, eps: f64) -> candle_core::Result<Self> {
        Self::with_norm(Norm::RmsNorm, p, eps)
    }

    fn with_norm(norm: Norm, p: f64, eps: f64) -> candle_core::Result<Self> {
        check_eps("DropoutAddNorm", eps).map_err(to_candle_error)?;
        Ok(Self {
            core: LayerCore::new(p).map_err(to_candle_error)?,
            norm,
            eps,
        })
    }

    /// Uses `generator` instead of the process-wide default.
    pub fn with_generator(
        mut self,
        generator: std::sync::Arc<crate::generator::Generator>,
    ) -> Self {
        self.core.generator = Some(generator);
        self
    }

    /// For a shard holding rows `[index_base / H, ...)` of a larger tensor.
    pub fn with_index_base(mut self, index_base: u64) -> Self {
        self.core.index_base = index_base;
        self
    }

    /// The drop probability.
    pub fn p(&self) -> f64 {
        self.core.prob.p()
    }

    /// `(z, s)`: `s = residual + dropout(x + bias)`, `z = norm(s) * gamma (+ beta)`; in
    /// eval (`train = false`) nothing is dropped and no offset is taken. Bad shapes,
    /// dtypes or devices are refused before an offset is taken.
    pub fn forward_t(
        &self,
        x: &Tensor,
        bias: Option<&Tensor>,
        residual: &Tensor,
        gamma: &Tensor,
        beta: Option<&Tensor>,
        train: bool,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let config = AddNormConfig {
            norm: self.norm,
            p: self.core.prob.p(),
            eps: self.eps,
            training: train,
        };
        let hidden = check(
            x,
            bias,
            residual,
            gamma,
            beta,
            &config,
            self.core.index_base,
        )?;
        let pos = if train {
            self.core.next_eager_pos().map_err(to_candle_error)?
        } else {
            StreamPos::new(0, 0).with_index_base(self.core.index_base)
        };
        let prob = Probability::new(if train { config.p } else { 0.0 }).map_err(to_candle_error)?;
        let op = NormOp {
            call: NormCall {
                norm: self.norm,
                hidden,
                eps: self.eps,
                pos,
                prob,
                training: train,
                shard: None,
            },
            has_bias: bias.is_some(),
        };
        let parts: Vec<&Tensor> = [bias, Some(gamma), beta].into_iter().flatten().collect();
        let params = Tensor::cat(&parts, 0)?;
        let out = x
            .contiguous()?
            .apply_op3(&residual.contiguous()?, &params.contiguous()?, op)?;
        Ok((out.get(0)?, out.get(1)?))
    }
}

/// dropkit's checks, with its messages: one dtype (of the four) and one device for all,
/// then the shared shape checks.
fn check(
    x: &Tensor,
    bias: Option<&Tensor>,
    residual: &Tensor,
    gamma: &Tensor,
    beta: Option<&Tensor>,
    config: &AddNormConfig,
    index_base: u64,
) -> candle_core::Result<usize> {
    let expected = check_dtype(x.dtype())?;
    let others = [bias, Some(residual), Some(gamma), beta];
    for t in others.into_iter().flatten() {
        let got = check_dtype(t.dtype())?;
        if got != expected {
            return Err(to_candle_error(Error::DTypeMismatch {
                op: OP,
                expected,
                got,
            }));
        }
        if !x.device().same_device(t.device()) {
            return Err(to_candle_error(Error::DeviceMismatch {
                op: OP,
                expected: format!("{:?} (x)", x.device().location()),
                got: format!("{:?}", t.device().location()),
            }));
        }
    }
    let shapes = AddNormShapes {
        x: x.dims(),
        bias: bias.map(|t| t.dims()),
        residual: Some(residual.dims()),
        gamma: gamma.dims(),
        beta: beta.map(|t| t.dims()),
    };
    check_add_norm_shapes(shapes, config, index_base).map_err(to_candle_error)
}

/// One forward: the call's scalars and which of params' slices are there.
#[derive(Debug, Clone)]
struct NormOp {
    call: NormCall,
    has_bias: bool,
}

/// Splits params (bias?, gamma, beta?) of `k * h` elements.
fn split_params<'a, T>(
    op: &NormOp,
    params: &'a [T],
) -> (Option<&'a [T]>, &'a [T], Option<&'a [T]>) {
    let h = op.call.hidden;
    let (bias, rest) = if op.has_bias {
        let (b, r) = params.split_at(h);
        (Some(b), r)
    } else {
        (None, params)
    };
    let (gamma, beta) = rest.split_at(h);
    (bias, gamma, (!beta.is_empty()).then_some(beta))
}

impl NormOp {
    /// [z; s] for x, residual and params on the CPU.
    fn forward<T: Element>(
        &self,
        x: &[T],
        residual: &[T],
        params: &[T],
    ) -> crate::error::Result<Vec<T>> {
        let n = x.len();
        let (bias, gamma, beta) = split_params(self, params);
        let mut out = cpu::alloc_output::<T>(2 * n)?;
        let (z, s) = out.split_at_mut(n);
        let mut stats = crate::alloc::filled(0f64, 2 * (n / self.call.hidden))?;
        let inputs = cpu::norm::NormInputs {
            x,
            bias,
            residual: Some(residual),
            gamma,
            beta,
        };
        let outputs = cpu::norm::NormOutputs {
            z,
            s,
            stats: &mut stats,
            bits: None,
        };
        cpu::norm::forward::<T, T>(inputs, outputs, &self.call)?;
        Ok(out)
    }

    /// [dx; dresidual; dparams] from [dz; ds], [z; s] and params on the CPU.
    fn backward<T: Element>(
        &self,
        grad: &[T],
        res: &[T],
        params: &[T],
    ) -> crate::error::Result<Vec<T>> {
        let n = grad.len() / 2;
        let h = self.call.hidden;
        let (dz, ds) = grad.split_at(n);
        let s = &res[n..];
        let (_, gamma, beta) = split_params(self, params);
        let stats = cpu::norm::row_stats_from_s::<T, T>(s, &self.call)?;
        let mut out = cpu::alloc_output::<T>(2 * n + params.len())?;
        let (dx, rest) = out.split_at_mut(n);
        let (dres, dparams) = rest.split_at_mut(n);
        let (dbias, rest) = if self.has_bias {
            let (b, r) = dparams.split_at_mut(h);
            (Some(b), r)
        } else {
            (None, dparams)
        };
        let (dgamma, dbeta) = rest.split_at_mut(h);
        let inputs = cpu::norm::NormGradInputs {
            dz,
            ds: Some(ds),
            s,
            gamma,
            stats: &stats,
            bits: None,
        };
        let grads = cpu::norm::NormGrads {
            x: dx,
            residual: Some(dres),
            bias: dbias,
            gamma: dgamma,
            beta: beta.map(|_| dbeta),
        };
        cpu::norm::backward::<T, T>(inputs, grads, &self.call)?;
        Ok(out)
    }
}

/// The error for storages that do not share one of the four dtypes (the checks before
/// the op make it unreachable through the public API).
fn mixed_dtypes(dtypes: [candle_core::DType; 3]) -> candle_core::Error {
    let mut known = Vec::new();
    for d in dtypes {
        match check_dtype(d) {
            Ok(k) => known.push(k),
            Err(e) => return e,
        }
    }
    let got = known
        .iter()
        .copied()
        .find(|&d| d != known[0])
        .unwrap_or(known[0]);
    to_candle_error(Error::DTypeMismatch {
        op: OP,
        expected: known[0],
        got,
    })
}

/// Runs `f` on three CPU storages of one dtype (their live ranges), as a new storage.
macro_rules! on_cpu3 {
    ($op:expr, $f:ident, [$s1:expr, $l1:expr], [$s2:expr, $l2:expr], [$s3:expr, $l3:expr]) => {{
        let ((a0, a1), (b0, b1), (c0, c1)) = (
            contiguous_range($l1)?,
            contiguous_range($l2)?,
            contiguous_range($l3)?,
        );
        use CpuStorage as S;
        match ($s1, $s2, $s3) {
            (S::F32(a), S::F32(b), S::F32(c)) => S::F32(
                $op.$f(&a[a0..a1], &b[b0..b1], &c[c0..c1])
                    .map_err(to_candle_error)?,
            ),
            (S::F64(a), S::F64(b), S::F64(c)) => S::F64(
                $op.$f(&a[a0..a1], &b[b0..b1], &c[c0..c1])
                    .map_err(to_candle_error)?,
            ),
            (S::F16(a), S::F16(b), S::F16(c)) => S::F16(
                $op.$f(&a[a0..a1], &b[b0..b1], &c[c0..c1])
                    .map_err(to_candle_error)?,
            ),
            (S::BF16(a), S::BF16(b), S::BF16(c)) => S::BF16(
                $op.$f(&a[a0..a1], &b[b0..b1], &c[c0..c1])
                    .map_err(to_candle_error)?,
            ),
            _ => return Err(mixed_dtypes([$s1.dtype(), $s2.dtype(), $s3.dtype()])),
        }
    }};
}

impl CustomOp3 for NormOp {
    fn name(&self) -> &'static str {
        "dropkit-dropout-add-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = on_cpu3!(self, forward, [s1, l1], [s2, l2], [s3, l3]);
        let mut dims = vec![2];
        dims.extend_from_slice(l1.shape().dims());
        Ok((out, Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        _residual: &Tensor,
        params: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let back = NormBackwardOp {
            forward: self.clone(),
        };
        let all = grad_res
            .contiguous()?
            .apply_op3_no_bwd(&res.contiguous()?, params, &back)?;
        let n = x.elem_count();
        let dx = all.narrow(0, 0, n)?.reshape(x.shape())?;
        let dres = all.narrow(0, n, n)?.reshape(x.shape())?;
        let dparams = all.narrow(0, 2 * n, params.elem_count())?;
        Ok((Some(dx), Some(dres), Some(dparams)))
    }
}

/// The backward of [`NormOp`] as an op of its own (applied without a backward).
#[derive(Debug, Clone)]
struct NormBackwardOp {
    forward: NormOp,
}

impl CustomOp3 for NormBackwardOp {
    fn name(&self) -> &'static str {
        "dropkit-dropout-add-norm-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = &self.forward;
        let out = on_cpu3!(op, backward, [s1, l1], [s2, l2], [s3, l3]);
        let len = l1.shape().elem_count() + l3.shape().elem_count();
        Ok((out, Shape::from(len)))
    }
}
