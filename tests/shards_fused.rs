//! Shards of any layout for the fused bias + dropout + residual (issue 24), and shards of
//! one tensor spread over the CPU and CUDA: each shard's output and gradients are its part
//! of the unsharded ones, bit for bit, both saved forms, whatever axes are split; the bias
//! is the shard's slice of H.

mod common;

use common::shard::{
    holds_every_row, last_axis_slice, place, random_layout, s_and_h_partitions, slice_of, Rng,
};
use common::{bits_of, finite_test_data, tensor_on, test_data, test_device};
use dropkit::functional::{
    bias_dropout_residual, bias_dropout_residual_backward, bias_dropout_residual_shard, dropout,
    dropout_add_norm, dropout_add_norm_backward, dropout_add_norm_shard, dropout_shard,
    AddNormConfig, AddNormGrads, AddNormInputs, AddNormOutput, AddNormSaved,
    BiasDropoutResidualGrads, ResidualInputs,
};
use dropkit::{
    BiasDropoutResidual, Device, Dropout2d, DropoutAddNorm, Element, Generator, MaskMode, Norm,
    ShardLayout, StreamPos, Tensor,
};
use half::bf16;
use std::sync::Arc;

/// The values of a device tensor as bits.
fn bits<T: Element>(t: &Tensor<T>) -> Vec<u64> {
    bits_of(&t.to_vec().unwrap())
}

/// Random layouts of rank 1 to 5 (any axes split, uneven): the fused forward of the shard
/// is its part of the whole one's, and so are dx and dresidual; the bias gradient is the
/// whole one's slice when the shard holds every row. Training in both saved forms, and
/// eval. f32, and bf16 (rounded from the compute type).
fn fused_on_shards_of_any_layout<T: Element>(dev: &Device) {
    let mut rng = Rng(0xb1a5);
    let pos = StreamPos::new(31, 9);
    let (mut through_layout, mut whole_rows) = (0, 0);
    for case in 0..50u64 {
        let layout = random_layout(&mut rng);
        let global = layout.global_shape().to_vec();
        let h = *global.last().unwrap();
        let n: usize = global.iter().product();
        let (xs, rs, gs) = (
            test_data::<T>(n, case),
            test_data::<T>(n, case + 100),
            test_data::<T>(n, case + 200),
        );
        let bs = test_data::<T>(h, case + 300);
        let on = |v: &[T], shape: &[usize]| tensor_on(dev, v.to_vec(), shape);
        let (x, r, g, b) = (
            on(&xs, &global),
            on(&rs, &global),
            on(&gs, &global),
            on(&bs, &[h]),
        );
        let shape = layout.shape().to_vec();
        let part = |v: &[T]| on(&slice_of(v, &layout), &shape);
        let (xl, rl, gl) = (part(&xs), part(&rs), part(&gs));
        let bl = on(&last_axis_slice(&bs, &layout), &[shape[shape.len() - 1]]);
        through_layout += usize::from(layout.contiguous_start().is_none());
        for (training, mode) in [
            (true, MaskMode::Bits),
            (true, MaskMode::Regenerate),
            (false, MaskMode::Bits),
        ] {
            let what = format!("case {case}: {layout:?} training {training} {mode:?}");
            let (y, st) = bias_dropout_residual(
                ResidualInputs {
                    x: &x,
                    bias: &b,
                    residual: &r,
                },
                0.35,
                training,
                pos,
                mode,
            )
            .unwrap();
            let (yl, stl) = bias_dropout_residual_shard(
                ResidualInputs {
                    x: &xl,
                    bias: &bl,
                    residual: &rl,
                },
                0.35,
                training,
                pos,
                &layout,
                mode,
            )
            .unwrap();
            assert_eq!(bits(&yl), slice_of(&bits(&y), &layout), "{what}");
            let whole = bias_dropout_residual_backward(&g, &st).unwrap();
            let shard = bias_dropout_residual_backward(&gl, &stl).unwrap();
            assert_eq!(
                bits(&shard.x),
                slice_of(&bits(&whole.x), &layout),
                "{what} dx"
            );
            assert_eq!(bits(&shard.residual), bits(&gl), "{what} dresidual");
            if holds_every_row(&layout) {
                whole_rows += 1;
                let want = last_axis_slice(&bits(&whole.bias), &layout);
                assert_eq!(bits(&shard.bias), want, "{what} dbias");
            }
            // The bits form saves the shard's part of the whole mask.
            if training && mode == MaskMode::Bits {
                let unpack = |words: Vec<u32>, n: usize| -> Vec<bool> {
                    (0..n).map(|i| words[i / 32] >> (i % 32) & 1 == 1).collect()
                };
                let whole = unpack(st.dropout_state().keep_bits().unwrap().unwrap(), n);
                let local = stl.dropout_state().keep_bits().unwrap().unwrap();
                let local = unpack(local, shape.iter().product());
                assert_eq!(local, slice_of(&whole, &layout), "{what} mask");
            }
        }
    }
    // The random layouts reached both paths: through the layout, and one range.
    assert!(
        through_layout > 10 && through_layout < 45,
        "{through_layout}"
    );
    assert!(whole_rows > 10, "{whole_rows}");
}

fn fused_on_shards_of_any_layout_f32(dev: &Device) {
    fused_on_shards_of_any_layout::<f32>(dev);
}
test_device!(
    fused_on_shards_of_any_layout_f32,
    fused_on_shards_of_any_layout_f32_cpu,
    fused_on_shards_of_any_layout_f32_cuda
);

fn fused_on_shards_of_any_layout_bf16(dev: &Device) {
    fused_on_shards_of_any_layout::<bf16>(dev);
}
test_device!(
    fused_on_shards_of_any_layout_bf16,
    fused_on_shards_of_any_layout_bf16_cpu,
    fused_on_shards_of_any_layout_bf16_cuda
);

/// The layer form: tensor parallelism over H (4 ways) and sequence parallelism over s (3
/// ways) of a (b, s, h) step, each rank with its own layer on the same generator state.
/// The shards put together are the unsharded output; in place and `_into` give the same
/// bits; a tensor that is not the layout's shard is an error that takes no offset.
fn fused_layer_partitions(dev: &Device) {
    let global = [2usize, 6, 8];
    let n: usize = global.iter().product();
    let (xs, rs) = (test_data::<f32>(n, 1), test_data::<f32>(n, 2));
    let bs = test_data::<f32>(8, 3);
    let layer = || BiasDropoutResidual::new(0.4).unwrap();
    let generator = |seed| Arc::new(Generator::new(seed));
    let x = tensor_on(dev, xs.clone(), &global);
    let r = tensor_on(dev, rs.clone(), &global);
    let b = tensor_on(dev, bs.clone(), &[8]);
    let (whole, _) = layer()
        .with_generator(generator(6))
        .forward(&x, &b, &r)
        .unwrap();
    let whole = bits(&whole);
    for (split, layouts) in s_and_h_partitions(global) {
        let mut out = vec![None; n];
        for layout in layouts {
            let shape = layout.shape().to_vec();
            let h_len = shape[2];
            let xl = tensor_on(dev, slice_of(&xs, &layout), &shape);
            let mut rl = tensor_on(dev, slice_of(&rs, &layout), &shape);
            let bl = tensor_on(dev, last_axis_slice(&bs, &layout), &[h_len]);
            let rank = |mode| {
                layer()
                    .with_generator(generator(6))
                    .with_mask_mode(mode)
                    .with_shard(layout.clone())
            };
            let (y, state) = rank(MaskMode::Bits).forward(&xl, &bl, &rl).unwrap();
            // `_into` (regenerate form) into a fresh output, with a state to reuse.
            let mut into = Tensor::<f32>::zeros(&shape, dev).unwrap();
            let regen = rank(MaskMode::Regenerate);
            let (_, mut st) = regen.forward(&xl, &bl, &rl).unwrap();
            let regen = rank(MaskMode::Regenerate);
            regen
                .forward_into(&xl, &bl, &rl, &mut into, &mut st)
                .unwrap();
            assert_eq!(bits(&into), bits(&y), "{split} into");
            // The regenerate state's gradient is the bits state's.
            let g = tensor_on(dev, test_data::<f32>(y.len(), 4), &shape);
            let (gb, gr) = (
                regen.backward(&g, &state).unwrap(),
                regen.backward(&g, &st).unwrap(),
            );
            assert_eq!(bits(&gb.x), bits(&gr.x));
            let mut grads = BiasDropoutResidualGrads {
                x: Tensor::zeros(&shape, dev).unwrap(),
                residual: Tensor::zeros(&shape, dev).unwrap(),
                bias: Tensor::zeros(&[h_len], dev).unwrap(),
            };
            regen.backward_into(&g, &st, &mut grads).unwrap();
            assert_eq!(bits(&grads.x), bits(&gb.x), "backward into");
            assert_eq!(bits(&grads.bias), bits(&gb.bias), "backward into");
            rank(MaskMode::Bits)
                .forward_in_place(&xl, &bl, &mut rl)
                .unwrap();
            assert_eq!(bits(&rl), bits(&y), "{split} in place");
            place(&mut out, &bits(&y), &layout);
        }
        let out: Vec<u64> = out.into_iter().map(|v| v.expect("every element")).collect();
        assert_eq!(out, whole, "{split}");
    }
    // Not the layout's shard: an error, and the generator is left as it was.
    let layout = ShardLayout::new(&global, &[0, 0, 4], &[2, 6, 4]).unwrap();
    let g = generator(7);
    let ranked = layer().with_generator(g.clone()).with_shard(layout);
    let before = g.state();
    let (xw, rw) = (
        tensor_on(dev, vec![1f32; 24], &[2, 3, 4]),
        tensor_on(dev, vec![1f32; 24], &[2, 3, 4]),
    );
    let bw = tensor_on(dev, vec![1f32; 4], &[4]);
    assert!(ranked.forward(&xw, &bw, &rw).is_err());
    assert_eq!(g.state(), before, "a failed call takes no offset");
    // A functional call with a position that has its own index base is refused too.
    let based = StreamPos::new(1, 0).with_index_base(8);
    let l2 = ShardLayout::new(&[2, 3, 4], &[0, 0, 0], &[2, 3, 4]).unwrap();
    let e = bias_dropout_residual_shard(
        ResidualInputs {
            x: &xw,
            bias: &bw,
            residual: &rw,
        },
        0.5,
        true,
        based,
        &l2,
        MaskMode::Bits,
    );
    assert!(e.is_err());
}
test_device!(
    fused_layer_partitions,
    fused_layer_partitions_cpu,
    fused_layer_partitions_cuda
);

/// One (b, c, h, w) tensor split into 8 shards over c and w, the shards alternating
/// between `dev` and the CPU: dropout, the fused layer and channel dropout of the shards,
/// put together, are the unsharded results computed on the CPU (on the CUDA run, half the
/// shards came from CUDA kernels, half from the CPU).
fn shards_on_mixed_devices(dev: &Device) {
    let global = [2usize, 4, 3, 8];
    let n: usize = global.iter().product();
    let (xs, rs) = (test_data::<f32>(n, 11), test_data::<f32>(n, 12));
    let bs = test_data::<f32>(8, 13);
    let cpu = Device::Cpu;
    let pos = StreamPos::new(123, 4);
    let x = tensor_on(&cpu, xs.clone(), &global);
    let r = tensor_on(&cpu, rs.clone(), &global);
    let b = tensor_on(&cpu, bs.clone(), &[8]);
    let (dw, _) = dropout(&x, 0.5, true, pos, MaskMode::Bits).unwrap();
    let (fw, _) = bias_dropout_residual(
        ResidualInputs {
            x: &x,
            bias: &b,
            residual: &r,
        },
        0.5,
        true,
        pos,
        MaskMode::Bits,
    )
    .unwrap();
    let channel = || {
        Dropout2d::new(0.5)
            .unwrap()
            .with_generator(Arc::new(Generator::new(5)))
    };
    let (cw, _) = channel().forward(&x).unwrap();
    let (mut d_out, mut f_out, mut c_out) = (vec![None; n], vec![None; n], vec![None; n]);
    for ci in 0..2 {
        for wi in 0..4 {
            let layout = ShardLayout::new(&global, &[0, 2 * ci, 0, 2 * wi], &[2, 2, 3, 2]).unwrap();
            let here = if (ci + wi) % 2 == 0 { dev } else { &cpu };
            let shape = layout.shape().to_vec();
            let xl = tensor_on(here, slice_of(&xs, &layout), &shape);
            let rl = tensor_on(here, slice_of(&rs, &layout), &shape);
            let bl = tensor_on(here, last_axis_slice(&bs, &layout), &[2]);
            let (d, _) = dropout_shard(&xl, 0.5, true, pos, &layout, MaskMode::Bits).unwrap();
            place(&mut d_out, &bits(&d), &layout);
            let (f, _) = bias_dropout_residual_shard(
                ResidualInputs {
                    x: &xl,
                    bias: &bl,
                    residual: &rl,
                },
                0.5,
                true,
                pos,
                &layout,
                MaskMode::Bits,
            )
            .unwrap();
            place(&mut f_out, &bits(&f), &layout);
            let (c, _) = channel().with_shard(layout.clone()).forward(&xl).unwrap();
            place(&mut c_out, &bits(&c), &layout);
        }
    }
    let all = |v: Vec<Option<u64>>| -> Vec<u64> { v.into_iter().map(Option::unwrap).collect() };
    assert_eq!(all(d_out), bits(&dw), "dropout");
    assert_eq!(all(f_out), bits(&fw), "fused");
    assert_eq!(all(c_out), bits(&cw), "channel");
}
test_device!(
    shards_on_mixed_devices,
    shards_on_mixed_devices_cpu,
    shards_on_mixed_devices_cuda
);

/// What the norm's backward reads of a forward.
fn saved<'a, T: Element, R: Element>(
    o: &'a AddNormOutput<T, R>,
    gamma: &'a Tensor<T>,
) -> AddNormSaved<'a, T, R> {
    AddNormSaved { s: &o.s, gamma }
}

/// A random layout whose last axis is whole (the norm's rows), any leading axes split.
fn whole_rows_layout(rng: &mut Rng) -> ShardLayout {
    let l = random_layout(rng);
    let (mut start, mut shape) = (l.start().to_vec(), l.shape().to_vec());
    let last = shape.len() - 1;
    (start[last], shape[last]) = (0, l.global_shape()[last]);
    ShardLayout::new(l.global_shape(), &start, &shape).unwrap()
}

/// The fused dropout + add + norm of shards of whole rows: z, s, dx and dresidual are the
/// unsharded ones' parts, both norms, both saved forms and eval, with every optional
/// input; the layer form gives the same bits (and its `_into` form); a layout that splits
/// H is an error that takes no offset.
fn norm_on_shards_of_whole_rows<T, R>(dev: &Device)
where
    T: Element,
    R: Element<Compute = T::Compute>,
{
    let mut rng = Rng(0xa11);
    let pos = StreamPos::new(8, 2);
    let mut through_layout = 0;
    for case in 0..30u64 {
        let layout = whole_rows_layout(&mut rng);
        let global = layout.global_shape().to_vec();
        let shape = layout.shape().to_vec();
        let h = *global.last().unwrap();
        let n: usize = global.iter().product();
        through_layout += usize::from(layout.contiguous_start().is_none());
        let (xs, rs, dzs, dss) = (
            finite_test_data::<T>(n, case),
            finite_test_data::<R>(n, case + 1),
            finite_test_data::<T>(n, case + 2),
            finite_test_data::<R>(n, case + 3),
        );
        let vectors: Vec<Vec<T>> = (4..7).map(|k| finite_test_data::<T>(h, case + k)).collect();
        let whole = |v: &[T]| tensor_on(dev, v.to_vec(), &global);
        let part = |v: &[T]| tensor_on(dev, slice_of(v, &layout), &shape);
        let (bias, gamma, beta) = (
            tensor_on(dev, vectors[0].clone(), &[h]),
            tensor_on(dev, vectors[1].clone(), &[h]),
            tensor_on(dev, vectors[2].clone(), &[h]),
        );
        let (x, xl) = (whole(&xs), part(&xs));
        let (dz, dzl) = (whole(&dzs), part(&dzs));
        let r = tensor_on(dev, rs.clone(), &global);
        let rl = tensor_on(dev, slice_of(&rs, &layout), &shape);
        let ds = tensor_on(dev, dss.clone(), &global);
        let dsl = tensor_on(dev, slice_of(&dss, &layout), &shape);
        for norm in [Norm::LayerNorm, Norm::RmsNorm] {
            let beta = (norm == Norm::LayerNorm).then_some(&beta);
            let inputs = |x, residual| AddNormInputs {
                x,
                bias: Some(&bias),
                residual: Some(residual),
                gamma: &gamma,
                beta,
            };
            for (training, mode) in [
                (true, MaskMode::Bits),
                (true, MaskMode::Regenerate),
                (false, MaskMode::Bits),
            ] {
                let what = format!("case {case}: {layout:?} {norm:?} {training} {mode:?}");
                let config = AddNormConfig {
                    norm,
                    p: 0.3,
                    eps: 1e-5,
                    training,
                };
                let w = dropout_add_norm(inputs(&x, &r), &config, pos, mode).unwrap();
                let l =
                    dropout_add_norm_shard(inputs(&xl, &rl), &config, pos, &layout, mode).unwrap();
                assert_eq!(bits(&l.z), slice_of(&bits(&w.z), &layout), "{what} z");
                assert_eq!(bits(&l.s), slice_of(&bits(&w.s), &layout), "{what} s");
                let gw =
                    dropout_add_norm_backward(&dz, Some(&ds), saved(&w, &gamma), &w.state).unwrap();
                let gl = dropout_add_norm_backward(&dzl, Some(&dsl), saved(&l, &gamma), &l.state)
                    .unwrap();
                assert_eq!(bits(&gl.x), slice_of(&bits(&gw.x), &layout), "{what} dx");
                let dres = |g: &AddNormGrads<T, R>| bits(g.residual.as_ref().unwrap());
                assert_eq!(dres(&gl), slice_of(&dres(&gw), &layout), "{what} dres");
                // The layer on the same generator state, and its `_into` form.
                let layer = match norm {
                    Norm::LayerNorm => DropoutAddNorm::layer_norm(0.3, 1e-5),
                    Norm::RmsNorm => DropoutAddNorm::rms_norm(0.3, 1e-5),
                }
                .unwrap()
                .with_mask_mode(mode)
                .with_shard(layout.clone());
                let mut layer = layer.with_generator(Arc::new(Generator::new(8)));
                layer.set_training(training);
                let mut o = layer.forward(inputs(&xl, &rl)).unwrap();
                let first = if training { StreamPos::new(8, 0) } else { pos };
                let f = dropout_add_norm_shard(inputs(&xl, &rl), &config, first, &layout, mode)
                    .unwrap();
                assert_eq!(bits(&o.z), bits(&f.z), "{what} layer");
                layer.forward_into(inputs(&xl, &rl), &mut o).unwrap();
                let again = if training { StreamPos::new(8, 1) } else { pos };
                let f = dropout_add_norm_shard(inputs(&xl, &rl), &config, again, &layout, mode)
                    .unwrap();
                assert_eq!(bits(&o.z), bits(&f.z), "{what} layer into");
            }
        }
    }
    assert!(through_layout > 5, "{through_layout}");
    // A layout that splits H: an error, and the layer takes no offset.
    let layout = ShardLayout::new(&[4, 8], &[0, 0], &[4, 4]).unwrap();
    let g = Arc::new(Generator::new(1));
    let layer = DropoutAddNorm::rms_norm(0.5, 1e-5)
        .unwrap()
        .with_generator(g.clone())
        .with_shard(layout.clone());
    let x = tensor_on(dev, finite_test_data::<T>(16, 0), &[4, 4]);
    let gamma = tensor_on(dev, finite_test_data::<T>(4, 1), &[4]);
    let inputs = AddNormInputs::<T, R> {
        x: &x,
        bias: None,
        residual: None,
        gamma: &gamma,
        beta: None,
    };
    let before = g.state();
    assert!(layer.forward(inputs).is_err());
    assert_eq!(g.state(), before, "a failed call takes no offset");
    let config = AddNormConfig {
        norm: Norm::RmsNorm,
        p: 0.5,
        eps: 1e-5,
        training: true,
    };
    let e = dropout_add_norm_shard(inputs, &config, pos, &layout, MaskMode::Bits);
    assert!(e.is_err());
}

fn norm_on_shards_of_whole_rows_f32(dev: &Device) {
    norm_on_shards_of_whole_rows::<f32, f32>(dev);
}
test_device!(
    norm_on_shards_of_whole_rows_f32,
    norm_on_shards_of_whole_rows_f32_cpu,
    norm_on_shards_of_whole_rows_f32_cuda
);

fn norm_on_shards_of_whole_rows_bf16(dev: &Device) {
    norm_on_shards_of_whole_rows::<bf16, f32>(dev);
}
test_device!(
    norm_on_shards_of_whole_rows_bf16,
    norm_on_shards_of_whole_rows_bf16_cpu,
    norm_on_shards_of_whole_rows_bf16_cuda
);
