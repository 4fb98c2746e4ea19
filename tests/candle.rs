//! `dropkit::candle`: candle tensors get the same bits as dropkit's own tensors (forward
//! and gradient through candle's autograd), for every float dtype, for non-contiguous
//! inputs, and through the `ModuleT` layers' offsets; invalid input is an error. Covers
//! `Dropout`, channel dropout (1d/2d/3d), `DropPath`, `AlphaDropout`,
//! `FeatureAlphaDropout` and the fused `BiasDropoutResidual`.

mod common;

use candle_core::{DType as CDType, Device as CDevice, Tensor as CTensor, Var, WithDType};
use candle_nn::ModuleT;
// Finite data: these tests check values against tolerances and zero patterns, which NaN
// and -0.0 would blur; the special values are covered by tests/dropout.rs,
// tests/properties.rs and the CUDA tests.
use common::{bits_of, finite_test_data as test_data};
use dropkit::functional::{self, GroupedConfig, Grouping, MaskMode, ResidualInputs, StreamPos};
use dropkit::{candle as dk, Element, Generator, Tensor};
use half::{bf16, f16};
use std::sync::Arc;

/// A candle tensor's elements in row-major order.
fn values<T: Element + WithDType>(t: &CTensor) -> Vec<T> {
    t.flatten_all().unwrap().to_vec1::<T>().unwrap()
}

/// Forward and gradient of x (the gradient of sum(y * w), i.e. dropout applied to w) on
/// both sides, compared bit for bit.
fn check_parity<T: Element + WithDType>(shape: &[usize], p: f64, pos: StreamPos) {
    let n: usize = shape.iter().product();
    let x = test_data::<T>(n, 11);
    let w = test_data::<T>(n, 29);

    // dropkit: forward, then backward of w through the saved bits (the default form).
    let xt = Tensor::from_vec(x.clone(), shape).unwrap();
    let (y_ref, state) = functional::dropout(&xt, p, true, pos, MaskMode::Bits).unwrap();
    let wt = Tensor::from_vec(w.clone(), shape).unwrap();
    let dx_ref = functional::dropout_backward(&wt, &state).unwrap();

    // candle: the op under autograd.
    let xv = Var::from_tensor(&CTensor::from_vec(x, shape, &CDevice::Cpu).unwrap()).unwrap();
    let y = dk::dropout(xv.as_tensor(), p, true, pos).unwrap();
    assert_eq!(y.dims(), shape);
    let wc = CTensor::from_vec(w, shape, &CDevice::Cpu).unwrap();
    let grads = (&y * &wc).unwrap().sum_all().unwrap().backward().unwrap();
    let dx = grads.get(xv.as_tensor()).expect("x has a gradient");

    let what = format!("{:?} {shape:?} p={p} {pos:?}", <T as Element>::DTYPE);
    assert_eq!(
        bits_of(&values::<T>(&y)),
        bits_of(&y_ref.to_vec().unwrap()),
        "forward {what}"
    );
    assert_eq!(
        bits_of(&values::<T>(dx)),
        bits_of(&dx_ref.to_vec().unwrap()),
        "gradient {what}"
    );
}

#[test]
fn same_bits_as_dropkit_tensors_for_every_dtype() {
    // Sizes: partial mask words, and more than one parallel chunk (32 Ki elements).
    for shape in [&[1usize][..], &[3, 37], &[2, 40_000]] {
        for (p, pos) in [
            (0.1, StreamPos::new(0, 0)),
            (0.5, StreamPos::new(42, 7)),
            (0.9, StreamPos::new(u64::MAX, 1 << 40).with_index_base(5)),
        ] {
            check_parity::<f32>(shape, p, pos);
            check_parity::<f64>(shape, p, pos);
            check_parity::<f16>(shape, p, pos);
            check_parity::<bf16>(shape, p, pos);
        }
    }
}

#[test]
fn gradient_of_a_plain_sum_uses_the_same_mask() {
    // d(sum y)/dx arrives as a broadcast (stride-0) tensor of ones: the op must still see
    // element i at decision i. The result is the forward's kept positions times s.
    let pos = StreamPos::new(3, 4);
    let x = CTensor::ones((64, 33), CDType::F32, &CDevice::Cpu).unwrap();
    let xv = Var::from_tensor(&x).unwrap();
    let y = dk::dropout(xv.as_tensor(), 0.25, true, pos).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    let dx = grads.get(xv.as_tensor()).unwrap();
    assert_eq!(
        bits_of(&values::<f32>(dx)),
        bits_of(&values::<f32>(&y)),
        "gradient of sum = the mask times s = the forward of ones"
    );
    let kept = values::<f32>(&y).iter().filter(|&&v| v != 0.0).count();
    assert!(kept > 64 * 33 / 2 && kept < 64 * 33, "kept {kept}");
}

#[test]
fn non_contiguous_inputs_use_logical_row_major_positions() {
    let pos = StreamPos::new(9, 2);
    let base = CTensor::from_vec(test_data::<f32>(24 * 40, 5), (24, 40), &CDevice::Cpu).unwrap();
    let strided = [
        ("transpose", base.t().unwrap()),
        ("narrowed columns", base.narrow(1, 3, 17).unwrap()),
        (
            "narrowed rows (contiguous, offset)",
            base.narrow(0, 5, 7).unwrap(),
        ),
        (
            "permuted 3-d",
            base.reshape((4, 6, 40))
                .unwrap()
                .permute((2, 0, 1))
                .unwrap(),
        ),
    ];
    for (what, x) in strided {
        let y = dk::dropout(&x, 0.5, true, pos).unwrap();
        assert_eq!(y.dims(), x.dims(), "{what}");
        // dropkit on the logical elements in row-major order.
        let data = values::<f32>(&x);
        let t = Tensor::from_vec(data, x.dims()).unwrap();
        let (y_ref, _) = functional::dropout(&t, 0.5, true, pos, MaskMode::Bits).unwrap();
        assert_eq!(
            bits_of(&values::<f32>(&y)),
            bits_of(&y_ref.to_vec().unwrap()),
            "{what}"
        );
    }

    // The gradient flows back through the transpose: d(sum(dropout(b^T) * w))/db is
    // (dropout of w)^T.
    let bv = Var::from_tensor(&base).unwrap();
    let w = CTensor::from_vec(test_data::<f32>(40 * 24, 8), (40, 24), &CDevice::Cpu).unwrap();
    let y = dk::dropout(&bv.as_tensor().t().unwrap(), 0.5, true, pos).unwrap();
    let grads = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
    let db = grads.get(bv.as_tensor()).unwrap();
    let dw = dk::dropout(&w, 0.5, true, pos).unwrap().t().unwrap();
    assert_eq!(bits_of(&values::<f32>(db)), bits_of(&values::<f32>(&dw)));
}

#[test]
fn layer_takes_one_offset_per_training_call() {
    let gen = Arc::new(Generator::new(77));
    let layer = dk::Dropout::new(0.3)
        .unwrap()
        .with_generator(Arc::clone(&gen));
    let x = CTensor::from_vec(test_data::<f32>(500, 1), (5, 100), &CDevice::Cpu).unwrap();
    let y0 = layer.forward_t(&x, true).unwrap();
    let e = layer.forward_t(&x, false).unwrap();
    let y1 = layer.forward_t(&x, true).unwrap();
    assert_eq!(
        gen.offset(),
        2,
        "two training calls, the eval call takes none"
    );
    assert_eq!(bits_of(&values::<f32>(&e)), bits_of(&values::<f32>(&x)));
    for (y, offset) in [(y0, 0), (y1, 1)] {
        let want = dk::dropout(&x, 0.3, true, StreamPos::new(77, offset)).unwrap();
        assert_eq!(bits_of(&values::<f32>(&y)), bits_of(&values::<f32>(&want)));
    }
    // The same generator drives dropkit's own layer: the streams interleave, never repeat.
    let own = dropkit::Dropout::new(0.3)
        .unwrap()
        .with_generator(Arc::clone(&gen));
    let t = Tensor::from_vec(values::<f32>(&x), &[5, 100]).unwrap();
    let (y2, _) = own.forward(&t).unwrap();
    let want = dk::dropout(&x, 0.3, true, StreamPos::new(77, 2)).unwrap();
    assert_eq!(
        bits_of(&y2.to_vec().unwrap()),
        bits_of(&values::<f32>(&want))
    );

    // A shard reproduces its slice of the whole tensor's mask.
    let whole = dk::dropout(&x, 0.3, true, StreamPos::new(5, 0)).unwrap();
    let shard = dk::Dropout::new(0.3)
        .unwrap()
        .with_generator(Arc::new(Generator::new(5)))
        .with_index_base(200);
    let part = shard
        .forward_t(&x.flatten_all().unwrap().narrow(0, 200, 300).unwrap(), true)
        .unwrap();
    let want = whole.flatten_all().unwrap().narrow(0, 200, 300).unwrap();
    assert_eq!(
        bits_of(&values::<f32>(&part)),
        bits_of(&values::<f32>(&want))
    );
}

#[test]
fn p_zero_and_p_one() {
    let x = CTensor::from_vec(test_data::<bf16>(100, 2), 100, &CDevice::Cpu).unwrap();
    let same = dk::dropout(&x, 0.0, true, StreamPos::new(1, 1)).unwrap();
    assert_eq!(
        bits_of(&values::<bf16>(&same)),
        bits_of(&values::<bf16>(&x))
    );
    let xv = Var::from_tensor(&x).unwrap();
    let zero = dk::dropout(xv.as_tensor(), 1.0, true, StreamPos::new(1, 1)).unwrap();
    assert!(
        values::<bf16>(&zero).iter().all(|v| v.to_bits() == 0),
        "+0 only"
    );
    let grads = zero.sum_all().unwrap().backward().unwrap();
    let dx = grads.get(xv.as_tensor()).unwrap();
    assert!(
        values::<bf16>(dx).iter().all(|v| v.to_bits() == 0),
        "+0 gradient"
    );
}

#[test]
fn errors_not_panics() {
    for p in [f64::NAN, -0.1, 1.5, f64::INFINITY] {
        let e = dk::Dropout::new(p).unwrap_err().to_string();
        assert!(e.contains("invalid dropout probability"), "{e}");
        let x = CTensor::ones(4, CDType::F32, &CDevice::Cpu).unwrap();
        assert!(dk::dropout(&x, p, true, StreamPos::new(0, 0)).is_err());
        assert!(dk::dropout(&x, p, false, StreamPos::new(0, 0)).is_err());
    }
    let gen = Arc::new(Generator::new(1));
    let layer = dk::Dropout::new(0.5)
        .unwrap()
        .with_generator(Arc::clone(&gen));
    let ints = CTensor::new(&[1u32, 2, 3], &CDevice::Cpu).unwrap();
    let e = layer.forward_t(&ints, true).unwrap_err().to_string();
    assert!(e.contains("dtype U32 is not supported"), "{e}");
    assert_eq!(gen.offset(), 0, "a refused call takes no offset");
    let f = CTensor::ones(4, CDType::F32, &CDevice::Cpu).unwrap();
    let edge = dk::Dropout::new(0.5)
        .unwrap()
        .with_generator(Arc::clone(&gen))
        .with_index_base(u64::MAX - 1);
    assert!(edge.forward_t(&f, true).is_err());
    assert_eq!(gen.offset(), 0, "a refused call takes no offset");
    let e = dk::dropout(
        &f,
        0.5,
        true,
        StreamPos::new(0, 0).with_index_base(u64::MAX - 1),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("overflows the 64-bit decision index"), "{e}");
}

// ---------------------------------------------------------------------------------------
// The rest of the family.

/// The single-input layers that have a candle form besides `Dropout`.
#[derive(Debug, Clone, Copy)]
enum Form {
    Dropout1d,
    Dropout2d,
    Dropout3d,
    DropPath,
    Alpha,
    FeatureAlpha,
}

const FORMS: [Form; 6] = [
    Form::Dropout1d,
    Form::Dropout2d,
    Form::Dropout3d,
    Form::DropPath,
    Form::Alpha,
    Form::FeatureAlpha,
];

impl Form {
    /// Shapes the layer accepts: tiny, unbatched where allowed, partial mask words, and
    /// more than one CPU work chunk (32 Ki elements).
    fn shapes(self) -> Vec<Vec<usize>> {
        let v: &[&[usize]] = match self {
            Form::Dropout1d => &[&[1, 1, 1], &[5, 37], &[3, 4, 37], &[4, 16, 800]],
            Form::Dropout2d => &[&[1, 1, 1], &[3, 4, 5], &[2, 3, 4, 5], &[4, 8, 40, 40]],
            Form::Dropout3d => &[&[3, 2, 3, 4], &[2, 3, 2, 3, 4], &[2, 4, 10, 32, 32]],
            Form::DropPath => &[&[1], &[7], &[6, 5, 7], &[4, 20_000]],
            Form::Alpha => &[&[1], &[3, 37], &[2, 40_000]],
            Form::FeatureAlpha => &[&[2, 3], &[4, 8, 16], &[2, 16, 40, 40]],
        };
        v.iter().map(|s| s.to_vec()).collect()
    }

    /// Ranks the layer refuses (0 to 6 minus what it accepts).
    fn bad_ranks(self) -> Vec<usize> {
        let ok = |r: usize| match self {
            Form::Dropout1d => r == 2 || r == 3,
            Form::Dropout2d => r == 3 || r == 4,
            Form::Dropout3d => r == 4 || r == 5,
            Form::DropPath => r >= 1,
            Form::Alpha => true,
            Form::FeatureAlpha => r >= 2,
        };
        (0..=6).filter(|&r| !ok(r)).collect()
    }

    /// The candle form.
    fn candle(
        self,
        p: f64,
        gen: &Arc<Generator>,
        ib: u64,
    ) -> candle_core::Result<Box<dyn ModuleT>> {
        macro_rules! make {
            ($l:ty) => {
                Box::new(
                    <$l>::new(p)?
                        .with_generator(Arc::clone(gen))
                        .with_index_base(ib),
                ) as Box<dyn ModuleT>
            };
        }
        Ok(match self {
            Form::Dropout1d => make!(dk::Dropout1d),
            Form::Dropout2d => make!(dk::Dropout2d),
            Form::Dropout3d => make!(dk::Dropout3d),
            Form::DropPath => make!(dk::DropPath),
            Form::Alpha => make!(dk::AlphaDropout),
            Form::FeatureAlpha => make!(dk::FeatureAlphaDropout),
        })
    }

    /// dropkit's own layer on `x`: the output and the backward of `w` (bits form), or the
    /// identity pair (x, w) in eval mode.
    fn dropkit<T: Element>(
        self,
        p: f64,
        gen: &Arc<Generator>,
        ib: u64,
        train: bool,
        x: &Tensor<T>,
        w: &Tensor<T>,
    ) -> dropkit::Result<(Vec<T>, Vec<T>)> {
        macro_rules! run {
            ($l:ty) => {{
                let mut layer = <$l>::new(p)?
                    .with_generator(Arc::clone(gen))
                    .with_index_base(ib);
                layer.set_training(train);
                let (y, state) = layer.forward(x)?;
                let dx = layer.backward(w, &state)?;
                Ok((y.to_vec()?, dx.to_vec()?))
            }};
        }
        match self {
            Form::Dropout1d => run!(dropkit::Dropout1d),
            Form::Dropout2d => run!(dropkit::Dropout2d),
            Form::Dropout3d => run!(dropkit::Dropout3d),
            Form::DropPath => run!(dropkit::DropPath),
            Form::Alpha => run!(dropkit::AlphaDropout),
            Form::FeatureAlpha => run!(dropkit::FeatureAlphaDropout),
        }
    }
}

/// A generator at (seed, offset).
fn generator_at(seed: u64, offset: u64) -> Arc<Generator> {
    let gen = Arc::new(Generator::new(seed));
    gen.set_offset(offset);
    gen
}

/// Output and gradient of sum(layer(x) * w) with respect to x, through candle's autograd.
fn candle_forward_grad<T: Element + WithDType>(
    layer: &dyn ModuleT,
    x: &CTensor,
    w: &CTensor,
    train: bool,
) -> (Vec<T>, Vec<T>) {
    let xv = Var::from_tensor(x).unwrap();
    let y = layer.forward_t(xv.as_tensor(), train).unwrap();
    assert_eq!(y.dims(), x.dims());
    let grads = (&y * w).unwrap().sum_all().unwrap().backward().unwrap();
    let dx = grads.get(xv.as_tensor()).expect("x has a gradient");
    (values::<T>(&y), values::<T>(dx))
}

/// One layer, one dtype, one shape: candle's output and gradient equal dropkit's bits, and
/// both generators move the same way (one offset per training call, none in eval).
fn check_form<T: Element + WithDType>(
    form: Form,
    shape: &[usize],
    p: f64,
    (seed, offset, ib): (u64, u64, u64),
    train: bool,
) {
    let n: usize = shape.iter().product();
    let (x, w) = (test_data::<T>(n, 11), test_data::<T>(n, 29));
    let what = format!(
        "{form:?} {:?} {shape:?} p={p} seed={seed} offset={offset} ib={ib} train={train}",
        <T as Element>::DTYPE
    );

    let gen_ref = generator_at(seed, offset);
    let xt = Tensor::from_vec(x.clone(), shape).unwrap();
    let wt = Tensor::from_vec(w.clone(), shape).unwrap();
    let (y_ref, dx_ref) = form.dropkit(p, &gen_ref, ib, train, &xt, &wt).unwrap();

    let gen = generator_at(seed, offset);
    let layer = form.candle(p, &gen, ib).unwrap();
    let xc = CTensor::from_vec(x, shape, &CDevice::Cpu).unwrap();
    let wc = CTensor::from_vec(w, shape, &CDevice::Cpu).unwrap();
    let (y, dx) = candle_forward_grad::<T>(layer.as_ref(), &xc, &wc, train);

    assert_eq!(bits_of(&y), bits_of(&y_ref), "forward {what}");
    assert_eq!(bits_of(&dx), bits_of(&dx_ref), "gradient {what}");
    let want = offset + u64::from(train);
    assert_eq!(gen.offset(), want, "candle offsets {what}");
    assert_eq!(gen_ref.offset(), want, "dropkit offsets {what}");
}

const POSITIONS: [(f64, (u64, u64, u64)); 4] = [
    (0.1, (0, 0, 0)),
    (0.5, (42, 7, 0)),
    (0.9, (u64::MAX, 1 << 40, 5)),
    (0.5, (3, 1, 1000)),
];

#[test]
fn family_same_bits_as_dropkit_layers_for_every_dtype() {
    for form in FORMS {
        for shape in form.shapes() {
            for (p, at) in POSITIONS {
                check_form::<f32>(form, &shape, p, at, true);
                check_form::<f64>(form, &shape, p, at, true);
                check_form::<f16>(form, &shape, p, at, true);
                check_form::<bf16>(form, &shape, p, at, true);
            }
        }
    }
}

#[test]
fn family_eval_is_the_identity_and_takes_no_offset() {
    for form in FORMS {
        let shape = &form.shapes()[1];
        check_form::<f32>(form, shape, 0.5, (4, 9, 0), false);
        check_form::<bf16>(form, shape, 0.5, (4, 9, 3), false);
        // The eval output is the input itself, bit for bit.
        let n: usize = shape.iter().product();
        let x = CTensor::from_vec(test_data::<f64>(n, 6), shape.as_slice(), &CDevice::Cpu).unwrap();
        let layer = form.candle(0.5, &generator_at(1, 0), 0).unwrap();
        let y = layer.forward_t(&x, false).unwrap();
        assert_eq!(
            bits_of(&values::<f64>(&y)),
            bits_of(&values::<f64>(&x)),
            "{form:?}"
        );
    }
}

#[test]
fn family_p_zero_and_p_one() {
    for form in FORMS {
        let shape = &form.shapes()[2];
        for p in [0.0, 1.0] {
            check_form::<f32>(form, shape, p, (8, 2, 0), true);
            check_form::<f16>(form, shape, p, (8, 2, 0), true);
        }
        // p = 1: every output and every gradient is +0, alpha dropout included.
        let n: usize = shape.iter().product();
        let x = CTensor::from_vec(test_data::<f32>(n, 1), shape.as_slice(), &CDevice::Cpu).unwrap();
        let w = CTensor::from_vec(test_data::<f32>(n, 2), shape.as_slice(), &CDevice::Cpu).unwrap();
        let layer = form.candle(1.0, &generator_at(8, 2), 0).unwrap();
        let (y, dx) = candle_forward_grad::<f32>(layer.as_ref(), &x, &w, true);
        assert!(
            y.iter().chain(&dx).all(|v| v.to_bits() == 0),
            "{form:?}: +0 only"
        );
    }
}

/// Real values, not just parity: grouped layers keep or drop whole groups, with the
/// documented kept and dropped values, and both cases occur.
#[test]
fn family_values_follow_the_decisions() {
    let (seed, offset) = (21, 3);
    let shape = [6usize, 8, 5];
    let n: usize = shape.iter().product();
    let x = CTensor::from_vec(test_data::<f64>(n, 4), &shape, &CDevice::Cpu).unwrap();
    let xs = values::<f64>(&x);
    let p = 0.5;
    let prob = dropkit::mask::Probability::new(p).unwrap();
    let (q, s) = (prob.keep_probability(), prob.scale_f64());
    for (form, group, first) in [
        (Form::Dropout1d, 5, 0u64),
        (Form::DropPath, 40, 0),
        (Form::FeatureAlpha, 5, 0),
        (Form::Alpha, 1, 0),
        (Form::Dropout1d, 5, 7), // a shard: decision j covers global elements [5j, 5j + 5)
    ] {
        let layer = form.candle(p, &generator_at(seed, offset), first).unwrap();
        let y = values::<f64>(&layer.forward_t(&x, true).unwrap());
        // The decisions, straight from the spec's mask (one per group, global index).
        let lead = first % group as u64;
        let decisions = (lead as usize + n).div_ceil(group);
        let bits =
            dropkit::mask::keep_bits_from(seed, offset, first / group as u64, &prob, decisions)
                .unwrap();
        let kept = |i: usize| {
            let j = (lead as usize + i) / group;
            bits[j / 32] >> (j % 32) & 1 == 1
        };
        let (mut n_kept, mut n_dropped) = (0, 0);
        for i in 0..n {
            let want = match (form, kept(i)) {
                (Form::Alpha | Form::FeatureAlpha, k) => {
                    let a_prime = -1.758_099_340_847_376_6f64;
                    let a = 1.0 / (q * (1.0 + (1.0 - q) * a_prime * a_prime)).sqrt();
                    let b = -a * a_prime * (1.0 - q);
                    if k {
                        xs[i] * a + b
                    } else {
                        a_prime * a + b
                    }
                }
                (_, true) => xs[i] * s,
                (_, false) => 0.0,
            };
            assert_eq!(
                y[i].to_bits(),
                want.to_bits(),
                "{form:?} first={first} i={i}"
            );
            if kept(i) {
                n_kept += 1;
            } else {
                n_dropped += 1;
            }
        }
        assert!(
            n_kept > 0 && n_dropped > 0,
            "{form:?}: both kept and dropped groups"
        );
    }
}

#[test]
fn family_offsets_advance_once_per_training_call() {
    for form in FORMS {
        let shape = form.shapes()[2].clone();
        let n: usize = shape.iter().product();
        let x = CTensor::from_vec(test_data::<f32>(n, 3), shape.as_slice(), &CDevice::Cpu).unwrap();
        let gen = generator_at(50, 0);
        let layer = form.candle(0.4, &gen, 0).unwrap();
        let y0 = layer.forward_t(&x, true).unwrap();
        let _ = layer.forward_t(&x, false).unwrap();
        let y1 = layer.forward_t(&x, true).unwrap();
        assert_eq!(
            gen.offset(),
            2,
            "{form:?}: two training calls, eval takes none"
        );
        // The same generator state replays each call.
        for (y, offset) in [(y0, 0), (y1, 1)] {
            let again = form.candle(0.4, &generator_at(50, offset), 0).unwrap();
            let want = again.forward_t(&x, true).unwrap();
            assert_eq!(
                bits_of(&values::<f32>(&y)),
                bits_of(&values::<f32>(&want)),
                "{form:?}"
            );
        }
        // Consecutive calls differ (a fresh offset each time), for forms with many decisions.
        if !matches!(form, Form::DropPath) {
            let a = form.candle(0.4, &generator_at(50, 0), 0).unwrap();
            let first = values::<f32>(&a.forward_t(&x, true).unwrap());
            let second = values::<f32>(&a.forward_t(&x, true).unwrap());
            assert_ne!(bits_of(&first), bits_of(&second), "{form:?}");
        }
    }
}

#[test]
fn family_functional_forms_match_dropkit_functional() {
    use dropkit::functional::GroupedKind;
    let shape = [3usize, 4, 37];
    let n: usize = shape.iter().product();
    let x = test_data::<bf16>(n, 12);
    let xt = Tensor::from_vec(x.clone(), &shape).unwrap();
    let xc = CTensor::from_vec(x, &shape, &CDevice::Cpu).unwrap();
    let pos = StreamPos::new(u64::MAX - 3, 1 << 50).with_index_base(11);
    for (group, kind) in [
        (37, GroupedKind::Scale),
        (148, GroupedKind::Scale),
        (37, GroupedKind::Alpha),
    ] {
        let (want, _) = functional::grouped_dropout(
            &xt,
            &GroupedConfig {
                p: 0.3,
                training: true,
                grouping: Grouping { size: group, kind },
            },
            pos,
            MaskMode::Bits,
        )
        .unwrap();
        let got = dk::grouped_dropout(&xc, 0.3, true, Grouping { size: group, kind }, pos).unwrap();
        assert_eq!(
            bits_of(&values::<bf16>(&got)),
            bits_of(&want.to_vec().unwrap()),
            "{kind:?}"
        );
    }
    let (want, _) = functional::alpha_dropout(&xt, 0.3, true, pos, MaskMode::Bits).unwrap();
    let got = dk::alpha_dropout(&xc, 0.3, true, pos).unwrap();
    assert_eq!(
        bits_of(&values::<bf16>(&got)),
        bits_of(&want.to_vec().unwrap())
    );
    // Eval: the identity; group 0 over elements is refused as dropkit refuses it.
    let same = dk::grouped_dropout(&xc, 0.3, false, Grouping::scale(37), pos).unwrap();
    assert_eq!(
        bits_of(&values::<bf16>(&same)),
        bits_of(&values::<bf16>(&xc))
    );
    let e = dk::grouped_dropout(&xc, 0.3, true, Grouping::scale(0), pos).unwrap_err();
    assert!(
        e.to_string()
            .contains("a decision must cover at least one element"),
        "{e}"
    );
    assert!(dk::alpha_dropout(&xc, 1.5, true, pos).is_err());
}

#[test]
fn family_gradient_of_a_plain_sum_and_strided_inputs() {
    // d(sum y)/dx arrives as a stride-0 tensor of ones: the gradient is the forward of ones
    // (for the scaling layers), so whole groups are s or 0.
    let ones = CTensor::ones((6, 4, 9), CDType::F32, &CDevice::Cpu).unwrap();
    for form in [Form::Dropout1d, Form::DropPath] {
        let xv = Var::from_tensor(&ones).unwrap();
        let y = form
            .candle(0.5, &generator_at(2, 2), 0)
            .unwrap()
            .forward_t(xv.as_tensor(), true)
            .unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        let dx = grads.get(xv.as_tensor()).unwrap();
        assert_eq!(
            bits_of(&values::<f32>(dx)),
            bits_of(&values::<f32>(&y)),
            "{form:?}"
        );
    }

    // A transposed (N, C, W, H) input: the logical (row-major) element order decides, and
    // the gradient flows back through the transpose.
    let base = CTensor::from_vec(
        test_data::<f32>(2 * 3 * 5 * 7, 5),
        (2, 3, 5, 7),
        &CDevice::Cpu,
    )
    .unwrap();
    for form in [Form::Dropout2d, Form::FeatureAlpha] {
        let bv = Var::from_tensor(&base).unwrap();
        let xt = bv.as_tensor().transpose(2, 3).unwrap();
        let w = CTensor::from_vec(test_data::<f32>(210, 8), (2, 3, 7, 5), &CDevice::Cpu).unwrap();
        let y = form
            .candle(0.5, &generator_at(9, 4), 0)
            .unwrap()
            .forward_t(&xt, true)
            .unwrap();
        let grads = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let db = grads.get(bv.as_tensor()).unwrap();

        let logical = Tensor::from_vec(values::<f32>(&xt), &[2, 3, 7, 5]).unwrap();
        let wt = Tensor::from_vec(values::<f32>(&w), &[2, 3, 7, 5]).unwrap();
        let (y_ref, dx_ref) = form
            .dropkit(0.5, &generator_at(9, 4), 0, true, &logical, &wt)
            .unwrap();
        assert_eq!(bits_of(&values::<f32>(&y)), bits_of(&y_ref), "{form:?}");
        let dx_ref = CTensor::from_vec(dx_ref, (2, 3, 7, 5), &CDevice::Cpu).unwrap();
        let dx_ref = dx_ref.transpose(2, 3).unwrap();
        assert_eq!(
            bits_of(&values::<f32>(db)),
            bits_of(&values::<f32>(&dx_ref)),
            "{form:?}"
        );
    }
}

#[test]
fn family_errors_not_panics() {
    for form in FORMS {
        // Bad p: refused at construction with dropkit's message.
        for p in [f64::NAN, -0.1, 1.5, f64::INFINITY] {
            let e = form
                .candle(p, &generator_at(0, 0), 0)
                .err()
                .expect("bad p refused");
            assert!(
                e.to_string().contains("invalid dropout probability"),
                "{form:?} {e}"
            );
        }
        // Wrong ranks: dropkit's own message, in training and in eval, and no offset taken.
        for rank in form.bad_ranks() {
            let shape = vec![2usize; rank];
            let gen = generator_at(0, 0);
            let layer = form.candle(0.5, &gen, 0).unwrap();
            let x = CTensor::ones(shape.as_slice(), CDType::F32, &CDevice::Cpu).unwrap();
            let t = Tensor::<f32>::ones(&shape, &dropkit::Device::Cpu).unwrap();
            let want = form
                .dropkit(0.5, &generator_at(0, 0), 0, true, &t, &t)
                .unwrap_err()
                .to_string();
            for train in [true, false] {
                let e = layer.forward_t(&x, train).unwrap_err().to_string();
                assert!(
                    e.starts_with("dropkit dropout: "),
                    "{form:?} rank {rank}: {e}"
                );
                assert!(e.contains(&want), "{form:?} rank {rank}: {e} lacks {want}");
            }
            assert_eq!(gen.offset(), 0, "{form:?}: a refused call takes no offset");
        }
        // Unsupported dtype and decision indices past 2^64: refused, no offset taken.
        let shape = &form.shapes()[1];
        let gen = generator_at(0, 0);
        let ints = CTensor::zeros(shape.as_slice(), CDType::U32, &CDevice::Cpu).unwrap();
        let e = form
            .candle(0.5, &gen, 0)
            .unwrap()
            .forward_t(&ints, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("dtype U32 is not supported"), "{form:?} {e}");
        let f = CTensor::ones(shape.as_slice(), CDType::F32, &CDevice::Cpu).unwrap();
        let e = form
            .candle(0.5, &gen, u64::MAX - 1)
            .unwrap()
            .forward_t(&f, true)
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("overflows the 64-bit decision index"),
            "{form:?} {e}"
        );
        assert_eq!(gen.offset(), 0, "{form:?}: a refused call takes no offset");
    }
}

// ---------------------------------------------------------------------------------------
// The fused bias + dropout + residual.

/// The candle fused layer on `device` over host data (x, bias, residual, w): the output
/// and the gradients of sum(out * w) for x, bias and residual, on the host.
fn candle_fused<T: Element + WithDType>(
    layer: &dk::BiasDropoutResidual,
    device: &CDevice,
    [x, b, r, w]: [&[T]; 4],
    shape: &[usize],
    train: bool,
) -> [Vec<T>; 4] {
    let h = *shape.last().unwrap();
    let c = |v: &[T], s: &[usize]| CTensor::from_vec(v.to_vec(), s, device).unwrap();
    let var = |v: &[T], s: &[usize]| Var::from_tensor(&c(v, s)).unwrap();
    let (xv, bv, rv) = (var(x, shape), var(b, &[h]), var(r, shape));
    let out = layer
        .forward_t(xv.as_tensor(), bv.as_tensor(), rv.as_tensor(), train)
        .unwrap();
    assert_eq!(out.dims(), shape);
    let grads = (&out * &c(w, shape))
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let host = |t: &CTensor| values::<T>(&t.to_device(&CDevice::Cpu).unwrap());
    let grad = |v: &Var| host(grads.get(v.as_tensor()).expect("a gradient"));
    [host(&out), grad(&xv), grad(&bv), grad(&rv)]
}

/// The fused layer on both sides: output and the three gradients of sum(out * w), bit for
/// bit, and the offsets taken.
fn check_fused<T: Element + WithDType>(
    shape: &[usize],
    p: f64,
    (seed, offset, ib): (u64, u64, u64),
    train: bool,
) {
    let n: usize = shape.iter().product();
    let h = *shape.last().unwrap();
    let (x, b, r, w) = (
        test_data::<T>(n, 11),
        test_data::<T>(h, 17),
        test_data::<T>(n, 23),
        test_data::<T>(n, 29),
    );
    let what = format!(
        "{:?} {shape:?} p={p} seed={seed} offset={offset} ib={ib} train={train}",
        <T as Element>::DTYPE
    );

    let gen_ref = generator_at(seed, offset);
    let mut own = dropkit::BiasDropoutResidual::new(p)
        .unwrap()
        .with_generator(Arc::clone(&gen_ref))
        .with_index_base(ib);
    own.set_training(train);
    let t = |v: &[T], s: &[usize]| Tensor::from_vec(v.to_vec(), s).unwrap();
    let (out_ref, state) = own
        .forward(&t(&x, shape), &t(&b, &[h]), &t(&r, shape))
        .unwrap();
    let g_ref = own.backward(&t(&w, shape), &state).unwrap();

    let gen = generator_at(seed, offset);
    let layer = dk::BiasDropoutResidual::new(p)
        .unwrap()
        .with_generator(Arc::clone(&gen))
        .with_index_base(ib);
    let [out, dx, db, dr] =
        candle_fused::<T>(&layer, &CDevice::Cpu, [&x, &b, &r, &w], shape, train);
    let reference = [&out_ref, &g_ref.x, &g_ref.bias, &g_ref.residual];
    for (name, (got, want)) in ["out", "dx", "dbias", "dresidual"]
        .iter()
        .zip([out, dx, db, dr].iter().zip(reference))
    {
        assert_eq!(
            bits_of(got),
            bits_of(&want.to_vec().unwrap()),
            "{name} {what}"
        );
    }
    let want = offset + u64::from(train);
    assert_eq!(
        (gen.offset(), gen_ref.offset()),
        (want, want),
        "offsets {what}"
    );
}

#[test]
fn fused_same_bits_as_dropkit_for_every_dtype() {
    for shape in [
        &[1usize][..],
        &[37],
        &[7, 1],
        &[3, 37],
        &[2, 5, 16],
        &[1000, 48],
    ] {
        for (p, at) in POSITIONS {
            for train in [true, false] {
                check_fused::<f32>(shape, p, at, train);
                check_fused::<f64>(shape, p, at, train);
                check_fused::<f16>(shape, p, at, train);
                check_fused::<bf16>(shape, p, at, train);
            }
        }
    }
    for p in [0.0, 1.0] {
        check_fused::<f32>(&[9, 40], p, (5, 5, 0), true);
        check_fused::<bf16>(&[9, 40], p, (5, 5, 0), true);
    }
}

#[test]
fn fused_values_and_functional_form() {
    // Real values: out = residual + (x + bias) * s where kept, residual where dropped,
    // against the spec's mask; and the stateless form matches dropkit's.
    let (rows, h, p) = (12usize, 10usize, 0.4);
    let x = test_data::<f64>(rows * h, 1);
    let b = test_data::<f64>(h, 2);
    let r = test_data::<f64>(rows * h, 3);
    let pos = StreamPos::new(6, 60).with_index_base(3);
    let xc = CTensor::from_vec(x.clone(), (rows, h), &CDevice::Cpu).unwrap();
    let bc = CTensor::from_vec(b.clone(), h, &CDevice::Cpu).unwrap();
    let rc = CTensor::from_vec(r.clone(), (rows, h), &CDevice::Cpu).unwrap();
    let out = values::<f64>(&dk::bias_dropout_residual(&xc, &bc, &rc, p, true, pos).unwrap());
    let prob = dropkit::mask::Probability::new(p).unwrap();
    let bits = dropkit::mask::keep_bits_from(6, 60, 3, &prob, rows * h).unwrap();
    // 1/q for the q that the 32-bit threshold realises (SPEC section 2), not 1/(1 - p).
    let s = prob.scale_f64();
    let mut dropped = 0;
    for i in 0..rows * h {
        let kept = bits[i / 32] >> (i % 32) & 1 == 1;
        let z = x[i] + b[(3 + i) % h];
        let want = r[i] + if kept { z * s } else { 0.0 };
        assert_eq!(out[i].to_bits(), want.to_bits(), "i={i}");
        dropped += usize::from(!kept);
    }
    assert!(dropped > 0 && dropped < rows * h);

    let t = |v: &[f64], s: &[usize]| Tensor::from_vec(v.to_vec(), s).unwrap();
    let (want, _) = functional::bias_dropout_residual(
        ResidualInputs {
            x: &t(&x, &[rows, h]),
            bias: &t(&b, &[h]),
            residual: &t(&r, &[rows, h]),
        },
        p,
        true,
        pos,
        MaskMode::Regenerate,
    )
    .unwrap();
    assert_eq!(bits_of(&out), bits_of(&want.to_vec().unwrap()));
    // Eval: residual + (x + bias), nothing dropped (the shard's columns still start at
    // index_base mod H, as in dropkit's functional form).
    let eval = values::<f64>(&dk::bias_dropout_residual(&xc, &bc, &rc, p, false, pos).unwrap());
    for i in 0..rows * h {
        assert_eq!(
            eval[i].to_bits(),
            (r[i] + (x[i] + b[(3 + i) % h])).to_bits()
        );
    }
}

#[test]
fn fused_strided_inputs_and_broadcast_gradient() {
    // x transposed, bias narrowed out of a longer vector: same as their contiguous copies.
    let xbase = CTensor::from_vec(test_data::<f32>(16 * 9, 1), (16, 9), &CDevice::Cpu).unwrap();
    let bbase = CTensor::from_vec(test_data::<f32>(20, 2), 20, &CDevice::Cpu).unwrap();
    let r = CTensor::from_vec(test_data::<f32>(9 * 16, 3), (9, 16), &CDevice::Cpu).unwrap();
    let pos = StreamPos::new(1, 2);
    let xv = Var::from_tensor(&xbase).unwrap();
    let bv = Var::from_tensor(&bbase).unwrap();
    let (x, b) = (
        xv.as_tensor().t().unwrap(),
        bv.as_tensor().narrow(0, 4, 16).unwrap(),
    );
    let out = dk::bias_dropout_residual(&x, &b, &r, 0.5, true, pos).unwrap();
    let want = dk::bias_dropout_residual(
        &x.contiguous().unwrap().detach(),
        &b.contiguous().unwrap().detach(),
        &r,
        0.5,
        true,
        pos,
    )
    .unwrap();
    assert_eq!(
        bits_of(&values::<f32>(&out)),
        bits_of(&values::<f32>(&want))
    );
    // The gradient of a plain sum (a stride-0 gradient) reaches the views' bases: dx is the
    // mask times s, transposed back; dbias lands in the narrowed columns only.
    let grads = out.sum_all().unwrap().backward().unwrap();
    let dx = grads.get(xv.as_tensor()).unwrap();
    let ones = CTensor::ones((9, 16), CDType::F32, &CDevice::Cpu).unwrap();
    let mask = dk::dropout(&ones, 0.5, true, pos).unwrap();
    assert_eq!(
        bits_of(&values::<f32>(dx)),
        bits_of(&values::<f32>(&mask.t().unwrap()))
    );
    let db = values::<f32>(grads.get(bv.as_tensor()).unwrap());
    let col = values::<f32>(&mask.sum(0).unwrap());
    assert!(db[..4].iter().chain(&db[20..]).all(|&v| v == 0.0));
    assert_eq!(
        &db[4..20],
        &col[..],
        "column sums of the mask times s (exact here)"
    );
}

#[test]
fn fused_errors_not_panics() {
    let gen = generator_at(0, 0);
    let layer = dk::BiasDropoutResidual::new(0.5)
        .unwrap()
        .with_generator(Arc::clone(&gen));
    let f = |s: &[usize]| CTensor::ones(s, CDType::F32, &CDevice::Cpu).unwrap();
    let d = |s: &[usize]| Tensor::<f32>::ones(s, &dropkit::Device::Cpu).unwrap();
    // Shapes: dropkit's own messages, in training and eval.
    for (xs, bs, rs) in [
        (&[4usize, 8][..], &[8usize][..], &[4usize, 7][..]),
        (&[4, 8], &[7], &[4, 8]),
        (&[4, 8], &[4, 8], &[4, 8]),
        (&[], &[1], &[]),
    ] {
        let want = functional::bias_dropout_residual(
            ResidualInputs {
                x: &d(xs),
                bias: &d(bs),
                residual: &d(rs),
            },
            0.5,
            true,
            StreamPos::new(0, 0),
            MaskMode::Bits,
        )
        .unwrap_err()
        .to_string();
        for train in [true, false] {
            let e = layer
                .forward_t(&f(xs), &f(bs), &f(rs), train)
                .unwrap_err()
                .to_string();
            assert!(e.contains(&want), "{xs:?} {bs:?} {rs:?}: {e} lacks {want}");
        }
    }
    // Dtypes: all three must be the same float type.
    let half = CTensor::ones(8, CDType::F16, &CDevice::Cpu).unwrap();
    let e = layer
        .forward_t(&f(&[4, 8]), &half, &f(&[4, 8]), true)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("dtype mismatch in bias_dropout_residual"),
        "{e}"
    );
    let ints = CTensor::zeros((4, 8), CDType::U32, &CDevice::Cpu).unwrap();
    let e = layer
        .forward_t(&ints, &f(&[8]), &f(&[4, 8]), true)
        .unwrap_err();
    assert!(e.to_string().contains("dtype U32 is not supported"), "{e}");
    // The index range, p.
    let edge = dk::BiasDropoutResidual::new(0.5)
        .unwrap()
        .with_generator(Arc::clone(&gen))
        .with_index_base(u64::MAX - 1);
    assert!(edge
        .forward_t(&f(&[4, 8]), &f(&[8]), &f(&[4, 8]), true)
        .is_err());
    assert_eq!(gen.offset(), 0, "refused calls take no offset");
    for p in [f64::NAN, -0.1, 1.5] {
        let e = dk::BiasDropoutResidual::new(p).unwrap_err().to_string();
        assert!(e.contains("invalid dropout probability"), "{e}");
        let x = f(&[4, 8]);
        let e = dk::bias_dropout_residual(&x, &f(&[8]), &x, p, false, StreamPos::new(0, 0));
        assert!(e.is_err());
    }
    // A good call after all that takes exactly one offset.
    layer
        .forward_t(&f(&[4, 8]), &f(&[8]), &f(&[4, 8]), true)
        .unwrap();
    assert_eq!(gen.offset(), 1);
}

/// candle's CUDA device 0, or `None` after saying why the test is skipped.
#[cfg(feature = "candle-cuda")]
fn candle_cuda_or_skip(test: &str) -> Option<CDevice> {
    match CDevice::new_cuda(0) {
        Ok(d) if dropkit::cuda::kernels_built() => Some(d),
        other => {
            let why = match other {
                Ok(_) => "dropkit was built without CUDA kernels (no nvcc)".to_string(),
                Err(e) => e.to_string(),
            };
            if std::env::var("DROPKIT_REQUIRE_CUDA").is_ok_and(|v| v == "1") {
                panic!("{test}: DROPKIT_REQUIRE_CUDA=1 but no usable GPU: {why}");
            }
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "skipped {test}: no usable GPU ({why})");
            None
        }
    }
}

#[cfg(feature = "candle-cuda")]
fn check_cuda<T: Element + WithDType>(dev: &CDevice, shape: &[usize], p: f64, pos: StreamPos) {
    let n: usize = shape.iter().product();
    let x = CTensor::from_vec(test_data::<T>(n, 3), shape, &CDevice::Cpu).unwrap();
    let w = CTensor::from_vec(test_data::<T>(n, 4), shape, &CDevice::Cpu).unwrap();
    let mut out = Vec::new();
    for d in [&CDevice::Cpu, dev] {
        let xv = Var::from_tensor(&x.to_device(d).unwrap()).unwrap();
        // A transpose on the way in exercises candle's copy before the op on both devices.
        let y = dk::dropout(&xv.as_tensor().t().unwrap(), p, true, pos).unwrap();
        let loss = (&y * &w.to_device(d).unwrap().t().unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let dx = loss
            .backward()
            .unwrap()
            .get(xv.as_tensor())
            .unwrap()
            .clone();
        let host = |t: &CTensor| bits_of(&values::<T>(&t.to_device(&CDevice::Cpu).unwrap()));
        out.push((host(&y), host(&dx)));
    }
    assert_eq!(
        out[0],
        out[1],
        "{:?} {shape:?} p={p}",
        <T as Element>::DTYPE
    );
}

#[cfg(feature = "candle-cuda")]
#[test]
fn cuda_matches_cpu() {
    let Some(dev) = candle_cuda_or_skip("cuda_matches_cpu") else {
        return;
    };
    for shape in [&[7usize, 5][..], &[300, 1001]] {
        let pos = StreamPos::new(12, 34).with_index_base(3);
        check_cuda::<f32>(&dev, shape, 0.2, pos);
        check_cuda::<f64>(&dev, shape, 0.2, pos);
        check_cuda::<f16>(&dev, shape, 0.7, pos);
        check_cuda::<bf16>(&dev, shape, 0.7, pos);
    }
}

#[cfg(feature = "candle-cuda")]
fn check_cuda_form<T: Element + WithDType>(dev: &CDevice, form: Form, shape: &[usize], p: f64) {
    let n: usize = shape.iter().product();
    let x = CTensor::from_vec(test_data::<T>(n, 3), shape, &CDevice::Cpu).unwrap();
    let w = CTensor::from_vec(test_data::<T>(n, 4), shape, &CDevice::Cpu).unwrap();
    let mut out = Vec::new();
    for d in [&CDevice::Cpu, dev] {
        let layer = form.candle(p, &generator_at(12, 34), 3).unwrap();
        let (x, w) = (x.to_device(d).unwrap(), w.to_device(d).unwrap());
        let (y, dx) = candle_forward_grad::<T>(layer.as_ref(), &x, &w, true);
        out.push((bits_of(&y), bits_of(&dx)));
    }
    let what = format!("{form:?} {:?} {shape:?} p={p}", <T as Element>::DTYPE);
    assert_eq!(out[0], out[1], "{what}");
}

#[cfg(feature = "candle-cuda")]
fn check_cuda_fused<T: Element + WithDType>(dev: &CDevice, shape: &[usize], p: f64) {
    let n: usize = shape.iter().product();
    let h = *shape.last().unwrap();
    let data = [
        test_data::<T>(n, 11),
        test_data::<T>(h, 17),
        test_data::<T>(n, 23),
        test_data::<T>(n, 29),
    ];
    let args = [&data[0][..], &data[1], &data[2], &data[3]];
    for train in [true, false] {
        let run = |d: &CDevice| {
            let layer = dk::BiasDropoutResidual::new(p)
                .unwrap()
                .with_generator(generator_at(5, 6))
                .with_index_base(7);
            candle_fused::<T>(&layer, d, args, shape, train).map(|v| bits_of(&v))
        };
        let what = format!("{:?} {shape:?} p={p} train={train}", <T as Element>::DTYPE);
        assert_eq!(run(&CDevice::Cpu), run(dev), "{what}");
    }
}

#[cfg(feature = "candle-cuda")]
#[test]
fn cuda_family_matches_cpu() {
    let Some(dev) = candle_cuda_or_skip("cuda_family_matches_cpu") else {
        return;
    };
    for form in FORMS {
        for shape in form.shapes() {
            check_cuda_form::<f32>(&dev, form, &shape, 0.2);
            check_cuda_form::<f64>(&dev, form, &shape, 0.2);
            check_cuda_form::<f16>(&dev, form, &shape, 0.7);
            check_cuda_form::<bf16>(&dev, form, &shape, 0.7);
        }
    }
    for shape in [&[37usize][..], &[3, 37], &[2, 5, 16], &[1000, 48]] {
        check_cuda_fused::<f32>(&dev, shape, 0.2);
        check_cuda_fused::<f64>(&dev, shape, 0.2);
        check_cuda_fused::<f16>(&dev, shape, 0.7);
        check_cuda_fused::<bf16>(&dev, shape, 0.7);
    }
}
