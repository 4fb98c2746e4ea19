//! The CUDA backend as it is when the `cuda` feature is off: the same names as `src/cuda/`
//! over types that have no values. A tensor can then never live on CUDA, yet the backends'
//! dispatch (`functional`, `tensor`) matches on both places with no `cfg` in its arms: the
//! CUDA arms type-check here and are unreachable.

use crate::element::Element;
use crate::error::Result;
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
}

/// The operand of a CUDA forward.
pub(crate) enum CudaOperand<'a, T> {
    Input(&'a CudaBuffer<T>),
    InPlace(&'a mut CudaBuffer<T>),
}

impl<T: Element> CudaOperand<'_, T> {
    fn unreachable(&self) -> ! {
        match self {
            CudaOperand::Input(b) => b.unreachable(),
            CudaOperand::InPlace(b) => b.unreachable(),
        }
    }
}

/// Packed keep bits on a device.
#[derive(Debug)]
pub(crate) struct MaskSlice(Never);

/// A forward's new output and saved mask.
pub(crate) type Forward<T> = (Option<CudaBuffer<T>>, Option<MaskSlice>);

pub(crate) fn download_u32(slice: &MaskSlice) -> Result<Vec<u32>> {
    match slice.0 {}
}

pub(crate) mod dropout {
    use super::{CudaBuffer, CudaOperand, Forward, MaskSlice};
    use crate::element::Element;
    use crate::error::Result;
    use crate::mask::Probability;
    use crate::plan::{Decisions, Kept, MaskMode, StreamPos};

    /// Built by the dispatch's (unreachable) CUDA arm, never read: there is no device.
    #[allow(dead_code)]
    pub(crate) enum SavedMask<'a> {
        Bits(&'a MaskSlice),
        Regenerate(StreamPos),
    }

    pub(crate) fn forward<T: Element>(
        x: CudaOperand<'_, T>,
        _: StreamPos,
        _: &Probability,
        _: Kept<T::Compute>,
        _: MaskMode,
    ) -> Result<Forward<T>> {
        x.unreachable()
    }

    pub(crate) fn backward<T: Element>(
        dy: &CudaBuffer<T>,
        _: SavedMask<'_>,
        _: &Probability,
        _: &Decisions,
        _: T::Compute,
    ) -> Result<CudaBuffer<T>> {
        dy.unreachable()
    }
}

pub(crate) mod grouped {
    use super::{CudaOperand, Forward};
    use crate::element::Element;
    use crate::error::Result;
    use crate::mask::Probability;
    use crate::plan::{GroupLayout, Kept, MaskMode, StreamPos};

    pub(crate) fn forward<T: Element>(
        x: CudaOperand<'_, T>,
        _: StreamPos,
        _: &Probability,
        _: &GroupLayout,
        _: Kept<T::Compute>,
        _: MaskMode,
    ) -> Result<Forward<T>> {
        x.unreachable()
    }
}

pub(crate) mod residual {
    use super::{CudaBuffer, CudaOperand, Forward};
    use crate::element::Element;
    use crate::error::Result;
    use crate::mask::Probability;
    use crate::plan::{MaskMode, StreamPos};

    pub(crate) fn forward<T: Element>(
        x: &CudaBuffer<T>,
        _: &CudaBuffer<T>,
        _: CudaOperand<'_, T>,
        _: StreamPos,
        _: &Probability,
        _: T::Compute,
        _: MaskMode,
    ) -> Result<Forward<T>> {
        x.unreachable()
    }

    pub(crate) fn column_sum<T: Element>(g: &CudaBuffer<T>, _: usize) -> Result<CudaBuffer<T>> {
        g.unreachable()
    }

    pub(crate) fn backward<T: Element>(
        dy: &CudaBuffer<T>,
        _: super::dropout::SavedMask<'_>,
        _: &Probability,
        _: T::Compute,
        _: usize,
    ) -> Result<(CudaBuffer<T>, CudaBuffer<T>)> {
        dy.unreachable()
    }
}

/// Built by the dispatch's (unreachable) CUDA arms, never read: there is no device.
#[allow(dead_code)]
pub(crate) mod norm {
    use super::{CudaBuffer, MaskSlice};
    use crate::element::Element;
    use crate::error::Result;
    use crate::plan::{MaskMode, NormCall};

    pub(crate) struct NormBuffers<'a, T, R> {
        pub x: &'a CudaBuffer<T>,
        pub bias: Option<&'a CudaBuffer<T>>,
        pub residual: Option<&'a CudaBuffer<R>>,
        pub gamma: &'a CudaBuffer<T>,
        pub beta: Option<&'a CudaBuffer<T>>,
    }

    pub(crate) struct NormForward<T, R> {
        pub z: CudaBuffer<T>,
        pub s: CudaBuffer<R>,
        pub stats: CudaBuffer<f64>,
        pub mask: Option<MaskSlice>,
    }

    pub(crate) struct NormGradBuffers<'a, T, R> {
        pub dz: &'a CudaBuffer<T>,
        pub ds: Option<&'a CudaBuffer<R>>,
        pub s: &'a CudaBuffer<R>,
        pub gamma: &'a CudaBuffer<T>,
        pub stats: &'a CudaBuffer<f64>,
        pub mask: Option<&'a MaskSlice>,
    }

    pub(crate) struct Wanted {
        pub residual: bool,
        pub bias: bool,
    }

    pub(crate) struct NormBackward<T, R> {
        pub x: CudaBuffer<T>,
        pub residual: Option<CudaBuffer<R>>,
        pub bias: Option<CudaBuffer<T>>,
        pub gamma: CudaBuffer<T>,
        pub beta: Option<CudaBuffer<T>>,
    }

    pub(crate) fn forward<T: Element, R: Element>(
        b: NormBuffers<'_, T, R>,
        _: &NormCall,
        _: MaskMode,
    ) -> Result<NormForward<T, R>> {
        b.x.unreachable()
    }

    pub(crate) fn backward<T: Element, R: Element>(
        b: NormGradBuffers<'_, T, R>,
        _: &NormCall,
        _: Wanted,
    ) -> Result<NormBackward<T, R>> {
        b.dz.unreachable()
    }
}
