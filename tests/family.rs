//! The rest of the family against SPEC section 6, each behaviour written once and run on
//! every device (`test_device!`: `<name>_cpu`, and `<name>_cuda`, which skips with a
//! message without a GPU and fails then under `DROPKIT_REQUIRE_CUDA=1`): exact formulas,
//! one decision per channel or sample, moments of AlphaDropout, the fused layer's three
//! gradients, sharding, in-place variants and error paths. The CPU column sum's order and
//! thread-count independence are CPU-only. Then the family on CUDA against the CPU
//! reference, bit for bit: channel dropout, DropPath, AlphaDropout, FeatureAlphaDropout and
//! the fused bias-dropout-residual, every dtype, both saved forms, unaligned views,
//! in-place, and shards split between CPU and CUDA.

mod common;

// The behaviour tests take finite data: they check values against tolerances and zero
// patterns, which NaN and -0.0 would blur; the special values are covered by
// tests/dropout.rs, tests/properties.rs and the CUDA parity tests below (`test_data`).
use common::{
    bits_of, cuda_or_skip, finite_test_data, tensor_at, tensor_on, test_data, test_device,
};
use dropkit::element::{to_compute_f64, ComputeFloat};
use dropkit::functional::{
    alpha_dropout, bias_dropout_residual, bias_dropout_residual_backward, dropout,
    dropout_backward, grouped_dropout, GroupedConfig, GroupedKind, Grouping, ResidualInputs,
};
use dropkit::mask::{keep_bits, Probability};
use dropkit::{
    AlphaDropout, BiasDropoutResidual, Device, DropPath, Dropout1d, Dropout2d, Dropout3d,
    DropoutState, Element, Error, FeatureAlphaDropout, Generator, MaskMode, StreamPos, Tensor,
};
use half::{bf16, f16};
use std::sync::Arc;

const A: f64 = -1.758_099_340_847_376_6;

fn bit(bits: &[u32], j: usize) -> bool {
    bits[j / 32] >> (j % 32) & 1 == 1
}

fn gen(seed: u64) -> Arc<Generator> {
    Arc::new(Generator::new(seed))
}

fn tensor<T: Element>(dev: &Device, shape: &[usize], salt: u64) -> Tensor<T> {
    let n = shape.iter().product();
    tensor_on(dev, finite_test_data(n, salt), shape)
}

/// The alpha-dropout constants of SPEC section 6, rounded to the compute type of T.
fn alpha_consts<T: Element>(p: f64) -> (T::Compute, T::Compute, T::Compute, f64) {
    let q = Probability::new(p).unwrap().keep_probability();
    let a = 1.0 / (q * (1.0 + (1.0 - q) * A * A)).sqrt();
    let b = -a * A * (1.0 - q);
    let (ac, bc) = (to_compute_f64::<T>(a), to_compute_f64::<T>(b));
    (ac, bc, to_compute_f64::<T>(A).mul(ac).add(bc), a)
}

/// Checks y and dx of a grouped or elementwise layer element by element against the spec;
/// `[x, y, dx, dy]` are the forward's input and output and the backward's.
fn check_layer<T: Element>(
    [x, y, dx, dy]: [&Tensor<T>; 4],
    group: usize,
    decision_bits: &[u32],
    kept_value: impl Fn(T::Compute) -> T::Compute,
    dropped_value: T::Compute,
    grad_scale: T::Compute,
) {
    let (x, y, dx, dy) = (
        x.to_vec().unwrap(),
        y.to_vec().unwrap(),
        dx.to_vec().unwrap(),
        dy.to_vec().unwrap(),
    );
    for i in 0..x.len() {
        let kept = bit(decision_bits, i / group);
        let want_y = T::from_compute(if kept {
            kept_value(x[i].to_compute())
        } else {
            dropped_value
        });
        let want_dx = if kept {
            T::from_compute(dy[i].to_compute().mul(grad_scale))
        } else {
            T::ZERO
        };
        assert_eq!(
            y[i].to_bits_u64(),
            want_y.to_bits_u64(),
            "{} y[{i}]",
            T::DTYPE
        );
        assert_eq!(
            dx[i].to_bits_u64(),
            want_dx.to_bits_u64(),
            "{} dx[{i}]",
            T::DTYPE
        );
    }
}

fn channel_case<T: Element>(dev: &Device, shape: &[usize], spatial: usize, p: f64) {
    let x = tensor::<T>(dev, shape, 1);
    let dy = tensor::<T>(dev, shape, 2);
    let group: usize = shape[shape.len() - spatial..].iter().product();
    let decisions = x.len() / group;
    let s = to_compute_f64::<T>(Probability::new(p).unwrap().scale_f64());
    let want_bits = keep_bits(11, 0, p, decisions).unwrap();
    for mode in [MaskMode::Bits, MaskMode::Regenerate] {
        let (y, st) = match spatial {
            1 => Dropout1d::new(p)
                .unwrap()
                .with_generator(gen(11))
                .with_mask_mode(mode)
                .forward(&x),
            2 => Dropout2d::new(p)
                .unwrap()
                .with_generator(gen(11))
                .with_mask_mode(mode)
                .forward(&x),
            _ => Dropout3d::new(p)
                .unwrap()
                .with_generator(gen(11))
                .with_mask_mode(mode)
                .forward(&x),
        }
        .unwrap();
        assert_eq!(
            st.keep_bits().unwrap().unwrap(),
            want_bits,
            "one bit per channel"
        );
        if mode == MaskMode::Bits {
            assert_eq!(st.saved_bytes(), 4 * decisions.div_ceil(32));
        }
        let dx = dropout_backward(&dy, &st).unwrap();
        check_layer(
            [&x, &y, &dx, &dy],
            group,
            &want_bits,
            |v| v.mul(s),
            <T::Compute as ComputeFloat>::ZERO,
            s,
        );
    }
}

fn channel_dropout_drops_whole_feature_maps(dev: &Device) {
    for p in [0.0, 0.3, 0.5, 1.0] {
        channel_case::<f32>(dev, &[3, 5, 7], 1, p);
        channel_case::<f32>(dev, &[5, 7], 1, p);
        channel_case::<f64>(dev, &[2, 6, 3, 4], 2, p);
        channel_case::<f16>(dev, &[6, 3, 4], 2, p);
        channel_case::<bf16>(dev, &[2, 3, 2, 3, 4], 3, p);
        channel_case::<f32>(dev, &[3, 2, 3, 4], 3, p);
    }
}
test_device!(
    channel_dropout_drops_whole_feature_maps,
    channel_dropout_drops_whole_feature_maps_cpu,
    channel_dropout_drops_whole_feature_maps_cuda
);

fn drop_path_decides_per_sample(dev: &Device) {
    for p in [0.2, 0.7] {
        let x = tensor::<f32>(dev, &[40, 3, 5], 3);
        let dy = tensor::<f32>(dev, &[40, 3, 5], 4);
        let layer = DropPath::new(p).unwrap().with_generator(gen(5));
        let (y, st) = layer.forward(&x).unwrap();
        let want = keep_bits(5, 0, p, 40).unwrap();
        assert_eq!(st.keep_bits().unwrap().unwrap(), want);
        let s = Probability::new(p).unwrap().scale_f32();
        let dx = layer.backward(&dy, &st).unwrap();
        check_layer([&x, &y, &dx, &dy], 15, &want, |v| v * s, 0.0, s);
    }
}
test_device!(
    drop_path_decides_per_sample,
    drop_path_decides_per_sample_cpu,
    drop_path_decides_per_sample_cuda
);

fn alpha_case<T: Element>(dev: &Device, n: usize, p: f64) {
    let x = tensor::<T>(dev, &[n], 6);
    let dy = tensor::<T>(dev, &[n], 7);
    let (a, b, dropped, _) = alpha_consts::<T>(p);
    let want = keep_bits(13, 0, p, n).unwrap();
    let mut grads = Vec::new();
    for mode in [MaskMode::Bits, MaskMode::Regenerate] {
        let layer = AlphaDropout::new(p)
            .unwrap()
            .with_generator(gen(13))
            .with_mask_mode(mode);
        let (y, st) = layer.forward(&x).unwrap();
        let dx = layer.backward(&dy, &st).unwrap();
        check_layer(
            [&x, &y, &dx, &dy],
            1,
            &want,
            |v| v.mul(a).add(b),
            dropped,
            a,
        );
        grads.push(bits_of(&dx.to_vec().unwrap()));
    }
    assert_eq!(grads[0], grads[1]);
}

fn alpha_dropout_formula_for_every_dtype(dev: &Device) {
    for p in [0.05, 0.5, 0.9] {
        alpha_case::<f32>(dev, 1000, p);
        alpha_case::<f64>(dev, 1000, p);
        alpha_case::<f16>(dev, 333, p);
        alpha_case::<bf16>(dev, 333, p);
    }
}
test_device!(
    alpha_dropout_formula_for_every_dtype,
    alpha_dropout_formula_for_every_dtype_cpu,
    alpha_dropout_formula_for_every_dtype_cuda
);

fn alpha_dropout_edges(dev: &Device) {
    let x = tensor::<f32>(dev, &[100], 8);
    // p = 0: a = 1, b = 0, so the output is x itself.
    let (y, _) = alpha_dropout(&x, 0.0, true, StreamPos::new(1, 1), MaskMode::Bits).unwrap();
    assert_eq!(bits_of(&y.to_vec().unwrap()), bits_of(&x.to_vec().unwrap()));
    // p = 1: everything dropped, +0 out and +0 gradient (SPEC section 2).
    let (y, st) = alpha_dropout(&x, 1.0, true, StreamPos::new(1, 1), MaskMode::Bits).unwrap();
    assert!(y.to_vec().unwrap().iter().all(|v| v.to_bits() == 0));
    let dx = dropout_backward(&x, &st).unwrap();
    assert!(dx.to_vec().unwrap().iter().all(|v| v.to_bits() == 0));
}
test_device!(
    alpha_dropout_edges,
    alpha_dropout_edges_cpu,
    alpha_dropout_edges_cuda
);

/// Standard-normal samples from a fixed stream (Box-Muller over our own Philox words).
fn normal(n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| {
            let u1 =
                (f64::from(dropkit::philox::random_word(1, 0, 2 * i as u64)) + 0.5) / 4294967296.0;
            let u2 = (f64::from(dropkit::philox::random_word(1, 0, 2 * i as u64 + 1)) + 0.5)
                / 4294967296.0;
            (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        })
        .collect()
}

fn alpha_dropout_keeps_mean_and_variance(dev: &Device) {
    let n = 1_000_000;
    let x = tensor_on(dev, normal(n), &[n]);
    for p in [0.1, 0.5] {
        for feature in [false, true] {
            let (y, _) = if feature {
                FeatureAlphaDropout::new(p)
                    .unwrap()
                    .with_generator(gen(2))
                    .forward(&x.try_clone().unwrap().reshape(&[1000, 1000]).unwrap())
            } else {
                AlphaDropout::new(p)
                    .unwrap()
                    .with_generator(gen(2))
                    .forward(&x)
            }
            .unwrap();
            let y = y.to_vec().unwrap();
            let mean = y.iter().sum::<f64>() / n as f64;
            let var = y.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
            let m4 = y.iter().map(|v| (v - mean).powi(4)).sum::<f64>() / n as f64;
            // FeatureAlphaDropout (N = 1000, C = 1000, one element per decision here) is
            // elementwise in distribution; both must keep mean 0 and variance 1.
            let sd_mean = (var / n as f64).sqrt();
            let sd_var = ((m4 - var * var) / n as f64).sqrt();
            assert!(
                mean.abs() <= 6.0 * sd_mean,
                "p {p} feature {feature}: mean {mean}"
            );
            assert!(
                (var - 1.0).abs() <= 6.0 * sd_var,
                "p {p} feature {feature}: var {var}"
            );
        }
    }
}
test_device!(
    alpha_dropout_keeps_mean_and_variance,
    alpha_dropout_keeps_mean_and_variance_cpu,
    alpha_dropout_keeps_mean_and_variance_cuda
);

fn feature_alpha_dropout_decides_per_channel(dev: &Device) {
    let x = tensor::<f32>(dev, &[4, 6, 10], 9);
    let dy = tensor::<f32>(dev, &[4, 6, 10], 10);
    let layer = FeatureAlphaDropout::new(0.4)
        .unwrap()
        .with_generator(gen(3));
    let (y, st) = layer.forward(&x).unwrap();
    let want = keep_bits(3, 0, 0.4, 24).unwrap();
    assert_eq!(st.keep_bits().unwrap().unwrap(), want);
    let (a, b, dropped, _) = alpha_consts::<f32>(0.4);
    let dx = layer.backward(&dy, &st).unwrap();
    check_layer([&x, &y, &dx, &dy], 10, &want, |v| v * a + b, dropped, a);
}
test_device!(
    feature_alpha_dropout_decides_per_channel,
    feature_alpha_dropout_decides_per_channel_cpu,
    feature_alpha_dropout_decides_per_channel_cuda
);

fn drop_rates_of_grouped_layers(dev: &Device) {
    // 10^5 decisions each: the dropped fraction is within 6 sigma of p.
    for p in [0.1, 0.5, 0.9] {
        let x = Tensor::<f32>::ones(&[1000, 100, 2], dev).unwrap();
        let (y, _) = Dropout1d::new(p)
            .unwrap()
            .with_generator(gen(4))
            .forward(&x)
            .unwrap();
        let y = y.to_vec().unwrap();
        let dropped = y.chunks(2).filter(|c| c[0] == 0.0).count() as f64 / 1e5;
        assert!(
            (dropped - p).abs() <= 6.0 * (p * (1.0 - p) / 1e5).sqrt(),
            "p {p}: {dropped}"
        );
    }
}
test_device!(
    drop_rates_of_grouped_layers,
    drop_rates_of_grouped_layers_cpu,
    drop_rates_of_grouped_layers_cuda
);

fn fused_case<T: Element>(dev: &Device, rows: usize, h: usize, p: f64) {
    let x = tensor::<T>(dev, &[rows, h], 20);
    let bias = tensor::<T>(dev, &[h], 21);
    let res = tensor::<T>(dev, &[rows, h], 22);
    let dout = tensor::<T>(dev, &[rows, h], 23);
    let prob = Probability::new(p).unwrap();
    let s = to_compute_f64::<T>(prob.scale_f64());
    let mask = keep_bits(17, 4, p, rows * h).unwrap();
    let (xv, bv, rv, gv) = (
        x.to_vec().unwrap(),
        bias.to_vec().unwrap(),
        res.to_vec().unwrap(),
        dout.to_vec().unwrap(),
    );
    let mut grads = Vec::new();
    for mode in [MaskMode::Bits, MaskMode::Regenerate] {
        let (out, st) = bias_dropout_residual(
            ResidualInputs {
                x: &x,
                bias: &bias,
                residual: &res,
            },
            p,
            true,
            StreamPos::new(17, 4),
            mode,
        )
        .unwrap();
        let out = out.to_vec().unwrap();
        for i in 0..rows * h {
            let z = xv[i].to_compute().add(bv[i % h].to_compute());
            let m = if bit(&mask, i) {
                z.mul(s)
            } else {
                <T::Compute as ComputeFloat>::ZERO
            };
            let want = T::from_compute(rv[i].to_compute().add(m));
            assert_eq!(
                out[i].to_bits_u64(),
                want.to_bits_u64(),
                "{} out[{i}]",
                T::DTYPE
            );
        }
        let g = bias_dropout_residual_backward(&dout, &st).unwrap();
        assert_eq!(
            bits_of(&g.residual.to_vec().unwrap()),
            bits_of(&gv),
            "d residual = d out"
        );
        let dx = g.x.to_vec().unwrap();
        for i in 0..rows * h {
            let want = if bit(&mask, i) {
                T::from_compute(gv[i].to_compute().mul(s))
            } else {
                T::ZERO
            };
            assert_eq!(dx[i].to_bits_u64(), want.to_bits_u64(), "dx[{i}]");
        }
        // Bias gradient against an f64 reference of the same dx.
        let db = g.bias.to_vec().unwrap();
        for c in 0..h {
            let exact: f64 = (0..rows).map(|r| dx[r * h + c].to_compute().to_f64()).sum();
            let got = db[c].to_compute().to_f64();
            let tol = match T::DTYPE {
                dropkit::DType::F32 | dropkit::DType::F64 => 1e-5,
                _ => 1e-2, // one rounding to an 8- or 11-bit significand
            };
            assert!(
                (got - exact).abs() <= tol * exact.abs().max(1e-30),
                "db[{c}] {got} vs {exact}"
            );
        }
        assert_eq!(
            bits_of(&db),
            bits_of(&blocked_column_sum(&dx, rows, h)),
            "db in the documented blocked order"
        );
        grads.push((bits_of(&dx), bits_of(&db)));
    }
    assert_eq!(grads[0], grads[1], "both saved forms, same gradients");
}

fn fused_bias_dropout_residual_for_every_dtype(dev: &Device) {
    for p in [0.0, 0.1, 0.6, 1.0] {
        fused_case::<f32>(dev, 37, 24, p);
        fused_case::<f64>(dev, 9, 5, p);
        fused_case::<f16>(dev, 16, 12, p);
        fused_case::<bf16>(dev, 7, 33, p);
    }
    // Many rows: the f32 bias gradient stays within 1e-5 of f64.
    fused_case::<f32>(dev, 4096, 8, 0.1);
    // Several row blocks with a partial last one, every dtype.
    fused_case::<f64>(dev, 600, 3, 0.2);
    fused_case::<bf16>(dev, 513, 1, 0.5);
    fused_case::<f16>(dev, 300, 17, 0.1);
}
test_device!(
    fused_bias_dropout_residual_for_every_dtype,
    fused_bias_dropout_residual_for_every_dtype_cpu,
    fused_bias_dropout_residual_for_every_dtype_cuda
);

/// The bias-gradient order of docs/spec.md written out on its own: blocks of R = 256
/// consecutive rows, each summed in f64 from +0.0 in increasing row order, the block sums
/// added in f64 from +0.0 in increasing block order, then one rounding to T.
fn blocked_column_sum<T: Element>(g: &[T], rows: usize, h: usize) -> Vec<T> {
    const R: usize = 256;
    (0..h)
        .map(|c| {
            let mut total = 0.0f64;
            let mut r0 = 0;
            while r0 < rows {
                let mut part = 0.0f64;
                for r in r0..(r0 + R).min(rows) {
                    part += g[r * h + c].to_compute().to_f64();
                }
                total += part;
                r0 += R;
            }
            T::from_f64(total)
        })
        .collect()
}

/// Column data on which the order of the f64 adds shows: a huge value first (small adds
/// after it are lost or rounded while it is in the sum), mid-sized ones of both signs,
/// and in some columns the huge value cancelled in the last row. `big` must be exact in T.
fn order_sensitive<T: Element>(rows: usize, h: usize, big: f64) -> Vec<T> {
    let small = finite_test_data::<T>(rows * h, 40);
    (0..rows * h)
        .map(|i| {
            let (r, c) = (i / h, i % h);
            if r == 0 {
                T::from_f64(if c % 2 == 0 { big } else { -big })
            } else if r == rows - 1 && c % 3 == 0 {
                T::from_f64(if c % 2 == 0 { -big } else { big })
            } else if (r + c) % 5 == 0 {
                // Above half an ulp of big in f64 (2^7 for 2^60): rounded, not lost.
                T::from_f64(((r * 7 + c) % 61) as f64 * 37.5 - 1100.0)
            } else {
                small[i]
            }
        })
        .collect()
}

fn column_sum_case<T: Element>(rows: usize, h: usize, g: &[T]) -> usize {
    let want = blocked_column_sum(g, rows, h);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let mut out = vec![T::from_f64(7.0); h];
        pool.install(|| dropkit::cpu::residual::column_sum(g, &mut out, h).unwrap());
        out
    };
    for threads in [1, 2, 5] {
        assert_eq!(
            bits_of(&run(threads)),
            bits_of(&want),
            "{} rows {rows} h {h} threads {threads}",
            T::DTYPE
        );
    }
    // Columns where plain row order would give other bits (the data does test the order).
    (0..h)
        .filter(|&c| {
            let row_order: f64 = (0..rows).fold(0.0, |a, r| a + g[r * h + c].to_compute().to_f64());
            T::from_f64(row_order).to_bits_u64() != want[c].to_bits_u64()
        })
        .count()
}

// CPU-only: dropkit::cpu::residual::column_sum on rayon pools of several sizes.
#[test]
fn column_sum_is_the_documented_blocked_order() {
    assert_eq!(
        dropkit::plan::COLUMN_SUM_BLOCK_ROWS,
        256,
        "docs/spec.md's R"
    );
    // rows < R, = R, just past R, not a multiple of R, several blocks; h = 1, h across
    // the CPU's 256-column chunks.
    let shapes = [
        (0, 3),
        (1, 1),
        (7, 3),
        (255, 2),
        (256, 1),
        (257, 4),
        (700, 1),
        (700, 300),
        (1025, 257),
    ];
    let mut differs = [0usize; 3];
    for (rows, h) in shapes {
        differs[0] += column_sum_case(rows, h, &order_sensitive::<f32>(rows, h, 2f64.powi(60)));
        differs[1] += column_sum_case(rows, h, &order_sensitive::<f64>(rows, h, 2f64.powi(60)));
        differs[2] += column_sum_case(rows, h, &order_sensitive::<bf16>(rows, h, 2f64.powi(60)));
        // f16 sums of few thousand rows are exact in f64 whatever the order (the exponent
        // range is 40 bits); this checks the blocking and the one rounding.
        column_sum_case(rows, h, &order_sensitive::<f16>(rows, h, 32768.0));
        column_sum_case(rows, h, &finite_test_data::<f32>(rows * h, 41));
    }
    assert!(
        differs.iter().all(|&d| d > 0),
        "order never mattered: {differs:?}"
    );

    // One rounding from f64: the exact sums are just above a tie, which rounding through
    // f32 first would lose (and round to even, down).
    let tie_f16 = [2048.0, 1.0, 2f64.powi(-24)].map(f16::from_f64);
    column_sum_case(3, 1, &tie_f16);
    let mut out = [f16::ZERO];
    dropkit::cpu::residual::column_sum(&tie_f16, &mut out, 1).unwrap();
    assert_eq!(out[0].to_f64(), 2050.0);
    let tie_bf16 = [256.0, 1.0, 2f64.powi(-30)].map(bf16::from_f64);
    column_sum_case(3, 1, &tie_bf16);
    let mut out = [bf16::ZERO];
    dropkit::cpu::residual::column_sum(&tie_bf16, &mut out, 1).unwrap();
    assert_eq!(out[0].to_f64(), 258.0);
}

fn fused_eval_mode_adds_without_dropping(dev: &Device) {
    let (x, bias, res) = (
        tensor::<f32>(dev, &[3, 4], 1),
        tensor::<f32>(dev, &[4], 2),
        tensor::<f32>(dev, &[3, 4], 3),
    );
    let mut layer = BiasDropoutResidual::new(0.9)
        .unwrap()
        .with_generator(gen(1));
    layer.eval();
    let (out, st) = layer.forward(&x, &bias, &res).unwrap();
    let (xv, bv, rv) = (
        x.to_vec().unwrap(),
        bias.to_vec().unwrap(),
        res.to_vec().unwrap(),
    );
    let want: Vec<f32> = (0..12).map(|i| rv[i] + (xv[i] + bv[i % 4])).collect();
    assert_eq!(bits_of(&out.to_vec().unwrap()), bits_of(&want));
    assert!(st.dropout_state().mask_mode().is_none());
}
test_device!(
    fused_eval_mode_adds_without_dropping,
    fused_eval_mode_adds_without_dropping_cpu,
    fused_eval_mode_adds_without_dropping_cuda
);

fn shards_reproduce_the_whole_tensor(dev: &Device) {
    let n = 1000;
    let x = tensor::<f32>(dev, &[n], 30);
    let pos = StreamPos::new(21, 6);
    // Elementwise layers: cut anywhere, including inside Philox groups and mask words.
    let cuts = [0, 1, 7, 32, 333, 334, 999, n];
    let (whole, _) = dropout(&x, 0.4, true, pos, MaskMode::Bits).unwrap();
    let (whole_alpha, _) = alpha_dropout(&x, 0.4, true, pos, MaskMode::Bits).unwrap();
    let xv = x.to_vec().unwrap();
    let (mut parts, mut parts_alpha) = (Vec::new(), Vec::new());
    for w in cuts.windows(2) {
        let shard = tensor_on(dev, xv[w[0]..w[1]].to_vec(), &[w[1] - w[0]]);
        let at = pos.with_index_base(w[0] as u64);
        parts.extend(
            dropout(&shard, 0.4, true, at, MaskMode::Bits)
                .unwrap()
                .0
                .to_vec()
                .unwrap(),
        );
        parts_alpha.extend(
            alpha_dropout(&shard, 0.4, true, at, MaskMode::Bits)
                .unwrap()
                .0
                .to_vec()
                .unwrap(),
        );
    }
    assert_eq!(bits_of(&parts), bits_of(&whole.to_vec().unwrap()));
    assert_eq!(
        bits_of(&parts_alpha),
        bits_of(&whole_alpha.to_vec().unwrap())
    );
    // Grouped decisions (groups of 10 elements): cuts inside groups too.
    let (whole, _) = grouped_dropout(
        &x,
        &GroupedConfig {
            p: 0.5,
            training: true,
            grouping: Grouping::scale(10),
        },
        pos,
        MaskMode::Bits,
    )
    .unwrap();
    let mut parts = Vec::new();
    for w in cuts.windows(2) {
        let shard = tensor_on(dev, xv[w[0]..w[1]].to_vec(), &[w[1] - w[0]]);
        let at = pos.with_index_base(w[0] as u64);
        let (y, st) = grouped_dropout(
            &shard,
            &GroupedConfig {
                p: 0.5,
                training: true,
                grouping: Grouping::scale(10),
            },
            at,
            MaskMode::Regenerate,
        )
        .unwrap();
        // The shard's gradient uses its own slice of decisions as well.
        let dx = dropout_backward(
            &tensor_on(dev, vec![1.0f32; w[1] - w[0]], &[w[1] - w[0]]),
            &st,
        )
        .unwrap();
        for (yi, di) in y.to_vec().unwrap().iter().zip(dx.to_vec().unwrap()) {
            assert_eq!(*yi == 0.0, di == 0.0);
        }
        parts.extend(y.to_vec().unwrap());
    }
    assert_eq!(bits_of(&parts), bits_of(&whole.to_vec().unwrap()));
    // Layers on a batch split across ranks: Dropout2d on (8, C, H, W) as 3 + 5 samples.
    let x = tensor::<f32>(dev, &[8, 3, 2, 2], 31);
    let xv = x.to_vec().unwrap();
    let (whole, _) = Dropout2d::new(0.5)
        .unwrap()
        .with_generator(gen(8))
        .forward(&x)
        .unwrap();
    let first = tensor_on(dev, xv[..36].to_vec(), &[3, 3, 2, 2]);
    let second = tensor_on(dev, xv[36..].to_vec(), &[5, 3, 2, 2]);
    let mut parts = Dropout2d::new(0.5)
        .unwrap()
        .with_generator(gen(8))
        .forward(&first)
        .unwrap()
        .0
        .to_vec()
        .unwrap();
    let rank1 = Dropout2d::new(0.5)
        .unwrap()
        .with_generator(gen(8))
        .with_index_base(36);
    parts.extend(rank1.forward(&second).unwrap().0.to_vec().unwrap());
    assert_eq!(bits_of(&parts), bits_of(&whole.to_vec().unwrap()));
}
test_device!(
    shards_reproduce_the_whole_tensor,
    shards_reproduce_the_whole_tensor_cpu,
    shards_reproduce_the_whole_tensor_cuda
);

fn in_place_variants_match(dev: &Device) {
    let x = tensor::<f32>(dev, &[4, 5, 6], 40);
    let mut a = x.try_clone().unwrap();
    let (y, _) = AlphaDropout::new(0.3)
        .unwrap()
        .with_generator(gen(1))
        .forward(&x)
        .unwrap();
    AlphaDropout::new(0.3)
        .unwrap()
        .with_generator(gen(1))
        .forward_in_place(&mut a)
        .unwrap();
    assert_eq!(bits_of(&a.to_vec().unwrap()), bits_of(&y.to_vec().unwrap()));
    let mut c = x.try_clone().unwrap();
    let (y, _) = Dropout1d::new(0.3)
        .unwrap()
        .with_generator(gen(1))
        .forward(&x)
        .unwrap();
    Dropout1d::new(0.3)
        .unwrap()
        .with_generator(gen(1))
        .forward_in_place(&mut c)
        .unwrap();
    assert_eq!(bits_of(&c.to_vec().unwrap()), bits_of(&y.to_vec().unwrap()));
    let mut d = x.try_clone().unwrap();
    let (y, _) = DropPath::new(0.3)
        .unwrap()
        .with_generator(gen(1))
        .forward(&x)
        .unwrap();
    DropPath::new(0.3)
        .unwrap()
        .with_generator(gen(1))
        .forward_in_place(&mut d)
        .unwrap();
    assert_eq!(bits_of(&d.to_vec().unwrap()), bits_of(&y.to_vec().unwrap()));
    let bias = tensor::<f32>(dev, &[6], 41);
    let mut res = tensor::<f32>(dev, &[4, 5, 6], 42);
    let layer = || {
        BiasDropoutResidual::new(0.3)
            .unwrap()
            .with_generator(gen(1))
    };
    let (out, _) = layer().forward(&x, &bias, &res).unwrap();
    layer().forward_in_place(&x, &bias, &mut res).unwrap();
    assert_eq!(
        bits_of(&res.to_vec().unwrap()),
        bits_of(&out.to_vec().unwrap())
    );
}
test_device!(
    in_place_variants_match,
    in_place_variants_match_cpu,
    in_place_variants_match_cuda
);

fn derived_generators_differ_per_rank(dev: &Device) {
    let x = Tensor::<f32>::ones(&[100_000], dev).unwrap();
    let run = |g: Generator| {
        let layer = dropkit::Dropout::new(0.5)
            .unwrap()
            .with_generator(Arc::new(g));
        layer.forward(&x).unwrap().1.keep_bits().unwrap().unwrap()
    };
    let (r0, r1) = (
        run(Generator::for_stream(5, 0)),
        run(Generator::for_stream(5, 1)),
    );
    assert_eq!(r0, run(Generator::for_stream(5, 0)), "same rank, same mask");
    let agree = 100_000
        - r0.iter()
            .zip(&r1)
            .map(|(a, b)| (a ^ b).count_ones())
            .sum::<u32>();
    // Independent masks agree on half the elements at p = 0.5.
    assert!((f64::from(agree) / 1e5 - 0.5).abs() < 6.0 * (0.25f64 / 1e5).sqrt());
}
test_device!(
    derived_generators_differ_per_rank,
    derived_generators_differ_per_rank_cpu,
    derived_generators_differ_per_rank_cuda
);

fn family_errors_not_panics(dev: &Device) {
    let t = |shape: &[usize]| Tensor::<f32>::ones(shape, dev).unwrap();
    assert!(matches!(
        Dropout1d::new(0.5).unwrap().forward(&t(&[2, 3, 4, 5])),
        Err(Error::InvalidShape { .. })
    ));
    assert!(matches!(
        Dropout1d::new(0.5).unwrap().forward(&t(&[4])),
        Err(Error::InvalidShape { .. })
    ));
    assert!(matches!(
        Dropout2d::new(0.5).unwrap().forward(&t(&[4, 5])),
        Err(Error::InvalidShape { .. })
    ));
    assert!(matches!(
        Dropout3d::new(0.5)
            .unwrap()
            .forward(&t(&[1, 2, 3, 4, 5, 6])),
        Err(Error::InvalidShape { .. })
    ));
    assert!(matches!(
        FeatureAlphaDropout::new(0.5).unwrap().forward(&t(&[4])),
        Err(Error::InvalidShape { .. })
    ));
    assert!(matches!(
        DropPath::new(0.5).unwrap().forward(&t(&[])),
        Err(Error::InvalidShape { .. })
    ));
    for p in [f64::NAN, -0.5, 2.0] {
        assert!(
            AlphaDropout::new(p).is_err()
                && DropPath::new(p).is_err()
                && Dropout2d::new(p).is_err()
        );
        assert!(BiasDropoutResidual::new(p).is_err() && FeatureAlphaDropout::new(p).is_err());
    }
    let layer = BiasDropoutResidual::new(0.1).unwrap();
    assert!(matches!(
        layer.forward(&t(&[2, 4]), &t(&[5]), &t(&[2, 4])),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        layer.forward(&t(&[2, 4]), &t(&[4]), &t(&[4, 2])),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        layer.forward(&t(&[]), &t(&[1]), &t(&[])),
        Err(Error::InvalidShape { .. }) | Err(Error::ShapeMismatch { .. })
    ));
    // A channel-dropout state used with a gradient of another shape.
    let (_, st) = Dropout2d::new(0.5)
        .unwrap()
        .forward(&t(&[2, 3, 4]))
        .unwrap();
    assert!(matches!(
        dropout_backward(&t(&[2, 3, 5]), &st),
        Err(Error::ShapeMismatch { .. })
    ));
    // Empty tensors work.
    let (y, _) = Dropout2d::new(0.5)
        .unwrap()
        .forward(&t(&[0, 3, 4, 4]))
        .unwrap();
    assert!(y.is_empty());
}
test_device!(
    family_errors_not_panics,
    family_errors_not_panics_cpu,
    family_errors_not_panics_cuda
);

fn fused_eval_shard_keeps_its_bias_columns(dev: &Device) {
    // A shard starting mid-row (element 3 of rows of 4) pairs its elements with bias
    // columns 3, 0, 1, ... in eval exactly as the whole tensor does.
    let (x, bias, res) = (
        tensor::<f32>(dev, &[12], 1),
        tensor::<f32>(dev, &[4], 2),
        tensor::<f32>(dev, &[12], 3),
    );
    let mut whole = BiasDropoutResidual::new(0.5).unwrap();
    whole.eval();
    let (want, _) = whole
        .forward(
            &x.try_clone().unwrap().reshape(&[3, 4]).unwrap(),
            &bias,
            &res.try_clone().unwrap().reshape(&[3, 4]).unwrap(),
        )
        .unwrap();
    let (xv, rv) = (x.to_vec().unwrap(), res.to_vec().unwrap());
    let shard = |v: &[f32]| tensor_on(dev, v[3..11].to_vec(), &[2, 4]);
    let mut part = BiasDropoutResidual::new(0.5).unwrap().with_index_base(3);
    part.eval();
    let (got, _) = part.forward(&shard(&xv), &bias, &shard(&rv)).unwrap();
    assert_eq!(
        bits_of(&got.to_vec().unwrap()),
        bits_of(&want.to_vec().unwrap()[3..11])
    );
}
test_device!(
    fused_eval_shard_keeps_its_bias_columns,
    fused_eval_shard_keeps_its_bias_columns_cpu,
    fused_eval_shard_keeps_its_bias_columns_cuda
);

// The family on CUDA against the CPU reference, bit for bit (CUDA-only: the CPU is the
// reference). Here the data has the special values (`test_data`).

type Forward<T> = fn(&Tensor<T>, StreamPos, MaskMode) -> (Tensor<T>, DropoutState);

fn compare<T: Element>(
    dev: &Device,
    shape: &[usize],
    start: usize,
    pos: StreamPos,
    what: &str,
    f: Forward<T>,
) {
    let n: usize = shape.iter().product();
    let (x, g) = (test_data::<T>(n, 3), test_data::<T>(n, 4));
    let (x_cpu, g_cpu) = (
        Tensor::from_vec(x.clone(), shape).unwrap(),
        Tensor::from_vec(g.clone(), shape).unwrap(),
    );
    let (x_gpu, g_gpu) = (
        tensor_at(dev, &x, start, shape),
        tensor_at(dev, &g, start, shape),
    );
    let label = format!("{what} {} {shape:?} start {start} {pos:?}", T::DTYPE);
    for mode in [MaskMode::Bits, MaskMode::Regenerate] {
        let (y_c, st_c) = f(&x_cpu, pos, mode);
        let (y_g, st_g) = f(&x_gpu, pos, mode);
        assert_eq!(
            bits_of(&y_g.to_vec().unwrap()),
            bits_of(&y_c.to_vec().unwrap()),
            "y {label} {mode:?}"
        );
        assert_eq!(
            st_g.keep_bits().unwrap(),
            st_c.keep_bits().unwrap(),
            "bits {label}"
        );
        let dx_c = dropout_backward(&g_cpu, &st_c).unwrap().to_vec().unwrap();
        let dx_g = dropout_backward(&g_gpu, &st_g).unwrap().to_vec().unwrap();
        assert_eq!(bits_of(&dx_g), bits_of(&dx_c), "dx {label} {mode:?}");
    }
}

fn family_parity<T: Element>(dev: &Device) {
    let channel: Forward<T> = |x, pos, mode| {
        let group = x.shape()[2..].iter().product();
        grouped_dropout(
            x,
            &GroupedConfig {
                p: 0.4,
                training: true,
                grouping: Grouping::scale(group),
            },
            pos,
            mode,
        )
        .unwrap()
    };
    let feature_alpha: Forward<T> = |x, pos, mode| {
        let group = x.shape()[2..].iter().product();
        grouped_dropout(
            x,
            &GroupedConfig {
                p: 0.3,
                training: true,
                grouping: Grouping::alpha(group),
            },
            pos,
            mode,
        )
        .unwrap()
    };
    let drop_path: Forward<T> = |x, pos, mode| {
        let group = x.shape()[1..].iter().product();
        grouped_dropout(
            x,
            &GroupedConfig {
                p: 0.5,
                training: true,
                grouping: Grouping::scale(group),
            },
            pos,
            mode,
        )
        .unwrap()
    };
    let alpha: Forward<T> = |x, pos, mode| alpha_dropout(x, 0.2, true, pos, mode).unwrap();
    for (shape, start) in [
        (vec![2usize, 3, 5], 0),
        (vec![4, 7, 33], 1),
        (vec![3, 64, 1024], 3),
        (vec![1, 1, 1], 2),
    ] {
        for pos in [
            StreamPos::new(5, 2),
            StreamPos::new(u64::MAX, 9).with_index_base(13),
        ] {
            compare::<T>(dev, &shape, start, pos, "channel", channel);
            compare::<T>(dev, &shape, start, pos, "feature alpha", feature_alpha);
            compare::<T>(dev, &shape, start, pos, "drop path", drop_path);
            compare::<T>(dev, &shape, start, pos, "alpha", alpha);
        }
    }
    // The fused layer: output and all three gradients.
    for (rows, h, start) in [
        (1usize, 1usize, 0usize),
        (7, 33, 1),
        (256, 768, 0),
        (3, 4096, 5),
    ] {
        let n = rows * h;
        let (x, b, r, g) = (
            test_data::<T>(n, 5),
            test_data::<T>(h, 6),
            test_data::<T>(n, 7),
            test_data::<T>(n, 8),
        );
        let cpu = |d: &[T], s: &[usize]| Tensor::from_vec(d.to_vec(), s).unwrap();
        let gpu = |d: &[T], s: &[usize]| tensor_at(dev, d, start, s);
        for p in [0.0, 0.1, 1.0] {
            for mode in [MaskMode::Bits, MaskMode::Regenerate] {
                let pos = StreamPos::new(9, 1).with_index_base(3);
                let (o_c, st_c) = bias_dropout_residual(
                    ResidualInputs {
                        x: &cpu(&x, &[rows, h]),
                        bias: &cpu(&b, &[h]),
                        residual: &cpu(&r, &[rows, h]),
                    },
                    p,
                    true,
                    pos,
                    mode,
                )
                .unwrap();
                let (o_g, st_g) = bias_dropout_residual(
                    ResidualInputs {
                        x: &gpu(&x, &[rows, h]),
                        bias: &gpu(&b, &[h]),
                        residual: &gpu(&r, &[rows, h]),
                    },
                    p,
                    true,
                    pos,
                    mode,
                )
                .unwrap();
                let label = format!("fused {} {rows}x{h} p {p} {mode:?}", T::DTYPE);
                assert_eq!(
                    bits_of(&o_g.to_vec().unwrap()),
                    bits_of(&o_c.to_vec().unwrap()),
                    "{label}"
                );
                let gc = bias_dropout_residual_backward(&cpu(&g, &[rows, h]), &st_c).unwrap();
                let gg = bias_dropout_residual_backward(&gpu(&g, &[rows, h]), &st_g).unwrap();
                assert_eq!(
                    bits_of(&gg.x.to_vec().unwrap()),
                    bits_of(&gc.x.to_vec().unwrap()),
                    "dx {label}"
                );
                assert_eq!(
                    bits_of(&gg.residual.to_vec().unwrap()),
                    bits_of(&g),
                    "dres {label}"
                );
                // Both sum dx in f64 in the same blocked order and round once: the same bits too.
                assert_eq!(
                    bits_of(&gg.bias.to_vec().unwrap()),
                    bits_of(&gc.bias.to_vec().unwrap()),
                    "dbias {label}"
                );
            }
        }
    }
}

#[test]
fn family_cuda_matches_cpu_f32() {
    if let Some(dev) = cuda_or_skip("family_cuda_matches_cpu_f32") {
        family_parity::<f32>(&dev);
    }
}

#[test]
fn family_cuda_matches_cpu_f64() {
    if let Some(dev) = cuda_or_skip("family_cuda_matches_cpu_f64") {
        family_parity::<f64>(&dev);
    }
}

#[test]
fn family_cuda_matches_cpu_f16() {
    if let Some(dev) = cuda_or_skip("family_cuda_matches_cpu_f16") {
        family_parity::<f16>(&dev);
    }
}

#[test]
fn family_cuda_matches_cpu_bf16() {
    if let Some(dev) = cuda_or_skip("family_cuda_matches_cpu_bf16") {
        family_parity::<bf16>(&dev);
    }
}

#[test]
fn shards_split_between_cpu_and_cuda() {
    let Some(dev) = cuda_or_skip("shards_split_between_cpu_and_cuda") else {
        return;
    };
    let n = 10_000;
    let x = test_data::<f32>(n, 9);
    let pos = StreamPos::new(77, 4);
    let whole_cpu = Tensor::from_vec(x.clone(), &[n]).unwrap();
    for (kind, group) in [
        (None, 1usize),
        (Some(GroupedKind::Scale), 10),
        (Some(GroupedKind::Alpha), 7),
    ] {
        let run = |t: &Tensor<f32>, at: StreamPos| match kind {
            None => {
                dropkit::functional::dropout(t, 0.3, true, at, MaskMode::Bits)
                    .unwrap()
                    .0
            }
            Some(k) => {
                grouped_dropout(
                    t,
                    &GroupedConfig {
                        p: 0.3,
                        training: true,
                        grouping: Grouping {
                            size: group,
                            kind: k,
                        },
                    },
                    at,
                    MaskMode::Bits,
                )
                .unwrap()
                .0
            }
        };
        let whole = run(&whole_cpu, pos).to_vec().unwrap();
        let cuts = [0, 3, 4099, 4100, 7777, n];
        let mut parts = Vec::new();
        for (k, w) in cuts.windows(2).enumerate() {
            let shard = &x[w[0]..w[1]];
            let at = pos.with_index_base(w[0] as u64);
            // Alternate devices: even shards on the GPU, odd ones on the CPU.
            let t = if k % 2 == 0 {
                tensor_at(&dev, shard, k, &[shard.len()])
            } else {
                Tensor::from_vec(shard.to_vec(), &[shard.len()]).unwrap()
            };
            parts.extend(run(&t, at).to_vec().unwrap());
        }
        assert_eq!(bits_of(&parts), bits_of(&whole), "{kind:?}");
    }
}

#[test]
fn in_place_on_cuda_matches() {
    let Some(dev) = cuda_or_skip("in_place_on_cuda_matches") else {
        return;
    };
    let gen = || std::sync::Arc::new(dropkit::Generator::new(3));
    let shape = [4, 8, 9];
    let data = test_data::<bf16>(4 * 8 * 9, 1);
    let x = tensor_at(&dev, &data, 1, &shape);
    let x_cpu = Tensor::from_vec(data.clone(), &shape).unwrap();
    // Each in-place result equals the out-of-place one, and both equal the CPU's.
    let drop1d = || dropkit::Dropout1d::new(0.5).unwrap().with_generator(gen());
    let (y, _) = drop1d().forward(&x).unwrap();
    let (y_cpu, _) = drop1d().forward(&x_cpu).unwrap();
    let mut z = tensor_at(&dev, &data, 1, &shape);
    drop1d().forward_in_place(&mut z).unwrap();
    assert_eq!(
        bits_of(&y.to_vec().unwrap()),
        bits_of(&y_cpu.to_vec().unwrap()),
        "Dropout1d"
    );
    assert_eq!(
        bits_of(&z.to_vec().unwrap()),
        bits_of(&y.to_vec().unwrap()),
        "Dropout1d in place"
    );

    let alpha = || {
        dropkit::AlphaDropout::new(0.5)
            .unwrap()
            .with_generator(gen())
    };
    let (y, _) = alpha().forward(&x).unwrap();
    let (y_cpu, _) = alpha().forward(&x_cpu).unwrap();
    let mut a = tensor_at(&dev, &data, 3, &shape);
    alpha().forward_in_place(&mut a).unwrap();
    assert_eq!(
        bits_of(&y.to_vec().unwrap()),
        bits_of(&y_cpu.to_vec().unwrap()),
        "AlphaDropout"
    );
    assert_eq!(
        bits_of(&a.to_vec().unwrap()),
        bits_of(&y.to_vec().unwrap()),
        "AlphaDropout in place"
    );

    let bias_data = test_data::<bf16>(9, 2);
    let res_data = test_data::<bf16>(4 * 8 * 9, 3);
    let bias = tensor_at(&dev, &bias_data, 0, &[9]);
    let mut res = tensor_at(&dev, &res_data, 2, &shape);
    let bias_cpu = Tensor::from_vec(bias_data, &[9]).unwrap();
    let res_cpu = Tensor::from_vec(res_data, &shape).unwrap();
    let layer = || {
        dropkit::BiasDropoutResidual::new(0.5)
            .unwrap()
            .with_generator(gen())
    };
    let (out, _) = layer().forward(&x, &bias, &res).unwrap();
    let (out_cpu, _) = layer().forward(&x_cpu, &bias_cpu, &res_cpu).unwrap();
    layer().forward_in_place(&x, &bias, &mut res).unwrap();
    assert_eq!(
        bits_of(&out.to_vec().unwrap()),
        bits_of(&out_cpu.to_vec().unwrap()),
        "BiasDropoutResidual"
    );
    assert_eq!(
        bits_of(&res.to_vec().unwrap()),
        bits_of(&out.to_vec().unwrap()),
        "BiasDropoutResidual in place"
    );
}

/// The `_into` forms of every layer give the bits of the allocating forms: output, mask
/// and gradient, in both saved forms, with a reused state (including one from another
/// mode, and an eval-mode one), in eval mode (a copy); a wrong output
/// shape is an error that takes no offset.
fn into_forms_equal_the_allocating_forms(dev: &Device) {
    macro_rules! check {
        ($make:expr, $shape:expr) => {{
            let shape: &[usize] = &$shape;
            let n: usize = shape.iter().product();
            let x = tensor_on(dev, test_data::<f32>(n, 11), shape);
            let dy = tensor_on(dev, test_data::<f32>(n, 12), shape);
            for mode in [MaskMode::Bits, MaskMode::Regenerate] {
                let (a, b) = (Arc::new(Generator::new(8)), Arc::new(Generator::new(8)));
                let alloc = $make.with_mask_mode(mode).with_generator(a.clone());
                let into = $make.with_mask_mode(mode).with_generator(b.clone());
                let mut out = tensor_on(dev, vec![7.0f32; n], shape);
                let mut dx = tensor_on(dev, vec![7.0f32; n], shape);
                // A state of the other mode first, then the state of the previous call.
                let other = match mode {
                    MaskMode::Bits => MaskMode::Regenerate,
                    MaskMode::Regenerate => MaskMode::Bits,
                };
                let mut state = $make
                    .with_mask_mode(other)
                    .with_generator(Arc::new(Generator::new(0)))
                    .forward(&x)
                    .unwrap()
                    .1;
                for call in 0..3 {
                    let (y, s) = alloc.forward(&x).unwrap();
                    into.forward_into(&x, &mut out, &mut state).unwrap();
                    let what = format!("{mode:?} call {call}");
                    assert_eq!(
                        bits_of(&out.to_vec().unwrap()),
                        bits_of(&y.to_vec().unwrap()),
                        "{what}"
                    );
                    assert_eq!(state.mask_mode(), s.mask_mode(), "{what}");
                    if mode == MaskMode::Bits {
                        assert_eq!(state.keep_bits().unwrap(), s.keep_bits().unwrap(), "{what}");
                    }
                    let g = alloc.backward(&dy, &s).unwrap();
                    into.backward_into(&dy, &state, &mut dx).unwrap();
                    assert_eq!(
                        bits_of(&dx.to_vec().unwrap()),
                        bits_of(&g.to_vec().unwrap()),
                        "{what}"
                    );
                }
                assert_eq!((a.offset(), b.offset()), (3, 3));
                // A wrong output shape: an error, no offset taken.
                let mut wrong = tensor_on(dev, vec![0.0f32; n + 1], &[n + 1]);
                let e = into.forward_into(&x, &mut wrong, &mut state);
                assert!(matches!(e, Err(Error::ShapeMismatch { .. })), "{e:?}");
                assert_eq!(b.offset(), 3);
                // Eval mode: a copy, and an identity state.
                let mut eval = into.clone();
                eval.eval();
                eval.forward_into(&x, &mut out, &mut state).unwrap();
                assert_eq!(
                    bits_of(&out.to_vec().unwrap()),
                    bits_of(&x.to_vec().unwrap())
                );
                assert_eq!(state.mask_mode(), None);
                eval.backward_into(&dy, &state, &mut dx).unwrap();
                assert_eq!(
                    bits_of(&dx.to_vec().unwrap()),
                    bits_of(&dy.to_vec().unwrap())
                );
                assert_eq!(b.offset(), 3);
            }
        }};
    }
    check!(dropkit::Dropout::new(0.35).unwrap(), [1037]);
    check!(AlphaDropout::new(0.2).unwrap(), [515]);
    check!(Dropout1d::new(0.5).unwrap(), [3, 17, 9]);
    check!(Dropout2d::new(0.5).unwrap(), [2, 11, 4, 3]);
    check!(Dropout3d::new(0.5).unwrap(), [2, 5, 2, 3, 2]);
    check!(DropPath::new(0.4).unwrap(), [29, 5]);
    check!(FeatureAlphaDropout::new(0.5).unwrap(), [3, 21, 4]);
}

test_device!(
    into_forms_equal_the_allocating_forms,
    into_forms_equal_the_allocating_forms_cpu,
    into_forms_equal_the_allocating_forms_cuda
);

/// The fused layer's `_into` forms give the bits of the allocating forms: output, mask and
/// the three gradients, both saved forms and eval mode, with a reused state (its partial
/// sums made by the first backward_into); wrong output shapes are errors.
fn fused_into_forms_equal_the_allocating_forms(dev: &Device) {
    let (rows, h) = (45, 7);
    let n = rows * h;
    let x = tensor_on(dev, test_data::<f32>(n, 21), &[rows, h]);
    let bias = tensor_on(dev, test_data::<f32>(h, 22), &[h]);
    let residual = tensor_on(dev, test_data::<f32>(n, 23), &[rows, h]);
    let dz = tensor_on(dev, test_data::<f32>(n, 24), &[rows, h]);
    for mode in [MaskMode::Bits, MaskMode::Regenerate] {
        for training in [true, false] {
            let (a, b) = (Arc::new(Generator::new(4)), Arc::new(Generator::new(4)));
            let make = |g: &Arc<Generator>| {
                let mut l = BiasDropoutResidual::new(0.3)
                    .unwrap()
                    .with_mask_mode(mode)
                    .with_generator(g.clone());
                l.set_training(training);
                l
            };
            let (alloc, into) = (make(&a), make(&b));
            let warm = make(&Arc::new(Generator::new(0)));
            let (mut out, mut state) = warm.forward(&x, &bias, &residual).unwrap();
            let mut grads = warm.backward(&dz, &state).unwrap();
            for call in 0..2 {
                let (o, s) = alloc.forward(&x, &bias, &residual).unwrap();
                into.forward_into(&x, &bias, &residual, &mut out, &mut state)
                    .unwrap();
                let what = format!("{mode:?} training {training} call {call}");
                let bits = |t: &Tensor<f32>| bits_of(&t.to_vec().unwrap());
                assert_eq!(bits(&out), bits(&o), "{what}");
                let (sa, sb) = (s.dropout_state(), state.dropout_state());
                assert_eq!(sa.keep_bits().unwrap(), sb.keep_bits().unwrap(), "{what}");
                let g = alloc.backward(&dz, &s).unwrap();
                into.backward_into(&dz, &state, &mut grads).unwrap();
                assert_eq!(bits(&grads.x), bits(&g.x), "{what}: dx");
                assert_eq!(bits(&grads.bias), bits(&g.bias), "{what}: dbias");
                assert_eq!(
                    bits(&grads.residual),
                    bits(&g.residual),
                    "{what}: dresidual"
                );
            }
            let taken = if training { 2 } else { 0 };
            assert_eq!((a.offset(), b.offset()), (taken, taken));
            let mut wrong = tensor_on(dev, vec![0.0f32; n], &[n]);
            let e = into.forward_into(&x, &bias, &residual, &mut wrong, &mut state);
            assert!(matches!(e, Err(Error::ShapeMismatch { .. })), "{e:?}");
            assert_eq!(b.offset(), taken, "a failed call took an offset");
        }
    }
}

test_device!(
    fused_into_forms_equal_the_allocating_forms,
    fused_into_forms_equal_the_allocating_forms_cpu,
    fused_into_forms_equal_the_allocating_forms_cuda
);

/// The functional `_into` forms equal the allocating ones: alpha dropout and grouped
/// dropout (both kinds), both saved forms, through a reused state.
fn functional_into_forms_equal_the_allocating_forms(dev: &Device) {
    use dropkit::functional::{alpha_dropout_into, grouped_dropout_into};
    let (n, group) = (600, 24);
    let x = tensor_on(dev, test_data::<f32>(n, 31), &[n]);
    let dy = tensor_on(dev, test_data::<f32>(n, 32), &[n]);
    for mode in [MaskMode::Bits, MaskMode::Regenerate] {
        let mut out = tensor_on(dev, vec![0.0f32; n], &[n]);
        let mut dx = out.try_clone().unwrap();
        let mut state = dropout(&x, 0.5, true, StreamPos::new(0, 0), mode)
            .unwrap()
            .1;
        for k in 0..2u64 {
            let pos = StreamPos::new(6, k);
            let bits = |t: &Tensor<f32>| bits_of(&t.to_vec().unwrap());
            let (y, s) = alpha_dropout(&x, 0.3, true, pos, mode).unwrap();
            alpha_dropout_into(&x, &mut out, &mut state, 0.3, true, pos, mode).unwrap();
            assert_eq!(bits(&out), bits(&y), "alpha {mode:?} {k}");
            let g = dropout_backward(&dy, &s).unwrap();
            dropkit::functional::dropout_backward_into(&dy, &state, &mut dx).unwrap();
            assert_eq!(bits(&dx), bits(&g), "alpha backward {mode:?} {k}");
            for kind in [GroupedKind::Scale, GroupedKind::Alpha] {
                let (y, s) = grouped_dropout(
                    &x,
                    &GroupedConfig {
                        p: 0.5,
                        training: true,
                        grouping: Grouping { size: group, kind },
                    },
                    pos,
                    mode,
                )
                .unwrap();
                grouped_dropout_into(
                    &x,
                    &mut out,
                    &mut state,
                    &GroupedConfig {
                        p: 0.5,
                        training: true,
                        grouping: Grouping { size: group, kind },
                    },
                    pos,
                    mode,
                )
                .unwrap();
                assert_eq!(bits(&out), bits(&y), "grouped {kind:?} {mode:?} {k}");
                assert_eq!(state.keep_bits().unwrap(), s.keep_bits().unwrap());
                let g = dropout_backward(&dy, &s).unwrap();
                dropkit::functional::dropout_backward_into(&dy, &state, &mut dx).unwrap();
                assert_eq!(
                    bits(&dx),
                    bits(&g),
                    "grouped backward {kind:?} {mode:?} {k}"
                );
            }
        }
    }
}

test_device!(
    functional_into_forms_equal_the_allocating_forms,
    functional_into_forms_equal_the_allocating_forms_cpu,
    functional_into_forms_equal_the_allocating_forms_cuda
);
