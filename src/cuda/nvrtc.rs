//! Run-time compilation of the embedded kernel sources with NVRTC, for builds made without
//! nvcc, and for drivers that reject the embedded PTX (a CUDA 12 driver and PTX from nvcc
//! 13), on machines that have NVRTC (a CUDA toolkit, or NVIDIA's nvrtc wheel). Two
//! products: a cubin for the device's own `sm_XY` ([`compile_cubin_module`], which any driver
//! that supports that GPU loads, whatever its CUDA version), and PTX ([`compile_module`]).
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

/// Whether NVRTC can run here at all: the library and the CUDA headers are present.
pub fn usable() -> bool {
    nvrtc_ready().is_ok()
}

/// What NVRTC needs before it can compile: the library and the CUDA include directory.
fn nvrtc_ready() -> Result<PathBuf> {
    if !nvrtc_library_present() {
        return Err(Error::CudaUnavailable(
            "no NVRTC library (libnvrtc) was found".into(),
        ));
    }
    cuda_include().ok_or_else(|| {
        Error::CudaUnavailable(
            "NVRTC needs the CUDA headers (cuda_fp16.h): set DROPKIT_CUDA_INCLUDE or CUDA_HOME"
                .into(),
        )
    })
}

/// [`compile_module`] for a module known at compile time.
pub(crate) fn compile(module: &KernelModule, arch: &str) -> Result<String> {
    let (source, module) = (module.source, module.name);
    let include = nvrtc_ready()?;
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

/// Compiles module `module` to a cubin for the real architecture `arch` (e.g. `sm_90`),
/// with the same semantics flags as build.rs (no FMA contraction). A cubin needs no PTX
/// JIT in the driver, so the driver's PTX ISA limit does not apply to it.
///
/// [`Error::CudaUnavailable`] when NVRTC or the CUDA headers are missing, or NVRTC fails.
pub fn compile_cubin_module(module: &str, arch: &str) -> Result<Vec<u8>> {
    let module = kernels::by_name(module)
        .ok_or_else(|| Error::CudaUnavailable(format!("no kernel module named {module}")))?;
    compile_cubin(module, arch)
}

/// [`compile_cubin_module`] for a module known at compile time.
pub(crate) fn compile_cubin(module: &KernelModule, arch: &str) -> Result<Vec<u8>> {
    use cudarc::nvrtc::{result, sys};
    use std::ffi::CString;
    let include = nvrtc_ready()?;
    let fail = |what: String| Error::CudaUnavailable(format!("NVRTC {what} ({})", module.name));
    let source = CString::new(module.source).map_err(|_| fail("source has a NUL".into()))?;
    let name = CString::new(format!("{}.cu", module.name)).expect("module names have no NUL");
    let options = [
        "--fmad=false".to_owned(),
        format!("--include-path={}", include.display()),
        format!("--gpu-architecture={arch}"),
        "-std=c++17".to_owned(),
    ];
    let run = || -> Result<Vec<u8>> {
        let prog = result::create_program(&source, Some(&name))
            .map_err(|e| fail(format!("could not create a program: {e:?}")))?;
        // SAFETY: `prog` was just created from `source` and `name`, which outlive it, and
        // is destroyed once below, after its last use.
        let cubin = unsafe {
            let compiled = result::compile_program(prog, &options).map_err(|e| {
                let log = result::get_program_log(prog)
                    .map(|l| {
                        let bytes: Vec<u8> = l.iter().map(|&c| c as u8).collect();
                        String::from_utf8_lossy(&bytes)
                            .trim_end_matches('\0')
                            .to_owned()
                    })
                    .unwrap_or_default();
                fail(format!("failed for {arch}: {e:?}: {log}"))
            });
            let cubin = compiled.and_then(|()| {
                let mut size = 0usize;
                sys::nvrtcGetCUBINSize(prog, &mut size)
                    .result()
                    .map_err(|e| fail(format!("gave no cubin for {arch}: {e:?}")))?;
                let mut bytes = vec![0u8; size];
                sys::nvrtcGetCUBIN(prog, bytes.as_mut_ptr().cast())
                    .result()
                    .map_err(|e| fail(format!("gave no cubin for {arch}: {e:?}")))?;
                Ok(bytes)
            });
            let _ = result::destroy_program(prog);
            cubin
        }?;
        if cubin.is_empty() {
            return Err(fail(format!("gave an empty cubin for {arch}")));
        }
        Ok(cubin)
    };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|_| {
        Err(Error::CudaUnavailable(
            "the NVRTC library could not be used (a symbol is missing: too old?)".into(),
        ))
    })
}
