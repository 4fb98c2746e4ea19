//! The kernel modules build.rs embedded: one typed constant per kernels/*.cu
//! ([`DROPOUT`], [`ALPHA_DROPOUT`], [`GROUPED_DROPOUT`], [`BIAS_DROPOUT_RESIDUAL`]), so
//! launches name their module by a constant that must exist, never by a string.

/// One kernels/*.cu: its PTX when build.rs ran nvcc, and its self-contained source (local
/// headers inlined) for run-time NVRTC otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelModule {
    /// The file stem (`dropout` for kernels/dropout.cu).
    pub name: &'static str,
    /// The PTX nvcc built, `None` when the crate was built without nvcc.
    pub ptx: Option<&'static str>,
    /// The source with its `#include "..."` headers inlined.
    pub source: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// The module named `name` (a kernels/*.cu file stem), if there is one.
pub fn by_name(name: &str) -> Option<&'static KernelModule> {
    ALL.iter().find(|m| m.name == name)
}
