//! The one candle custom op behind every single-input layer: decisions elementwise or one
//! per group of elements, kept elements scaled or mapped affinely (SPEC sections 3 and 6).
//!
//! Backward is the same op again on the incoming gradient with the same (seed, offset,
//! p, grouping, index base) and the layer's gradient factor (1/q, or alpha dropout's a):
//! what dropkit's `dropout_backward` does from a regenerate-form state, so the gradient
//! has the bits of dropkit's own backward (which equals the bits form).

use super::{check_input, contiguous_range, unsupported_dtype};
use crate::cpu::{self, Scale};
use crate::element::{to_compute_f64, Element};
use crate::functional::{Decisions, GroupedKind, StreamPos};
use crate::mask::{fill_keep_bits, mask_words, Probability};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

pub(super) use crate::functional::family::{alpha_coefficients, alpha_op as alpha_affine};

/// How elements map to decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Grouping {
    /// Element i uses decision `index_base + i` (Dropout, AlphaDropout).
    Elementwise,
    /// One decision per this many consecutive elements (channel dropout, DropPath,
    /// FeatureAlphaDropout).
    Grouped(usize),
}

/// What a kept element becomes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Kept {
    /// x * f (f in f64, rounded once to the compute type), dropped +0: the forward of the
    /// scaling layers (f = 1/q) and every backward (f = 1/q or alpha's a).
    Scale(f64),
    /// a*x + b, dropped a*A + b.
    Alpha,
}

/// One training call of a layer: everything its forward and backward need.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MaskOp {
    name: &'static str,
    pub(super) prob: Probability,
    pub(super) pos: StreamPos,
    grouping: Grouping,
    pub(super) kept: Kept,
}

impl MaskOp {
    pub(crate) fn new(
        name: &'static str,
        prob: Probability,
        pos: StreamPos,
        grouping: Grouping,
        kept: Kept,
    ) -> Self {
        Self {
            name,
            prob,
            pos,
            grouping,
            kept,
        }
    }

    /// Elementwise dropout: x / q or +0.
    pub(crate) fn dropout(prob: Probability, pos: StreamPos) -> Self {
        let kept = Kept::Scale(prob.scale_f64());
        Self::new("dropkit-dropout", prob, pos, Grouping::Elementwise, kept)
    }

    /// One decision per `group` elements: x / q or +0, or the alpha map.
    pub(crate) fn grouped(
        prob: Probability,
        pos: StreamPos,
        group: usize,
        kind: GroupedKind,
    ) -> Self {
        let (name, kept) = match kind {
            GroupedKind::Scale => ("dropkit-grouped-dropout", Kept::Scale(prob.scale_f64())),
            GroupedKind::Alpha => ("dropkit-feature-alpha-dropout", Kept::Alpha),
        };
        Self::new(name, prob, pos, Grouping::Grouped(group), kept)
    }

    /// The decision layout of a call over `n` elements (dropkit's own, so shards and
    /// partial groups are cut the same way).
    pub(crate) fn decisions(&self, n: usize) -> Decisions {
        match self.grouping {
            Grouping::Elementwise => Decisions::Elementwise,
            Grouping::Grouped(group) => Decisions::grouped(group, self.pos.index_base, n),
        }
    }

    /// The op that gives the input gradient: the same decisions, kept gradients times the
    /// layer's factor, dropped ones +0 (dropout is linear, alpha dropout affine).
    fn backward_op(&self) -> Self {
        let factor = match self.kept {
            Kept::Scale(f) => f,
            Kept::Alpha => alpha_coefficients(&self.prob).0,
        };
        Self {
            kept: Kept::Scale(factor),
            ..*self
        }
    }

    /// Applies the op with autograd. candle hands custom ops the raw storage and layout,
    /// so a strided input is made contiguous first (candle's copy, itself
    /// differentiable): the op then sees elements in logical row-major order, which is the
    /// decision order.
    pub(crate) fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        check_input(x, self.pos.index_base)?;
        x.contiguous()?.apply_op1(self)
    }

    fn cpu<T: Element>(&self, x: &[T]) -> Vec<T> {
        let mut y = vec![T::ZERO; x.len()];
        let src = cpu::Source::Slice(x);
        let (pos, prob) = (self.pos, &self.prob);
        match (self.decisions(x.len()), self.kept) {
            (Decisions::Elementwise, Kept::Scale(f)) => {
                let op = Scale(to_compute_f64::<T>(f));
                cpu::dropout::forward_with(src, &mut y, None, pos, prob, op)
            }
            (Decisions::Elementwise, Kept::Alpha) => {
                cpu::dropout::forward_with(src, &mut y, None, pos, prob, alpha_affine::<T>(prob))
            }
            (
                Decisions::Grouped {
                    group,
                    lead,
                    first,
                    count,
                },
                kept,
            ) => {
                // Few decisions (one per channel or sample): draw them, then apply.
                let mut bits = vec![0u32; mask_words(count)];
                fill_keep_bits(pos.seed, pos.offset, first, prob, count, &mut bits);
                match kept {
                    Kept::Scale(f) => {
                        let op = Scale(to_compute_f64::<T>(f));
                        cpu::family::grouped_apply(src, &mut y, &bits, group, lead, op)
                    }
                    Kept::Alpha => {
                        let op = alpha_affine::<T>(prob);
                        cpu::family::grouped_apply(src, &mut y, &bits, group, lead, op)
                    }
                }
            }
        }
        y
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
        super::cuda::mask_forward(self, storage, layout)
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
