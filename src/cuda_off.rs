//! The CUDA backend as it is when the `cuda` feature is off: its buffer types, which have
//! no values, and [`Cuda`], which implements the same traits of `crate::backend` as the real
//! one, so the compiler checks every operation's signature against the trait in both
//! builds (nothing here is a hand-kept copy of a launcher). A tensor can then never live
//! on CUDA, yet the dispatch (`functional`, `tensor`) matches on both places with no
//! `cfg` in its arms: the CUDA arms type-check here and are unreachable.

use crate::backend::{
    Backend, DropoutKernels, Forwarded, GroupedKernels, NormBackward, NormBackwardInto,
    NormBuffers, NormForward, NormForwardInto, NormGradBuffers, NormKernels, ResidualGradsInto,
    ResidualKernels, SavedMask, Wanted,
};
use crate::element::Element;
use crate::error::Result;
use crate::mask::Probability;
use crate::plan::{Decisions, GroupLayout, Kept, MaskMode, NormCall, StreamPos};
use crate::shard::ShardLayout;
use std::marker::PhantomData;

/// No value of this type exists.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Never {}

/// Device data, which cannot exist without the `cuda` feature.
#[derive(Debug)]
pub(crate) struct CudaBuffer<T>(Never, PhantomData<T>);

impl<T: Element> CudaBuffer<T> {
    pub(crate) fn unreachable(&self) -> ! {
        match self.0 {}
    }

    pub(crate) fn len(&self) -> usize {
        self.unreachable()
    }

    pub(crate) fn to_host(&self) -> Result<Vec<T>> {
        self.unreachable()
    }

    pub(crate) fn copy_over(&mut self, _: &CudaBuffer<T>) -> Result<()> {
        self.unreachable()
    }
}

/// The operand of a CUDA forward.
pub(crate) enum CudaOperand<'a, T> {
    Input(&'a CudaBuffer<T>),
    InPlace(&'a mut CudaBuffer<T>),
    // Built by the dispatch so its arms type-check; no value of it exists to be read.
    #[allow(dead_code)]
    Into {
        x: &'a CudaBuffer<T>,
        out: &'a mut CudaBuffer<T>,
        mask: Option<MaskSlice>,
    },
}

impl<T: Element> CudaOperand<'_, T> {
    fn unreachable(&self) -> ! {
        match self {
            CudaOperand::Input(b) => b.unreachable(),
            CudaOperand::InPlace(b) => b.unreachable(),
            CudaOperand::Into { x, .. } => x.unreachable(),
        }
    }
}

/// Packed keep bits on a device.
#[derive(Debug)]
pub(crate) struct MaskSlice(Never);

/// The backend that cannot be reached: every method takes a value of a type that has
/// none.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cuda;

impl Backend for Cuda {
    type Buffer<T: Element> = CudaBuffer<T>;
    type Mask = MaskSlice;
    type Operand<'a, T: Element> = CudaOperand<'a, T>;

    fn download_mask(mask: &MaskSlice) -> Result<Vec<u32>> {
        match mask.0 {}
    }

    fn input<T: Element>(b: &CudaBuffer<T>) -> CudaOperand<'_, T> {
        b.unreachable()
    }
}

impl DropoutKernels for Cuda {
    fn dropout_forward<T: Element>(
        x: CudaOperand<'_, T>,
        _: StreamPos,
        _: &Probability,
        _: Kept<T::Compute>,
        _: MaskMode,
    ) -> Result<Forwarded<Self, T>> {
        x.unreachable()
    }

    fn dropout_backward<T: Element>(
        dy: CudaOperand<'_, T>,
        _: SavedMask<'_, MaskSlice>,
        _: &Probability,
        _: &Decisions,
        _: T::Compute,
    ) -> Result<Option<CudaBuffer<T>>> {
        dy.unreachable()
    }

    fn shard_keep_bits<T: Element>(
        like: &CudaOperand<'_, T>,
        _: StreamPos,
        _: &Probability,
        _: &ShardLayout,
    ) -> Result<MaskSlice> {
        like.unreachable()
    }

    fn apply_bits<T: Element>(
        x: CudaOperand<'_, T>,
        _: &MaskSlice,
        _: Kept<T::Compute>,
    ) -> Result<Option<CudaBuffer<T>>> {
        x.unreachable()
    }
}

impl GroupedKernels for Cuda {
    fn grouped_forward<T: Element>(
        x: CudaOperand<'_, T>,
        _: StreamPos,
        _: &Probability,
        _: &GroupLayout,
        _: Kept<T::Compute>,
    ) -> Result<Forwarded<Self, T>> {
        x.unreachable()
    }

    fn grouped_keep_bits_into<T: Element>(
        _: &CudaOperand<'_, T>,
        mask: &mut MaskSlice,
        _: StreamPos,
        _: &Probability,
        _: &GroupLayout,
    ) -> Result<()> {
        match mask.0 {}
    }

    fn apply_grouped_bits<T: Element>(
        x: CudaOperand<'_, T>,
        _: &MaskSlice,
        _: &GroupLayout,
        _: Kept<T::Compute>,
    ) -> Result<Option<CudaBuffer<T>>> {
        x.unreachable()
    }
}

impl ResidualKernels for Cuda {
    fn residual_forward<T: Element>(
        x: &CudaBuffer<T>,
        _: &CudaBuffer<T>,
        _: CudaOperand<'_, T>,
        _: StreamPos,
        _: &Probability,
        _: T::Compute,
        _: MaskMode,
    ) -> Result<Forwarded<Self, T>> {
        x.unreachable()
    }

    fn residual_forward_bits<T: Element>(
        x: &CudaBuffer<T>,
        _: &CudaBuffer<T>,
        _: CudaOperand<'_, T>,
        _: &MaskSlice,
        _: T::Compute,
    ) -> Result<Option<CudaBuffer<T>>> {
        x.unreachable()
    }

    fn column_sum<T: Element>(g: &CudaBuffer<T>, _: usize) -> Result<CudaBuffer<T>> {
        g.unreachable()
    }

    fn residual_backward_into<T: Element>(
        dy: &CudaBuffer<T>,
        _: ResidualGradsInto<'_, Self, T>,
        _: Option<SavedMask<'_, MaskSlice>>,
        _: &Probability,
        _: T::Compute,
        _: usize,
    ) -> Result<()> {
        dy.unreachable()
    }

    fn residual_backward<T: Element>(
        dy: &CudaBuffer<T>,
        _: SavedMask<'_, MaskSlice>,
        _: &Probability,
        _: T::Compute,
        _: usize,
    ) -> Result<(CudaBuffer<T>, CudaBuffer<T>)> {
        dy.unreachable()
    }
}

impl NormKernels for Cuda {
    fn norm_forward<T: Element, R: Element>(
        b: NormBuffers<'_, Self, T, R>,
        _: &NormCall,
        _: MaskMode,
    ) -> Result<NormForward<Self, T, R>> {
        b.x.unreachable()
    }

    fn norm_forward_into<T: Element, R: Element>(
        b: NormBuffers<'_, Self, T, R>,
        _: &NormCall,
        _: MaskMode,
        _: NormForwardInto<'_, Self, T, R>,
    ) -> Result<Option<MaskSlice>> {
        b.x.unreachable()
    }

    fn norm_backward_into<T: Element, R: Element>(
        b: NormGradBuffers<'_, Self, T, R>,
        _: &NormCall,
        _: NormBackwardInto<'_, Self, T, R>,
    ) -> Result<()> {
        b.dz.unreachable()
    }

    fn norm_backward<T: Element, R: Element>(
        b: NormGradBuffers<'_, Self, T, R>,
        _: &NormCall,
        _: Wanted,
    ) -> Result<NormBackward<Self, T, R>> {
        b.dz.unreachable()
    }
}
