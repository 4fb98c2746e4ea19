//! Model parallelism of any layout: a (b, s, h) activation split 4 ways along h (tensor
//! parallel), then along s (sequence parallel), then along both. Every rank takes the
//! "model-parallel" region of one `RngTracker` and tells its layer where its shard sits
//! (`ShardLayout`); each split's shards put together are the unsharded output, bit for bit.
//! Then a tracker checkpoint taken after a step at tensor-parallel degree 2 resumes at
//! degree 4, and the next step's masks are again the unsharded ones. The fused
//! `residual + dropout(x + bias)` shards the same way, each rank with its slice of the
//! bias. Even ranks run on the best device, odd ones on the CPU. Exits non-zero if a check
//! fails.
//!
//! `cargo run --example 05-model-parallel`

use dropkit::{
    BiasDropoutResidual, Device, Dropout, RngTracker, ShardLayout, Tensor, TrackerState,
};

const GLOBAL: [usize; 3] = [2, 8, 12];
const P: f64 = 0.3;

/// The shards of splitting axis 1 into `s_parts` and axis 2 into `h_parts` (equal parts).
fn shards(s_parts: usize, h_parts: usize) -> anyhow::Result<Vec<ShardLayout>> {
    let (s_len, h_len) = (GLOBAL[1] / s_parts, GLOBAL[2] / h_parts);
    let mut out = Vec::new();
    for si in 0..s_parts {
        for hi in 0..h_parts {
            let start = [0, si * s_len, hi * h_len];
            out.push(ShardLayout::new(
                &GLOBAL,
                &start,
                &[GLOBAL[0], s_len, h_len],
            )?);
        }
    }
    Ok(out)
}

/// The shard's values of a row-major tensor of shape GLOBAL, and their global indices.
fn gather(whole: &[f32], layout: &ShardLayout) -> (Vec<f32>, Vec<usize>) {
    let shape = layout.shape();
    let n: usize = shape.iter().product();
    let at: Vec<usize> = (0..n)
        .map(|i| {
            let c = [
                i / (shape[1] * shape[2]),
                i / shape[2] % shape[1],
                i % shape[2],
            ];
            layout.global_index(&c).expect("inside the shard") as usize
        })
        .collect();
    (at.iter().map(|&g| whole[g]).collect(), at)
}

/// One training step on every shard of a split: each rank restores the tracker from
/// `state` and runs its shard; returns the pieces put back in place and each rank's
/// tracker state after the step.
fn step(
    state: &TrackerState,
    split: &[ShardLayout],
    x: &[f32],
) -> anyhow::Result<(Vec<f32>, Vec<TrackerState>)> {
    let device = Device::best_available();
    let (mut out, mut states) = (vec![f32::NAN; x.len()], Vec::new());
    for (rank, layout) in split.iter().enumerate() {
        let tracker = RngTracker::from_state(state, &[])?;
        let on = if rank % 2 == 0 {
            device.clone()
        } else {
            Device::Cpu
        };
        let (values, at) = gather(x, layout);
        let shard = Tensor::from_vec(values, layout.shape())?.to_device(&on)?;
        let layer = Dropout::new(P)?
            .with_generator(tracker.get("model-parallel")?)
            .with_shard(layout.clone());
        let (y, _) = layer.forward(&shard)?;
        for (v, g) in y.to_vec()?.into_iter().zip(at) {
            out[g] = v;
        }
        states.push(tracker.state());
    }
    Ok((out, states))
}

/// The fused `residual + dropout(x + bias)` on every shard of a split (the bias sliced
/// along h for each rank), put back in place; with no split, the unsharded call on the CPU.
fn fused_step(
    state: &TrackerState,
    split: Option<&[ShardLayout]>,
    [x, residual, bias]: [&[f32]; 3],
) -> anyhow::Result<Vec<f32>> {
    let layer = |t: &RngTracker| -> anyhow::Result<BiasDropoutResidual> {
        Ok(BiasDropoutResidual::new(P)?.with_generator(t.get("model-parallel")?))
    };
    let Some(split) = split else {
        let t = RngTracker::from_state(state, &[])?;
        let whole = |v: &[f32]| Tensor::from_vec(v.to_vec(), &GLOBAL);
        let b = Tensor::from_vec(bias.to_vec(), &[GLOBAL[2]])?;
        let (y, _) = layer(&t)?.forward(&whole(x)?, &b, &whole(residual)?)?;
        return Ok(y.to_vec()?);
    };
    let mut out = vec![f32::NAN; x.len()];
    for (rank, layout) in split.iter().enumerate() {
        let t = RngTracker::from_state(state, &[])?;
        let on = match rank % 2 {
            0 => Device::best_available(),
            _ => Device::Cpu,
        };
        let part = |v: &[f32]| -> anyhow::Result<Tensor<f32>> {
            Ok(Tensor::from_vec(gather(v, layout).0, layout.shape())?.to_device(&on)?)
        };
        let (h0, h_len) = (layout.start()[2], layout.shape()[2]);
        let b = Tensor::from_vec(bias[h0..h0 + h_len].to_vec(), &[h_len])?.to_device(&on)?;
        let fused = layer(&t)?.with_shard(layout.clone());
        let (y, _) = fused.forward(&part(x)?, &b, &part(residual)?)?;
        for (v, g) in y.to_vec()?.into_iter().zip(gather(x, layout).1) {
            out[g] = v;
        }
    }
    Ok(out)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn main() -> anyhow::Result<()> {
    let n: usize = GLOBAL.iter().product();
    let x: Vec<f32> = (0..n).map(|i| 1.0 + i as f32 / 64.0).collect();
    let tracker = RngTracker::new(2718);
    tracker.add_shared("model-parallel")?;
    let start = tracker.state();
    println!(
        "device {}, activation {GLOBAL:?}, p = {P}",
        Device::best_available()
    );

    // The reference: the unsharded tensor on one CPU, one training call.
    let reference = |state: &TrackerState| -> anyhow::Result<Vec<f32>> {
        let t = RngTracker::from_state(state, &[])?;
        let layer = Dropout::new(P)?.with_generator(t.get("model-parallel")?);
        Ok(layer
            .forward(&Tensor::from_vec(x.clone(), &GLOBAL)?)?
            .0
            .to_vec()?)
    };
    let expected = bits(&reference(&start)?);
    for (name, s_parts, h_parts) in [("h / 4", 1, 4), ("s / 4", 4, 1), ("s / 2 x h / 2", 2, 2)] {
        let got = bits(&step(&start, &shards(s_parts, h_parts)?, &x)?.0);
        let equal = got == expected;
        println!("split {name}: the shards put together equal the unsharded output: {equal}");
        anyhow::ensure!(equal, "split {name} differs from the unsharded output");
    }

    // A step at tensor-parallel degree 2 advances the shared region by one call on every
    // rank alike, so one rank's tracker state is the checkpoint; it resumes at degree 4
    // with the unsharded tensor's next mask.
    let (_, states) = step(&start, &shards(1, 2)?, &x)?;
    anyhow::ensure!(
        states.windows(2).all(|w| w[0] == w[1]),
        "ranks agree on the state"
    );
    let after_one = states[0].clone();
    let next = bits(&reference(&after_one)?);
    anyhow::ensure!(next != expected, "the next step draws a new mask");
    let resumed = bits(&step(&after_one, &shards(1, 4)?, &x)?.0);
    let equal = resumed == next;
    println!(
        "checkpoint at degree 2, resumed at degree 4: the next step is the unsharded one: {equal}"
    );
    anyhow::ensure!(equal, "the resumed step differs from the unsharded one");

    // The fused bias + dropout + residual, split along h (each rank holds its slice of the
    // bias) and along s.
    let residual: Vec<f32> = (0..n).map(|i| (i % 7) as f32 - 3.0).collect();
    let bias: Vec<f32> = (0..GLOBAL[2]).map(|j| j as f32 / 8.0).collect();
    let inputs = [&x[..], &residual[..], &bias[..]];
    let expected = bits(&fused_step(&start, None, inputs)?);
    for (name, s_parts, h_parts) in [("h / 4", 1, 4), ("s / 4", 4, 1)] {
        let got = bits(&fused_step(
            &start,
            Some(&shards(s_parts, h_parts)?),
            inputs,
        )?);
        let equal = got == expected;
        println!("fused residual, split {name}: the shards put together equal the unsharded output: {equal}");
        anyhow::ensure!(
            equal,
            "the fused split {name} differs from the unsharded output"
        );
    }
    Ok(())
}
