//! Shared test helpers: finding a GPU (or saying why the test skipped), one test per
//! device for a behaviour written once ([`test_device!`]), tensors on a device, and bit
//! views.
#![allow(dead_code)]

pub mod shard;

use dropkit::{Device, Element, Tensor};

/// One `#[test]` per device for a behaviour written once as `fn body(dev: &Device)`, in
/// the spirit of candle's `test_device!` (candle-core's tests/test_utils.rs):
/// `test_device!(body, body_cpu, body_cuda)` makes `body_cpu`, which runs `body` on the
/// CPU, and `body_cuda`, which runs it on CUDA device 0 from [`cuda_or_skip`]: it prints
/// "skipped body_cuda: ..." without a usable GPU (or without the `cuda` feature), and
/// fails instead under `DROPKIT_REQUIRE_CUDA=1`. Both names are spelled out, as in candle,
/// since `macro_rules!` cannot paste identifiers.
#[allow(unused_macros)]
macro_rules! test_device {
    ($body:ident, $cpu:ident, $cuda:ident) => {
        #[test]
        fn $cpu() {
            $body(&dropkit::Device::Cpu);
        }

        #[test]
        fn $cuda() {
            if let Some(dev) = $crate::common::cuda_or_skip(stringify!($cuda)) {
                $body(&dev);
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use test_device;

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

/// A tensor of `shape` over `data` on `dev` (built on the host, copied with `to_device`).
pub fn tensor_on<T: Element>(dev: &Device, data: Vec<T>, shape: &[usize]) -> Tensor<T> {
    Tensor::from_vec(data, shape)
        .unwrap()
        .to_device(dev)
        .unwrap()
}

/// A tensor of `shape` over `data` on `dev`; on CUDA it starts `start` elements into its
/// device buffer ([`cuda_tensor`]), so views at unaligned addresses get tested. On the CPU
/// `start` is moot.
pub fn tensor_at<T: Element>(dev: &Device, data: &[T], start: usize, shape: &[usize]) -> Tensor<T> {
    match dev {
        Device::Cpu => {
            let _ = start;
            Tensor::from_vec(data.to_vec(), shape).unwrap()
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => cuda_tensor(dev, data, start, shape),
    }
}

/// Held by tests that set the process-wide default generator and then read its offset:
/// the CPU and CUDA runs of one behaviour run on parallel test threads of one process.
pub fn default_generator_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Raw bits of every element, for `==` comparisons that see -0.0, infinities and
/// subnormals; every NaN becomes one value, since NaN payloads are outside the contract
/// (docs/spec.md, section 3: GPUs produce a canonical NaN, x86 passes payloads through).
pub fn bits_of<T: Element>(v: &[T]) -> Vec<u64> {
    use dropkit::element::ComputeFloat;
    v.iter()
        .map(|x| {
            if x.to_compute().to_f64().is_nan() {
                u64::MAX
            } else {
                x.to_bits_u64()
            }
        })
        .collect()
}

/// Deterministic test data with varied exponents and signs, and every 61st element one of
/// the values where devices most often part ways: infinities, NaN, -0.0, subnormals of
/// the dtype and its largest finite value.
pub fn test_data<T: Element>(n: usize, salt: u64) -> Vec<T> {
    let specials = special_values::<T>();
    let mut v = finite_test_data::<T>(n, salt);
    for (k, x) in v
        .iter_mut()
        .enumerate()
        .skip((salt % 61) as usize)
        .step_by(61)
    {
        *x = specials[(k / 61) % specials.len()];
    }
    v
}

/// [`test_data`] without the special values, for checks of statistics.
pub fn finite_test_data<T: Element>(n: usize, salt: u64) -> Vec<T> {
    (0..n as u64)
        .map(|i| {
            let h = (i ^ salt).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
            let v = (h as f64 / (1u64 << 24) as f64 - 0.5) * 2f64.powi((i % 9) as i32 - 4);
            T::from_f64(v)
        })
        .collect()
}

/// inf, -inf, NaN, -0.0, two subnormals of `T` and `T`'s largest finite value.
pub fn special_values<T: Element>() -> Vec<T> {
    use dropkit::DType;
    // A power of two below the dtype's smallest normal (2^-1022, 2^-126, 2^-14).
    let (tiny, max) = match T::DTYPE {
        DType::F64 => (2f64.powi(-1060), f64::MAX),
        DType::F32 => (2f64.powi(-130), f32::MAX as f64),
        DType::BF16 => (2f64.powi(-130), half::bf16::MAX.to_f64()),
        DType::F16 => (2f64.powi(-20), half::f16::MAX.to_f64()),
    };
    [
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        -0.0,
        tiny,
        -3.0 * tiny,
        max,
    ]
    .into_iter()
    .map(T::from_f64)
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
