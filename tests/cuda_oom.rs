//! Asking the GPU for more memory than it has: an error (not a panic or abort), and the
//! device still gives the right bits for the next call. In its own test binary so that, if
//! an allocation path ever aborts the process, it takes no other test with it. Skips
//! without a GPU; fails then under `DROPKIT_REQUIRE_CUDA=1`.
#![cfg(feature = "cuda")]

mod common;

use common::{bits_of, cuda_or_skip, test_data};
use dropkit::functional::{dropout, dropout_backward};
use dropkit::{Device, MaskMode, StreamPos, Tensor};

fn dropout_still_matches_cpu(dev: &Device, after: &str) {
    let n = 100_003;
    let x = test_data::<f32>(n, 77);
    let pos = StreamPos::new(5, 6);
    let x_cpu = Tensor::from_vec(x.clone(), &[n]).unwrap();
    let x_gpu = x_cpu.to_device(dev).unwrap();
    let (y_c, st_c) = dropout(&x_cpu, 0.3, true, pos, MaskMode::Bits).unwrap();
    let (y_g, st_g) = dropout(&x_gpu, 0.3, true, pos, MaskMode::Bits)
        .unwrap_or_else(|e| panic!("dropout after {after} failed: {e}"));
    assert_eq!(
        bits_of(&y_g.to_vec().unwrap()),
        bits_of(&y_c.to_vec().unwrap()),
        "forward after {after}"
    );
    let dx_c = dropout_backward(&x_cpu, &st_c).unwrap();
    let dx_g = dropout_backward(&x_gpu, &st_g).unwrap();
    assert_eq!(
        bits_of(&dx_g.to_vec().unwrap()),
        bits_of(&dx_c.to_vec().unwrap()),
        "backward after {after}"
    );
}

#[test]
fn cuda_out_of_memory_is_an_error_and_the_device_recovers() {
    let Some(dev) = cuda_or_skip("cuda_out_of_memory_is_an_error_and_the_device_recovers") else {
        return;
    };
    dropout_still_matches_cpu(&dev, "nothing");
    // 2^40 f32 = 4 TiB, more than any card (and host) has.
    for shape in [vec![1usize << 40], vec![1 << 20, 1 << 20]] {
        let r = Tensor::<f32>::zeros(&shape, &dev);
        match &r {
            Ok(_) => panic!("zeros {shape:?} on {dev:?} succeeded"),
            Err(e) => {
                // Allocated on the device, so the driver's refusal names the bytes asked.
                assert!(
                    matches!(e, dropkit::Error::OutOfMemory { bytes, .. } if *bytes == 4 << 40),
                    "zeros {shape:?}: {e:?}"
                );
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "zeros {shape:?}: error as expected: {e}");
            }
        }
        drop(r);
        dropout_still_matches_cpu(&dev, &format!("zeros {shape:?}"));
    }
    // ones and full take the same path with another fill value.
    assert!(Tensor::<half::bf16>::ones(&[1 << 41], &dev).is_err());
    assert!(Tensor::<f64>::full(1.5, &[1 << 39], &dev).is_err());
    dropout_still_matches_cpu(&dev, "ones and full");
}
