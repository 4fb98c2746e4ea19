//! What every candle op shares: errors in candle's type, the dtype and layout checks, and
//! the one match from candle's storage to dropkit's element types (per backend), so each op
//! writes its arithmetic once, generically. A leaf of `candle/`: it imports no sibling.

use crate::element::{DType, Element};
use crate::functional::check_index_range;
use candle_core::{CpuStorage, Layout, Tensor};

/// Turns a dropkit error into a candle error whose message says where it came from.
pub fn to_candle_error(e: crate::error::Error) -> candle_core::Error {
    candle_core::Error::Msg(format!("dropkit dropout: {e}")).bt()
}

/// What every op refuses: a dtype other than the four floats, or decision indices past
/// 2^64. Checked before a layer takes its offset, so a refused call takes none.
pub(super) fn check_input(x: &Tensor, index_base: u64) -> candle_core::Result<()> {
    check_dtype(x.dtype())?;
    check_index_range(index_base, x.elem_count()).map_err(to_candle_error)
}

/// dropkit's dtype for one of candle's, if it is one of the four floats.
pub(super) fn dropkit_dtype(dtype: candle_core::DType) -> Option<DType> {
    use candle_core::DType as D;
    match dtype {
        D::F32 => Some(DType::F32),
        D::F64 => Some(DType::F64),
        D::F16 => Some(DType::F16),
        D::BF16 => Some(DType::BF16),
        _ => None,
    }
}

pub(super) fn check_dtype(dtype: candle_core::DType) -> candle_core::Result<DType> {
    dropkit_dtype(dtype).ok_or_else(|| unsupported_dtype(dtype))
}

pub(super) fn unsupported_dtype(dtype: candle_core::DType) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "dropkit dropout: dtype {dtype:?} is not supported (f32, f64, f16 or bf16)"
    ))
    .bt()
}

/// The element range of a contiguous layout; every op makes its inputs contiguous before
/// it is applied, so this only fails for a caller that bypassed that.
pub(super) fn contiguous_range(layout: &Layout) -> candle_core::Result<(usize, usize)> {
    layout.contiguous_offsets().ok_or_else(|| {
        candle_core::Error::Msg(
            "dropkit dropout: the op needs a contiguous layout (call .contiguous() first)".into(),
        )
        .bt()
    })
}

/// The constructor and builders every candle layer shares (a layer has a
/// `core: LayerCore`; its train/eval flag and mask mode are unused, `forward_t` says).
macro_rules! candle_layer {
    ($layer:ident) => {
        impl $layer {
            /// A layer using the default generator; `p` must be a finite number in [0, 1]
            /// (a candle error otherwise).
            pub fn new(p: f64) -> candle_core::Result<Self> {
                Ok(Self {
                    core: $crate::layers::LayerCore::new(p)
                        .map_err($crate::candle::util::to_candle_error)?,
                })
            }

            /// Uses `generator` instead of the process-wide default.
            pub fn with_generator(
                mut self,
                generator: std::sync::Arc<$crate::generator::Generator>,
            ) -> Self {
                self.core.generator = Some(generator);
                self
            }

            /// For a shard holding elements `[index_base, index_base + n)` of a larger
            /// tensor: the shard gets exactly its slice of the whole tensor's mask.
            pub fn with_index_base(mut self, index_base: u64) -> Self {
                self.core.index_base = index_base;
                self
            }

            /// The drop probability.
            pub fn p(&self) -> f64 {
                self.core.prob.p()
            }
        }
    };
}
pub(super) use candle_layer;

/// A single-input op's CPU arithmetic, for any element type (an error only when the
/// output cannot be allocated).
pub(super) trait CpuMap {
    fn apply<T: Element>(&self, x: &[T]) -> crate::error::Result<Vec<T>>;
}

/// Runs `op` on the live range of a contiguous CPU storage, of any of the four dtypes.
pub(super) fn map_cpu_storage(
    op: &impl CpuMap,
    storage: &CpuStorage,
    layout: &Layout,
) -> candle_core::Result<CpuStorage> {
    use candle_core::backend::BackendStorage;
    let (start, end) = contiguous_range(layout)?;
    Ok(match storage {
        CpuStorage::F32(v) => CpuStorage::F32(op.apply(&v[start..end]).map_err(to_candle_error)?),
        CpuStorage::F64(v) => CpuStorage::F64(op.apply(&v[start..end]).map_err(to_candle_error)?),
        CpuStorage::F16(v) => CpuStorage::F16(op.apply(&v[start..end]).map_err(to_candle_error)?),
        CpuStorage::BF16(v) => CpuStorage::BF16(op.apply(&v[start..end]).map_err(to_candle_error)?),
        other => return Err(unsupported_dtype(other.dtype())),
    })
}

#[cfg(feature = "candle-cuda")]
pub(super) use cuda_storage::{device_of, map_cuda_storage, CudaMap};

#[cfg(feature = "candle-cuda")]
mod cuda_storage {
    use super::{contiguous_range, to_candle_error, unsupported_dtype};
    use crate::cuda::CudaDevice;
    use crate::element::Element;
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::CudaStorageSlice;
    use candle_core::{CudaStorage, Layout};
    use cudarc::driver::{CudaSlice, CudaView};

    /// Our device handle over the storage's stream: launches are ordered after whatever
    /// candle queued before, and candle's later work is ordered after them.
    pub(in crate::candle) fn device_of(storage: &CudaStorage) -> candle_core::Result<CudaDevice> {
        CudaDevice::from_stream(storage.device.cuda_stream()).map_err(to_candle_error)
    }

    /// A single-input op's CUDA launch, for any element type: a new buffer from `x`.
    pub(in crate::candle) trait CudaMap {
        fn apply<T: Element>(
            &self,
            dev: &CudaDevice,
            x: &CudaView<'_, T>,
        ) -> candle_core::Result<CudaSlice<T>>;
    }

    /// Runs `op` on the live range of a contiguous CUDA storage, of any of the four
    /// dtypes, and wraps the new slice as candle storage (which then owns it).
    pub(in crate::candle) fn map_cuda_storage(
        op: &impl CudaMap,
        storage: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<CudaStorage> {
        let (start, end) = contiguous_range(layout)?;
        let dev = device_of(storage)?;
        let owner = storage.device.clone();
        Ok(match &storage.slice {
            CudaStorageSlice::F32(x) => {
                CudaStorage::wrap_cuda_slice(op.apply(&dev, &x.slice(start..end))?, owner)
            }
            CudaStorageSlice::F64(x) => {
                CudaStorage::wrap_cuda_slice(op.apply(&dev, &x.slice(start..end))?, owner)
            }
            CudaStorageSlice::F16(x) => {
                CudaStorage::wrap_cuda_slice(op.apply(&dev, &x.slice(start..end))?, owner)
            }
            CudaStorageSlice::BF16(x) => {
                CudaStorage::wrap_cuda_slice(op.apply(&dev, &x.slice(start..end))?, owner)
            }
            _ => return Err(unsupported_dtype(storage.dtype())),
        })
    }
}
