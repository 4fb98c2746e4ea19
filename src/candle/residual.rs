//! The fused `out = residual + dropout(x + bias)` for candle tensors (SPEC section 6), as a
//! candle `CustomOp3` with the three gradients.
//!
//! Not a `candle_nn::ModuleT`: that trait's `forward_t(&self, xs, train)` takes one tensor
//! and this layer needs three (x, bias, residual). Packing them into one tensor would cost
//! the copies the fusion exists to avoid, and making bias a field would tie the layer to
//! one parameter; so [`BiasDropoutResidual::forward_t`] takes the three with the same
//! `train` flag, and callers wrap it in their own module where one is wanted.

use super::op::MaskOp;
use super::util::{
    candle_layer, check_dtype, contiguous_range, dropkit_dtype, map_cpu_storage, to_candle_error,
    unsupported_dtype, CpuMap,
};
use crate::cpu;
use crate::element::{to_compute_f64, Element};
use crate::error::Error;
use crate::functional::check_fused_shapes;
use crate::layers::LayerCore;
use crate::mask::Probability;
use crate::plan::{Kept, StreamPos};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Tensor};

const OP: &str = "bias_dropout_residual";

/// Fused bias + dropout + residual add for candle tensors, the candle form of
/// [`crate::BiasDropoutResidual`]: x and residual of shape (..., H), bias of shape (H).
/// In training, `out = residual + dropout(x + bias)` with one offset per call; with
/// `train = false`, `out = residual + (x + bias)` with the same roundings (no offset).
///
/// Under candle's autograd, `loss.backward()` gives dx (the upstream gradient through the
/// same mask and scale), dbias (the column sums of dx, accumulated in f64 in dropkit's
/// fixed order and rounded once: deterministic, and the same bits as dropkit's own bias
/// gradient) and dresidual (the upstream gradient).
///
/// ```
/// use candle_core::{DType, Device, Tensor, Var};
/// use dropkit::{candle::BiasDropoutResidual, Generator};
/// use std::sync::Arc;
///
/// let layer = BiasDropoutResidual::new(0.1)?.with_generator(Arc::new(Generator::new(9)));
/// let x = Var::ones((4, 8), DType::F32, &Device::Cpu)?;
/// let bias = Var::ones(8, DType::F32, &Device::Cpu)?;
/// let residual = Tensor::zeros((4, 8), DType::F32, &Device::Cpu)?;
/// let out = layer.forward_t(&x, &bias, &residual, true)?;
/// let grads = out.sum_all()?.backward()?;
/// // The bias gradient sums the kept rows of each column, scaled by 1/q.
/// let kept = out.flatten_all()?.to_vec1::<f32>()?.iter().filter(|&&v| v != 0.0).count();
/// let total: f32 = grads.get(&bias).unwrap().to_vec1::<f32>()?.iter().sum();
/// assert!((total - kept as f32 / 0.9).abs() < 1e-3);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct BiasDropoutResidual {
    core: LayerCore,
}

candle_layer!(BiasDropoutResidual);

impl BiasDropoutResidual {
    /// `residual + dropout(x + bias)` in training, `residual + (x + bias)` otherwise. Bad
    /// shapes, dtypes or devices are refused before an offset is taken.
    pub fn forward_t(
        &self,
        x: &Tensor,
        bias: &Tensor,
        residual: &Tensor,
        train: bool,
    ) -> candle_core::Result<Tensor> {
        check_fused(x, bias, residual, self.core.index_base)?;
        // Eval calls take no offset (SPEC section 5).
        let pos = if train {
            self.core.next_eager_pos().map_err(to_candle_error)?
        } else {
            // No offset taken, but a shard still needs its place for the bias column.
            StreamPos::new(0, 0).with_index_base(self.core.index_base)
        };
        FusedOp::new(self.core.prob, train, pos)?.apply(x, bias, residual)
    }
}

/// The stateless form, like [`crate::functional::bias_dropout_residual`]: the caller gives
/// (seed, offset) in `pos`.
pub fn bias_dropout_residual(
    x: &Tensor,
    bias: &Tensor,
    residual: &Tensor,
    p: f64,
    training: bool,
    pos: StreamPos,
) -> candle_core::Result<Tensor> {
    let prob = Probability::new(p).map_err(to_candle_error)?;
    check_fused(x, bias, residual, pos.index_base)?;
    FusedOp::new(prob, training, pos)?.apply(x, bias, residual)
}

/// dropkit's checks of the fused layer, with its messages: residual shaped like x, x of
/// rank 1 or more, bias of shape (H); plus one dtype (of the four) and one device.
fn check_fused(
    x: &Tensor,
    bias: &Tensor,
    residual: &Tensor,
    index_base: u64,
) -> candle_core::Result<()> {
    let expected = check_dtype(x.dtype())?;
    for t in [bias, residual] {
        let got = check_dtype(t.dtype())?;
        if got != expected {
            let e = Error::DTypeMismatch {
                op: OP,
                expected,
                got,
            };
            return Err(to_candle_error(e));
        }
    }
    for (t, what) in [(bias, "bias"), (residual, "residual")] {
        if !x.device().same_device(t.device()) {
            return Err(to_candle_error(Error::DeviceMismatch {
                op: OP,
                expected: format!("{:?} (x)", x.device().location()),
                got: format!("{:?} ({what})", t.device().location()),
            }));
        }
    }
    check_fused_shapes(x.dims(), bias.dims(), residual.dims(), index_base)
        .map(|_| ())
        .map_err(to_candle_error)
}

/// One call of the fused layer. In eval the probability is 0 and s = 1, so the same
/// arithmetic runs with nothing dropped (z * 1 = z exactly), as in dropkit.
#[derive(Debug, Clone, Copy)]
struct FusedOp {
    prob: Probability,
    pos: StreamPos,
    training: bool,
}

impl FusedOp {
    fn new(prob: Probability, training: bool, pos: StreamPos) -> candle_core::Result<Self> {
        let prob = if training {
            prob
        } else {
            Probability::new(0.0).map_err(to_candle_error)?
        };
        Ok(Self {
            prob,
            pos,
            training,
        })
    }

    /// Inputs are made contiguous first (differentiable copies when they are views), so
    /// element i of x and residual meets decision i and bias column i mod H.
    fn apply(self, x: &Tensor, bias: &Tensor, residual: &Tensor) -> candle_core::Result<Tensor> {
        x.contiguous()?
            .apply_op3(&bias.contiguous()?, &residual.contiguous()?, self)
    }

    fn cpu<T: Element>(&self, x: &[T], bias: &[T], residual: &[T]) -> crate::error::Result<Vec<T>> {
        let scale = to_compute_f64::<T>(self.prob.scale_f64());
        let mut out = cpu::alloc_output::<T>(x.len())?;
        let residual = cpu::Source::Slice(residual);
        let inputs = cpu::residual::FusedInputs { x, bias, residual };
        cpu::residual::bias_dropout_residual(inputs, &mut out, None, self.pos, &self.prob, scale)?;
        Ok(out)
    }
}

/// The error for three storages that do not share one of the four dtypes (the checks
/// before the op make this unreachable for callers of the public API).
fn fused_dtype_error(dtypes: [candle_core::DType; 3]) -> candle_core::Error {
    match dtypes.map(dropkit_dtype) {
        [Some(expected), Some(a), Some(b)] => {
            let got = if a != expected { a } else { b };
            to_candle_error(Error::DTypeMismatch {
                op: OP,
                expected,
                got,
            })
        }
        _ => {
            let bad = dtypes.into_iter().find(|d| dropkit_dtype(*d).is_none());
            unsupported_dtype(bad.unwrap_or(dtypes[0]))
        }
    }
}

impl CustomOp3 for FusedOp {
    fn name(&self) -> &'static str {
        "dropkit-bias-dropout-residual"
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
        let ((x0, x1), (b0, b1), (r0, r1)) = (
            contiguous_range(l1)?,
            contiguous_range(l2)?,
            contiguous_range(l3)?,
        );
        use CpuStorage as S;
        let out = match (s1, s2, s3) {
            (S::F32(x), S::F32(b), S::F32(r)) => S::F32(
                self.cpu(&x[x0..x1], &b[b0..b1], &r[r0..r1])
                    .map_err(to_candle_error)?,
            ),
            (S::F64(x), S::F64(b), S::F64(r)) => S::F64(
                self.cpu(&x[x0..x1], &b[b0..b1], &r[r0..r1])
                    .map_err(to_candle_error)?,
            ),
            (S::F16(x), S::F16(b), S::F16(r)) => S::F16(
                self.cpu(&x[x0..x1], &b[b0..b1], &r[r0..r1])
                    .map_err(to_candle_error)?,
            ),
            (S::BF16(x), S::BF16(b), S::BF16(r)) => S::BF16(
                self.cpu(&x[x0..x1], &b[b0..b1], &r[r0..r1])
                    .map_err(to_candle_error)?,
            ),
            _ => return Err(fused_dtype_error([s1.dtype(), s2.dtype(), s3.dtype()])),
        };
        Ok((out, l1.shape().clone()))
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.cuda([(s1, l1), (s2, l2), (s3, l3)])
    }

    /// dx = the upstream gradient through the same mask and scale (regenerated); dbias =
    /// column sums of dx; dresidual = the upstream gradient. As dropkit's
    /// `bias_dropout_residual_backward`, bit for bit.
    fn bwd(
        &self,
        _x: &Tensor,
        bias: &Tensor,
        _residual: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = if self.training {
            let kept = Kept::dropout(&self.prob);
            let name = "dropkit-bias-dropout-residual-bwd";
            MaskOp::new(name, self.prob, self.pos, None, kept).apply(grad_res)?
        } else {
            // Eval: the dropout was the identity, so is its gradient.
            grad_res.contiguous()?
        };
        let hidden = bias.elem_count();
        let dbias = dx.apply_op1_no_bwd(&ColumnSum { hidden })?;
        Ok((Some(dx), Some(dbias), Some(grad_res.clone())))
    }
}

/// out_c = the sum over rows of g[r * hidden + c], accumulated in f64 in dropkit's fixed
/// order and rounded once: the bias gradient (dropkit's own column sum on either device,
/// so the bits match). Applied without a backward of its own (it only ever runs inside a
/// backward).
#[derive(Debug, Clone, Copy)]
struct ColumnSum {
    hidden: usize,
}

impl CpuMap for ColumnSum {
    fn apply<T: Element>(&self, g: &[T]) -> crate::error::Result<Vec<T>> {
        let mut out = cpu::alloc_output::<T>(self.hidden)?;
        cpu::residual::column_sum(g, &mut out, self.hidden)?;
        Ok(out)
    }
}

impl CustomOp1 for ColumnSum {
    fn name(&self) -> &'static str {
        "dropkit-column-sum"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = map_cpu_storage(self, storage, layout)?;
        Ok((out, Shape::from(self.hidden)))
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let out = super::util::map_cuda_storage(self, storage, layout)?;
        Ok((out, Shape::from(self.hidden)))
    }
}

/// The CUDA forwards: dropkit's kernels launched on candle's stream over candle's buffers
/// (read at each layout's start offset), each writing a new buffer that candle then owns.
/// The launchers are the ones dropkit's own tensors use, so the bits are the same.
#[cfg(feature = "candle-cuda")]
mod cuda_forward {
    use super::{contiguous_range, fused_dtype_error, to_candle_error, ColumnSum, FusedOp};
    use crate::candle::util::{device_of, CudaMap};
    use crate::cuda::launch::DkDraw;
    use crate::cuda::residual::{forward_raw, queue_column_sum, FusedPtrs};
    use crate::cuda::CudaDevice;
    use crate::element::{to_compute_f64, Element};
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::CudaStorageSlice;
    use candle_core::{CudaStorage, Layout, Shape};
    use cudarc::driver::{CudaSlice, CudaView, DevicePtr, DevicePtrMut};

    impl FusedOp {
        /// The fused forward on candle's CUDA storages `[x, bias, residual]`.
        pub(super) fn cuda(
            &self,
            args: [(&CudaStorage, &Layout); 3],
        ) -> candle_core::Result<(CudaStorage, Shape)> {
            let [(sx, lx), (sb, lb), (sr, lr)] = args;
            let ((x0, x1), (b0, b1), (r0, r1)) = (
                contiguous_range(lx)?,
                contiguous_range(lb)?,
                contiguous_range(lr)?,
            );
            let dev = device_of(sx)?;
            let owner = sx.device.clone();
            use CudaStorageSlice as S;
            macro_rules! launch {
                ($x:expr, $b:expr, $r:expr) => {
                    CudaStorage::wrap_cuda_slice(
                        self.launch(
                            &dev,
                            &$x.slice(x0..x1),
                            &$b.slice(b0..b1),
                            &$r.slice(r0..r1),
                        )?,
                        owner,
                    )
                };
            }
            let out = match (&sx.slice, &sb.slice, &sr.slice) {
                (S::F32(x), S::F32(b), S::F32(r)) => launch!(x, b, r),
                (S::F64(x), S::F64(b), S::F64(r)) => launch!(x, b, r),
                (S::F16(x), S::F16(b), S::F16(r)) => launch!(x, b, r),
                (S::BF16(x), S::BF16(b), S::BF16(r)) => launch!(x, b, r),
                _ => return Err(fused_dtype_error([sx.dtype(), sb.dtype(), sr.dtype()])),
            };
            Ok((out, lx.shape().clone()))
        }

        fn launch<T: Element>(
            &self,
            dev: &CudaDevice,
            x: &CudaView<'_, T>,
            bias: &CudaView<'_, T>,
            residual: &CudaView<'_, T>,
        ) -> candle_core::Result<CudaSlice<T>> {
            let (n, hidden) = (x.len(), bias.len());
            let mut out = dev.alloc_uninit::<T>(n).map_err(to_candle_error)?;
            if n == 0 {
                return Ok(out);
            }
            let scale = to_compute_f64::<T>(self.prob.scale_f64());
            let stream = dev.stream();
            {
                let (x_ptr, _gx) = x.device_ptr(stream);
                let (b_ptr, _gb) = bias.device_ptr(stream);
                let (r_ptr, _gr) = residual.device_ptr(stream);
                let (o_ptr, _go) = out.device_ptr_mut(stream);
                let ptrs = FusedPtrs {
                    x: x_ptr,
                    bias: b_ptr,
                    residual: r_ptr,
                    out: o_ptr,
                    bits: 0,
                };
                let draw = DkDraw::new(self.pos, &self.prob);
                // SAFETY: x, residual and out hold n elements, bias `hidden` (checked to be
                // x's last dimension before the op, so nonzero when n is), all in the
                // context of `dev`'s stream and alive until the launch is queued.
                unsafe { forward_raw::<T>(dev, ptrs, [n, hidden], draw, scale) }
                    .map_err(to_candle_error)?;
            }
            Ok(out)
        }
    }

    impl CudaMap for ColumnSum {
        fn apply<T: Element>(
            &self,
            dev: &CudaDevice,
            g: &CudaView<'_, T>,
        ) -> candle_core::Result<CudaSlice<T>> {
            let hidden = self.hidden;
            let mut out = dev.alloc_uninit::<T>(hidden).map_err(to_candle_error)?;
            if hidden == 0 {
                return Ok(out);
            }
            let rows = g.len() / hidden;
            let stream = dev.stream();
            {
                let (g_ptr, _gg) = g.device_ptr(stream);
                let (o_ptr, _go) = out.device_ptr_mut(stream);
                // SAFETY: g holds rows * hidden elements and out a fresh `hidden`-element
                // allocation, in the context of `dev`'s stream and alive until the launches are
                // queued. Every column is written, zero rows included. The launcher is the one
                // dropkit's own bias gradient uses, so the order of the adds is the same.
                unsafe { queue_column_sum::<T>(dev, g_ptr, o_ptr, rows, hidden) }
                    .map_err(to_candle_error)?;
            }
            Ok(out)
        }
    }
}
