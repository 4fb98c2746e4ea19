//! The CUDA backend as the functional layer sees it: [`Cuda`]'s implementation of
//! [`DeviceBackend`] over this folder's launchers (one line each; the work is in the
//! launcher files).

use super::buffer::{download_u32, Cuda, CudaBuffer, CudaOperand, MaskSlice};
use super::{dropout, grouped, norm, residual};
use crate::backend::{
    DeviceBackend, Forwarded, NormBackward, NormBuffers, NormForward, NormGradBuffers, SavedMask,
    Wanted,
};
use crate::element::Element;
use crate::error::Result;
use crate::mask::Probability;
use crate::plan::{Decisions, GroupLayout, Kept, MaskMode, NormCall, StreamPos};

impl DeviceBackend for Cuda {
    type Buffer<T: Element> = CudaBuffer<T>;
    type Mask = MaskSlice;
    type Operand<'a, T: Element> = CudaOperand<'a, T>;

    fn download_mask(mask: &MaskSlice) -> Result<Vec<u32>> {
        download_u32(mask)
    }

    fn dropout_forward<T: Element>(
        x: CudaOperand<'_, T>,
        pos: StreamPos,
        prob: &Probability,
        kept: Kept<T::Compute>,
        mode: MaskMode,
    ) -> Result<Forwarded<Self, T>> {
        dropout::forward(x, pos, prob, kept, mode)
    }

    fn dropout_backward<T: Element>(
        dy: &CudaBuffer<T>,
        saved: SavedMask<'_, MaskSlice>,
        prob: &Probability,
        decisions: &Decisions,
        scale: T::Compute,
    ) -> Result<CudaBuffer<T>> {
        dropout::backward(dy, saved, prob, decisions, scale)
    }

    fn grouped_forward<T: Element>(
        x: CudaOperand<'_, T>,
        pos: StreamPos,
        prob: &Probability,
        layout: &GroupLayout,
        kept: Kept<T::Compute>,
        mode: MaskMode,
    ) -> Result<Forwarded<Self, T>> {
        grouped::forward(x, pos, prob, layout, kept, mode)
    }

    fn residual_forward<T: Element>(
        x: &CudaBuffer<T>,
        bias: &CudaBuffer<T>,
        residual: CudaOperand<'_, T>,
        pos: StreamPos,
        prob: &Probability,
        scale: T::Compute,
        mode: MaskMode,
    ) -> Result<Forwarded<Self, T>> {
        residual::forward(x, bias, residual, pos, prob, scale, mode)
    }

    fn column_sum<T: Element>(g: &CudaBuffer<T>, hidden: usize) -> Result<CudaBuffer<T>> {
        residual::column_sum(g, hidden)
    }

    fn residual_backward<T: Element>(
        dy: &CudaBuffer<T>,
        saved: SavedMask<'_, MaskSlice>,
        prob: &Probability,
        scale: T::Compute,
        hidden: usize,
    ) -> Result<(CudaBuffer<T>, CudaBuffer<T>)> {
        residual::backward(dy, saved, prob, scale, hidden)
    }

    fn norm_forward<T: Element, R: Element>(
        b: NormBuffers<'_, Self, T, R>,
        call: &NormCall,
        mode: MaskMode,
    ) -> Result<NormForward<Self, T, R>> {
        norm::forward(b, call, mode)
    }

    fn norm_backward<T: Element, R: Element>(
        b: NormGradBuffers<'_, Self, T, R>,
        call: &NormCall,
        want: Wanted,
    ) -> Result<NormBackward<Self, T, R>> {
        norm::backward(b, call, want)
    }
}
