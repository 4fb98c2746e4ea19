//! cudarc interop: your own context, stream and `CudaSlice` go into dropkit and come back
//! out without a copy; dropkit queues its kernels on your stream, in order with your work.
//! On a machine without a CUDA GPU it says so and exits 0.
//!
//! `cargo run --example 03-cudarc-interop`

use cudarc::driver::{CudaContext, DevicePtr};
use dropkit::functional::dropout;
use dropkit::{Device, Dropout, Generator, MaskMode, StreamPos, Tensor};
use std::sync::Arc;

fn main() -> anyhow::Result<()> {
    // Probe through dropkit: it checks for the driver library before any driver call.
    if let Err(why) = Device::cuda(0) {
        println!("no CUDA GPU here ({why}); skipped");
        return Ok(());
    }

    // The caller's own context and stream, as another cudarc user would have them.
    let ctx = CudaContext::new(0)?;
    let stream = ctx.new_stream()?;
    let host: Vec<f32> = (0..1024).map(|i| i as f32).collect();
    let slice = stream.clone_htod(&host)?;
    let ptr_in = slice.device_ptr(&stream).0;

    // In: wrap the slice (no copy). Dropout in place, on the caller's stream.
    let mut x = Tensor::from_cuda_slice(slice, &[32, 32])?;
    let layer = Dropout::new(0.25)?.with_generator(Arc::new(Generator::new(11)));
    let state = layer.forward_in_place(&mut x)?;

    // Out: the same buffer comes back.
    let (slice, start) = x.into_cuda_slice()?;
    let ptr_out = slice.device_ptr(&stream).0;
    println!(
        "device pointer in {ptr_in:#x}, out {ptr_out:#x} (element {start}): same buffer = {}",
        ptr_in == ptr_out
    );
    anyhow::ensure!(ptr_in == ptr_out && start == 0, "the buffer was copied");

    // The caller reads it back on its stream; the CPU gives the same bits for (11, 0).
    let on_gpu = stream.clone_dtoh(&slice)?;
    let (on_cpu, _) = dropout(
        &Tensor::from_vec(host, &[32, 32])?,
        0.25,
        true,
        StreamPos::new(11, 0),
        MaskMode::Bits,
    )?;
    let same = on_gpu == on_cpu.to_vec()?;
    let dropped = on_gpu.iter().filter(|&&v| v == 0.0).count();
    println!(
        "{} of 1024 dropped on the GPU ({} bytes of mask saved); equal to the CPU: {same}",
        dropped,
        state.saved_bytes()
    );
    anyhow::ensure!(same, "GPU and CPU disagree");
    Ok(())
}
