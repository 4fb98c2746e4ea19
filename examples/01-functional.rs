//! The functional API: you hold the random state, a `(seed, offset)` pair, and pass it to
//! every call. The same pair gives the same mask on any device; another offset gives a new
//! one. The backward reuses the mask the forward saved.
//!
//! `cargo run --example 01-functional`

use dropkit::functional::{dropout, dropout_backward};
use dropkit::{Device, MaskMode, StreamPos, Tensor};

/// The kept positions as a string of 1s (kept) and 0s (dropped).
fn mask_string(y: &[f32]) -> String {
    y.iter()
        .map(|&v| if v == 0.0 { '0' } else { '1' })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let device = Device::best_available();
    let x = Tensor::<f32>::ones(&[16], &device)?;
    let (seed, p) = (2024, 0.5);
    println!("device {device}, 16 ones, p = {p} (kept values become 2), seed {seed}");

    // Your own counter: one offset per call, as a framework's generator would advance it.
    let mut offset = 0;
    let mut outputs = Vec::new();
    for _ in 0..3 {
        let pos = StreamPos::new(seed, offset);
        let (y, _) = dropout(&x, p, true, pos, MaskMode::Bits)?;
        let y = y.to_vec()?;
        println!("offset {offset}: mask {}", mask_string(&y));
        outputs.push(y);
        offset += 1;
    }

    // Replaying offset 1 reproduces that call's mask exactly; the CPU gives the same bits.
    let (again, _) = dropout(&x, p, true, StreamPos::new(seed, 1), MaskMode::Bits)?;
    let cpu_x = Tensor::<f32>::ones(&[16], &Device::Cpu)?;
    let (on_cpu, _) = dropout(&cpu_x, p, true, StreamPos::new(seed, 1), MaskMode::Bits)?;
    let replayed = again.to_vec()? == outputs[1] && on_cpu.to_vec()? == outputs[1];
    println!("offset 1 replayed (and on the CPU): same mask = {replayed}");
    anyhow::ensure!(replayed, "replaying (seed, offset) changed the mask");
    anyhow::ensure!(outputs[0] != outputs[1], "two offsets gave one mask");

    // Backward: the upstream gradient goes through the saved mask and the same scale.
    let (y, state) = dropout(&x, p, true, StreamPos::new(seed, 0), MaskMode::Regenerate)?;
    let grad = Tensor::<f32>::full(0.5, &[16], &device)?;
    let dx = dropout_backward(&grad, &state)?.to_vec()?;
    println!(
        "backward of offset 0 (regenerated mask, {} bytes saved): {dx:?}",
        state.saved_bytes()
    );
    anyhow::ensure!(
        mask_string(&dx) == mask_string(&y.to_vec()?),
        "the gradient's mask differs from the forward's"
    );

    // Eval mode uses no randomness: the output is the input.
    let (y, _) = dropout(&x, p, false, StreamPos::new(seed, offset), MaskMode::Bits)?;
    println!("eval: {:?}", y.to_vec()?);
    Ok(())
}
