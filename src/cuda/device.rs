//! A CUDA device as dropkit uses it: a context, the stream work is queued on, and the
//! kernels loaded into that context (once, then cached).
//!
//! A machine without a driver gets [`Error::CudaUnavailable`], never a panic:
//! `is_culib_present()` is checked before the first driver call.

use super::kernels::{self, KernelModule};
use super::nvrtc;
use crate::error::{Error, Result};
use cudarc::driver::{
    result::DriverError, sys, CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream,
    LaunchConfig,
};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

/// True when build.rs embedded PTX (nvcc was found at build time).
pub fn kernels_built() -> bool {
    kernels::ALL.iter().any(|m| m.ptx.is_some())
}

/// The embedded PTX of module `module` (a kernels/*.cu file stem), or
/// [`Error::KernelsNotBuilt`] when the crate was built without nvcc.
pub fn embedded_ptx(module: &str) -> Result<&'static str> {
    kernels::by_name(module)
        .and_then(|m| m.ptx)
        .ok_or(Error::KernelsNotBuilt)
}

/// Maps a driver error to [`Error::Cuda`] with its code and name.
pub(crate) fn driver_error(context: impl Into<String>) -> impl FnOnce(DriverError) -> Error {
    let context = context.into();
    move |e| {
        // The enum's Debug form is the driver's error name; no driver call needed.
        Error::Cuda {
            context,
            code: e.0 as u32,
            name: format!("{:?}", e.0),
        }
    }
}

/// Whether the CUDA driver library can be opened. With `candle-cuda`, cudarc links it
/// (candle asks for dynamic linking), so a running process has it: there is no probe then.
#[cfg(not(feature = "candle-cuda"))]
fn driver_library_present() -> bool {
    // SAFETY: only probes whether the shared library can be opened.
    unsafe { sys::is_culib_present() }
}

#[cfg(feature = "candle-cuda")]
fn driver_library_present() -> bool {
    true
}

/// Runs a driver call that cudarc might answer with a panic (a symbol missing from an old
/// driver) and turns the panic into an error.
fn guarded<R>(what: &str, f: impl FnOnce() -> Result<R>) -> Result<R> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(Error::CudaUnavailable(format!(
            "the CUDA driver library could not serve {what} (driver too old for CUDA 13.0?)"
        )))
    })
}

/// Loaded modules and functions, keyed by (CUcontext address, name).
type PerContext<V> = HashMap<(usize, String), V>;

/// A CUDA device as dropkit uses it: a context and the stream work is queued on.
#[derive(Clone)]
pub struct CudaDevice {
    stream: Arc<CudaStream>,
    name: Arc<str>,
    sm_count: u32,
}

impl CudaDevice {
    /// Opens device `ordinal` (its primary context) with a new stream.
    pub fn new(ordinal: usize) -> Result<Self> {
        if !driver_library_present() {
            return Err(Error::CudaUnavailable(
                "no CUDA driver library (libcuda.so / nvcuda.dll) was found".into(),
            ));
        }
        guarded("device discovery", || {
            let count =
                CudaContext::device_count().map_err(driver_error("cuInit / device count"))?;
            if ordinal >= count.max(0) as usize {
                return Err(Error::CudaUnavailable(format!(
                    "CUDA device {ordinal} requested but {count} device(s) found"
                )));
            }
            let ctx = CudaContext::new(ordinal).map_err(driver_error("creating the context"))?;
            let stream = ctx
                .new_stream()
                .map_err(driver_error("creating a stream"))?;
            Self::from_stream(stream)
        })
    }

    /// Wraps an existing cudarc stream: dropkit's work on this device is queued on it, in
    /// order with the caller's own work.
    pub fn from_stream(stream: Arc<CudaStream>) -> Result<Self> {
        let ctx = stream.context();
        let name = ctx.name().map_err(driver_error("device name"))?;
        let sm_count = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(driver_error("multiprocessor count"))?;
        Ok(Self {
            stream,
            name: name.into(),
            sm_count: sm_count.max(1) as u32,
        })
    }

    /// Loads the kernels (embedded PTX, or NVRTC when built without nvcc): `Ok` means
    /// dropkit can run on this device.
    pub fn kernels_ready(&self) -> Result<()> {
        self.module(&kernels::DROPOUT).map(|_| ())
    }

    /// The stream dropkit queues work on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.stream.context().ordinal()
    }

    /// The GPU's name as the driver reports it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits until all work queued on the stream has finished.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(driver_error("stream synchronize"))
    }

    pub(crate) fn same_as(&self, other: &CudaDevice) -> bool {
        self.stream.context().cu_ctx() == other.stream.context().cu_ctx()
    }

    /// A new buffer of `len` elements whose contents the caller overwrites in full. For
    /// `len == 0` it holds one element, unused: cudarc's `CudaStream::null` asks the driver
    /// for 0 bytes (`cuMemAllocAsync(0)`), which `cuMemAlloc` documents as
    /// `CUDA_ERROR_INVALID_VALUE`, so an empty tensor never asks for that. Callers keep
    /// the logical length themselves ([`CudaBuffer`](super::CudaBuffer), `MaskSlice`).
    pub(crate) fn alloc_uninit<T: cudarc::driver::DeviceRepr>(
        &self,
        len: usize,
    ) -> Result<CudaSlice<T>> {
        // SAFETY: every caller launches a kernel that writes all `len` elements before any
        // read, on this same stream (the spare element of an empty buffer is never read).
        unsafe { self.stream.alloc::<T>(len.max(1)) }.map_err(driver_error("allocation"))
    }

    /// The kernel `name` from `module`, loaded once per context.
    pub(crate) fn function(&self, module: &KernelModule, name: &str) -> Result<CudaFunction> {
        static CACHE: OnceLock<Mutex<PerContext<CudaFunction>>> = OnceLock::new();
        let ctx = self.stream.context();
        let key = (ctx.cu_ctx() as usize, name.to_owned());
        let cache = CACHE.get_or_init(Default::default);
        if let Some(f) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(f.clone());
        }
        let module = self.module(module)?;
        let f = module
            .load_function(name)
            .map_err(driver_error(format!("loading kernel {name}")))?;
        cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, f.clone());
        Ok(f)
    }

    fn module(&self, module: &KernelModule) -> Result<Arc<CudaModule>> {
        static MODULES: OnceLock<Mutex<PerContext<Arc<CudaModule>>>> = OnceLock::new();
        let ctx = self.stream.context();
        let key = (ctx.cu_ctx() as usize, module.name.to_owned());
        let modules = MODULES.get_or_init(Default::default);
        let mut modules = modules.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = modules.get(&key) {
            return Ok(Arc::clone(m));
        }
        let ptx = match module.ptx {
            Some(ptx) => ptx.to_owned(),
            // Built without nvcc: NVRTC, for this device's architecture, if it is here.
            None => {
                let (major, minor) = ctx
                    .compute_capability()
                    .map_err(driver_error("compute capability"))?;
                nvrtc::compile(module, &format!("compute_{major}{minor}"))
                    .map_err(|_| Error::KernelsNotBuilt)?
            }
        };
        let loaded = ctx
            .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
            .map_err(|e| {
                if e.0 == sys::CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION {
                    Error::UnsupportedPtx
                } else {
                    driver_error(format!("loading PTX module {}", module.name))(e)
                }
            })?;
        modules.insert(key, Arc::clone(&loaded));
        Ok(loaded)
    }

    /// A grid for `items` work items of `per_thread` each: enough blocks to fill the GPU,
    /// no more (kernels use grid-stride loops, so any grid gives the same bits).
    pub(crate) fn launch_config(&self, items: u64, per_thread: u64) -> LaunchConfig {
        const BLOCK: u32 = 256;
        let needed = items.div_ceil(per_thread * u64::from(BLOCK)).max(1);
        let cap = u64::from(self.sm_count) * 16;
        LaunchConfig {
            grid_dim: (needed.min(cap) as u32, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        }
    }
}

impl fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CudaDevice({self})")
    }
}

impl fmt::Display for CudaDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cuda:{} ({})", self.ordinal(), self.name)
    }
}
