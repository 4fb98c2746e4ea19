//! CPU throughput of elementwise dropout against a plain copy of the same tensor.
//!
//! Two ways in, each with its own copy reference:
//! - `func`: the public functional API (`dropkit::functional::dropout` and
//!   `dropout_backward`), which allocates its output like PyTorch does; the reference is
//!   `x.to_vec()` (allocate + copy).
//! - `raw`: the backend functions `dropkit::cpu::dropout::{forward, backward_bits}` into
//!   preallocated buffers; the reference is `copy_from_slice` into a preallocated Vec.
//!
//! Ops: `fwd_bits` (forward saving packed bits), `fwd_regen` (forward saving nothing),
//! `bwd_bits` (backward from the bits), `bwd_regen` (backward regenerating the mask), `copy`;
//! `func` also times `layer_fwd` (`Dropout::forward`, the layer users hold, saving bits) and
//! `raw` `fwd_inplace` (the forward over its own output, saving nothing).
//! Throughput counts the bytes that must move: read x + write y, plus the packed mask
//! (4 * ceil(n / 32) bytes) where it is written or read.
//!
//! Benchmark ids are `cpu_<api>_<dtype>/<op>/<n>` (e.g. `cpu_func_f32/fwd_bits/16777216`);
//! `scripts/criterion_results.py` turns them into RESULT lines. Environment:
//! `DROPKIT_BENCH_SIZES` (exponents of 2, default `16,20,24`), `DROPKIT_BENCH_DTYPES`
//! (default `f32,bf16,f16,f64`), `DROPKIT_BENCH_APIS` (default `func,raw`),
//! `DROPKIT_BENCH_P` (drop probability, default 0.1, as torch_baseline.py).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use criterion::{measurement::WallTime, BenchmarkGroup, SamplingMode};
use dropkit::cpu::{self, Source};
use dropkit::element::to_compute_f64;
use dropkit::functional::{dropout, dropout_backward};
use dropkit::mask::{mask_words, Probability};
use dropkit::{Dropout, Element, MaskMode, StreamPos, Tensor};
use half::{bf16, f16};
use std::time::Duration;

mod common;
use common::list;

const SEED: u64 = 0x5EED;
const OFFSET: u64 = 7;

fn sizes() -> Vec<usize> {
    list("DROPKIT_BENCH_SIZES", "16,20,24")
        .iter()
        .map(|e| {
            let e: u32 = e
                .parse()
                .unwrap_or_else(|_| panic!("DROPKIT_BENCH_SIZES: {e:?} is not an exponent"));
            assert!(e < usize::BITS, "DROPKIT_BENCH_SIZES: 2^{e} is too large");
            1usize << e
        })
        .collect()
}

fn drop_p() -> f64 {
    std::env::var("DROPKIT_BENCH_P")
        .ok()
        .map(|s| s.parse().expect("DROPKIT_BENCH_P: not a number"))
        .unwrap_or(0.1)
}

/// Deterministic finite data with varied signs and exponents.
fn data<T: Element>(n: usize, salt: u64) -> Vec<T> {
    (0..n as u64)
        .map(|i| {
            let h = (i ^ salt).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
            T::from_f64((h as f64 / (1u64 << 24) as f64 - 0.5) * 4.0)
        })
        .collect()
}

/// Bytes that must move: read + write of the tensor, plus the mask when used.
fn bytes<T: Element>(n: usize, with_mask: bool) -> u64 {
    let tensor = 2 * n * std::mem::size_of::<T>();
    let mask = if with_mask { 4 * mask_words(n) } else { 0 };
    (tensor + mask) as u64
}

/// Large cases take tens of milliseconds per call: fewer, flat samples keep a run short.
fn tune(group: &mut BenchmarkGroup<'_, WallTime>, n: usize) {
    if n >= 1 << 22 {
        group.sample_size(20).sampling_mode(SamplingMode::Flat);
    } else {
        group.sample_size(50).sampling_mode(SamplingMode::Auto);
    }
}

/// The public functional API: every call allocates its output (and mask).
fn bench_func<T: Element>(c: &mut Criterion, p: f64) {
    let name = T::DTYPE.name();
    let mut group = c.benchmark_group(format!("cpu_func_{name}"));
    for n in sizes() {
        tune(&mut group, n);
        let x = Tensor::from_vec(data::<T>(n, 1), &[n]).unwrap();
        let g = Tensor::from_vec(data::<T>(n, 2), &[n]).unwrap();
        let pos = StreamPos::new(SEED, OFFSET);

        group.throughput(Throughput::Bytes(bytes::<T>(n, true)));
        group.bench_function(BenchmarkId::new("fwd_bits", n), |b| {
            b.iter(|| dropout(black_box(&x), p, true, pos, MaskMode::Bits).unwrap())
        });
        group.throughput(Throughput::Bytes(bytes::<T>(n, false)));
        group.bench_function(BenchmarkId::new("fwd_regen", n), |b| {
            b.iter(|| dropout(black_box(&x), p, true, pos, MaskMode::Regenerate).unwrap())
        });
        let layer = Dropout::new(p).unwrap();
        group.throughput(Throughput::Bytes(bytes::<T>(n, true)));
        group.bench_function(BenchmarkId::new("layer_fwd", n), |b| {
            b.iter(|| layer.forward(black_box(&x)).unwrap())
        });

        let (_, bits_state) = dropout(&x, p, true, pos, MaskMode::Bits).unwrap();
        group.throughput(Throughput::Bytes(bytes::<T>(n, true)));
        group.bench_function(BenchmarkId::new("bwd_bits", n), |b| {
            b.iter(|| dropout_backward(black_box(&g), &bits_state).unwrap())
        });
        let (_, regen_state) = dropout(&x, p, true, pos, MaskMode::Regenerate).unwrap();
        group.throughput(Throughput::Bytes(bytes::<T>(n, false)));
        group.bench_function(BenchmarkId::new("bwd_regen", n), |b| {
            b.iter(|| dropout_backward(black_box(&g), &regen_state).unwrap())
        });

        let xs = x.as_slice().unwrap();
        group.throughput(Throughput::Bytes(bytes::<T>(n, false)));
        group.bench_function(BenchmarkId::new("copy", n), |b| {
            b.iter(|| black_box(xs).to_vec())
        });
    }
    group.finish();
}

/// The backend functions into preallocated buffers: no allocation in the timed loop.
fn bench_raw<T: Element>(c: &mut Criterion, p: f64) {
    let name = T::DTYPE.name();
    let prob = Probability::new(p).unwrap();
    let scale = to_compute_f64::<T>(prob.scale_f64());
    let mut group = c.benchmark_group(format!("cpu_raw_{name}"));
    for n in sizes() {
        tune(&mut group, n);
        let x = data::<T>(n, 1);
        let g = data::<T>(n, 2);
        let mut y = vec![T::ZERO; n];
        let mut bits = vec![0u32; mask_words(n)];
        let pos = StreamPos::new(SEED, OFFSET);

        group.throughput(Throughput::Bytes(bytes::<T>(n, true)));
        group.bench_function(BenchmarkId::new("fwd_bits", n), |b| {
            b.iter(|| {
                let src = Source::Slice(black_box(&x[..]));
                cpu::dropout::forward(src, &mut y, Some(&mut bits), pos, &prob, scale);
            })
        });
        group.throughput(Throughput::Bytes(bytes::<T>(n, false)));
        group.bench_function(BenchmarkId::new("fwd_regen", n), |b| {
            b.iter(|| {
                let src = Source::Slice(black_box(&x[..]));
                cpu::dropout::forward(src, &mut y, None, pos, &prob, scale);
            })
        });
        y.copy_from_slice(&x);
        group.throughput(Throughput::Bytes(bytes::<T>(n, false)));
        group.bench_function(BenchmarkId::new("fwd_inplace", n), |b| {
            b.iter(|| cpu::dropout::forward(Source::Output, &mut y, None, pos, &prob, scale))
        });
        // Philox and the compare alone: the floor under any forward that regenerates the
        // mask, with the tensor's bytes as its throughput so that its % of copy is the
        // ceiling of the in-place forward.
        group.throughput(Throughput::Bytes(bytes::<T>(n, false)));
        group.bench_function(BenchmarkId::new("mask_only", n), |b| {
            b.iter(|| cpu::dropout::fill_keep_bits(black_box(&mut bits), pos, &prob, n))
        });
        // `bits` now holds the real mask of (SEED, OFFSET).
        cpu::dropout::forward(
            Source::Slice(&x),
            &mut y,
            Some(&mut bits),
            pos,
            &prob,
            scale,
        );
        group.throughput(Throughput::Bytes(bytes::<T>(n, true)));
        group.bench_function(BenchmarkId::new("bwd_bits", n), |b| {
            b.iter(|| {
                let src = Source::Slice(black_box(&g[..]));
                cpu::dropout::backward_bits(src, &mut y, black_box(&bits), scale);
            })
        });
        // Backward by regeneration is the forward applied to the gradient.
        group.throughput(Throughput::Bytes(bytes::<T>(n, false)));
        group.bench_function(BenchmarkId::new("bwd_regen", n), |b| {
            b.iter(|| {
                let src = Source::Slice(black_box(&g[..]));
                cpu::dropout::forward(src, &mut y, None, pos, &prob, scale);
            })
        });
        group.throughput(Throughput::Bytes(bytes::<T>(n, false)));
        group.bench_function(BenchmarkId::new("copy", n), |b| {
            b.iter(|| y.copy_from_slice(black_box(&x)))
        });
        black_box(&y);
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    let p = drop_p();
    let apis = list("DROPKIT_BENCH_APIS", "func,raw");
    for dtype in list("DROPKIT_BENCH_DTYPES", "f32,bf16,f16,f64") {
        for api in &apis {
            match (dtype.as_str(), api.as_str()) {
                ("f32", "func") => bench_func::<f32>(c, p),
                ("bf16", "func") => bench_func::<bf16>(c, p),
                ("f16", "func") => bench_func::<f16>(c, p),
                ("f64", "func") => bench_func::<f64>(c, p),
                ("f32", "raw") => bench_raw::<f32>(c, p),
                ("bf16", "raw") => bench_raw::<bf16>(c, p),
                ("f16", "raw") => bench_raw::<f16>(c, p),
                ("f64", "raw") => bench_raw::<f64>(c, p),
                other => panic!("unknown dtype/api {other:?} (f32,bf16,f16,f64 / func,raw)"),
            }
        }
    }
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5))
}

criterion_group! {
    name = cpu_dropout;
    config = config();
    targets = benches
}
criterion_main!(cpu_dropout);
