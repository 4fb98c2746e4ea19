//! `dropkit::candle`: candle tensors get the same bits as dropkit's own tensors (forward
//! and gradient through candle's autograd), for every float dtype, for non-contiguous
//! inputs, and through the `ModuleT` layer's offsets; invalid input is an error.

mod common;

use candle_core::{DType as CDType, Device as CDevice, Tensor as CTensor, Var, WithDType};
use candle_nn::ModuleT;
use common::{bits_of, test_data};
use dropkit::functional::{self, MaskMode, StreamPos};
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
