//! Shards of any layout (issue 24: the elementwise and grouped layers): a shard placed by a
//! `ShardLayout` (any axes split, uneven sizes) gets exactly its part of the unsharded
//! output, mask and gradient, bit for bit, on every device, in both saved forms; the
//! shards of a partition put together are the unsharded tensor; and a layout that does
//! not fit is an error that takes no offset.

mod common;

use common::shard::{
    place, random_layout, random_layout_of_rank, s_and_h_partitions, slice_of, Rng,
};
use common::{bits_of, tensor_on, test_data, test_device};
use dropkit::functional::dropout_shard;
use dropkit::functional::{alpha_dropout, alpha_dropout_shard, dropout, dropout_backward};
use dropkit::{
    AlphaDropout, Device, DropPath, Dropout, Dropout1d, Dropout2d, Dropout3d, FeatureAlphaDropout,
    Generator, MaskMode, ShardLayout, StreamPos,
};
use std::sync::Arc;

/// Each random shard's forward, saved bits, regenerated bits and gradient are its part of
/// the unsharded ones (dropout and alpha dropout, both saved forms, f32 and bf16 paths).
fn shards_of_any_layout_match_the_whole_tensor(dev: &Device) {
    let mut rng = Rng(0x5eed);
    let pos = StreamPos::new(77, 5);
    for case in 0..60 {
        let layout = random_layout(&mut rng);
        let global = layout.global_shape().to_vec();
        let n_global: usize = global.iter().product();
        let xs = test_data::<f32>(n_global, case);
        let gs = test_data::<f32>(n_global, case + 1000);
        let x = tensor_on(dev, xs.clone(), &global);
        let g = tensor_on(dev, gs.clone(), &global);
        let shape = layout.shape().to_vec();
        let x_shard = tensor_on(dev, slice_of(&xs, &layout), &shape);
        let g_shard = tensor_on(dev, slice_of(&gs, &layout), &shape);
        for mode in [MaskMode::Bits, MaskMode::Regenerate] {
            let (y, state) = dropout(&x, 0.3, true, pos, mode).unwrap();
            let dx = dropout_backward(&g, &state).unwrap();
            let (ys, ss) = dropout_shard(&x_shard, 0.3, true, pos, &layout, mode).unwrap();
            let dxs = dropout_backward(&g_shard, &ss).unwrap();
            let what = format!("case {case}: {layout:?} {mode:?}");
            assert_eq!(
                bits_of(&ys.to_vec().unwrap()),
                bits_of(&slice_of(&y.to_vec().unwrap(), &layout)),
                "{what}"
            );
            assert_eq!(
                bits_of(&dxs.to_vec().unwrap()),
                bits_of(&slice_of(&dx.to_vec().unwrap(), &layout)),
                "{what}"
            );
            // The shard's keep bits, unpacked, are the whole mask's bits at its elements.
            let unpack = |words: Vec<u32>, n: usize| -> Vec<bool> {
                (0..n).map(|i| words[i / 32] >> (i % 32) & 1 == 1).collect()
            };
            let whole_bits = unpack(state.keep_bits().unwrap().unwrap(), n_global);
            let shard_bits = unpack(ss.keep_bits().unwrap().unwrap(), shape.iter().product());
            assert_eq!(shard_bits, slice_of(&whole_bits, &layout), "{what}");
            // Alpha dropout through the same layout.
            let (ya, _) = alpha_dropout(&x, 0.3, true, pos, mode).unwrap();
            let (yas, _) = alpha_dropout_shard(&x_shard, 0.3, true, pos, &layout, mode).unwrap();
            assert_eq!(
                bits_of(&yas.to_vec().unwrap()),
                bits_of(&slice_of(&ya.to_vec().unwrap(), &layout)),
                "{what} (alpha)"
            );
        }
    }
}
test_device!(
    shards_of_any_layout_match_the_whole_tensor,
    shards_of_any_layout_match_the_whole_tensor_cpu,
    shards_of_any_layout_match_the_whole_tensor_cuda
);

/// A (b, s, h) activation split 4 ways along h, then along s, then along both: the shards
/// put together are the unsharded output, through the `Dropout` layer on one generator
/// state per split (every rank draws the same offset).
fn partitions_put_together_are_the_whole_output(dev: &Device) {
    let global = [2usize, 6, 8];
    let n: usize = global.iter().product();
    let xs = test_data::<f32>(n, 9);
    let x = tensor_on(dev, xs.clone(), &global);
    let layer = |seed| {
        Dropout::new(0.5)
            .unwrap()
            .with_generator(Arc::new(Generator::new(seed)))
    };
    let (whole, _) = layer(3).forward(&x).unwrap();
    let whole = bits_of(&whole.to_vec().unwrap());
    for (split, layouts) in s_and_h_partitions(global) {
        let mut out = vec![None; n];
        for layout in layouts {
            let shard = tensor_on(dev, slice_of(&xs, &layout), layout.shape());
            let (y, _) = layer(3).with_shard(layout.clone()).forward(&shard).unwrap();
            place(&mut out, &bits_of(&y.to_vec().unwrap()), &layout);
        }
        let out: Vec<u64> = out.into_iter().map(|v| v.expect("every element")).collect();
        assert_eq!(out, whole, "{split}");
    }
    // AlphaDropout's layer form too, and in place.
    let layout = ShardLayout::new(&global, &[1, 0, 2], &[1, 6, 3]).unwrap();
    let alpha = AlphaDropout::new(0.5)
        .unwrap()
        .with_generator(Arc::new(Generator::new(4)))
        .with_shard(layout.clone());
    let mut shard = tensor_on(dev, slice_of(&xs, &layout), layout.shape());
    let (y, _) = alpha.forward(&shard).unwrap();
    let alpha_whole = AlphaDropout::new(0.5)
        .unwrap()
        .with_generator(Arc::new(Generator::new(4)));
    let (yw, _) = alpha_whole.forward(&x).unwrap();
    assert_eq!(
        bits_of(&y.to_vec().unwrap()),
        bits_of(&slice_of(&yw.to_vec().unwrap(), &layout))
    );
    let alpha_again = AlphaDropout::new(0.5)
        .unwrap()
        .with_generator(Arc::new(Generator::new(4)))
        .with_shard(layout);
    alpha_again.forward_in_place(&mut shard).unwrap();
    assert_eq!(
        bits_of(&shard.to_vec().unwrap()),
        bits_of(&y.to_vec().unwrap())
    );
}
test_device!(
    partitions_put_together_are_the_whole_output,
    partitions_put_together_are_the_whole_output_cpu,
    partitions_put_together_are_the_whole_output_cuda
);

/// A tensor that is not the layout's shard, or a stream position with its own index base,
/// is an error, and the layer's generator is left unchanged.
fn layouts_that_do_not_fit_are_errors(dev: &Device) {
    let layout = ShardLayout::new(&[4, 8], &[0, 4], &[4, 4]).unwrap();
    let wrong = tensor_on(dev, vec![1f32; 16], &[2, 8]);
    let pos = StreamPos::new(1, 0);
    assert!(dropout_shard(&wrong, 0.5, true, pos, &layout, MaskMode::Bits).is_err());
    let right = tensor_on(dev, vec![1f32; 16], &[4, 4]);
    let based = pos.with_index_base(3);
    assert!(dropout_shard(&right, 0.5, true, based, &layout, MaskMode::Bits).is_err());
    let generator = Arc::new(Generator::new(5));
    let layer = Dropout::new(0.5)
        .unwrap()
        .with_generator(generator.clone())
        .with_shard(layout);
    let before = generator.state();
    assert!(layer.forward(&wrong).is_err());
    assert_eq!(generator.state(), before, "a failed call takes no offset");
    assert!(layer.forward(&right).is_ok());
    assert_ne!(generator.state(), before);
}
test_device!(
    layouts_that_do_not_fit_are_errors,
    layouts_that_do_not_fit_are_errors_cpu,
    layouts_that_do_not_fit_are_errors_cuda
);

/// The grouped layers (one decision per (sample, channel), or per sample) on random
/// layouts of their ranks, any axis split, spatial ones included: each shard's output and
/// gradient are its part of the unsharded ones, both saved forms.
fn grouped_layers_on_shards_of_any_layout(dev: &Device) {
    let mut rng = Rng(0xc0ffee);
    let gen = |seed| Arc::new(Generator::new(seed));
    for case in 0..40u64 {
        for mode in [MaskMode::Bits, MaskMode::Regenerate] {
            // (rank, forward of the whole tensor, forward of the shard) per layer.
            type Fwd =
                Box<dyn Fn(&dropkit::Tensor<f32>, Option<ShardLayout>) -> (Vec<u64>, Vec<u64>)>;
            let run = |fwd: &dyn Fn(Option<ShardLayout>) -> Fwd, rank: usize, rng: &mut Rng| {
                let layout = random_layout_of_rank(rng, rank);
                let global = layout.global_shape().to_vec();
                let n: usize = global.iter().product();
                let xs = test_data::<f32>(n, case);
                let x = tensor_on(dev, xs.clone(), &global);
                let shard = tensor_on(dev, slice_of(&xs, &layout), layout.shape());
                let (y, dx) = fwd(None)(&x, None);
                let (ys, dxs) = fwd(Some(layout.clone()))(&shard, Some(layout.clone()));
                assert_eq!(ys, slice_of(&y, &layout), "case {case} {layout:?} {mode:?}");
                assert_eq!(
                    dxs,
                    slice_of(&dx, &layout),
                    "case {case} {layout:?} {mode:?} (grad)"
                );
            };
            macro_rules! layer_fwd {
                ($make:expr) => {
                    &|_: Option<ShardLayout>| -> Fwd {
                        Box::new(move |x, layout| {
                            let mut layer = $make.with_generator(gen(case)).with_mask_mode(mode);
                            if let Some(l) = layout {
                                layer = layer.with_shard(l);
                            }
                            let (y, st) = layer.forward(x).unwrap();
                            let dx = layer.backward(&y, &st).unwrap();
                            (
                                bits_of(&y.to_vec().unwrap()),
                                bits_of(&dx.to_vec().unwrap()),
                            )
                        })
                    }
                };
            }
            run(
                layer_fwd!(Dropout1d::new(0.4).unwrap()),
                2 + rng.below(2),
                &mut rng,
            );
            run(
                layer_fwd!(Dropout2d::new(0.4).unwrap()),
                3 + rng.below(2),
                &mut rng,
            );
            run(
                layer_fwd!(Dropout3d::new(0.4).unwrap()),
                4 + rng.below(2),
                &mut rng,
            );
            run(
                layer_fwd!(DropPath::new(0.4).unwrap()),
                1 + rng.below(4),
                &mut rng,
            );
            run(
                layer_fwd!(FeatureAlphaDropout::new(0.4).unwrap()),
                2 + rng.below(3),
                &mut rng,
            );
        }
    }
}
test_device!(
    grouped_layers_on_shards_of_any_layout,
    grouped_layers_on_shards_of_any_layout_cpu,
    grouped_layers_on_shards_of_any_layout_cuda
);
