//! The kernel modules build.rs embedded: one typed constant per kernels/*.cu
//! ([`DROPOUT`], [`ALPHA_DROPOUT`], [`GROUPED_DROPOUT`], [`BIAS_DROPOUT_RESIDUAL`],
//! [`BIAS_DROPOUT_RESIDUAL_BWD`]), so
//! launches name their module by a constant that must exist, never by a string; one
//! [`KernelOp`] per line of kernels/kernels.list, which launches name their kernel by; and
//! the choice among a module's PTX flavours for a device ([`KernelModule::ptx_for`]).

/// PTX nvcc built for one virtual architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddedPtx {
    /// The virtual architecture as its number: 75 for `compute_75`, 80 for `compute_80`.
    pub arch: u32,
    /// The PTX text.
    pub text: &'static str,
}

/// One kernels/*.cu: its PTX, one per architecture build.rs targeted (oldest first, none
/// when the crate was built without nvcc), and its self-contained source (local headers
/// inlined) for run-time NVRTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelModule {
    /// The file stem (`dropout` for kernels/dropout.cu).
    pub name: &'static str,
    /// The PTX nvcc built, oldest architecture first; empty when built without nvcc.
    pub ptx: &'static [EmbeddedPtx],
    /// The source with its `#include "..."` headers inlined.
    pub source: &'static str,
}

impl KernelModule {
    /// The portable PTX (the oldest architecture), `None` when built without nvcc.
    pub fn portable_ptx(&self) -> Option<&'static EmbeddedPtx> {
        self.ptx.first()
    }

    /// The PTX to load on a device of compute capability `major.minor`
    /// ([`select_ptx`]).
    pub fn ptx_for(&self, major: u32, minor: u32) -> Option<&'static EmbeddedPtx> {
        select_ptx(self.ptx, major, minor)
    }
}

/// The newest PTX that a device of compute capability `major.minor` can JIT-compile: the
/// highest `arch` no greater than `10 * major + minor` (compute_80 PTX on an A100, H100 or
/// H200, the portable one on older GPUs). `None` when the device is older than every
/// flavour, or there is none.
pub fn select_ptx(ptx: &[EmbeddedPtx], major: u32, minor: u32) -> Option<&EmbeddedPtx> {
    let cc = major.saturating_mul(10).saturating_add(minor);
    ptx.iter().filter(|p| p.arch <= cc).max_by_key(|p| p.arch)
}

/// One op of kernels/kernels.list: a kernel of `module`, one entry per dtype
/// (`<op>_f32` .. `<op>_bf16`) or one entry named `op`. build.rs makes one constant per
/// op (`ops::DROPOUT_FWD`, ..., and `ops::ALL`) and checks nvcc's PTX against the list, so a launch names a
/// kernel that exists, and a kernel added to a module without its line fails the build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelOp {
    /// The module that holds it.
    pub module: &'static KernelModule,
    /// The entry name, or its stem before `_<dtype>`.
    pub op: &'static str,
    /// The entry suffixes: `f32`, `f64`, `f16`, `bf16` for a per-dtype op (and
    /// `f16_rf32`, `bf16_rf32`, with an f32 residual stream, for a per-residual-dtype op);
    /// empty for a single entry.
    pub suffixes: &'static [&'static str],
}

impl KernelOp {
    /// The entry names, `op_<suffix>` in the order of [`KernelOp::suffixes`] (or the one
    /// name).
    pub fn entries(&self) -> Vec<String> {
        if self.suffixes.is_empty() {
            vec![self.op.to_owned()]
        } else {
            self.suffixes
                .iter()
                .map(|sfx| format!("{}_{sfx}", self.op))
                .collect()
        }
    }
}

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// The module named `name` (a kernels/*.cu file stem), if there is one.
pub fn by_name(name: &str) -> Option<&'static KernelModule> {
    ALL.iter().find(|m| m.name == name)
}

#[cfg(test)]
mod tests {
    use super::{select_ptx, EmbeddedPtx};

    const PORTABLE: EmbeddedPtx = EmbeddedPtx {
        arch: 75,
        text: "portable",
    };
    const AMPERE: EmbeddedPtx = EmbeddedPtx {
        arch: 80,
        text: "compute_80",
    };

    #[test]
    fn newest_ptx_the_device_can_run() {
        let both = [PORTABLE, AMPERE];
        let pick = |major, minor| select_ptx(&both, major, minor).map(|p| p.text);
        // Turing (7.5): only the portable PTX; A100 (8.0), A10 (8.6), H100/H200 (9.0),
        // Blackwell (10.0, 12.0): compute_80.
        assert_eq!(pick(7, 5), Some("portable"));
        assert_eq!(pick(8, 0), Some("compute_80"));
        assert_eq!(pick(8, 6), Some("compute_80"));
        assert_eq!(pick(9, 0), Some("compute_80"));
        assert_eq!(pick(10, 0), Some("compute_80"));
        assert_eq!(pick(12, 0), Some("compute_80"));
        // Older than every flavour (Volta 7.0 with compute_75 PTX): none, NVRTC's turn.
        assert_eq!(pick(7, 0), None);
        // The order of the list does not matter.
        assert_eq!(select_ptx(&[AMPERE, PORTABLE], 7, 5), Some(&PORTABLE));
        assert_eq!(select_ptx(&[AMPERE, PORTABLE], 9, 0), Some(&AMPERE));
        // Built without nvcc, or a single flavour.
        assert_eq!(select_ptx(&[], 9, 0), None);
        assert_eq!(select_ptx(&[AMPERE], 7, 5), None);
        assert_eq!(select_ptx(&[PORTABLE], 9, 0), Some(&PORTABLE));
    }
}
