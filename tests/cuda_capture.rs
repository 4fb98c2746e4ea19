//! dropkit's allocating CUDA calls while its stream captures a CUDA graph that dropkit did
//! not set up (no generator in the capture): each is refused with `Error::StreamCapturing`
//! before it queues anything (a kernel captured with its (seed, offset) by value would
//! replay one mask forever; an allocation or a host copy would invalidate the capture), so
//! the capture stays intact, a layer takes no offset, and after `end_capture` the same
//! calls run and give the same bits. The capture-safe forms are tests/cuda_graph.rs. Runs
//! on the emulated driver (which records and replays captures) and on a GPU.
#![cfg(feature = "cuda")]

mod common;

use common::cuda_or_skip;
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode, CUstreamCaptureStatus};
use dropkit::functional::{dropout, dropout_backward};
use dropkit::{Device, Dropout, Error, Generator, MaskMode, StreamPos, Tensor};
use std::sync::Arc;

#[test]
fn calls_during_capture_are_refused_and_leave_the_capture_intact() {
    let Some(dev) = cuda_or_skip("calls_during_capture_are_refused_and_leave_the_capture_intact")
    else {
        return;
    };
    let Device::Cuda(cuda) = &dev else {
        unreachable!("cuda_or_skip returns a CUDA device")
    };
    let pos = StreamPos::new(5, 1);
    let host: Vec<f32> = (0..4096).map(|i| i as f32 - 2000.0).collect();
    let x = Tensor::from_vec(host.clone(), &[4096])
        .unwrap()
        .to_device(&dev)
        .unwrap();
    let mut x_in_place = x.try_clone().unwrap();
    let (y, state) = dropout(&x, 0.5, true, pos, MaskMode::Bits).unwrap();
    let y_bits = y.to_vec().unwrap();
    let gen = Arc::new(Generator::new(9));
    let layer = Dropout::new(0.5)
        .unwrap()
        .with_generator(gen.clone())
        .with_mask_mode(MaskMode::Regenerate);

    let stream = cuda.stream();
    stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
        .unwrap();
    let refused = |r: Result<(), Error>, what: &str| match r {
        Err(Error::StreamCapturing { .. }) => {}
        other => panic!("{what} during capture: {other:?}"),
    };
    refused(
        dropout(&x, 0.5, true, pos, MaskMode::Bits).map(drop),
        "forward (bits)",
    );
    refused(
        dropout(&x, 0.5, true, pos, MaskMode::Regenerate).map(drop),
        "forward (regen)",
    );
    refused(dropout_backward(&y, &state).map(drop), "backward");
    refused(Tensor::<f32>::zeros(&[16], &dev).map(drop), "zeros");
    refused(
        Tensor::from_vec(vec![1.0f32; 16], &[16])
            .unwrap()
            .to_device(&dev)
            .map(drop),
        "upload",
    );
    refused(y.to_vec().map(drop), "download");
    refused(state.keep_bits().map(drop), "mask download");
    // The in-place regenerate forward allocates nothing but would launch a kernel.
    refused(
        layer.forward_in_place(&mut x_in_place).map(drop),
        "layer in place (regen)",
    );
    refused(layer.forward(&x).map(drop), "layer forward");
    assert_eq!(gen.state().offset, 0, "a refused layer call took an offset");
    assert_eq!(
        stream.capture_status().unwrap(),
        CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_ACTIVE,
        "the refused calls invalidated the capture"
    );
    // Nothing was captured: an empty graph (the emulated driver returns none).
    drop(stream.end_capture(CUgraphInstantiate_flags(0)).unwrap());
    assert_eq!(
        stream.capture_status().unwrap(),
        CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE
    );
    // After the capture the same calls run, with the same bits.
    let (again, _) = dropout(&x, 0.5, true, pos, MaskMode::Bits).unwrap();
    assert_eq!(again.to_vec().unwrap(), y_bits);
    assert!(y_bits.contains(&0.0) && y_bits.iter().any(|&v| v != 0.0));
    layer.forward_in_place(&mut x_in_place).unwrap();
    assert_eq!(gen.state().offset, 1);
}
