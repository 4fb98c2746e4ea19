//! A failed call changes nothing (issue 13): for every layer and every kind of error a
//! forward can return, the generator's offset is the same after the error, and the next
//! good call uses the offset it would have used without the failed one (checked against
//! the functional API at that offset, bit for bit).
//!
//! Invalid probabilities fail at construction, before any generator is involved. Device
//! mismatches need two devices and are covered by the CUDA tests; on a CPU-only build
//! every tensor lives on the CPU.

use dropkit::functional::{
    alpha_dropout, bias_dropout_residual, dropout, grouped_dropout, GroupedConfig, GroupedKind,
    Grouping, ResidualInputs,
};
use dropkit::{
    AlphaDropout, BiasDropoutResidual, DropPath, Dropout, Dropout1d, Dropout2d, Dropout3d,
    DropoutState, Error, FeatureAlphaDropout, Generator, MaskMode, StreamPos, Tensor,
};
use std::sync::Arc;

const SEED: u64 = 0xD0_0D;
const START: u64 = 41;
const P: f64 = 0.3;

fn tensor(shape: &[usize]) -> Tensor<f32> {
    let n: usize = shape.iter().product();
    let data = (0..n).map(|i| (i as f32 - 7.5) * 0.25).collect();
    Tensor::from_vec(data, shape).unwrap()
}

fn bits(t: &Tensor<f32>) -> Vec<u32> {
    t.to_vec().unwrap().iter().map(|v| v.to_bits()).collect()
}

fn generator() -> Arc<Generator> {
    let g = Arc::new(Generator::new(SEED));
    g.set_offset(START);
    g
}

type Forward<'a> = &'a dyn Fn(&Tensor<f32>) -> dropkit::Result<(Tensor<f32>, DropoutState)>;
type InPlace<'a> = &'a dyn Fn(&mut Tensor<f32>) -> dropkit::Result<DropoutState>;

/// `bad` fails (as `is_expected` says) out of place and in place without moving `gen`;
/// then `good` gives what `reference` computes at offset START, and the offset moves by 1.
fn error_keeps_offset(
    gen: &Generator,
    forward: Forward<'_>,
    forward_in_place: InPlace<'_>,
    bad: &Tensor<f32>,
    is_expected: impl Fn(&Error) -> bool,
    good: &Tensor<f32>,
    reference: impl Fn(&Tensor<f32>, StreamPos) -> Tensor<f32>,
) {
    let err = forward(bad).expect_err("the bad input must fail");
    assert!(is_expected(&err), "unexpected error {err:?}");
    assert_eq!(
        gen.offset(),
        START,
        "a failed forward moved the offset ({err})"
    );
    let mut bad_copy = bad.try_clone().unwrap();
    let err = forward_in_place(&mut bad_copy).expect_err("the bad input must fail in place");
    assert!(is_expected(&err), "unexpected in-place error {err:?}");
    assert_eq!(
        gen.offset(),
        START,
        "a failed in-place forward moved the offset ({err})"
    );
    assert_eq!(
        bits(&bad_copy),
        bits(bad),
        "a failed in-place forward wrote its input"
    );

    let (y, _) = forward(good).unwrap();
    assert_eq!(gen.offset(), START + 1);
    let want = reference(good, StreamPos::new(SEED, START));
    assert_eq!(
        bits(&y),
        bits(&want),
        "the good call did not use offset {START}"
    );
}

fn is_invalid_shape(e: &Error) -> bool {
    matches!(e, Error::InvalidShape { .. })
}

fn is_out_of_range(e: &Error) -> bool {
    matches!(e, Error::OutOfRange(_))
}

/// Wrong rank for a grouped layer: InvalidShape, offset untouched.
macro_rules! wrong_rank_test {
    ($test:ident, $layer:ident, $bad:expr, $good:expr, $kind:expr) => {
        #[test]
        fn $test() {
            for mode in [MaskMode::Bits, MaskMode::Regenerate] {
                let gen = generator();
                let layer = $layer::new(P)
                    .unwrap()
                    .with_generator(gen.clone())
                    .with_mask_mode(mode);
                let good = tensor(&$good);
                let group: usize = grouped_size(stringify!($layer), good.shape());
                error_keeps_offset(
                    &gen,
                    &|x| layer.forward(x),
                    &|x| layer.forward_in_place(x),
                    &tensor(&$bad),
                    is_invalid_shape,
                    &good,
                    |x, pos| {
                        grouped_dropout(
                            x,
                            &GroupedConfig {
                                p: P,
                                training: true,
                                grouping: Grouping {
                                    size: group,
                                    kind: $kind,
                                },
                            },
                            pos,
                            mode,
                        )
                        .unwrap()
                        .0
                    },
                );
            }
        }
    };
}

/// Elements per decision of a grouped layer for an accepted shape.
fn grouped_size(layer: &str, shape: &[usize]) -> usize {
    let trailing = match layer {
        "Dropout1d" => 1,
        "Dropout2d" => 2,
        "Dropout3d" => 3,
        "DropPath" => shape.len() - 1,
        "FeatureAlphaDropout" => shape.len() - 2,
        other => panic!("{other} is not grouped"),
    };
    shape[shape.len() - trailing..].iter().product()
}

wrong_rank_test!(
    dropout1d_wrong_rank,
    Dropout1d,
    [2, 3, 4, 5],
    [2, 3, 4],
    GroupedKind::Scale
);
wrong_rank_test!(
    dropout1d_rank_one,
    Dropout1d,
    [6],
    [3, 4],
    GroupedKind::Scale
);
wrong_rank_test!(
    dropout2d_wrong_rank,
    Dropout2d,
    [2, 3],
    [2, 3, 4, 5],
    GroupedKind::Scale
);
wrong_rank_test!(
    dropout3d_wrong_rank,
    Dropout3d,
    [2, 3, 4],
    [2, 3, 2, 2, 2],
    GroupedKind::Scale
);
wrong_rank_test!(drop_path_scalar, DropPath, [], [4, 3], GroupedKind::Scale);
wrong_rank_test!(
    feature_alpha_rank_one,
    FeatureAlphaDropout,
    [7],
    [2, 3, 4],
    GroupedKind::Alpha
);

/// index_base + n past 2^64: OutOfRange, offset untouched; the same layer then takes a
/// tensor that fits (2 elements end exactly at u64::MAX).
macro_rules! index_overflow_test {
    ($(#[$attr:meta])* $test:ident, $layer:ident, $bad:expr, $good:expr, $reference:expr) => {
        #[test]
        $(#[$attr])*
        fn $test() {
            let base = u64::MAX - 2;
            for mode in [MaskMode::Bits, MaskMode::Regenerate] {
                let gen = generator();
                let layer = $layer::new(P)
                    .unwrap()
                    .with_generator(gen.clone())
                    .with_mask_mode(mode)
                    .with_index_base(base);
                let reference = $reference;
                error_keeps_offset(
                    &gen,
                    &|x| layer.forward(x),
                    &|x| layer.forward_in_place(x),
                    &tensor(&$bad),
                    is_out_of_range,
                    &tensor(&$good),
                    |x, pos| reference(x, pos.with_index_base(base), mode),
                );
            }
        }
    };
}

index_overflow_test!(
    dropout_index_overflow,
    Dropout,
    [2, 4],
    [2],
    |x: &Tensor<f32>, pos, mode| dropout(x, P, true, pos, mode).unwrap().0
);
index_overflow_test!(
    alpha_index_overflow,
    AlphaDropout,
    [2, 4],
    [1, 2],
    |x: &Tensor<f32>, pos, mode| alpha_dropout(x, P, true, pos, mode).unwrap().0
);
index_overflow_test!(
    dropout1d_index_overflow,
    Dropout1d,
    [2, 4],
    [1, 2],
    |x: &Tensor<f32>, pos, mode| grouped_dropout(
        x,
        &GroupedConfig {
            p: P,
            training: true,
            grouping: Grouping::scale(2)
        },
        pos,
        mode
    )
    .unwrap()
    .0
);
index_overflow_test!(
    dropout2d_index_overflow,
    Dropout2d,
    [2, 2, 2],
    [1, 2, 1],
    |x: &Tensor<f32>, pos, mode| grouped_dropout(
        x,
        &GroupedConfig {
            p: P,
            training: true,
            grouping: Grouping::scale(2)
        },
        pos,
        mode
    )
    .unwrap()
    .0
);
index_overflow_test!(
    dropout3d_index_overflow,
    Dropout3d,
    [1, 2, 2, 2],
    [1, 1, 2, 1],
    |x: &Tensor<f32>, pos, mode| grouped_dropout(
        x,
        &GroupedConfig {
            p: P,
            training: true,
            grouping: Grouping::scale(2)
        },
        pos,
        mode
    )
    .unwrap()
    .0
);
index_overflow_test!(
    drop_path_index_overflow,
    DropPath,
    [4, 2],
    [1, 2],
    |x: &Tensor<f32>, pos, mode| grouped_dropout(
        x,
        &GroupedConfig {
            p: P,
            training: true,
            grouping: Grouping::scale(2)
        },
        pos,
        mode
    )
    .unwrap()
    .0
);
index_overflow_test!(
    feature_alpha_index_overflow,
    FeatureAlphaDropout,
    [2, 2, 2],
    [1, 1, 2],
    |x: &Tensor<f32>, pos, mode| grouped_dropout(
        x,
        &GroupedConfig {
            p: P,
            training: true,
            grouping: Grouping::alpha(2)
        },
        pos,
        mode
    )
    .unwrap()
    .0
);

/// The fused layer: each bad (x, bias, residual) fails out of place and in place without
/// moving the offset; then a good call matches the functional form at offset START.
fn fused_error_keeps_offset(
    index_base: u64,
    bad: (&[usize], &[usize], &[usize]),
    is_expected: impl Fn(&Error) -> bool,
    good: (&[usize], &[usize]),
) {
    for mode in [MaskMode::Bits, MaskMode::Regenerate] {
        let gen = generator();
        let layer = BiasDropoutResidual::new(P)
            .unwrap()
            .with_generator(gen.clone())
            .with_mask_mode(mode)
            .with_index_base(index_base);
        let (x, bias, residual) = (tensor(bad.0), tensor(bad.1), tensor(bad.2));
        let err = layer
            .forward(&x, &bias, &residual)
            .expect_err("bad fused input");
        assert!(is_expected(&err), "unexpected error {err:?}");
        assert_eq!(
            gen.offset(),
            START,
            "a failed fused forward moved the offset ({err})"
        );
        let mut res = residual.try_clone().unwrap();
        let err = layer
            .forward_in_place(&x, &bias, &mut res)
            .expect_err("bad fused input");
        assert!(is_expected(&err), "unexpected in-place error {err:?}");
        assert_eq!(
            gen.offset(),
            START,
            "a failed in-place fused forward moved the offset"
        );
        assert_eq!(
            bits(&res),
            bits(&residual),
            "a failed in-place forward wrote the residual"
        );

        let (x, bias) = (tensor(good.0), tensor(good.1));
        let residual = tensor(good.0);
        let (out, _) = layer.forward(&x, &bias, &residual).unwrap();
        assert_eq!(gen.offset(), START + 1);
        let pos = StreamPos::new(SEED, START).with_index_base(index_base);
        let (want, _) = bias_dropout_residual(
            ResidualInputs {
                x: &x,
                bias: &bias,
                residual: &residual,
            },
            P,
            true,
            pos,
            mode,
        )
        .unwrap();
        assert_eq!(
            bits(&out),
            bits(&want),
            "the good call did not use offset {START}"
        );
    }
}

#[test]
fn fused_residual_shape_mismatch() {
    fused_error_keeps_offset(
        0,
        (&[2, 3], &[3], &[3, 2]),
        |e| matches!(e, Error::ShapeMismatch { .. }),
        (&[2, 3], &[3]),
    );
}

#[test]
fn fused_bias_shape_mismatch() {
    fused_error_keeps_offset(
        0,
        (&[2, 3], &[2], &[2, 3]),
        |e| matches!(e, Error::ShapeMismatch { .. }),
        (&[2, 3], &[3]),
    );
}

#[test]
fn fused_scalar_input() {
    fused_error_keeps_offset(
        0,
        (&[], &[1], &[]),
        |e| matches!(e, Error::InvalidShape { .. }),
        (&[1, 4], &[4]),
    );
}

#[test]
fn fused_index_overflow() {
    fused_error_keeps_offset(
        u64::MAX - 2,
        (&[2, 3], &[3], &[2, 3]),
        is_out_of_range,
        (&[1, 2], &[2]),
    );
}

/// Eval-mode calls take no offset, failed or not, and training calls take exactly one
/// each: the offset counts successful training calls.
#[test]
fn offset_counts_successful_training_calls_only() {
    let gen = generator();
    let mut layer = Dropout2d::new(P).unwrap().with_generator(gen.clone());
    let good = tensor(&[2, 3, 4, 5]);
    let bad = tensor(&[2, 3]);
    layer.forward(&good).unwrap();
    assert!(layer.forward(&bad).is_err());
    layer.forward(&good).unwrap();
    assert_eq!(gen.offset(), START + 2);
    layer.eval();
    layer.forward(&good).unwrap();
    let _ = layer.forward(&bad);
    assert_eq!(gen.offset(), START + 2);
}
