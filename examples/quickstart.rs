//! The README's first command: dropout on the best available device.
//!
//! The Sorix demo (a 1x10 tensor of ones at p = 0.5: 0s and 2s in training, 1s in eval),
//! then the statistics of a large tensor, a backward pass, and which device ran.

use dropkit::{Device, Dropout, Generator, MaskMode, Tensor};
use std::sync::Arc;

fn main() -> anyhow::Result<()> {
    let device = Device::best_available();
    println!("device: {device}");

    // The Sorix demo.
    let generator = Arc::new(Generator::new(0));
    let mut layer = Dropout::new(0.5)?.with_generator(Arc::clone(&generator));
    let x = Tensor::<f32>::ones(&[1, 10], &device)?;
    let (y, _) = layer.forward(&x)?;
    println!("train: {:?}", y.to_vec()?);
    layer.eval();
    let (y, _) = layer.forward(&x)?;
    println!("eval:  {:?}", y.to_vec()?);
    layer.train();

    // Statistics on a large tensor.
    let n = 1 << 22;
    for p in [0.1, 0.5, 0.9] {
        let layer = Dropout::new(p)?.with_generator(Arc::clone(&generator));
        let x = Tensor::<f32>::ones(&[n], &device)?;
        let (y, _) = layer.forward(&x)?;
        let y = y.to_vec()?;
        let dropped = y.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
        let mean = y.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
        println!("p = {p}: dropped {dropped:.4} of {n}, mean {mean:.4} (input mean 1)");
    }

    // Backward: the gradient goes through the same mask and scale, with either saved form.
    for mode in [MaskMode::Bits, MaskMode::Regenerate] {
        let layer = Dropout::new(0.25)?
            .with_generator(Arc::new(Generator::new(7)))
            .with_mask_mode(mode);
        let x = Tensor::<f32>::ones(&[8], &device)?;
        let (y, state) = layer.forward(&x)?;
        let dx = layer.backward(&Tensor::<f32>::ones(&[8], &device)?, &state)?;
        println!(
            "{mode:?}: y = {:?}, dx = {:?}, saved {} bytes",
            y.to_vec()?,
            dx.to_vec()?,
            state.saved_bytes()
        );
    }
    println!("ran on: {device}");
    Ok(())
}
