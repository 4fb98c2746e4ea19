//! A training step inside a CUDA graph: dropout (bits form) and DropPath (regenerate form)
//! forward, then both backwards, captured once with `CapturedGraph::capture` and replayed
//! N times. Every replay draws fresh masks, and each one is checked against eager calls at
//! the offsets the replay stands for (outputs, mask and gradient, bit for bit). A
//! checkpoint of the generator taken between replays resumes to the same masks. On a
//! machine without a CUDA GPU it says so and exits 0. Exits non-zero if a check fails.
//!
//! `cargo run --example 06-cuda-graph`

use dropkit::cuda::{CapturedGraph, GraphSafeGenerator};
use dropkit::{Device, DropPath, Dropout, Generator, MaskMode, Tensor};
use std::sync::Arc;

const REPLAYS: u64 = 5;
const SHAPE: [usize; 2] = [64, 256];

/// The step's layers, drawing from `generator`.
fn layers(generator: &Arc<Generator>) -> anyhow::Result<(Dropout, DropPath)> {
    let dropout = Dropout::new(0.1)?.with_generator(generator.clone());
    let drop_path = DropPath::new(0.2)?
        .with_generator(generator.clone())
        .with_mask_mode(MaskMode::Regenerate);
    Ok((dropout, drop_path))
}

fn main() -> anyhow::Result<()> {
    let dev = match Device::cuda(0) {
        Ok(dev) => dev,
        Err(why) => {
            println!("no CUDA GPU here ({why}); skipped");
            return Ok(());
        }
    };
    let Device::Cuda(cuda) = &dev else {
        anyhow::bail!("Device::cuda gave another device")
    };
    // A capture must not wait on events recorded outside it; all the work below is on
    // dropkit's one stream, which orders it.
    // SAFETY: no buffer here is shared with another stream.
    unsafe { cuda.stream().context().disable_event_tracking() };

    let n: usize = SHAPE.iter().product();
    let data = |salt: f32| -> Vec<f32> { (0..n).map(|i| (i as f32 * 0.37 + salt).sin()).collect() };
    let x = Tensor::from_vec(data(0.0), &SHAPE)?.to_device(&dev)?;
    let dz = Tensor::from_vec(data(1.0), &SHAPE)?.to_device(&dev)?;

    // The generator the layers use, with a device copy of its state for the graph.
    let gen = GraphSafeGenerator::new(cuda, Arc::new(Generator::new(2024)))?;
    let (dropout, drop_path) = layers(gen.generator())?;

    // Preallocated buffers: outputs, gradients and states (from a warm-up step on another
    // generator; their masks are reused, so the captured step allocates nothing).
    let (warm_d, warm_p) = layers(&Arc::new(Generator::new(0)))?;
    let (mut y, mut sy) = warm_d.forward(&x)?;
    let (mut z, mut sz) = warm_p.forward(&y)?;
    let (mut dy, mut dx) = (z.try_clone()?, y.try_clone()?);

    let (graph, ()) = CapturedGraph::capture(cuda, &[&gen], || {
        dropout.forward_into(&x, &mut y, &mut sy)?;
        drop_path.forward_into(&y, &mut z, &mut sz)?;
        drop_path.backward_into(&dz, &sz, &mut dy)?;
        dropout.backward_into(&dy, &sy, &mut dx)
    })?;
    println!(
        "captured: {} calls per replay on the generator; replaying {REPLAYS} times",
        graph.calls(&gen).unwrap_or(0)
    );

    let mut checkpoint = None;
    let mut third = None;
    for k in 0..REPLAYS {
        let offset = gen.state().offset;
        if k == 2 {
            checkpoint = Some(gen.state());
        }
        graph.replay()?;
        let got = (y.to_vec()?, z.to_vec()?, dx.to_vec()?, sy.keep_bits()?);
        // Eager calls at the replay's offsets, on a generator of the same seed.
        let eager_gen = Arc::new(Generator::new(2024));
        eager_gen.set_offset(offset);
        let (ed, ep) = layers(&eager_gen)?;
        let (ey, esy) = ed.forward(&x)?;
        let (ez, esz) = ep.forward(&ey)?;
        let edx = ed.backward(&ep.backward(&dz, &esz)?, &esy)?;
        let want = (ey.to_vec()?, ez.to_vec()?, edx.to_vec()?, esy.keep_bits()?);
        let kept = got.0.iter().filter(|v| **v != 0.0).count();
        println!(
            "replay {k}: offsets {offset}..{}, dropout kept {kept} of {n}, matches eager calls: {}",
            gen.state().offset - 1,
            got == want
        );
        anyhow::ensure!(got == want, "replay {k} differs from the eager calls");
        if k == 2 {
            third = Some(got);
        }
    }

    // Resume from the checkpoint taken before replay 2: the same masks again.
    gen.set_state(checkpoint.expect("taken at replay 2"));
    graph.replay()?;
    let again = (y.to_vec()?, z.to_vec()?, dx.to_vec()?, sy.keep_bits()?);
    let same = Some(again) == third;
    println!("resumed from the checkpoint before replay 2: same masks and gradients: {same}");
    anyhow::ensure!(same, "the checkpoint did not resume the same masks");
    Ok(())
}
