//! CUDA against the CPU reference, bit for bit: outputs, packed bits and gradients for every
//! dtype, probability edge, awkward length, unaligned view and both saved forms. Skips (with
//! a message) without a GPU; fails then under `DROPKIT_REQUIRE_CUDA=1`.
#![cfg(feature = "cuda")]

mod common;

use common::{bits_of, cuda_or_skip, test_data};
use dropkit::functional::{dropout, dropout_backward};
use dropkit::{Device, Element, Error, MaskMode, StreamPos, Tensor};
use half::{bf16, f16};

const PS: [f64; 6] = [0.0, 1e-9, 0.1, 0.5, 0.9, 1.0];
const NS: [usize; 9] = [1, 3, 4, 5, 31, 32, 33, 1023, (1 << 20) + 7];

fn cuda_view<T: Element>(dev: &Device, data: &[T], start: usize) -> Tensor<T> {
    common::cuda_tensor(dev, data, start, &[data.len()])
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
