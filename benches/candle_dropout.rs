//! Benchmark: dropkit's fused dropout on candle tensors (`dropkit::candle::dropout`, one
//! custom op) against `candle_nn::ops::dropout` (random tensor, compare, cast, multiplies),
//! training forward, on the CPU and on CUDA when there is one (`candle-cuda` and a GPU).
//!
//! ```sh
//! cargo bench --features candle --bench candle_dropout            # CPU (+ CUDA if built)
//! DROPKIT_BENCH_SECONDS=0.2 cargo bench --features candle --bench candle_dropout
//! ```
//!
//! Prints a table and one `RESULT impl=<dropkit|candle> op=candle_dropout_fwd ...` line per
//! case, for scripts (`scripts/bench-cpu.sh` puts candle's beside dropkit's functional API
//! and PyTorch). GB/s counts the logical traffic of the op: n elements read and n written.
//! Environment: `DROPKIT_BENCH_SIZES` (exponents of 2, default `16,20,22`),
//! `DROPKIT_BENCH_DTYPES` (default `f32,bf16,f16,f64`), `DROPKIT_BENCH_SECONDS`.

use candle_core::{DType, Device, Tensor};
use dropkit::functional::StreamPos;
use std::time::{Duration, Instant};

mod common;
use common::list;

const P: f64 = 0.1;

/// Sizes from `DROPKIT_BENCH_SIZES` (exponents of 2); unreadable entries are skipped.
fn sizes() -> Vec<usize> {
    list("DROPKIT_BENCH_SIZES", "16,20,22")
        .iter()
        .filter_map(|e| e.parse::<u32>().ok().filter(|&e| e < 40))
        .map(|e| 1usize << e)
        .collect()
}

/// Dtypes from `DROPKIT_BENCH_DTYPES`; unknown names are skipped.
fn dtypes() -> Vec<DType> {
    list("DROPKIT_BENCH_DTYPES", "f32,bf16,f16,f64")
        .iter()
        .filter_map(|d| match d.as_str() {
            "f32" => Some(DType::F32),
            "bf16" => Some(DType::BF16),
            "f16" => Some(DType::F16),
            "f64" => Some(DType::F64),
            _ => None,
        })
        .collect()
}

/// Time spent per case; at least MIN_REPS timed runs whatever the budget.
fn budget() -> Duration {
    let secs = std::env::var("DROPKIT_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(0.5);
    Duration::from_secs_f64(secs)
}
const MIN_REPS: usize = 5;

#[derive(Clone, Copy, PartialEq)]
enum Impl {
    Dropkit,
    Candle,
}

impl Impl {
    fn name(self) -> &'static str {
        match self {
            Impl::Dropkit => "dropkit",
            Impl::Candle => "candle",
        }
    }

    fn run(self, x: &Tensor, offset: u64) -> candle_core::Result<Tensor> {
        match self {
            Impl::Dropkit => dropkit::candle::dropout(x, P, true, StreamPos::new(1, offset)),
            Impl::Candle => candle_nn::ops::dropout(x, P as f32),
        }
    }
}

/// Median seconds of one training forward (waits for the device after each run).
fn time(imp: Impl, x: &Tensor, dev: &Device) -> candle_core::Result<f64> {
    for offset in 0..2 {
        imp.run(x, offset)?; // warm-up: allocations, kernel loading
    }
    dev.synchronize()?;
    let (budget, start) = (budget(), Instant::now());
    let mut samples = Vec::new();
    while samples.len() < MIN_REPS || start.elapsed() < budget {
        let t = Instant::now();
        let y = imp.run(x, samples.len() as u64 + 2)?;
        dev.synchronize()?;
        samples.push(t.elapsed().as_secs_f64());
        drop(y);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        DType::F64 => "f64",
        _ => "other",
    }
}

fn bench_device(dev: &Device, label: &str) -> candle_core::Result<()> {
    println!("\n{label}");
    println!(
        "{:>6} {:>9} | {:>12} {:>8} | {:>12} {:>8} | {:>7}",
        "dtype", "n", "dropkit s", "GB/s", "candle s", "GB/s", "speedup"
    );
    for dtype in dtypes() {
        for &n in &sizes() {
            let x = Tensor::randn(0f32, 1f32, n, &Device::Cpu)?
                .to_dtype(dtype)?
                .to_device(dev)?;
            let bytes = 2.0 * (n * dtype.size_in_bytes()) as f64;
            let mut row = Vec::new();
            for imp in [Impl::Dropkit, Impl::Candle] {
                let median = time(imp, &x, dev)?;
                let gbps = bytes / median / 1e9;
                println!(
                    "RESULT impl={} op=candle_dropout_fwd device={label} dtype={} n={n} \
                     median_s={median:.6e} gbps={gbps:.3}",
                    imp.name(),
                    dtype_name(dtype)
                );
                row.push((median, gbps));
            }
            println!(
                "{:>6} {:>9} | {:>12.3e} {:>8.2} | {:>12.3e} {:>8.2} | {:>6.1}x",
                dtype_name(dtype),
                n,
                row[0].0,
                row[0].1,
                row[1].0,
                row[1].1,
                row[1].0 / row[0].0
            );
        }
    }
    Ok(())
}

fn main() -> candle_core::Result<()> {
    // `cargo bench` passes --bench (and maybe a filter); there is nothing to filter here.
    println!(
        "training forward, p = {P}; cpu uses {} rayon threads (dropkit) / candle's own",
        rayon::current_num_threads()
    );
    bench_device(&Device::Cpu, "cpu")?;
    match Device::new_cuda(0) {
        Ok(dev) => bench_device(&dev, "cuda0")?,
        Err(e) => println!("\ncuda: skipped ({})", first_line(&e.to_string())),
    }
    Ok(())
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}
