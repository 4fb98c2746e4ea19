//! Shared test helpers: finding a GPU (or saying why the test skipped) and bit views.
#![allow(dead_code)]

use dropkit::{Device, Element};

/// CUDA device 0, or `None` after printing why the test is skipped. With
/// `DROPKIT_REQUIRE_CUDA=1` a missing GPU fails the test instead.
pub fn cuda_or_skip(test: &str) -> Option<Device> {
    match cuda_with_kernels() {
        Ok(d) => Some(d),
        Err(why) => {
            if std::env::var("DROPKIT_REQUIRE_CUDA").is_ok_and(|v| v == "1") {
                panic!("{test}: DROPKIT_REQUIRE_CUDA=1 but no usable GPU: {why}");
            }
            // Straight to the stderr handle: the test harness captures eprintln! output of
            // passing tests, and a skip must be visible in the log.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "skipped {test}: no usable GPU ({why})");
            None
        }
    }
}

/// CUDA device 0 if it exists and dropkit's kernels load on it.
#[cfg(feature = "cuda")]
fn cuda_with_kernels() -> Result<Device, String> {
    let dev = dropkit::cuda::CudaDevice::new(0).map_err(|e| e.to_string())?;
    dev.kernels_ready().map_err(|e| e.to_string())?;
    Ok(Device::Cuda(dev))
}

#[cfg(not(feature = "cuda"))]
fn cuda_with_kernels() -> Result<Device, String> {
    Err("dropkit was built without its cuda feature".into())
}

/// Raw bits of every element, for `==` comparisons that see -0.0 and NaN payloads.
pub fn bits_of<T: Element>(v: &[T]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits_u64()).collect()
}

/// Deterministic finite test data with varied exponents and signs.
pub fn test_data<T: Element>(n: usize, salt: u64) -> Vec<T> {
    (0..n as u64)
        .map(|i| {
            let h = (i ^ salt).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
            let v = (h as f64 / (1u64 << 24) as f64 - 0.5) * 2f64.powi((i % 9) as i32 - 4);
            T::from_f64(v)
        })
        .collect()
}

/// A CUDA tensor of `shape` over `data`, starting `start` elements into its device buffer
/// (so views at unaligned addresses get tested).
#[cfg(feature = "cuda")]
pub fn cuda_tensor<T: Element>(
    dev: &Device,
    data: &[T],
    start: usize,
    shape: &[usize],
) -> dropkit::Tensor<T> {
    let Device::Cuda(cuda) = dev else {
        panic!("cuda_tensor needs a CUDA device")
    };
    let mut padded = vec![T::ZERO; start];
    padded.extend_from_slice(data);
    let slice = cuda.stream().clone_htod(&padded).unwrap();
    dropkit::Tensor::from_cuda_slice_range(slice, start, shape).unwrap()
}
