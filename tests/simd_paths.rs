//! The CPU backend gives the same bits on every instruction set level: this test runs the
//! same calls in child processes with `DROPKIT_CPU_SIMD` set to each level the CPU has
//! (the variable is read once per process, so each level needs its own process) and
//! compares a digest of every output, mask and gradient, case by case.

use dropkit::cpu::simd::{self, SimdLevel};
use dropkit::functional::{
    alpha_dropout, bias_dropout_residual, dropout, dropout_add_norm, dropout_add_norm_backward,
    dropout_backward, grouped_dropout, AddNormConfig, AddNormInputs, AddNormSaved, GroupedConfig,
    Grouping, ResidualInputs,
};
use dropkit::{Element, MaskMode, Norm, StreamPos, Tensor};
use half::{bf16, f16};
use std::collections::BTreeMap;
use std::process::Command;

/// Set in the child processes; the child test does nothing without it.
const CHILD: &str = "DROPKIT_SIMD_PATHS_CHILD";

/// FNV-1a over the bits of every element.
fn digest<T: Element>(xs: &[T], h: &mut u64) {
    digest_bits(xs.iter().map(|x| x.to_bits_u64()), h);
}

/// [`digest`] with every NaN as one value: NaN payloads are outside the contract
/// (docs/spec.md, the note on NaN payloads), and a norm's row of NaN takes its payloads
/// from whichever operand the sums met first.
fn digest_nan_blind<T: Element>(xs: &[T], h: &mut u64) {
    #[allow(clippy::eq_op)] // c != c: the NaN test, with no float trait in scope
    let canonical = |x: &T| {
        let c = x.to_compute();
        if c != c {
            u64::MAX
        } else {
            x.to_bits_u64()
        }
    };
    digest_bits(xs.iter().map(canonical), h);
}

fn digest_bits(xs: impl Iterator<Item = u64>, h: &mut u64) {
    for x in xs {
        for b in x.to_le_bytes() {
            *h = (*h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3);
        }
    }
}

/// Data with every kind of value: ordinary, zeros, subnormals, infinities, NaNs.
fn data<T: Element>(n: usize, salt: u64) -> Vec<T> {
    (0..n as u64)
        .map(|i| {
            let h = (i ^ salt).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
            match h % 97 {
                0 => T::from_f64(f64::NAN),
                1 => T::from_f64(f64::INFINITY),
                2 => T::from_f64(-0.0),
                3 => T::from_f64(1e-40 * (h % 7) as f64),
                4 => T::from_f64(-3e-8),
                _ => T::from_f64((h as f64 / (1u64 << 24) as f64 - 0.5) * 6.0),
            }
        })
        .collect()
}

fn cases<T: Element>(out: &mut BTreeMap<String, u64>) {
    let name = T::DTYPE.name();
    // Around one mask word, the serial / parallel boundary, and a large odd size.
    for n in [1usize, 33, 1000, 65_536, 65_537, 131_075] {
        let x = Tensor::from_vec(data::<T>(n, 1), &[n]).unwrap();
        let g = Tensor::from_vec(data::<T>(n, 2), &[n]).unwrap();
        for (p, base) in [(0.1, 0u64), (0.5, 3), (1e-9, 4), (1.0, 0), (0.0, 7)] {
            let pos = StreamPos::new(0xC0FFEE ^ n as u64, 5).with_index_base(base);
            let mut h = 0xCBF2_9CE4_8422_2325u64;
            for mode in [MaskMode::Bits, MaskMode::Regenerate] {
                let (y, state) = dropout(&x, p, true, pos, mode).unwrap();
                digest(y.as_slice().unwrap(), &mut h);
                digest_bits(
                    state
                        .keep_bits()
                        .unwrap()
                        .unwrap()
                        .into_iter()
                        .map(u64::from),
                    &mut h,
                );
                digest(
                    dropout_backward(&g, &state).unwrap().as_slice().unwrap(),
                    &mut h,
                );
                let (y, state) = alpha_dropout(&x, p, true, pos, mode).unwrap();
                digest(y.as_slice().unwrap(), &mut h);
                digest(
                    dropout_backward(&g, &state).unwrap().as_slice().unwrap(),
                    &mut h,
                );
                let (y, _) = grouped_dropout(
                    &x,
                    &GroupedConfig {
                        p,
                        training: true,
                        grouping: Grouping::scale(3),
                    },
                    pos,
                    mode,
                )
                .unwrap();
                digest(y.as_slice().unwrap(), &mut h);
            }
            if n % 3 == 0 || n == 1000 {
                let hidden = if n % 3 == 0 { 3 } else { 8 };
                let bias = Tensor::from_vec(data::<T>(hidden, 3), &[hidden]).unwrap();
                let shape = [n / hidden, hidden];
                let xs = Tensor::from_vec(data::<T>(n, 1), &shape).unwrap();
                let r = Tensor::from_vec(data::<T>(n, 4), &shape).unwrap();
                let (y, _) = bias_dropout_residual(
                    ResidualInputs {
                        x: &xs,
                        bias: &bias,
                        residual: &r,
                    },
                    p,
                    true,
                    pos,
                    MaskMode::Bits,
                )
                .unwrap();
                digest(y.as_slice().unwrap(), &mut h);
            }
            out.insert(format!("{name} n={n} p={p} base={base}"), h);
        }
    }
}

/// The fused dropout + add + norm (its row kernels differ by level): forward and backward,
/// both norms, both saved forms, every optional input, rows that end inside a 16- and a
/// 32-lane chunk, special values in every input.
fn norm_cases<T: Element, R: Element<Compute = T::Compute>>(out: &mut BTreeMap<String, u64>) {
    for (rows, h) in [(3usize, 5usize), (40, 33), (70, 48), (9, 768)] {
        let n = rows * h;
        let t = |v: Vec<T>, shape: &[usize]| Tensor::from_vec(v, shape).unwrap();
        let r = |v: Vec<R>| Tensor::from_vec(v, &[rows, h]).unwrap();
        let (x, dz) = (t(data(n, 11), &[rows, h]), t(data(n, 12), &[rows, h]));
        let (res, ds) = (r(data(n, 13)), r(data(n, 14)));
        let (bias, gamma, beta) = (
            t(data(h, 15), &[h]),
            t(data(h, 16), &[h]),
            t(data(h, 17), &[h]),
        );
        for norm in [Norm::LayerNorm, Norm::RmsNorm] {
            let mut hash = 0xCBF2_9CE4_8422_2325u64;
            for (training, mode, with) in [
                (true, MaskMode::Bits, true),
                (true, MaskMode::Regenerate, true),
                (true, MaskMode::Bits, false),
                (false, MaskMode::Bits, true),
            ] {
                let inputs = AddNormInputs {
                    x: &x,
                    bias: with.then_some(&bias),
                    residual: with.then_some(&res),
                    gamma: &gamma,
                    beta: (norm == Norm::LayerNorm).then_some(&beta),
                };
                let config = AddNormConfig {
                    norm,
                    p: 0.25,
                    eps: 1e-5,
                    training,
                };
                let pos = StreamPos::new(0xAB ^ n as u64, 2);
                let o = dropout_add_norm(inputs, &config, pos, mode).unwrap();
                digest_nan_blind(o.z.as_slice().unwrap(), &mut hash);
                digest_nan_blind(o.s.as_slice().unwrap(), &mut hash);
                let saved = AddNormSaved {
                    s: &o.s,
                    gamma: &gamma,
                };
                let ds = with.then_some(&ds);
                let g = dropout_add_norm_backward(&dz, ds, saved, &o.state).unwrap();
                digest_nan_blind(g.x.as_slice().unwrap(), &mut hash);
                digest_nan_blind(g.gamma.as_slice().unwrap(), &mut hash);
                for v in [g.bias.as_ref(), g.beta.as_ref()].into_iter().flatten() {
                    digest_nan_blind(v.as_slice().unwrap(), &mut hash);
                }
                if let Some(d) = &g.residual {
                    digest_nan_blind(d.as_slice().unwrap(), &mut hash);
                }
            }
            let name = format!(
                "norm {}/{} {rows}x{h} {norm:?}",
                T::DTYPE.name(),
                R::DTYPE.name()
            );
            out.insert(name, hash);
        }
    }
}

/// The child: prints the level in use and one digest per case.
#[test]
fn child_digests() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let mut out = BTreeMap::new();
    cases::<f32>(&mut out);
    cases::<f64>(&mut out);
    cases::<f16>(&mut out);
    cases::<bf16>(&mut out);
    norm_cases::<f32, f32>(&mut out);
    norm_cases::<f64, f64>(&mut out);
    norm_cases::<bf16, bf16>(&mut out);
    norm_cases::<bf16, f32>(&mut out);
    norm_cases::<f16, f16>(&mut out);
    norm_cases::<f16, f32>(&mut out);
    println!("LEVEL {}", simd::level().name());
    for (case, h) in out {
        println!("DIGEST {case}: {h:016x}");
    }
}

fn run_child(level: SimdLevel) -> BTreeMap<String, String> {
    let exe = std::env::current_exe().unwrap();
    let output = Command::new(exe)
        .args([
            "--exact",
            "child_digests",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD, "1")
        .env(simd::ENV_VAR, level.name())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child at {level:?} failed: {stdout}"
    );
    assert!(
        stdout.contains(&format!("LEVEL {}\n", level.name())),
        "child did not run at {level:?}: {stdout}"
    );
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("DIGEST "))
        .filter_map(|l| l.split_once(": "))
        .map(|(c, h)| (c.to_owned(), h.to_owned()))
        .collect()
}

#[test]
fn every_instruction_set_level_gives_the_same_bits() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let levels: Vec<SimdLevel> = [SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512]
        .into_iter()
        .filter(|&l| l <= simd::detected())
        .collect();
    println!("levels this CPU has: {levels:?}");
    let reference = run_child(SimdLevel::Scalar);
    assert_eq!(
        reference.len(),
        4 * 6 * 5 + 6 * 4 * 2,
        "cases missing from the child's output"
    );
    for &level in &levels[1..] {
        let got = run_child(level);
        for (case, want) in &reference {
            assert_eq!(
                got.get(case),
                Some(want),
                "{case}: {level:?} differs from scalar"
            );
        }
    }
    // Levels this CPU lacks were not compared: said on stderr, or a failure where
    // DROPKIT_REQUIRE_SIMD names them.
    for (name, level) in [("avx2", SimdLevel::Avx2), ("avx512", SimdLevel::Avx512)] {
        simd::skip_without(
            name,
            level <= simd::detected(),
            &format!("every_instruction_set_level_gives_the_same_bits at {name}"),
        );
    }
}
