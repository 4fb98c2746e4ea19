//! The family on CUDA against the CPU reference, bit for bit: channel dropout, DropPath,
//! AlphaDropout, FeatureAlphaDropout and the fused bias-dropout-residual, every dtype,
//! both saved forms, unaligned views, in-place, and shards split between CPU and CUDA.
//! Skips without a GPU; fails then under `DROPKIT_REQUIRE_CUDA=1`.
#![cfg(feature = "cuda")]

mod common;

use common::{bits_of, cuda_or_skip, cuda_tensor, test_data};
use dropkit::functional::{
    alpha_dropout, bias_dropout_residual, bias_dropout_residual_backward, dropout_backward,
    grouped_dropout, GroupedKind,
};
use dropkit::{Device, DropoutState, Element, MaskMode, StreamPos, Tensor};
use half::{bf16, f16};

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
        cuda_tensor(dev, &x, start, shape),
        cuda_tensor(dev, &g, start, shape),
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
        grouped_dropout(x, 0.4, true, group, GroupedKind::Scale, pos, mode).unwrap()
    };
    let feature_alpha: Forward<T> = |x, pos, mode| {
        let group = x.shape()[2..].iter().product();
        grouped_dropout(x, 0.3, true, group, GroupedKind::Alpha, pos, mode).unwrap()
    };
    let drop_path: Forward<T> = |x, pos, mode| {
        let group = x.shape()[1..].iter().product();
        grouped_dropout(x, 0.5, true, group, GroupedKind::Scale, pos, mode).unwrap()
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
        let gpu = |d: &[T], s: &[usize]| cuda_tensor(dev, d, start, s);
        for p in [0.0, 0.1, 1.0] {
            for mode in [MaskMode::Bits, MaskMode::Regenerate] {
                let pos = StreamPos::new(9, 1).with_index_base(3);
                let (o_c, st_c) = bias_dropout_residual(
                    &cpu(&x, &[rows, h]),
                    &cpu(&b, &[h]),
                    &cpu(&r, &[rows, h]),
                    p,
                    true,
                    pos,
                    mode,
                )
                .unwrap();
                let (o_g, st_g) = bias_dropout_residual(
                    &gpu(&x, &[rows, h]),
                    &gpu(&b, &[h]),
                    &gpu(&r, &[rows, h]),
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
                grouped_dropout(t, 0.3, true, group, k, at, MaskMode::Bits)
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
                cuda_tensor(&dev, shard, k, &[shard.len()])
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
    let x = cuda_tensor(&dev, &data, 1, &shape);
    let x_cpu = Tensor::from_vec(data.clone(), &shape).unwrap();
    // Each in-place result equals the out-of-place one, and both equal the CPU's.
    let drop1d = || dropkit::Dropout1d::new(0.5).unwrap().with_generator(gen());
    let (y, _) = drop1d().forward(&x).unwrap();
    let (y_cpu, _) = drop1d().forward(&x_cpu).unwrap();
    let mut z = cuda_tensor(&dev, &data, 1, &shape);
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
    let mut a = cuda_tensor(&dev, &data, 3, &shape);
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
    let bias = cuda_tensor(&dev, &bias_data, 0, &[9]);
    let mut res = cuda_tensor(&dev, &res_data, 2, &shape);
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
