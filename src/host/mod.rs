//! What the host CPU offers every layer of the crate: which instruction sets it has (and
//! which one the CPU backend uses, `DROPKIT_CPU_SIMD`), and the f16 / bf16 block
//! conversions that use them. A leaf: it imports nothing of the crate, so the spec's
//! arithmetic (`philox`, `mask`, `element`) can use it without importing a backend.
//!
//! | file | what |
//! |---|---|
//! | `simd.rs` | [`simd::level`], `DROPKIT_CPU_SIMD`, `DROPKIT_REQUIRE_SIMD` |
//! | `convert.rs` | f16 / bf16 <-> f32 one mask word at a time, F16C and AVX2 where present |
//!
//! `dropkit::cpu::simd` is the public path of [`simd`] (re-exported there).

pub(crate) mod convert;
pub mod simd;
