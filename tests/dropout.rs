//! The Dropout layer against the spec, each behaviour written once and run on every device
//! (`test_device!`: `<name>_cpu`, and `<name>_cuda`, which skips with a message without a
//! GPU and fails then under `DROPKIT_REQUIRE_CUDA=1`): statistics, bit-exact edge cases,
//! saved forms, offsets and every error path. Then CUDA against the CPU reference, bit for
//! bit: outputs, packed bits and gradients for every dtype, probability edge, awkward
//! length, unaligned view and both saved forms. Thread-count independence is CPU-only.

mod common;

use common::{bits_of, cuda_or_skip, tensor_at, tensor_on, test_data, test_device};
use dropkit::functional::{dropout, dropout_backward};
use dropkit::mask::{keep_bits, Probability};
use dropkit::{Device, Dropout, Element, Error, Generator, MaskMode, StreamPos, Tensor};
use half::{bf16, f16};
use std::sync::Arc;

fn ones<T: Element>(dev: &Device, n: usize) -> Tensor<T> {
    Tensor::ones(&[n], dev).unwrap()
}

fn seeded(p: f64, seed: u64) -> Dropout {
    Dropout::new(p)
        .unwrap()
        .with_generator(Arc::new(Generator::new(seed)))
}

/// Values with varied exponents and signs, no NaN.
fn ramp(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as f32) * 0.37 - 11.0) * (1.0 + (i % 7) as f32 * 1e-3))
        .collect()
}

/// Raw bits of every element, NaN payloads included (the data here has no NaN; the CUDA
/// parity tests below use `common::bits_of`, which makes every NaN one value).
fn raw_bits<T: Element>(v: &[T]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits_u64()).collect()
}

fn sigma_check(observed: f64, expected: f64, sd: f64, what: &str) {
    assert!(
        (observed - expected).abs() <= 6.0 * sd,
        "{what}: observed {observed}, expected {expected} +- 6 * {sd}"
    );
}

fn statistics_at_a_million_elements(dev: &Device) {
    let n = 1_000_000usize;
    for p in [0.1, 0.5, 0.9] {
        let q = 1.0 - p;
        let x = ones::<f32>(dev, n);
        let (y, _) = dropout(&x, p, true, StreamPos::new(3, 0), MaskMode::Bits).unwrap();
        let y = y.to_vec().unwrap();
        let dropped = y.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
        sigma_check(dropped, p, (p * q / n as f64).sqrt(), "fraction dropped");
        // Mean of y for x = 1: each element is 1/q with prob q, so sd = sqrt(p/q / n).
        let mean = y.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
        sigma_check(mean, 1.0, (p / q / n as f64).sqrt(), "mean of output");
        // Two offsets are independent: they agree on p^2 + (1-p)^2 of the elements.
        let a = keep_bits(3, 0, p, n).unwrap();
        let b = keep_bits(3, 1, p, n).unwrap();
        let disagree: u32 = a.iter().zip(&b).map(|(x, y)| (x ^ y).count_ones()).sum();
        let agree = 1.0 - f64::from(disagree) / n as f64;
        let pa = p * p + q * q;
        sigma_check(agree, pa, (pa * (1.0 - pa) / n as f64).sqrt(), "agreement");
    }
}
test_device!(
    statistics_at_a_million_elements,
    statistics_at_a_million_elements_cpu,
    statistics_at_a_million_elements_cuda
);

fn eval_and_p_zero_are_identity(dev: &Device) {
    let data = ramp(1000);
    let x = tensor_on(dev, data.clone(), &[10, 100]);
    let mut layer = seeded(0.3, 1);
    layer.eval();
    let (y, state) = layer.forward(&x).unwrap();
    assert_eq!(raw_bits(&y.to_vec().unwrap()), raw_bits(&data));
    assert_eq!(state.mask_mode(), None);
    let (y0, _) = seeded(0.0, 1).forward(&x).unwrap();
    assert_eq!(raw_bits(&y0.to_vec().unwrap()), raw_bits(&data));
}
test_device!(
    eval_and_p_zero_are_identity,
    eval_and_p_zero_are_identity_cpu,
    eval_and_p_zero_are_identity_cuda
);

fn p_one_gives_positive_zeros_and_zero_gradient(dev: &Device) {
    let mut data = ramp(100);
    data[3] = f32::NAN;
    data[4] = f32::NEG_INFINITY;
    data[5] = -0.0;
    let x = tensor_on(dev, data, &[100]);
    for mode in [MaskMode::Bits, MaskMode::Regenerate] {
        let layer = seeded(1.0, 2).with_mask_mode(mode);
        let (y, state) = layer.forward(&x).unwrap();
        assert!(y.to_vec().unwrap().iter().all(|v| v.to_bits() == 0));
        let g = tensor_on(dev, vec![f32::NAN; 100], &[100]);
        let dx = layer.backward(&g, &state).unwrap();
        assert!(dx.to_vec().unwrap().iter().all(|v| v.to_bits() == 0));
    }
}
test_device!(
    p_one_gives_positive_zeros_and_zero_gradient,
    p_one_gives_positive_zeros_and_zero_gradient_cpu,
    p_one_gives_positive_zeros_and_zero_gradient_cuda
);

fn nan_and_inf_are_zeroed_when_dropped_and_kept_otherwise(dev: &Device) {
    let n = 4096;
    let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
    let data: Vec<f32> = (0..n).map(|i| specials[i % 3]).collect();
    let x = tensor_on(dev, data.clone(), &[n]);
    let (y, state) = dropout(&x, 0.5, true, StreamPos::new(11, 4), MaskMode::Bits).unwrap();
    let bits = state.keep_bits().unwrap().unwrap();
    let y = y.to_vec().unwrap();
    let mut kept = 0;
    for i in 0..n {
        if bits[i / 32] >> (i % 32) & 1 == 1 {
            kept += 1;
            assert_eq!(y[i].is_nan(), data[i].is_nan(), "element {i}");
            if !data[i].is_nan() {
                assert_eq!(y[i], data[i], "inf * 2 stays inf at {i}");
            }
        } else {
            assert_eq!(y[i].to_bits(), 0, "dropped element {i} must be +0");
        }
    }
    assert!(kept > 0 && kept < n);
}
test_device!(
    nan_and_inf_are_zeroed_when_dropped_and_kept_otherwise,
    nan_and_inf_are_zeroed_when_dropped_and_kept_otherwise_cpu,
    nan_and_inf_are_zeroed_when_dropped_and_kept_otherwise_cuda
);

/// Forward and backward of any dtype equal the spec formula element by element.
fn check_formula<T: Element>(dev: &Device, n: usize, p: f64) {
    let data: Vec<T> = ramp(n)
        .into_iter()
        .map(|v| T::from_f64(f64::from(v)))
        .collect();
    let grad: Vec<T> = ramp(n)
        .into_iter()
        .rev()
        .map(|v| T::from_f64(f64::from(v) * 0.5))
        .collect();
    let prob = Probability::new(p).unwrap();
    let s = dropkit::element::to_compute_f64::<T>(prob.scale_f64());
    let (seed, offset) = (77, 5);
    let mask = keep_bits(seed, offset, p, n).unwrap();
    let x = tensor_on(dev, data.clone(), &[n]);
    let g = tensor_on(dev, grad.clone(), &[n]);
    let mut dxs = Vec::new();
    for mode in [MaskMode::Bits, MaskMode::Regenerate] {
        let (y, state) = dropout(&x, p, true, StreamPos::new(seed, offset), mode).unwrap();
        assert_eq!(state.keep_bits().unwrap().unwrap(), mask);
        let y = y.to_vec().unwrap();
        let dx = dropout_backward(&g, &state).unwrap().to_vec().unwrap();
        for i in 0..n {
            let kept = mask[i / 32] >> (i % 32) & 1 == 1;
            use dropkit::element::ComputeFloat;
            let want_y = if kept {
                T::from_compute(data[i].to_compute().mul(s))
            } else {
                T::ZERO
            };
            let want_dx = if kept {
                T::from_compute(grad[i].to_compute().mul(s))
            } else {
                T::ZERO
            };
            assert_eq!(
                y[i].to_bits_u64(),
                want_y.to_bits_u64(),
                "{:?} y[{i}]",
                T::DTYPE
            );
            assert_eq!(
                dx[i].to_bits_u64(),
                want_dx.to_bits_u64(),
                "{:?} dx[{i}]",
                T::DTYPE
            );
        }
        dxs.push(raw_bits(&dx));
    }
    assert_eq!(dxs[0], dxs[1], "bits and regenerate give the same gradient");
}

fn formula_holds_for_every_dtype(dev: &Device) {
    for (n, p) in [(1, 0.5), (33, 0.1), (1000, 0.9), (70_000, 0.3)] {
        check_formula::<f32>(dev, n, p);
        check_formula::<f64>(dev, n, p);
        check_formula::<f16>(dev, n, p);
        check_formula::<bf16>(dev, n, p);
    }
}
test_device!(
    formula_holds_for_every_dtype,
    formula_holds_for_every_dtype_cpu,
    formula_holds_for_every_dtype_cuda
);

fn half_types_round_once_from_f32(dev: &Device) {
    let p = 0.3;
    let s = Probability::new(p).unwrap().scale_f32();
    // Inputs where one rounding of x * s (f32) differs from computing in the half type
    // (s rounded to half first, then the product rounded again).
    let distinguishing = |to: fn(f32) -> f32| {
        (0x3c00u16..0x4000)
            .map(f32::from)
            .map(|k| to(1.0 + (k - 15360.0) / 1024.0))
            .find(|&x| to(x * s) != to(x * to(to(s))))
    };
    let check = |x: f32, round: fn(f32) -> f32, y: Vec<u64>, bits: Vec<u32>| {
        let once = round(x * s);
        for (i, v) in y.into_iter().enumerate() {
            let kept = bits[i / 32] >> (i % 32) & 1 == 1;
            assert_eq!(
                v,
                if kept { once.to_bits() as u64 } else { 0 },
                "element {i}"
            );
        }
    };
    let f16_round: fn(f32) -> f32 = |v| f16::from_f32(v).to_f32();
    let bf16_round: fn(f32) -> f32 = |v| bf16::from_f32(v).to_f32();
    let xh = distinguishing(f16_round).expect("an f16 input that shows double rounding");
    let t = tensor_on(dev, vec![f16::from_f32(xh); 64], &[64]);
    let (y, st) = dropout(&t, p, true, StreamPos::new(1, 1), MaskMode::Bits).unwrap();
    let y: Vec<u64> = y
        .to_vec()
        .unwrap()
        .iter()
        .map(|v| v.to_f32().to_bits() as u64)
        .collect();
    check(xh, f16_round, y, st.keep_bits().unwrap().unwrap());
    let xb = distinguishing(bf16_round).expect("a bf16 input that shows double rounding");
    let t = tensor_on(dev, vec![bf16::from_f32(xb); 64], &[64]);
    let (y, st) = dropout(&t, p, true, StreamPos::new(1, 1), MaskMode::Bits).unwrap();
    let y: Vec<u64> = y
        .to_vec()
        .unwrap()
        .iter()
        .map(|v| v.to_f32().to_bits() as u64)
        .collect();
    check(xb, bf16_round, y, st.keep_bits().unwrap().unwrap());
}
test_device!(
    half_types_round_once_from_f32,
    half_types_round_once_from_f32_cpu,
    half_types_round_once_from_f32_cuda
);

// CPU-only: the thread count is that of the rayon pool the CPU backend runs on.
#[test]
fn thread_count_does_not_change_bits() {
    let n = 300_007;
    let x = Tensor::from_vec(ramp(n), &[n]).unwrap();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let (y, st) = dropout(&x, 0.4, true, StreamPos::new(9, 9), MaskMode::Bits).unwrap();
            (
                raw_bits(&y.to_vec().unwrap()),
                st.keep_bits().unwrap().unwrap(),
            )
        })
    };
    let one = run(1);
    assert_eq!(run(2), one);
    assert_eq!(run(7), one);
}

fn offsets_advance_once_per_training_call(dev: &Device) {
    let gen = Arc::new(Generator::new(123));
    let mut layer = Dropout::new(0.5).unwrap().with_generator(Arc::clone(&gen));
    let x = ones::<f32>(dev, 64);
    let (y0, _) = layer.forward(&x).unwrap();
    assert_eq!(gen.offset(), 1);
    let empty = tensor_on::<f32>(dev, vec![], &[0]);
    layer.forward(&empty).unwrap();
    assert_eq!(gen.offset(), 2, "empty tensors still advance the offset");
    Dropout::new(0.0)
        .unwrap()
        .with_generator(Arc::clone(&gen))
        .forward(&x)
        .unwrap();
    Dropout::new(1.0)
        .unwrap()
        .with_generator(Arc::clone(&gen))
        .forward(&x)
        .unwrap();
    assert_eq!(gen.offset(), 4, "p = 0 and p = 1 advance too");
    layer.eval();
    layer.forward(&x).unwrap();
    assert_eq!(gen.offset(), 4, "eval advances nothing");
    layer.train();
    // Replaying offset 0 reproduces the first call.
    gen.set_offset(0);
    let (again, _) = layer.forward(&x).unwrap();
    assert_eq!(again.to_vec().unwrap(), y0.to_vec().unwrap());
    // The default generator follows manual_seed (process-wide: the other device's run of
    // this test must not reseed it in between).
    let _default = common::default_generator_lock();
    dropkit::manual_seed(99);
    let (a, _) = Dropout::new(0.5).unwrap().forward(&x).unwrap();
    assert_eq!(dropkit::default_generator().offset(), 1);
    let (want, _) = dropout(&x, 0.5, true, StreamPos::new(99, 0), MaskMode::Bits).unwrap();
    assert_eq!(a.to_vec().unwrap(), want.to_vec().unwrap());
}
test_device!(
    offsets_advance_once_per_training_call,
    offsets_advance_once_per_training_call_cpu,
    offsets_advance_once_per_training_call_cuda
);

fn in_place_forward_matches_out_of_place(dev: &Device) {
    let n = 40_000;
    let x = tensor_on(dev, ramp(n), &[n]);
    let (y, st) = seeded(0.25, 5).forward(&x).unwrap();
    let mut z = x.try_clone().unwrap();
    let st2 = seeded(0.25, 5).forward_in_place(&mut z).unwrap();
    assert_eq!(
        raw_bits(&z.to_vec().unwrap()),
        raw_bits(&y.to_vec().unwrap())
    );
    assert_eq!(st.keep_bits().unwrap(), st2.keep_bits().unwrap());
}
test_device!(
    in_place_forward_matches_out_of_place,
    in_place_forward_matches_out_of_place_cpu,
    in_place_forward_matches_out_of_place_cuda
);

fn saved_state_sizes(dev: &Device) {
    let x = ones::<f32>(dev, 1000);
    let (_, bits) = seeded(0.5, 1).forward(&x).unwrap();
    assert_eq!(bits.saved_bytes(), 4 * 32);
    let (_, regen) = seeded(0.5, 1)
        .with_mask_mode(MaskMode::Regenerate)
        .forward(&x)
        .unwrap();
    assert_eq!(regen.saved_bytes(), 0);
}
test_device!(
    saved_state_sizes,
    saved_state_sizes_cpu,
    saved_state_sizes_cuda
);

fn errors_not_panics(dev: &Device) {
    for p in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.1, 1.5] {
        assert!(matches!(Dropout::new(p), Err(Error::InvalidProbability(_))));
        let x = ones::<f32>(dev, 4);
        assert!(dropout(&x, p, true, StreamPos::new(0, 0), MaskMode::Bits).is_err());
        assert!(dropkit::mask::keep_bits(0, 0, p, 4).is_err());
    }
    let layer = seeded(0.5, 1);
    let (_, state) = layer.forward(&ones::<f32>(dev, 8)).unwrap();
    // Gradient of another shape.
    let err = layer.backward(&ones::<f32>(dev, 9), &state).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    // Same element count, other shape.
    let g = Tensor::<f32>::ones(&[2, 4], dev).unwrap();
    assert!(matches!(
        layer.backward(&g, &state),
        Err(Error::ShapeMismatch { .. })
    ));
    // State of an f32 forward used for an f64 gradient.
    let err = layer.backward(&ones::<f64>(dev, 8), &state).unwrap_err();
    assert!(matches!(err, Error::DTypeMismatch { .. }), "{err}");
    // Index base that would wrap the 64-bit decision index.
    let x = ones::<f32>(dev, 8);
    let pos = StreamPos::new(0, 0).with_index_base(u64::MAX - 2);
    assert!(matches!(
        dropout(&x, 0.5, true, pos, MaskMode::Bits),
        Err(Error::OutOfRange(_))
    ));
    // Messages say what to do.
    assert!(Error::InvalidProbability(1.5)
        .to_string()
        .contains("[0, 1]"));
}
test_device!(
    errors_not_panics,
    errors_not_panics_cpu,
    errors_not_panics_cuda
);

// CUDA against the CPU reference, bit for bit (CUDA-only: the CPU is the reference).

const PS: [f64; 6] = [0.0, 1e-9, 0.1, 0.5, 0.9, 1.0];
const NS: [usize; 9] = [1, 3, 4, 5, 31, 32, 33, 1023, (1 << 20) + 7];

fn cuda_view<T: Element>(dev: &Device, data: &[T], start: usize) -> Tensor<T> {
    tensor_at(dev, data, start, &[data.len()])
}

fn parity<T: Element>(dev: &Device, n: usize, p: f64, pos: StreamPos, start: usize) {
    let x = test_data::<T>(n, pos.seed ^ 1);
    let g = test_data::<T>(n, pos.seed ^ 2);
    let x_cpu = Tensor::from_vec(x.clone(), &[n]).unwrap();
    let g_cpu = Tensor::from_vec(g.clone(), &[n]).unwrap();
    let x_gpu = cuda_view(dev, &x, start);
    let g_gpu = cuda_view(dev, &g, start);
    let what = format!("{} n={n} p={p} {pos:?} start={start}", T::DTYPE);
    for mode in [MaskMode::Bits, MaskMode::Regenerate] {
        let (y_c, st_c) = dropout(&x_cpu, p, true, pos, mode).unwrap();
        let (y_g, st_g) = dropout(&x_gpu, p, true, pos, mode).unwrap();
        assert_eq!(
            bits_of(&y_g.to_vec().unwrap()),
            bits_of(&y_c.to_vec().unwrap()),
            "forward {what} {mode:?}"
        );
        assert_eq!(
            st_g.keep_bits().unwrap(),
            st_c.keep_bits().unwrap(),
            "bits {what}"
        );
        let dx_c = dropout_backward(&g_cpu, &st_c).unwrap();
        let dx_g = dropout_backward(&g_gpu, &st_g).unwrap();
        assert_eq!(
            bits_of(&dx_g.to_vec().unwrap()),
            bits_of(&dx_c.to_vec().unwrap()),
            "backward {what} {mode:?}"
        );
    }
    // In place over an unaligned view: same bits as out of place.
    let mut inplace = cuda_view(dev, &x, start);
    let layer = dropkit::Dropout::new(p)
        .unwrap()
        .with_generator(std::sync::Arc::new(dropkit::Generator::new(pos.seed)));
    dropkit::default_generator();
    let (y_ref, _) = dropout(&x_cpu, p, true, StreamPos::new(pos.seed, 0), MaskMode::Bits).unwrap();
    layer.forward_in_place(&mut inplace).unwrap();
    assert_eq!(
        bits_of(&inplace.to_vec().unwrap()),
        bits_of(&y_ref.to_vec().unwrap()),
        "in place {what}"
    );
}

fn parity_all<T: Element>(dev: &Device) {
    for &n in &NS {
        for &p in &PS {
            // Big sizes once per p; small sizes at several positions and alignments.
            parity::<T>(dev, n, p, StreamPos::new(42, 3), 0);
            if n < 5000 {
                parity::<T>(
                    dev,
                    n,
                    p,
                    StreamPos::new(u64::MAX, 1 << 40).with_index_base(5),
                    1,
                );
                parity::<T>(dev, n, p, StreamPos::new(7, 0).with_index_base(64), 3);
            }
        }
    }
}

#[test]
fn cuda_matches_cpu_f32() {
    if let Some(dev) = cuda_or_skip("cuda_matches_cpu_f32") {
        parity_all::<f32>(&dev);
    }
}

#[test]
fn cuda_matches_cpu_f64() {
    if let Some(dev) = cuda_or_skip("cuda_matches_cpu_f64") {
        parity_all::<f64>(&dev);
    }
}

#[test]
fn cuda_matches_cpu_f16() {
    if let Some(dev) = cuda_or_skip("cuda_matches_cpu_f16") {
        parity_all::<f16>(&dev);
    }
}

#[test]
fn cuda_matches_cpu_bf16() {
    if let Some(dev) = cuda_or_skip("cuda_matches_cpu_bf16") {
        parity_all::<bf16>(&dev);
    }
}

// CUDA-only: a device mismatch needs a second device.
#[test]
fn cuda_errors_not_panics() {
    // Device ordinals past the last device are errors whether or not CUDA exists.
    assert!(Device::cuda(1_000_000).is_err());
    let Some(dev) = cuda_or_skip("cuda_errors_not_panics") else {
        return;
    };
    let x = Tensor::<f32>::ones(&[64], &dev).unwrap();
    let (_, state) = dropout(&x, 0.5, true, StreamPos::new(1, 1), MaskMode::Bits).unwrap();
    // A CPU gradient for a CUDA forward.
    let g = Tensor::<f32>::ones(&[64], &Device::Cpu).unwrap();
    assert!(matches!(
        dropout_backward(&g, &state),
        Err(Error::DeviceMismatch { .. })
    ));
}
