//! CPU bench of the fused dropout + residual add + LayerNorm / RMSNorm (docs/spec.md 6.3):
//! forward (bits form) and backward for each H, against a memory copy of the same bytes in
//! the same run. Prints one line per case, for scripts/add_norm_report.py:
//!
//!     RESULT impl=dropkit op=<layer|rms>_<fwd|bwd> dtype=<f32|bf16> h=<H> n=<n> median_s=<s> gbps=<GB/s>
//!     RESULT impl=copy op=copy dtype=<..> h=<H> n=<n> median_s=<s> gbps=<GB/s>
//!
//! Bytes counted (what the fused op must move, 1e9 bytes per GB):
//!   fwd: read x and residual, write z and s (4 n S), write the mask (n / 8);
//!   bwd: read dz, ds and s, write dx and dresidual (5 n S), read the mask (n / 8);
//!   copy: read and write 2 n S (two buffers of n elements into two preallocated ones,
//!   rayon on all cores), so its GB/s is the machine's copy rate for the forward's bytes.
//! bias, gamma and beta (H elements) are not counted.
//!
//! Environment: DROPKIT_NORM_BENCH_N (elements, default 2^24), DROPKIT_NORM_BENCH_H
//! (default 768,4096,8192), DROPKIT_NORM_BENCH_DTYPES (f32,bf16), DROPKIT_NORM_BENCH_ITERS
//! (10, median of them after 2 warm-up calls), DROPKIT_NORM_BENCH_P (0.1).

mod common;

use dropkit::functional::{
    dropout_add_norm, dropout_add_norm_backward, AddNormConfig, AddNormInputs, AddNormSaved,
};
use dropkit::{Element, MaskMode, Norm, StreamPos, Tensor};
use half::bf16;
use std::hint::black_box;
use std::time::Instant;

fn env_usize(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn data<T: Element>(n: usize, salt: u64, scale: f64) -> Vec<T> {
    let mut s = salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            T::from_f64(((s >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * scale)
        })
        .collect()
}

/// Median seconds of `iters` calls of `f` after two warm-up calls.
fn median(iters: usize, mut f: impl FnMut()) -> f64 {
    f();
    f();
    let mut t: Vec<f64> = (0..iters.max(1))
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn report(imp: &str, op: &str, dtype: &str, h: usize, n: usize, secs: f64, bytes: f64) {
    let gbps = bytes / secs / 1e9;
    println!(
        "RESULT impl={imp} op={op} dtype={dtype} h={h} n={n} median_s={secs:.6e} gbps={gbps:.3}"
    );
}

fn bench<T: Element>(dtype: &str, n: usize, h: usize, iters: usize, p: f64) {
    let rows = n / h;
    let n = rows * h;
    let s_bytes = std::mem::size_of::<T>() as f64;
    let t = |v: Vec<T>, shape: &[usize]| Tensor::from_vec(v, shape).unwrap();
    let x = t(data(n, 1, 4.0), &[rows, h]);
    let residual = t(data(n, 2, 4.0), &[rows, h]);
    let bias = t(data(h, 3, 1.0), &[h]);
    let gamma = t(data(h, 4, 1.0), &[h]);
    let beta = t(data(h, 5, 1.0), &[h]);
    let dz = t(data(n, 6, 1.0), &[rows, h]);
    let ds = t(data(n, 7, 1.0), &[rows, h]);
    for norm in [Norm::LayerNorm, Norm::RmsNorm] {
        let name = match norm {
            Norm::LayerNorm => "layer",
            Norm::RmsNorm => "rms",
        };
        let beta = (norm == Norm::LayerNorm).then_some(&beta);
        let inputs = AddNormInputs {
            x: &x,
            bias: Some(&bias),
            residual: Some(&residual),
            gamma: &gamma,
            beta,
        };
        let config = AddNormConfig {
            norm,
            p,
            eps: 1e-5,
            training: true,
        };
        let pos = StreamPos::new(42, 0);
        let fwd = median(iters, || {
            black_box(dropout_add_norm(inputs, &config, pos, MaskMode::Bits).unwrap());
        });
        report(
            "dropkit",
            &format!("{name}_fwd"),
            dtype,
            h,
            n,
            fwd,
            4.0 * n as f64 * s_bytes + n as f64 / 8.0,
        );
        let out = dropout_add_norm(inputs, &config, pos, MaskMode::Bits).unwrap();
        let saved = AddNormSaved {
            s: &out.s,
            gamma: &gamma,
        };
        let bwd = median(iters, || {
            black_box(dropout_add_norm_backward(&dz, Some(&ds), saved, &out.state).unwrap());
        });
        report(
            "dropkit",
            &format!("{name}_bwd"),
            dtype,
            h,
            n,
            bwd,
            5.0 * n as f64 * s_bytes + n as f64 / 8.0,
        );
    }
    // The copy: two buffers of n elements into two others (allocated and touched once,
    // outside the timing), on all cores as the fused op runs.
    let (a, b) = (x.to_vec().unwrap(), residual.to_vec().unwrap());
    let (mut ca, mut cb) = (a.clone(), b.clone());
    let copy = median(iters, || {
        use rayon::prelude::*;
        for (dst, src) in [(&mut ca, &a), (&mut cb, &b)] {
            dst.par_chunks_mut(1 << 16)
                .zip(src.par_chunks(1 << 16))
                .for_each(|(d, s)| d.copy_from_slice(s));
        }
        black_box((&ca, &cb));
    });
    report("copy", "copy", dtype, h, n, copy, 4.0 * n as f64 * s_bytes);
}

fn main() {
    // `cargo bench` passes --bench; nothing else is read from the command line.
    let n = env_usize("DROPKIT_NORM_BENCH_N", 1 << 24);
    let iters = env_usize("DROPKIT_NORM_BENCH_ITERS", 10);
    let p: f64 = std::env::var("DROPKIT_NORM_BENCH_P")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.1);
    let hs: Vec<usize> = common::list("DROPKIT_NORM_BENCH_H", "768,4096,8192")
        .iter()
        .filter_map(|h| h.parse().ok())
        .collect();
    println!(
        "# dropkit cpu_add_norm: n={n} iters={iters} p={p} threads={} simd={:?}",
        rayon::current_num_threads(),
        dropkit::cpu::simd::level()
    );
    for dtype in common::list("DROPKIT_NORM_BENCH_DTYPES", "f32,bf16") {
        for &h in &hs {
            match dtype.as_str() {
                "f32" => bench::<f32>("f32", n, h, iters, p),
                "bf16" => bench::<bf16>("bf16", n, h, iters, p),
                other => eprintln!("cpu_add_norm: dtype {other} is not benched (f32, bf16)"),
            }
        }
    }
}
