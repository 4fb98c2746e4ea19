//! dropkit's fused dropout for [candle](https://crates.io/crates/candle-core) tensors
//! (features `candle` and `candle-cuda`).
//!
//! candle's own `candle_nn::ops::dropout` is built from ordinary ops (a random tensor, a
//! comparison, a cast, two multiplies), with several full-size temporaries. Here dropout is
//! one candle custom op: one pass over the data on the CPU (dropkit's CPU backend) or one
//! kernel launch on CUDA (dropkit's kernels on candle's stream), with the same bits as
//! dropkit's own tensors for the same (seed, offset). Nothing is saved for backward but
//! (seed, offset, p): the gradient regenerates the same mask (SPEC section 4, regenerate
//! form), so autograd through `loss.backward()` works and costs no mask memory.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use candle_nn::ModuleT;
//! use dropkit::{candle::Dropout, Generator};
//! use std::sync::Arc;
//!
//! let layer = Dropout::new(0.5)?.with_generator(Arc::new(Generator::new(7)));
//! let x = Tensor::ones((2, 8), candle_core::DType::F32, &Device::Cpu)?;
//! let y = layer.forward_t(&x, true)?; // training: each element is 0 or 2
//! assert!(y.flatten_all()?.to_vec1::<f32>()?.iter().all(|&v| v == 0.0 || v == 2.0));
//! let same = layer.forward_t(&x, false)?; // eval: the identity
//! assert_eq!(same.to_vec2::<f32>()?, x.to_vec2::<f32>()?);
//! # Ok::<(), candle_core::Error>(())
//! ```

use crate::cpu;
use crate::element::{to_compute_f64, Element};
use crate::functional::{check_index_range, StreamPos};
use crate::generator::Generator;
use crate::layers::LayerCore;
use crate::mask::Probability;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use std::sync::Arc;

/// Turns a dropkit error into a candle error whose message says where it came from.
pub fn to_candle_error(e: crate::Error) -> candle_core::Error {
    candle_core::Error::Msg(format!("dropkit dropout: {e}")).bt()
}

/// Elementwise dropout of a candle tensor (SPEC section 3) at stream position `pos`.
///
/// Same contract as [`crate::functional::dropout`]: in training, each element is dropped
/// with probability `p` and the rest are scaled by 1/q; with `training = false` the result
/// is `x` itself (no copy, nothing random used). The result tracks gradients: its backward
/// applies the same mask and scale. Dtypes f32, f64, f16 and bf16; the decision index of an
/// element is its row-major position in the logical tensor, so a non-contiguous `x` (a
/// transpose, a narrow) is first made contiguous by candle and gets the same bits as
/// `x.contiguous()` would.
pub fn dropout(x: &Tensor, p: f64, training: bool, pos: StreamPos) -> candle_core::Result<Tensor> {
    let prob = Probability::new(p).map_err(to_candle_error)?;
    if !training {
        return Ok(x.clone());
    }
    DropoutOp { prob, pos }.apply(x)
}

/// One training call: the probability and where its random words come from. It is all the
/// backward needs (the mask is regenerated), so it is also the saved state.
#[derive(Debug, Clone, Copy)]
struct DropoutOp {
    prob: Probability,
    pos: StreamPos,
}

impl DropoutOp {
    /// Applies the op with autograd. candle hands custom ops the raw storage and layout, so
    /// a strided input is made contiguous first (candle's copy, itself differentiable): the
    /// op then sees elements in logical row-major order, which is the decision order.
    fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        check_input(x, self.pos.index_base)?;
        x.contiguous()?.apply_op1(self)
    }

    fn cpu<T: Element>(&self, x: &[T]) -> Vec<T> {
        let scale = to_compute_f64::<T>(self.prob.scale_f64());
        let mut y = vec![T::ZERO; x.len()];
        cpu::dropout::forward(
            cpu::Source::Slice(x),
            &mut y,
            None,
            self.pos,
            &self.prob,
            scale,
        );
        y
    }
}

/// What the op refuses: a dtype other than the four floats, or decision indices past 2^64.
fn check_input(x: &Tensor, index_base: u64) -> candle_core::Result<()> {
    check_dtype(x.dtype())?;
    check_index_range(index_base, x.elem_count()).map_err(to_candle_error)
}

fn check_dtype(dtype: candle_core::DType) -> candle_core::Result<()> {
    use candle_core::DType as D;
    match dtype {
        D::F32 | D::F64 | D::F16 | D::BF16 => Ok(()),
        other => Err(unsupported_dtype(other)),
    }
}

fn unsupported_dtype(dtype: candle_core::DType) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "dropkit dropout: dtype {dtype:?} is not supported (f32, f64, f16 or bf16)"
    ))
    .bt()
}

/// The element range of a contiguous layout; [`DropoutOp::apply`] guarantees one, so this
/// only fails for a caller that bypassed it.
fn contiguous_range(layout: &Layout) -> candle_core::Result<(usize, usize)> {
    layout.contiguous_offsets().ok_or_else(|| {
        candle_core::Error::Msg(
            "dropkit dropout: the op needs a contiguous layout (call .contiguous() first)".into(),
        )
        .bt()
    })
}

impl CustomOp1 for DropoutOp {
    fn name(&self) -> &'static str {
        "dropkit-dropout"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (start, end) = contiguous_range(layout)?;
        let out = match storage {
            CpuStorage::F32(v) => CpuStorage::F32(self.cpu(&v[start..end])),
            CpuStorage::F64(v) => CpuStorage::F64(self.cpu(&v[start..end])),
            CpuStorage::F16(v) => CpuStorage::F16(self.cpu(&v[start..end])),
            CpuStorage::BF16(v) => CpuStorage::BF16(self.cpu(&v[start..end])),
            other => return Err(unsupported_dtype(other.dtype())),
        };
        Ok((out, layout.shape().clone()))
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda::forward(self, storage, layout)
    }

    /// dL/dx = the same dropout (same mask, same scale) applied to dL/dy: dropout is linear
    /// and its own transpose, so backward is the op again at the same stream position.
    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        // Gradients are often broadcast views (the gradient of a sum is a stride-0 tensor of
        // ones); `apply` makes them contiguous so that element i meets decision i.
        self.apply(grad_res).map(Some)
    }
}

#[cfg(feature = "candle-cuda")]
mod cuda {
    //! The CUDA forward: dropkit's `dropout_fwd_<dtype>` kernel launched on candle's stream
    //! over candle's buffers, writing a new buffer that candle then owns.

    use super::{contiguous_range, to_candle_error, DropoutOp};
    use crate::cuda::CudaDevice;
    use crate::element::{to_compute_f64, Element};
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::CudaStorageSlice;
    use candle_core::{CudaStorage, Layout, Shape};
    use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};

    pub(super) fn forward(
        op: &DropoutOp,
        storage: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (start, end) = contiguous_range(layout)?;
        // Our device handle over candle's stream: the launch is ordered after whatever
        // candle queued before, and candle's later work is ordered after it.
        let dev = CudaDevice::from_stream(storage.device.cuda_stream()).map_err(to_candle_error)?;
        let owner = storage.device.clone();
        let out = match &storage.slice {
            CudaStorageSlice::F32(x) => {
                CudaStorage::wrap_cuda_slice(launch(op, &dev, x, start, end)?, owner)
            }
            CudaStorageSlice::F64(x) => {
                CudaStorage::wrap_cuda_slice(launch(op, &dev, x, start, end)?, owner)
            }
            CudaStorageSlice::F16(x) => {
                CudaStorage::wrap_cuda_slice(launch(op, &dev, x, start, end)?, owner)
            }
            CudaStorageSlice::BF16(x) => {
                CudaStorage::wrap_cuda_slice(launch(op, &dev, x, start, end)?, owner)
            }
            _ => return Err(super::unsupported_dtype(storage.dtype())),
        };
        Ok((out, layout.shape().clone()))
    }

    fn launch<T: Element>(
        op: &DropoutOp,
        dev: &CudaDevice,
        x: &CudaSlice<T>,
        start: usize,
        end: usize,
    ) -> candle_core::Result<CudaSlice<T>> {
        let n = end - start;
        let mut y = dev.alloc_uninit::<T>(n).map_err(to_candle_error)?;
        if n == 0 {
            return Ok(y);
        }
        let scale = to_compute_f64::<T>(op.prob.scale_f64());
        let stream = dev.stream();
        let xv = x.slice(start..end);
        {
            // The guards record the read and the write for cudarc's event tracking; they
            // live until the launch is queued, and end before `y` is handed over.
            let (x_ptr, _gx) = xv.device_ptr(stream);
            let (y_ptr, _gy) = y.device_ptr_mut(stream);
            // SAFETY: x_ptr covers the n live input elements and y_ptr a fresh n-element
            // allocation, both on `dev`'s stream and alive until the launch is queued.
            unsafe {
                crate::cuda::ops::dropout_forward_raw::<T>(
                    dev, x_ptr, y_ptr, n, op.pos, &op.prob, scale,
                )
            }
            .map_err(to_candle_error)?;
        }
        Ok(y)
    }
}

/// Dropout as a candle module: `forward_t(x, true)` drops, `forward_t(x, false)` is the
/// identity. Every training call takes a fresh offset from the layer's [`Generator`]
/// (SPEC section 5), so a run replays from (seed, offset); eval calls take none.
///
/// Carries a dropkit generator (`Arc`, shareable with dropkit layers); without one, the
/// process-wide default generator of [`crate::manual_seed`] is used.
#[derive(Debug, Clone)]
pub struct Dropout {
    core: LayerCore,
}

impl Dropout {
    /// A dropout layer; `p` must be a finite number in [0, 1] (an error otherwise).
    pub fn new(p: f64) -> candle_core::Result<Self> {
        Ok(Self {
            core: LayerCore::new(p).map_err(to_candle_error)?,
        })
    }

    /// Uses `generator` instead of the process-wide default.
    pub fn with_generator(mut self, generator: Arc<Generator>) -> Self {
        self.core.generator = Some(generator);
        self
    }

    /// For a shard holding elements `[index_base, index_base + n)` of a larger tensor.
    pub fn with_index_base(mut self, index_base: u64) -> Self {
        self.core.index_base = index_base;
        self
    }

    /// The drop probability.
    pub fn p(&self) -> f64 {
        self.core.prob.p()
    }
}

impl candle_nn::ModuleT for Dropout {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        if !train {
            return Ok(xs.clone());
        }
        // Refuse before taking an offset: a failed call does not move the generator.
        check_input(xs, self.core.index_base)?;
        DropoutOp {
            prob: self.core.prob,
            pos: self.core.next_pos(),
        }
        .apply(xs)
    }
}
