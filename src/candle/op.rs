//! The one candle custom op behind every single-input layer: decisions elementwise or one
//! per group of elements, kept elements scaled or mapped affinely (SPEC sections 3 and 6),
//! on the CPU (dropkit's CPU backend) or on CUDA (dropkit's kernels on candle's stream).
//!
//! Backward is the same op again on the incoming gradient with the same (seed, offset,
//! p, grouping, index base) and the layer's gradient factor (1/q, or alpha dropout's a):
//! what dropkit's `dropout_backward` does from a regenerate-form state, so the gradient
//! has the bits of dropkit's own backward (which equals the bits form).

use super::util::{check_input, map_cpu_storage, to_candle_error, CpuMap};
use crate::cpu;
use crate::element::Element;
use crate::layers::LayerCore;
use crate::mask::Probability;
use crate::plan::{Decisions, GroupLayout, GroupedKind, Kept, StreamPos};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

/// One training call of a layer: everything its forward and backward need.
#[derive(Debug, Clone, Copy)]
pub(super) struct MaskOp {
    name: &'static str,
    prob: Probability,
    pos: StreamPos,
    /// Elements per decision; `None`: elementwise (decision `index_base + i`).
    group: Option<usize>,
    kept: Kept<f64>,
}

impl MaskOp {
    pub(super) fn new(
        name: &'static str,
        prob: Probability,
        pos: StreamPos,
        group: Option<usize>,
        kept: Kept<f64>,
    ) -> Self {
        Self {
            name,
            prob,
            pos,
            group,
            kept,
        }
    }

    /// Elementwise dropout: x / q or +0.
    pub(super) fn dropout(prob: Probability, pos: StreamPos) -> Self {
        Self::new("dropkit-dropout", prob, pos, None, Kept::dropout(&prob))
    }

    /// Elementwise alpha dropout: a*x + b, or a*A + b.
    pub(super) fn alpha(prob: Probability, pos: StreamPos) -> Self {
        Self::new("dropkit-alpha-dropout", prob, pos, None, Kept::alpha(&prob))
    }

    /// One decision per `group` elements: x / q or +0, or the alpha map.
    pub(super) fn grouped(
        prob: Probability,
        pos: StreamPos,
        group: usize,
        kind: GroupedKind,
    ) -> Self {
        let name = match kind {
            GroupedKind::Scale => "dropkit-grouped-dropout",
            GroupedKind::Alpha => "dropkit-feature-alpha-dropout",
        };
        Self::new(name, prob, pos, Some(group), Kept::grouped(kind, &prob))
    }

    /// The decision layout of a call over `n` elements (dropkit's own, so shards and
    /// partial groups are cut the same way).
    fn decisions(&self, n: usize) -> Decisions {
        match self.group {
            None => Decisions::Elementwise,
            Some(group) => Decisions::Grouped(GroupLayout::new(group, self.pos.index_base, n)),
        }
    }

    /// The op that gives the input gradient: the same decisions, kept gradients times the
    /// layer's factor, dropped ones +0 (dropout is linear, alpha dropout affine).
    fn backward_op(&self) -> Self {
        Self {
            kept: Kept::Scale(self.kept.grad_factor()),
            ..*self
        }
    }

    /// Applies the op with autograd. candle hands custom ops the raw storage and layout,
    /// so a strided input is made contiguous first (candle's copy, itself
    /// differentiable): the op then sees elements in logical row-major order, which is the
    /// decision order.
    pub(super) fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        check_input(x, self.pos.index_base)?;
        x.contiguous()?.apply_op1(self)
    }
}

/// A training call of a single-input layer: bad input is refused before the layer's
/// generator moves, then exactly one offset is taken (SPEC section 5).
pub(super) fn train_call(
    core: &LayerCore,
    xs: &Tensor,
    op: impl FnOnce(StreamPos) -> MaskOp,
) -> candle_core::Result<Tensor> {
    check_input(xs, core.index_base)?;
    op(core.next_eager_pos().map_err(to_candle_error)?).apply(xs)
}

impl CpuMap for MaskOp {
    fn apply<T: Element>(&self, x: &[T]) -> crate::error::Result<Vec<T>> {
        let mut y = cpu::alloc_output::<T>(x.len())?;
        let src = cpu::Source::Slice(x);
        let (pos, prob) = (self.pos, &self.prob);
        let kept = self.kept.for_element::<T>();
        match self.decisions(x.len()) {
            Decisions::Elementwise => {
                cpu::dropout::forward_with(src, &mut y, None, pos, prob, kept)
            }
            Decisions::Grouped(layout) => {
                cpu::grouped::forward(src, &mut y, pos, prob, &layout, kept)?;
            }
        }
        Ok(y)
    }
}

impl CustomOp1 for MaskOp {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = map_cpu_storage(self, storage, layout)?;
        Ok((out, layout.shape().clone()))
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let out = super::util::map_cuda_storage(self, storage, layout)?;
        Ok((out, layout.shape().clone()))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        // Gradients are often broadcast views (the gradient of a sum is a stride-0 tensor
        // of ones); `apply` makes them contiguous so that element i meets decision i.
        self.backward_op().apply(grad_res).map(Some)
    }
}

/// The CUDA forward: dropkit's kernels launched on candle's stream over candle's buffer,
/// writing a new buffer that candle then owns. The kernels are the ones dropkit's own
/// tensors use, so the bits are the same.
#[cfg(feature = "candle-cuda")]
impl super::util::CudaMap for MaskOp {
    fn apply<T: Element>(
        &self,
        dev: &crate::cuda::CudaDevice,
        x: &cudarc::driver::CudaView<'_, T>,
    ) -> candle_core::Result<cudarc::driver::CudaSlice<T>> {
        use crate::cuda::launch::{DkDraw, Io};
        use crate::cuda::{dropout, grouped};
        use cudarc::driver::{DevicePtr, DevicePtrMut};
        let n = x.len();
        let mut y = dev.alloc_uninit::<T>(n).map_err(to_candle_error)?;
        if n == 0 {
            return Ok(y);
        }
        let draw = DkDraw::new(self.pos, &self.prob);
        let kept = self.kept.for_element::<T>();
        {
            // The guards record the read and the write for cudarc's event tracking; they
            // live until the launch is queued, and end before `y` is handed over.
            let (x_ptr, _gx) = x.device_ptr(dev.stream());
            let (y_ptr, _gy) = y.device_ptr_mut(dev.stream());
            let io = Io {
                x: x_ptr,
                y: y_ptr,
                bits: 0,
                n: n as u64,
            };
            // SAFETY: x_ptr covers the n live input elements and y_ptr a fresh n-element
            // allocation, both in the context of `dev`'s stream and alive until the
            // launches are queued.
            unsafe {
                match self.decisions(n) {
                    Decisions::Elementwise => dropout::forward_raw::<T>(dev, io, draw, kept),
                    Decisions::Grouped(layout) => {
                        grouped::forward_raw::<T>(dev, io, draw, &layout, kept)
                    }
                }
            }
            .map_err(to_candle_error)?;
        }
        Ok(y)
    }
}
