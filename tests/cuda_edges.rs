//! CUDA edge cases the size sweeps do not reach, each against the CPU reference bit for bit:
//! empty tensors through every layer (kept out of the parity sweeps so a failure here cannot
//! stop the real sizes), a fused case with more rows than one bias-gradient block, shards
//! whose 64-bit element index crosses 2^32 and 3 * 2^32, and several threads launching on
//! one device at once. Skips without a GPU; fails then under `DROPKIT_REQUIRE_CUDA=1`.
#![cfg(feature = "cuda")]

mod common;

use common::{bits_of, cuda_or_skip, cuda_tensor, test_data};
use dropkit::functional::{
    bias_dropout_residual, bias_dropout_residual_backward, dropout, dropout_backward,
    grouped_dropout, GroupedConfig, Grouping, ResidualInputs,
};
use dropkit::{
    AlphaDropout, BiasDropoutResidual, Device, DropPath, Dropout, Dropout1d, Dropout2d, Dropout3d,
    DropoutState, Element, FeatureAlphaDropout, Generator, MaskMode, Result, StreamPos, Tensor,
};
use half::bf16;
use std::sync::Arc;

/// Each returned tensor's shape and raw bits, or the error's variant name.
type Outcome = std::result::Result<Vec<(Vec<usize>, Vec<u64>)>, String>;

/// What a call gave, in a form both devices can be compared by: the shape and raw bits of
/// each returned tensor, or the error's variant name (its message may name the device).
fn outcome<T: Element>(r: Result<Vec<Tensor<T>>>) -> Outcome {
    match r {
        Ok(ts) => Ok(ts
            .iter()
            .map(|t| (t.shape().to_vec(), bits_of(&t.to_vec().unwrap())))
            .collect()),
        Err(e) => Err(format!("{e:?}")
            .split(['(', ' ', '{'])
            .next()
            .unwrap_or("")
            .to_owned()),
    }
}

/// An empty tensor of `shape` on `dev` (uploaded from an empty host vector, so no device
/// memory is asked for).
fn empty_on<T: Element>(dev: &Device, shape: &[usize]) -> Tensor<T> {
    Tensor::<T>::from_vec(Vec::new(), shape)
        .unwrap()
        .to_device(dev)
        .unwrap()
}

/// Every elementwise-state layer's forward and backward on an empty input of `shape`.
fn empty_layers<T: Element>(
    dev: &Device,
    shape: &[usize],
    mode: MaskMode,
) -> Vec<Result<Vec<Tensor<T>>>> {
    let gen = || Arc::new(Generator::new(11));
    let x = empty_on::<T>(dev, shape);
    let g = empty_on::<T>(dev, shape);
    let back = |r: Result<(Tensor<T>, DropoutState)>| -> Result<Vec<Tensor<T>>> {
        let (y, state) = r?;
        let dx = dropout_backward(&g, &state)?;
        Ok(vec![y, dx])
    };
    vec![
        back(
            Dropout::new(0.3)
                .unwrap()
                .with_generator(gen())
                .with_mask_mode(mode)
                .forward(&x),
        ),
        back(
            Dropout1d::new(0.3)
                .unwrap()
                .with_generator(gen())
                .with_mask_mode(mode)
                .forward(&x),
        ),
        back(
            Dropout2d::new(0.3)
                .unwrap()
                .with_generator(gen())
                .with_mask_mode(mode)
                .forward(&x),
        ),
        back(
            Dropout3d::new(0.3)
                .unwrap()
                .with_generator(gen())
                .with_mask_mode(mode)
                .forward(&x),
        ),
        back(
            AlphaDropout::new(0.3)
                .unwrap()
                .with_generator(gen())
                .with_mask_mode(mode)
                .forward(&x),
        ),
        back(
            FeatureAlphaDropout::new(0.3)
                .unwrap()
                .with_generator(gen())
                .with_mask_mode(mode)
                .forward(&x),
        ),
        back(
            DropPath::new(0.3)
                .unwrap()
                .with_generator(gen())
                .with_mask_mode(mode)
                .forward(&x),
        ),
    ]
}

/// The fused layer on an empty (rows, h) input, with the bias of length h.
fn empty_fused<T: Element>(
    dev: &Device,
    rows: usize,
    h: usize,
    mode: MaskMode,
) -> Result<Vec<Tensor<T>>> {
    let layer = BiasDropoutResidual::new(0.3)
        .unwrap()
        .with_generator(Arc::new(Generator::new(12)))
        .with_mask_mode(mode);
    let bias_host = test_data::<T>(h, 1);
    let bias = Tensor::from_vec(bias_host, &[h])
        .unwrap()
        .to_device(dev)
        .unwrap();
    let x = empty_on::<T>(dev, &[rows, h]);
    let r = empty_on::<T>(dev, &[rows, h]);
    let (out, state) = layer.forward(&x, &bias, &r)?;
    let grads = layer.backward(&empty_on::<T>(dev, &[rows, h]), &state)?;
    Ok(vec![out, grads.x, grads.residual, grads.bias])
}

fn empty_all<T: Element>(dev: &Device) {
    for mode in [MaskMode::Bits, MaskMode::Regenerate] {
        for shape in [
            vec![0usize],
            vec![0, 3, 5],
            vec![2, 0, 5],
            vec![2, 3, 0],
            vec![0, 3, 4, 5],
            vec![0, 2, 3, 4, 5],
        ] {
            let cpu = empty_layers::<T>(&Device::Cpu, &shape, mode);
            let gpu = empty_layers::<T>(dev, &shape, mode);
            for (k, (c, g)) in cpu.into_iter().zip(gpu).enumerate() {
                assert_eq!(
                    outcome(g),
                    outcome(c),
                    "layer {k} {} {shape:?} {mode:?}",
                    T::DTYPE
                );
            }
        }
        for (rows, h) in [(0usize, 7usize), (0, 1), (5, 0)] {
            assert_eq!(
                outcome(empty_fused::<T>(dev, rows, h, mode)),
                outcome(empty_fused::<T>(&Device::Cpu, rows, h, mode)),
                "fused {} {rows}x{h} {mode:?}",
                T::DTYPE
            );
        }
    }
}

#[test]
fn cuda_empty_tensors_every_layer() {
    let Some(dev) = cuda_or_skip("cuda_empty_tensors_every_layer") else {
        return;
    };
    empty_all::<f32>(&dev);
    empty_all::<f64>(&dev);
    empty_all::<half::f16>(&dev);
    empty_all::<bf16>(&dev);
    // The device still works after all the empty calls.
    let x = Tensor::<f32>::ones(&[100], &dev).unwrap();
    let (y, _) = dropout(&x, 0.5, true, StreamPos::new(1, 2), MaskMode::Bits).unwrap();
    let (y_cpu, _) = dropout(
        &Tensor::<f32>::ones(&[100], &Device::Cpu).unwrap(),
        0.5,
        true,
        StreamPos::new(1, 2),
        MaskMode::Bits,
    )
    .unwrap();
    assert_eq!(
        bits_of(&y.to_vec().unwrap()),
        bits_of(&y_cpu.to_vec().unwrap())
    );
}

/// The fused layer at (rows, h) on both devices: out, dx, dresidual and dbias bits.
fn fused_parity<T: Element>(dev: &Device, rows: usize, h: usize, start: usize) {
    let n = rows * h;
    let (x, b, r, g) = (
        test_data::<T>(n, 21),
        test_data::<T>(h, 22),
        test_data::<T>(n, 23),
        test_data::<T>(n, 24),
    );
    let cpu = |d: &[T], s: &[usize]| Tensor::from_vec(d.to_vec(), s).unwrap();
    let gpu = |d: &[T], s: &[usize]| cuda_tensor(dev, d, start, s);
    for p in [0.0, 0.25, 1.0] {
        for mode in [MaskMode::Bits, MaskMode::Regenerate] {
            let pos = StreamPos::new(31, 5).with_index_base(17);
            let label = format!("fused {} {rows}x{h} p {p} {mode:?}", T::DTYPE);
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
            assert_eq!(
                bits_of(&o_g.to_vec().unwrap()),
                bits_of(&o_c.to_vec().unwrap()),
                "out {label}"
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
                bits_of(&gc.residual.to_vec().unwrap()),
                "dresidual {label}"
            );
            assert_eq!(
                bits_of(&gg.residual.to_vec().unwrap()),
                bits_of(&g),
                "dresidual is the gradient {label}"
            );
            assert_eq!(
                bits_of(&gg.bias.to_vec().unwrap()),
                bits_of(&gc.bias.to_vec().unwrap()),
                "dbias {label}"
            );
        }
    }
}

#[test]
fn cuda_fused_many_rows_crosses_bias_gradient_blocks() {
    let Some(dev) = cuda_or_skip("cuda_fused_many_rows_crosses_bias_gradient_blocks") else {
        return;
    };
    // More than 256 rows: the bias gradient sums several row blocks, then the blocks.
    fused_parity::<f32>(&dev, 1000, 37, 0);
    fused_parity::<f64>(&dev, 1000, 37, 1);
    fused_parity::<half::f16>(&dev, 1000, 37, 3);
    fused_parity::<bf16>(&dev, 1000, 37, 2);
    fused_parity::<f32>(&dev, 513, 4, 1);
}

/// One shard of `len` elements at `index_base` on both devices: outputs, bits, gradients.
fn shard_parity(dev: &Device, index_base: u64, len: usize) {
    let x = test_data::<f32>(len, index_base);
    let g = test_data::<f32>(len, index_base ^ 5);
    let pos = StreamPos::new(0xABCD, 3).with_index_base(index_base);
    let (x_c, g_c) = (
        Tensor::from_vec(x.clone(), &[len]).unwrap(),
        Tensor::from_vec(g.clone(), &[len]).unwrap(),
    );
    let (x_g, g_g) = (
        cuda_tensor(dev, &x, 1, &[len]),
        cuda_tensor(dev, &g, 1, &[len]),
    );
    type Op = fn(&Tensor<f32>, StreamPos, MaskMode) -> Result<(Tensor<f32>, DropoutState)>;
    let ops: [(&str, Op); 4] = [
        ("dropout", |t, pos, mode| dropout(t, 0.3, true, pos, mode)),
        ("alpha", |t, pos, mode| {
            dropkit::functional::alpha_dropout(t, 0.3, true, pos, mode)
        }),
        ("grouped scale 7", |t, pos, mode| {
            grouped_dropout(
                t,
                &GroupedConfig {
                    p: 0.3,
                    training: true,
                    grouping: Grouping::scale(7),
                },
                pos,
                mode,
            )
        }),
        ("grouped alpha 5", |t, pos, mode| {
            grouped_dropout(
                t,
                &GroupedConfig {
                    p: 0.3,
                    training: true,
                    grouping: Grouping::alpha(5),
                },
                pos,
                mode,
            )
        }),
    ];
    for (what, op) in ops {
        for mode in [MaskMode::Bits, MaskMode::Regenerate] {
            let label = format!("{what} base {index_base} len {len} {mode:?}");
            let (y_c, st_c) = op(&x_c, pos, mode).unwrap();
            let (y_g, st_g) = op(&x_g, pos, mode).unwrap();
            assert_eq!(
                bits_of(&y_g.to_vec().unwrap()),
                bits_of(&y_c.to_vec().unwrap()),
                "y {label}"
            );
            assert_eq!(
                st_g.keep_bits().unwrap(),
                st_c.keep_bits().unwrap(),
                "bits {label}"
            );
            let dx_c = dropout_backward(&g_c, &st_c).unwrap();
            let dx_g = dropout_backward(&g_g, &st_g).unwrap();
            assert_eq!(
                bits_of(&dx_g.to_vec().unwrap()),
                bits_of(&dx_c.to_vec().unwrap()),
                "dx {label}"
            );
        }
    }
    // The fused layer's shard: bias columns follow the global index.
    let h = 13;
    let rows = len / h;
    if rows > 0 {
        let n = rows * h;
        let (b, r) = (test_data::<f32>(h, 3), test_data::<f32>(n, 4));
        let cpu = |d: &[f32], s: &[usize]| Tensor::from_vec(d.to_vec(), s).unwrap();
        let gpu = |d: &[f32], s: &[usize]| cuda_tensor(dev, d, 2, s);
        // A shard of whole rows starts at a multiple of h.
        let base = index_base - index_base % h as u64;
        let pos = StreamPos::new(0xABCD, 3).with_index_base(base);
        let (o_c, _) = bias_dropout_residual(
            ResidualInputs {
                x: &cpu(&x[..n], &[rows, h]),
                bias: &cpu(&b, &[h]),
                residual: &cpu(&r, &[rows, h]),
            },
            0.3,
            true,
            pos,
            MaskMode::Bits,
        )
        .unwrap();
        let (o_g, _) = bias_dropout_residual(
            ResidualInputs {
                x: &gpu(&x[..n], &[rows, h]),
                bias: &gpu(&b, &[h]),
                residual: &gpu(&r, &[rows, h]),
            },
            0.3,
            true,
            pos,
            MaskMode::Bits,
        )
        .unwrap();
        assert_eq!(
            bits_of(&o_g.to_vec().unwrap()),
            bits_of(&o_c.to_vec().unwrap()),
            "fused base {base}"
        );
    }
}

#[test]
fn cuda_shards_past_32_bit_indices() {
    let Some(dev) = cuda_or_skip("cuda_shards_past_32_bit_indices") else {
        return;
    };
    // Shards that start just below 2^32 and 3 * 2^32 and run across them, odd lengths.
    for base in [
        (1u64 << 32) - 5,
        3 * (1u64 << 32) - 7,
        (1u64 << 32) - 4099,
        (1u64 << 33) + 1,
    ] {
        for len in [1usize, 31, 4097, 100_003] {
            shard_parity(&dev, base, len);
        }
    }
}

#[test]
fn cuda_threads_sharing_a_device_match_one_thread() {
    let Some(dev) = cuda_or_skip("cuda_threads_sharing_a_device_match_one_thread") else {
        return;
    };
    const THREADS: usize = 8;
    const CALLS: usize = 12;
    let n = 70_001;
    let inputs: Vec<Vec<bf16>> = (0..THREADS)
        .map(|t| test_data::<bf16>(n, t as u64))
        .collect();
    let pos_of = |t: usize, k: usize| StreamPos::new(t as u64 + 100, k as u64);
    // Each (thread, call): forward output bits and backward bits, dropout and fused layers.
    let run_one = |dev: &Device, t: usize, k: usize| -> Vec<u64> {
        let x = match dev {
            Device::Cpu => Tensor::from_vec(inputs[t].clone(), &[n]).unwrap(),
            _ => cuda_tensor(dev, &inputs[t], k % 3, &[n]),
        };
        let (y, state) = dropout(&x, 0.4, true, pos_of(t, k), MaskMode::Bits).unwrap();
        let dx = dropout_backward(&y, &state).unwrap();
        let (z, _) = grouped_dropout(
            &x,
            &GroupedConfig {
                p: 0.4,
                training: true,
                grouping: Grouping::scale(9),
            },
            pos_of(t, k),
            MaskMode::Regenerate,
        )
        .unwrap();
        let mut bits = bits_of(&y.to_vec().unwrap());
        bits.extend(bits_of(&dx.to_vec().unwrap()));
        bits.extend(bits_of(&z.to_vec().unwrap()));
        bits
    };
    let serial: Vec<Vec<Vec<u64>>> = (0..THREADS)
        .map(|t| (0..CALLS).map(|k| run_one(&dev, t, k)).collect())
        .collect();
    // Every serial result against the CPU's, so "same as one thread" also means right.
    for (t, calls) in serial.iter().enumerate() {
        for (k, gpu) in calls.iter().enumerate() {
            let cpu = run_one(&Device::Cpu, t, k);
            let first = gpu.iter().zip(&cpu).position(|(g, c)| g != c);
            assert!(
                first.is_none(),
                "thread {t} call {k}: the GPU differs from the CPU at {first:?} of [y, dx, z] \
                 ({n} each): {:#x} vs {:#x}",
                gpu[first.unwrap_or(0)],
                cpu[first.unwrap_or(0)]
            );
        }
    }
    let parallel: Vec<Vec<Vec<u64>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let dev = dev.clone();
                let run_one = &run_one;
                s.spawn(move || (0..CALLS).map(|k| run_one(&dev, t, k)).collect::<Vec<_>>())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for t in 0..THREADS {
        for k in 0..CALLS {
            assert!(
                parallel[t][k] == serial[t][k],
                "thread {t} call {k} differs from the serial run"
            );
        }
    }
}
