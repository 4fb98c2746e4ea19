//! A training loop that checkpoints the dropout generator with the model and resumes from
//! it: the resumed run draws the same masks and ends with the same weights, bit for bit,
//! as the run that never stopped. With `--features serde` the checkpoint holds the
//! generator state as JSON; without, as two numbers.
//!
//! `cargo run --example 04-checkpoint-resume [--features serde]`

use dropkit::generator::GeneratorState;
use dropkit::{Device, Dropout, Generator, Tensor};
use std::sync::Arc;

/// A linear model `y = w . dropout(x)` fitted to `target` by plain gradient descent.
struct Model {
    weights: Vec<f32>,
    dropout: Dropout,
    generator: Arc<Generator>,
}

/// What a checkpoint file would hold.
struct Checkpoint {
    weights: Vec<f32>,
    generator: String,
}

#[cfg(feature = "serde")]
fn save_state(state: GeneratorState) -> anyhow::Result<String> {
    Ok(serde_json::to_string(&state)?)
}

#[cfg(feature = "serde")]
fn load_state(saved: &str) -> anyhow::Result<GeneratorState> {
    Ok(serde_json::from_str(saved)?)
}

#[cfg(not(feature = "serde"))]
fn save_state(state: GeneratorState) -> anyhow::Result<String> {
    Ok(format!("{} {}", state.seed, state.offset))
}

#[cfg(not(feature = "serde"))]
fn load_state(saved: &str) -> anyhow::Result<GeneratorState> {
    let mut fields = saved.split(' ').map(str::parse::<u64>);
    match (fields.next(), fields.next()) {
        (Some(Ok(seed)), Some(Ok(offset))) => Ok(GeneratorState { seed, offset }),
        _ => anyhow::bail!("bad generator state {saved:?}"),
    }
}

impl Model {
    fn new(weights: Vec<f32>, generator: Arc<Generator>) -> anyhow::Result<Self> {
        let dropout = Dropout::new(0.5)?.with_generator(Arc::clone(&generator));
        Ok(Self {
            weights,
            dropout,
            generator,
        })
    }

    /// One step; returns the step's dropout mask (1 kept, 0 dropped).
    fn step(&mut self, x: &[f32], target: f32, device: &Device) -> anyhow::Result<String> {
        let input = Tensor::from_vec(x.to_vec(), &[x.len()])?.to_device(device)?;
        let (h, _) = self.dropout.forward(&input)?;
        let h = h.to_vec()?;
        let y: f32 = h.iter().zip(&self.weights).map(|(a, b)| a * b).sum();
        let error = y - target;
        for (w, a) in self.weights.iter_mut().zip(&h) {
            *w -= 0.01 * error * a;
        }
        Ok(h.iter()
            .map(|&v| if v == 0.0 { '0' } else { '1' })
            .collect())
    }

    fn checkpoint(&self) -> anyhow::Result<Checkpoint> {
        Ok(Checkpoint {
            weights: self.weights.clone(),
            generator: save_state(self.generator.state())?,
        })
    }

    fn restore(checkpoint: &Checkpoint) -> anyhow::Result<Self> {
        let state = load_state(&checkpoint.generator)?;
        Self::new(
            checkpoint.weights.clone(),
            Arc::new(Generator::from_state(state)),
        )
    }
}

fn main() -> anyhow::Result<()> {
    let device = Device::best_available();
    let x: Vec<f32> = (0..12).map(|i| 0.5 + i as f32 / 12.0).collect();
    let (steps, checkpoint_after) = (6, 3);
    println!("device {device}; {steps} steps, checkpoint after step {checkpoint_after}");

    let mut model = Model::new(vec![0.0; x.len()], Arc::new(Generator::new(1234)))?;
    let mut masks = Vec::new();
    let mut checkpoint = None;
    for step in 1..=steps {
        masks.push(model.step(&x, 3.0, &device)?);
        println!("step {step}: mask {}", masks[step - 1]);
        if step == checkpoint_after {
            let saved = model.checkpoint()?;
            println!("checkpoint: generator state {}", saved.generator);
            checkpoint = Some(saved);
        }
    }

    // A new process would read the checkpoint from disk; here it is the value we kept.
    let checkpoint = checkpoint.expect("the loop saved it");
    let mut resumed = Model::restore(&checkpoint)?;
    let mut same = true;
    for step in checkpoint_after + 1..=steps {
        let mask = resumed.step(&x, 3.0, &device)?;
        let matches = mask == masks[step - 1];
        println!("resumed step {step}: mask {mask} (same: {matches})");
        same &= matches;
    }
    let same_weights = resumed.weights == model.weights;
    println!("same masks after resuming: {same}; same final weights: {same_weights}");
    anyhow::ensure!(
        same && same_weights,
        "resuming from the checkpoint changed the run"
    );
    Ok(())
}
