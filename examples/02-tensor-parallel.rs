//! Tensor-parallel shards: four ranks each hold a slice of one activation tensor. With the
//! same generator on every rank and each layer told where its slice starts
//! (`with_index_base`), the shards' outputs put together equal the unsharded output, bit
//! for bit. Where ranks must differ instead (data parallel), `Generator::for_stream`
//! gives each rank its own reproducible generator. The reference runs on the CPU and the
//! even ranks on the best device, so with a GPU the shards also cross devices. Exits
//! non-zero if a check fails.
//!
//! `cargo run --example 02-tensor-parallel`

use dropkit::{Device, Dropout, Generator, Tensor};
use std::sync::Arc;

fn main() -> anyhow::Result<()> {
    let device = Device::best_available();
    let (seed, p, ranks) = (7, 0.3, 4);
    // 1001 elements: the shards are uneven and start at unaligned elements.
    let whole: Vec<f32> = (0..1001).map(|i| 1.0 + i as f32 / 1000.0).collect();
    let n = whole.len();
    println!("device {device}, {n} elements over {ranks} ranks, p = {p}, seed {seed}");

    // The reference: one unsharded layer, on the CPU.
    let layer = Dropout::new(p)?.with_generator(Arc::new(Generator::new(seed)));
    let (expected, _) = layer.forward(&Tensor::from_vec(whole.clone(), &[n])?)?;
    let expected = expected.to_vec()?;

    // Each rank: the same seed, its own layer starting at its first element.
    let mut gathered = Vec::with_capacity(n);
    for rank in 0..ranks {
        let start = rank * n / ranks;
        let end = (rank + 1) * n / ranks;
        let on = if rank % 2 == 0 {
            device.clone()
        } else {
            Device::Cpu
        };
        let shard = Tensor::from_vec(whole[start..end].to_vec(), &[end - start])?.to_device(&on)?;
        let layer = Dropout::new(p)?
            .with_generator(Arc::new(Generator::new(seed)))
            .with_index_base(start as u64);
        let (y, _) = layer.forward(&shard)?;
        let y = y.to_vec()?;
        let dropped = y.iter().filter(|&&v| v == 0.0).count();
        println!("rank {rank} on {on}: elements [{start}, {end}), dropped {dropped}");
        gathered.extend(y);
    }
    let equal = gathered == expected;
    println!("shards put together equal the unsharded output: {equal}");
    anyhow::ensure!(equal, "sharded dropout differs from the unsharded tensor");

    // Data parallel: per-rank generators from one seed draw different masks, and the same
    // (seed, rank) always gives the same one.
    let x = Tensor::<f32>::ones(&[64], &device)?;
    let mut masks = Vec::new();
    for rank in 0..ranks as u64 {
        let generator = Arc::new(Generator::for_stream(seed, rank));
        let (y, _) = Dropout::new(p)?.with_generator(generator).forward(&x)?;
        let mask: String = y
            .to_vec()?
            .iter()
            .map(|&v| if v == 0.0 { '0' } else { '1' })
            .collect();
        println!(
            "data-parallel rank {rank} (seed {:#018x}): {mask}",
            Generator::for_stream(seed, rank).seed()
        );
        masks.push(mask);
    }
    let (again, _) = Dropout::new(p)?
        .with_generator(Arc::new(Generator::for_stream(seed, 2)))
        .forward(&x)?;
    let again: String = again
        .to_vec()?
        .iter()
        .map(|&v| if v == 0.0 { '0' } else { '1' })
        .collect();
    let distinct = masks
        .iter()
        .collect::<std::collections::BTreeSet<_>>()
        .len()
        == masks.len();
    println!(
        "ranks draw distinct masks: {distinct}; rank 2 reproduced: {}",
        again == masks[2]
    );
    anyhow::ensure!(
        distinct && again == masks[2],
        "per-rank generators misbehaved"
    );
    Ok(())
}
