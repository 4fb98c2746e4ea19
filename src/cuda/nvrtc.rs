//! Run-time compilation of the embedded kernel sources with NVRTC, for builds made without
//! nvcc on machines that have NVRTC (a CUDA toolkit, or NVIDIA's nvrtc wheel).
//!
//! NVRTC ships no C library headers and, in CUDA 13.0, not `cuda_fp16.h`/`cuda_bf16.h`
//! either, so it needs a CUDA include directory: `DROPKIT_CUDA_INCLUDE`, else
//! `CUDA_HOME`/`CUDA_PATH` + `/include`, else `/usr/local/cuda/include`.

use super::kernels::{self, KernelModule};
use crate::error::{Error, Result};
use std::path::PathBuf;

/// Names of the kernel modules (kernels/*.cu stems) whose sources are embedded.
pub fn source_modules() -> impl Iterator<Item = &'static str> {
    kernels::ALL.iter().map(|m| m.name)
}

/// Whether libnvrtc can be opened. With `candle-cuda`, cudarc links it instead (candle asks
/// for dynamic linking), so a running process has it: there is no probe then.
#[cfg(not(feature = "candle-cuda"))]
fn nvrtc_library_present() -> bool {
    // SAFETY: only probes whether the shared library can be opened.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

#[cfg(feature = "candle-cuda")]
fn nvrtc_library_present() -> bool {
    true
}

/// The CUDA include directory NVRTC needs for the half-precision headers.
fn cuda_include() -> Option<PathBuf> {
    let from_env =
        |var: &str, suffix: &str| std::env::var_os(var).map(|v| PathBuf::from(v).join(suffix));
    [
        from_env("DROPKIT_CUDA_INCLUDE", ""),
        from_env("CUDA_HOME", "include"),
        from_env("CUDA_PATH", "include"),
        Some(PathBuf::from("/usr/local/cuda/include")),
    ]
    .into_iter()
    .flatten()
    .find(|dir| dir.join("cuda_fp16.h").is_file())
}

/// Compiles module `module` to PTX for virtual architecture `arch` (e.g. `compute_90`),
/// with the same semantics flags as build.rs (no FMA contraction).
///
/// [`Error::CudaUnavailable`] when NVRTC or the CUDA headers are missing.
pub fn compile_module(module: &str, arch: &str) -> Result<String> {
    let module = kernels::by_name(module)
        .ok_or_else(|| Error::CudaUnavailable(format!("no kernel module named {module}")))?;
    compile(module, arch)
}

/// [`compile_module`] for a module known at compile time.
pub(crate) fn compile(module: &KernelModule, arch: &str) -> Result<String> {
    let (source, module) = (module.source, module.name);
    if !nvrtc_library_present() {
        return Err(Error::CudaUnavailable(
            "no NVRTC library (libnvrtc) was found".into(),
        ));
    }
    let include = cuda_include().ok_or_else(|| {
        Error::CudaUnavailable(
            "NVRTC needs the CUDA headers (cuda_fp16.h): set DROPKIT_CUDA_INCLUDE or CUDA_HOME"
                .into(),
        )
    })?;
    let options = cudarc::nvrtc::CompileOptions {
        fmad: Some(false),
        include_paths: vec![include.to_string_lossy().into_owned()],
        options: vec![format!("--gpu-architecture={arch}"), "-std=c++17".into()],
        name: Some(format!("{module}.cu")),
        ..Default::default()
    };
    let compiled =
        std::panic::catch_unwind(|| cudarc::nvrtc::compile_ptx_with_opts(source, options));
    match compiled {
        Ok(Ok(ptx)) => Ok(ptx.to_src()),
        Ok(Err(e)) => Err(Error::CudaUnavailable(format!(
            "NVRTC failed on {module}: {e:?}"
        ))),
        Err(_) => Err(Error::CudaUnavailable(
            "the NVRTC library could not be used (too old for CUDA 13.0?)".into(),
        )),
    }
}
