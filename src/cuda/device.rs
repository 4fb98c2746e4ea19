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
    kernels::ALL.iter().any(|m| !m.ptx.is_empty())
}

/// The portable embedded PTX of module `module` (a kernels/*.cu file stem), or
/// [`Error::KernelsNotBuilt`] when the crate was built without nvcc. Every flavour is in
/// [`kernels::by_name`]`(module).ptx`.
pub fn embedded_ptx(module: &str) -> Result<&'static str> {
    kernels::by_name(module)
        .and_then(|m| m.portable_ptx())
        .map(|p| p.text)
        .ok_or(Error::KernelsNotBuilt)
}

/// Whether a module load failed because the driver cannot use this code for this GPU (PTX
/// too new for the driver, PTX it cannot parse, nothing for this architecture), which
/// compiling the sources at run time may cure; any other failure is returned as it is.
fn load_rejected(code: sys::CUresult) -> bool {
    use sys::CUresult::*;
    matches!(
        code,
        CUDA_ERROR_UNSUPPORTED_PTX_VERSION
            | CUDA_ERROR_INVALID_PTX
            | CUDA_ERROR_NO_BINARY_FOR_GPU
            | CUDA_ERROR_INVALID_IMAGE
    )
}

/// The driver's CUDA version as `major.minor` (`cuDriverGetVersion`), for messages.
fn driver_version() -> String {
    let mut version = 0;
    // SAFETY: writes one int; the symbol is in every CUDA driver.
    match unsafe { sys::cuDriverGetVersion(&mut version) }.result() {
        Ok(()) => format!("{}.{}", version / 1000, version % 1000 / 10),
        Err(_) => "unknown".into(),
    }
}

/// The reason inside an NVRTC error, for a message that lists several.
fn reason(e: Error) -> String {
    match e {
        Error::CudaUnavailable(why) => why,
        other => other.to_string(),
    }
}

/// [`CudaDevice::refuse_capture`] for a stream known only through a buffer.
pub(crate) fn refuse_capture_on(stream: &CudaStream, op: &'static str) -> Result<()> {
    use cudarc::driver::sys::CUstreamCaptureStatus as S;
    match stream.capture_status() {
        Ok(S::CU_STREAM_CAPTURE_STATUS_NONE) => Ok(()),
        Ok(_) => Err(Error::StreamCapturing { op }),
        Err(e) => Err(driver_error(format!("{op}: cuStreamIsCapturing"))(e)),
    }
}

/// Maps a driver error to [`Error::Cuda`], the driver's code and name as its source.
pub(crate) fn driver_error(context: impl Into<String>) -> impl FnOnce(DriverError) -> Error {
    let context = context.into();
    move |e| {
        // The enum's Debug form is the driver's error name; no driver call needed.
        Error::Cuda {
            context,
            driver: crate::error::DriverError {
                code: e.0 as u32,
                name: format!("{:?}", e.0),
            },
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

    /// [`Error::StreamCapturing`] while dropkit's stream is capturing a CUDA graph: every
    /// call that allocates device memory or copies to or from the host checks this first,
    /// so it refuses before it queues anything, and the capture stays intact (an
    /// allocation or a host copy there would invalidate it, or capture a buffer the graph
    /// cannot own).
    pub(crate) fn refuse_capture(&self, op: &'static str) -> Result<()> {
        refuse_capture_on(&self.stream, op)
    }

    pub(crate) fn same_as(&self, other: &CudaDevice) -> bool {
        self.same_context_as(&other.stream)
    }

    /// Whether `stream` belongs to this device's context.
    pub(crate) fn same_context_as(&self, stream: &CudaStream) -> bool {
        self.stream.context().cu_ctx() == stream.context().cu_ctx()
    }

    /// A new buffer of `len` elements whose contents the caller overwrites in full. A byte
    /// size past usize is [`Error::OutOfRange`]; memory the driver refuses is
    /// [`Error::OutOfMemory`] with the bytes asked for (the context stays usable). For
    /// `len == 0` it holds one element, unused: cudarc's `CudaStream::null` asks the driver
    /// for 0 bytes (`cuMemAllocAsync(0)`), which `cuMemAlloc` documents as
    /// `CUDA_ERROR_INVALID_VALUE`, so an empty tensor never asks for that. Callers keep
    /// the logical length themselves ([`CudaBuffer`](super::CudaBuffer), `MaskSlice`).
    pub(crate) fn alloc_uninit<T: cudarc::driver::DeviceRepr>(
        &self,
        len: usize,
    ) -> Result<CudaSlice<T>> {
        let len = len.max(1);
        let bytes = self.byte_size::<T>(len)?;
        self.refuse_capture("allocating a device buffer")?;
        // SAFETY: every caller launches a kernel that writes all `len` elements before any
        // read, on this same stream (the spare element of an empty buffer is never read);
        // `len * size_of::<T>()` fits usize (checked above).
        unsafe { self.stream.alloc::<T>(len) }.map_err(self.alloc_error(bytes, "allocation"))
    }

    /// `len` elements of `T` in bytes, or [`Error::OutOfRange`].
    pub(crate) fn byte_size<T>(&self, len: usize) -> Result<usize> {
        len.checked_mul(std::mem::size_of::<T>()).ok_or_else(|| {
            Error::OutOfRange(format!(
                "{len} elements of {} bytes overflow a device allocation size",
                std::mem::size_of::<T>()
            ))
        })
    }

    /// Maps a driver error of an allocation of `bytes`: out of memory becomes
    /// [`Error::OutOfMemory`] naming this device, anything else [`Error::Cuda`].
    pub(crate) fn alloc_error(
        &self,
        bytes: usize,
        context: &'static str,
    ) -> impl FnOnce(DriverError) -> Error + '_ {
        move |e| {
            if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
                Error::OutOfMemory {
                    bytes,
                    device: self.to_string(),
                }
            } else {
                driver_error(context)(e)
            }
        }
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

    /// Module `module` in this context, loaded once: the failures that retrying cannot
    /// cure (no usable code for this device) are cached too, so a process does not rerun
    /// NVRTC on every call.
    fn module(&self, module: &KernelModule) -> Result<Arc<CudaModule>> {
        static MODULES: OnceLock<Mutex<PerContext<Result<Arc<CudaModule>>>>> = OnceLock::new();
        let ctx = self.stream.context();
        let key = (ctx.cu_ctx() as usize, module.name.to_owned());
        let modules = MODULES.get_or_init(Default::default);
        let mut modules = modules.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = modules.get(&key) {
            return m.clone();
        }
        let loaded = self.load(module);
        if matches!(
            loaded,
            Ok(_) | Err(Error::UnsupportedPtx(_) | Error::KernelsNotBuilt)
        ) {
            modules.insert(key, loaded.clone());
        }
        loaded
    }

    /// Loads the newest embedded PTX this device can run; when there is none, or the driver
    /// rejects it, compiles the sources with NVRTC for this device ([`Self::load_nvrtc`]).
    fn load(&self, module: &KernelModule) -> Result<Arc<CudaModule>> {
        let ctx = self.stream.context();
        let (major, minor) = ctx
            .compute_capability()
            .map_err(driver_error("compute capability"))?;
        let (major, minor) = (major.max(0) as u32, minor.max(0) as u32);
        let rejected = match (module.ptx_for(major, minor), module.portable_ptx()) {
            (Some(ptx), _) => {
                let code = cudarc::nvrtc::Ptx::from_src(ptx.text);
                match ctx.load_module(code) {
                    Ok(m) => return Ok(m),
                    Err(e) if load_rejected(e.0) => format!(
                        "the driver (CUDA {}) rejected the embedded compute_{} PTX of {} \
                         with {:?}",
                        driver_version(),
                        ptx.arch,
                        module.name,
                        e.0
                    ),
                    Err(e) => {
                        return Err(driver_error(format!("loading PTX module {}", module.name))(
                            e,
                        ))
                    }
                }
            }
            (None, Some(oldest)) => format!(
                "the embedded PTX (compute_{} and newer) is too new for this GPU (compute \
                 capability {major}.{minor})",
                oldest.arch
            ),
            // Built without nvcc: NVRTC is the only way, and its failure is KernelsNotBuilt.
            (None, None) => {
                return self
                    .load_nvrtc(module, major, minor)
                    .map_err(|_| Error::KernelsNotBuilt)
            }
        };
        self.load_nvrtc(module, major, minor)
            .map_err(|nvrtc| Error::UnsupportedPtx(format!("{rejected}; then {nvrtc}")))
    }

    /// Compiles `module` with the machine's NVRTC for this device and loads it: a cubin for
    /// `sm_XY` first (no PTX JIT, so an NVRTC newer than the driver is fine), then PTX for
    /// `compute_XY`. The error says what each try gave.
    fn load_nvrtc(
        &self,
        module: &KernelModule,
        major: u32,
        minor: u32,
    ) -> std::result::Result<Arc<CudaModule>, String> {
        let ctx = self.stream.context();
        let sm = format!("sm_{major}{minor}");
        let cubin_failure = match nvrtc::compile_cubin(module, &sm) {
            Ok(cubin) => match ctx.load_module(cudarc::nvrtc::Ptx::from_binary(cubin)) {
                Ok(m) => return Ok(m),
                Err(e) => format!("the driver rejected NVRTC's {sm} cubin with {:?}", e.0),
            },
            // No NVRTC, or no headers: PTX would need them too.
            Err(e) if !nvrtc::usable() => return Err(format!("NVRTC: {}", reason(e))),
            Err(e) => reason(e),
        };
        let compute = format!("compute_{major}{minor}");
        let ptx_failure = match nvrtc::compile(module, &compute) {
            Ok(ptx) => match ctx.load_module(cudarc::nvrtc::Ptx::from_src(ptx)) {
                Ok(m) => return Ok(m),
                Err(e) => format!("the driver rejected NVRTC's {compute} PTX with {:?}", e.0),
            },
            Err(e) => reason(e),
        };
        Err(format!("NVRTC: {cubin_failure}; {ptx_failure}"))
    }

    /// A grid for `items` work items of `per_thread` each: enough blocks to fill the GPU,
    /// no more, and no more than `DROPKIT_CUDA_MAX_BLOCKS` (kernels use grid-stride loops,
    /// so any grid gives the same bits).
    pub(crate) fn launch_config(&self, items: u64, per_thread: u64) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (
                grid_blocks(items, per_thread, self.sm_count, max_blocks_from_env()),
                1,
                1,
            ),
            block_dim: (BLOCK_THREADS, 1, 1),
            shared_mem_bytes: 0,
        }
    }
}

/// Threads per block of every launch.
const BLOCK_THREADS: u32 = 256;

/// Blocks for `items` work items of `per_thread` each: enough to cover them, at most 16
/// per SM, at most `max_blocks` when set, at least 1.
fn grid_blocks(items: u64, per_thread: u64, sm_count: u32, max_blocks: Option<u32>) -> u32 {
    let needed = items.div_ceil(per_thread.max(1) * u64::from(BLOCK_THREADS));
    let fill = u64::from(sm_count.max(1)) * 16;
    let cap = max_blocks.map_or(fill, |m| fill.min(u64::from(m)));
    // cap <= 16 * u32::MAX fits u64; the min with a u32 value fits u32.
    needed.min(cap).clamp(1, u64::from(u32::MAX)) as u32
}

/// `DROPKIT_CUDA_MAX_BLOCKS`: a positive integer caps the grid of every launch, so that the
/// grid-stride loops take several passes even on small inputs (the parity tests run with
/// 1, 2 and 3). Anything else (unset, empty, 0, not a number) means no cap.
fn parse_max_blocks(value: Option<&str>) -> Option<u32> {
    value?.trim().parse::<u32>().ok().filter(|&m| m > 0)
}

/// [`parse_max_blocks`] of the environment, read once per process. An invalid value is
/// ignored, with one line on stderr saying so (never a panic).
fn max_blocks_from_env() -> Option<u32> {
    static MAX_BLOCKS: OnceLock<Option<u32>> = OnceLock::new();
    *MAX_BLOCKS.get_or_init(|| {
        let raw = std::env::var("DROPKIT_CUDA_MAX_BLOCKS").ok();
        let parsed = parse_max_blocks(raw.as_deref());
        if let (Some(raw), None) = (&raw, parsed) {
            eprintln!("dropkit: ignoring DROPKIT_CUDA_MAX_BLOCKS={raw:?} (not a positive integer)");
        }
        parsed
    })
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

#[cfg(test)]
mod tests {
    use super::{grid_blocks, load_rejected, parse_max_blocks};
    use cudarc::driver::sys::CUresult;

    #[test]
    fn only_code_the_driver_cannot_use_falls_back_to_nvrtc() {
        for code in [
            CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION,
            CUresult::CUDA_ERROR_INVALID_PTX,
            CUresult::CUDA_ERROR_NO_BINARY_FOR_GPU,
            CUresult::CUDA_ERROR_INVALID_IMAGE,
        ] {
            assert!(load_rejected(code), "{code:?}");
        }
        for code in [
            CUresult::CUDA_ERROR_OUT_OF_MEMORY,
            CUresult::CUDA_ERROR_INVALID_CONTEXT,
            CUresult::CUDA_ERROR_NOT_INITIALIZED,
        ] {
            assert!(!load_rejected(code), "{code:?}");
        }
    }

    #[test]
    fn max_blocks_parses_positive_integers_only() {
        assert_eq!(parse_max_blocks(None), None);
        assert_eq!(parse_max_blocks(Some("1")), Some(1));
        assert_eq!(parse_max_blocks(Some(" 3 ")), Some(3));
        assert_eq!(parse_max_blocks(Some("4294967295")), Some(u32::MAX));
        for bad in ["", "0", "-2", "1.5", "two", "4294967296", "0x10"] {
            assert_eq!(parse_max_blocks(Some(bad)), None, "{bad:?}");
        }
    }

    #[test]
    fn grid_covers_the_work_up_to_the_caps() {
        // 256 threads x 4 elements per block.
        assert_eq!(grid_blocks(0, 4, 132, None), 1);
        assert_eq!(grid_blocks(1, 4, 132, None), 1);
        assert_eq!(grid_blocks(1024, 4, 132, None), 1);
        assert_eq!(grid_blocks(1025, 4, 132, None), 2);
        // 16 blocks per SM at most.
        assert_eq!(grid_blocks(1 << 40, 4, 132, None), 132 * 16);
        // The environment's cap wins when smaller, never raises the grid.
        assert_eq!(grid_blocks(1 << 40, 4, 132, Some(3)), 3);
        assert_eq!(grid_blocks(1025, 4, 132, Some(1)), 1);
        assert_eq!(grid_blocks(1025, 4, 132, Some(100)), 2);
        assert_eq!(grid_blocks(1 << 40, 4, 2, Some(100)), 32);
        // per_thread 0 (a caller's mistake) still gives a grid, no division by zero.
        assert_eq!(grid_blocks(10, 0, 1, None), 1);
    }
}
