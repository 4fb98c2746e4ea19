//! Compiles dropkit's kernels with the NVRTC found on this machine, through the same
//! function the run-time fallback calls (`dropkit::cuda::nvrtc::compile_module`), and
//! prints each module's PTX ISA version. Answers "does my CUDA toolkit's NVRTC build
//! dropkit's kernels, and which driver will accept the result?" without a GPU.
//!
//! Usage: `cargo run --example nvrtc_ptx -- [OUT_DIR] [ARCH...]` (default arch
//! compute_80 and compute_90). With OUT_DIR, writes `OUT_DIR/MODULE.ARCH.ptx` for ptxas
//! (scripts/check-cuda12.sh does that). NVRTC comes from the library path
//! (LD_LIBRARY_PATH), the CUDA headers from DROPKIT_CUDA_INCLUDE or CUDA_HOME.

use dropkit::cuda::nvrtc;
use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let out_dir = args.next().map(PathBuf::from);
    let mut arches: Vec<String> = args.collect();
    if arches.is_empty() {
        arches = vec!["compute_80".into(), "compute_90".into()];
    }
    if let Some(dir) = &out_dir {
        std::fs::create_dir_all(dir)?;
    }
    for arch in &arches {
        for module in nvrtc::source_modules() {
            let ptx = nvrtc::compile_module(module, arch)?;
            // The first `.version` line is the PTX ISA the driver must support.
            let version = ptx
                .lines()
                .find(|l| l.trim_start().starts_with(".version"))
                .unwrap_or("(no .version line)")
                .trim();
            let kernels = ptx.matches(".entry ").count();
            println!("{arch} {module:<22} {version}  {kernels} kernels");
            if let Some(dir) = &out_dir {
                std::fs::write(dir.join(format!("{module}.{arch}.ptx")), &ptx)?;
            }
        }
    }
    Ok(())
}
