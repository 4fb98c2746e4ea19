//! Which instruction set the CPU backend uses: the widest the CPU has, or the one named by
//! the environment variable `DROPKIT_CPU_SIMD` (`scalar`, `avx2`, `avx512` or `auto`),
//! read once per process. Every level computes the same bits; forcing one is for tests
//! and benchmarks that compare them. A level the CPU lacks falls back to the widest one
//! below it that it has, and an unknown value means `auto`.
//!
//! A leaf: the spec modules (`philox`, `mask`) and the backend's conversions ask it which
//! code may run, so it imports nothing of the crate.

use std::sync::atomic::{AtomicU8, Ordering};

/// The environment variable that forces a level.
pub const ENV_VAR: &str = "DROPKIT_CPU_SIMD";

/// The environment variable naming the instruction sets a test run must have
/// (comma-separated: `avx2`, `avx512`, `avx512bf16`): a test that would skip for want of
/// one fails instead (CI sets what its machine has).
pub const REQUIRE_VAR: &str = "DROPKIT_REQUIRE_SIMD";

/// For tests that need instruction set `what` (a [`REQUIRE_VAR`] name): false when the
/// CPU has it (`have`); else true after one line on stderr saying that `test` skipped
/// (straight to the handle, which the test harness does not capture), or a panic when
/// [`REQUIRE_VAR`] names `what`.
#[doc(hidden)]
pub fn skip_without(what: &str, have: bool, test: &str) -> bool {
    if have {
        return false;
    }
    let required = std::env::var(REQUIRE_VAR)
        .is_ok_and(|v| v.split(',').any(|l| l.trim().eq_ignore_ascii_case(what)));
    assert!(
        !required,
        "{test}: {REQUIRE_VAR} names {what}, which this CPU lacks"
    );
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "skipped {test}: this CPU lacks {what}");
    true
}

/// An instruction set level of the CPU backend, from narrowest to widest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimdLevel {
    /// Plain Rust: what LLVM makes of it for the build's target (SSE2 on x86_64).
    Scalar,
    /// AVX2 and F16C (x86_64).
    Avx2,
    /// AVX-512 F, BW, VL and DQ, F16C and BMI2, with AVX-512 BF16 when present (x86_64).
    Avx512,
}

impl SimdLevel {
    /// The name `DROPKIT_CPU_SIMD` accepts.
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Scalar => "scalar",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" => Some(SimdLevel::Scalar),
            "avx2" => Some(SimdLevel::Avx2),
            "avx512" => Some(SimdLevel::Avx512),
            _ => None,
        }
    }
}

/// True when the CPU has AVX2 and F16C.
fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// True when the CPU has what the AVX-512 kernels need: AVX-512 F, BW, VL and DQ, F16C and
/// BMI2.
pub fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512dq")
            && std::is_x86_feature_detected!("f16c")
            && std::is_x86_feature_detected!("bmi2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The widest level this CPU supports.
pub fn detected() -> SimdLevel {
    if has_avx2() && has_avx512() {
        SimdLevel::Avx512
    } else if has_avx2() {
        SimdLevel::Avx2
    } else {
        SimdLevel::Scalar
    }
}

/// The level in use: [`detected`], lowered to `DROPKIT_CPU_SIMD` when that names a lower
/// one. Read once; later changes of the variable have no effect.
#[inline]
pub fn level() -> SimdLevel {
    // 0: not read yet; otherwise 1 + the level.
    static LEVEL: AtomicU8 = AtomicU8::new(0);
    match LEVEL.load(Ordering::Relaxed) {
        1 => SimdLevel::Scalar,
        2 => SimdLevel::Avx2,
        3 => SimdLevel::Avx512,
        _ => {
            let requested = std::env::var(ENV_VAR)
                .ok()
                .and_then(|s| SimdLevel::parse(&s));
            let level = requested.map_or(detected(), |r| r.min(detected()));
            // Racing first calls compute the same value.
            LEVEL.store(level as u8 + 1, Ordering::Relaxed);
            level
        }
    }
}

/// True when AVX2 and F16C code may run (the CPU has them and no lower level is forced).
#[inline(always)]
pub fn avx2() -> bool {
    level() >= SimdLevel::Avx2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_order() {
        for l in [SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512] {
            assert_eq!(SimdLevel::parse(l.name()), Some(l));
        }
        assert_eq!(SimdLevel::parse(" AVX512 "), Some(SimdLevel::Avx512));
        assert_eq!(SimdLevel::parse("auto"), None);
        assert_eq!(SimdLevel::parse("sse9"), None);
        assert!(SimdLevel::Scalar < SimdLevel::Avx2 && SimdLevel::Avx2 < SimdLevel::Avx512);
        // The level in use never exceeds what the CPU has.
        assert!(level() <= detected());
    }
}
