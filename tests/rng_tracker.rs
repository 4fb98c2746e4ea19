//! The RNG tracker (`dropkit::RngTracker`): shared regions give every rank the same
//! generator, so tensor-parallel shards of one tensor put together equal the unsharded
//! output whatever the number of ranks; per-rank regions differ by rank and repeat by
//! (seed, name, rank); a checkpoint taken at one parallel degree resumes at another with
//! the same masks; mistakes are errors that change nothing. CPU, and the CUDA device too
//! where there is one (the emulated driver in CI).

mod common;

use common::{bits_of, cuda_or_skip, test_data};
use dropkit::{Device, Dropout, Error, RegionKind, RngTracker, Tensor};

/// Dropout of `whole` split into `ranks` contiguous shards, each rank with a tracker of its
/// own (as separate processes would have), its shards on `devices[rank % len]`.
fn sharded(whole: &[f32], ranks: usize, steps: usize, devices: &[Device]) -> Vec<Vec<u64>> {
    let n = whole.len();
    let trackers: Vec<RngTracker> = (0..ranks).map(|_| RngTracker::new(2024)).collect();
    for t in &trackers {
        t.add_shared("model-parallel").unwrap();
    }
    (0..steps)
        .map(|_| {
            let mut out = Vec::new();
            for (rank, t) in trackers.iter().enumerate() {
                let (start, end) = (rank * n / ranks, (rank + 1) * n / ranks);
                let shard = Tensor::from_vec(whole[start..end].to_vec(), &[end - start])
                    .unwrap()
                    .to_device(&devices[rank % devices.len()])
                    .unwrap();
                let layer = Dropout::new(0.4)
                    .unwrap()
                    .with_generator(t.get("model-parallel").unwrap())
                    .with_index_base(start as u64);
                out.extend(bits_of(&layer.forward(&shard).unwrap().0.to_vec().unwrap()));
            }
            out
        })
        .collect()
}

#[test]
fn shared_regions_do_not_depend_on_the_parallel_degree() {
    let whole = test_data::<f32>(1001, 5);
    let cpu = [Device::Cpu];
    let one = sharded(&whole, 1, 3, &cpu);
    for ranks in [2, 3, 4, 7] {
        assert_eq!(sharded(&whole, ranks, 3, &cpu), one, "{ranks} ranks");
    }
    // Steps draw new masks (the offset advances per call).
    assert_ne!(one[0], one[1]);
}

#[test]
fn shared_regions_across_cpu_and_cuda_shards() {
    let Some(dev) = cuda_or_skip("shared_regions_across_cpu_and_cuda_shards") else {
        return;
    };
    let whole = test_data::<f32>(1001, 6);
    let one = sharded(&whole, 1, 2, &[Device::Cpu]);
    assert_eq!(sharded(&whole, 4, 2, &[dev.clone(), Device::Cpu]), one);
    assert_eq!(sharded(&whole, 3, 2, &[dev]), one);
}

#[test]
fn per_rank_regions_differ_by_rank_and_repeat() {
    let mask = |rank: u64| {
        let t = RngTracker::new(11);
        let g = t.add_per_rank("data-parallel", rank).unwrap();
        let x = Tensor::<f32>::ones(&[4096], &Device::Cpu).unwrap();
        let layer = Dropout::new(0.5).unwrap().with_generator(g);
        bits_of(&layer.forward(&x).unwrap().0.to_vec().unwrap())
    };
    assert_eq!(mask(0), mask(0));
    assert_ne!(mask(0), mask(1));
    assert_ne!(mask(1), mask(2));
    // A per-rank region is not its shared namesake, and names and seeds keep regions apart.
    let t = RngTracker::new(11);
    let shared = t.add_shared("a").unwrap().seed();
    assert_ne!(t.add_per_rank("b", 0).unwrap().seed(), shared);
    assert_ne!(RngTracker::new(12).add_shared("a").unwrap().seed(), shared);
    assert_ne!(t.add_shared("c").unwrap().seed(), shared);
}

#[test]
fn checkpoints_resume_at_another_degree() {
    let whole = test_data::<f32>(777, 8);
    let n = whole.len();
    // Degree 2: rank 0's tracker after two steps, then its checkpoint.
    let t = RngTracker::new(99);
    t.add_shared("model-parallel").unwrap();
    t.add_per_rank("data-parallel", 0).unwrap();
    let mp = t.get("model-parallel").unwrap();
    mp.next_call();
    mp.next_call();
    t.get("data-parallel").unwrap().next_call();
    let state = t.state();
    assert_eq!(state.regions.len(), 2);
    assert_eq!(state.regions[1].generator.offset, 2, "{state:?}");

    // Degree 4, rank 3: the shared region resumes exactly; the per-rank one keeps its
    // step with rank 3's own seed.
    let resumed = RngTracker::from_state(&state, &[("data-parallel", 3)]).unwrap();
    assert_eq!(resumed.get("model-parallel").unwrap().state(), mp.state());
    let dp = resumed.get("data-parallel").unwrap();
    assert_eq!(dp.offset(), 1);
    assert_eq!(
        dp.seed(),
        RngTracker::new(99)
            .add_per_rank("data-parallel", 3)
            .unwrap()
            .seed()
    );
    // Step 3 at degree 4 (shards of a quarter each) equals step 3 unsharded.
    let step3 = |ranks: usize, tracker: &RngTracker| {
        let g = tracker.get("model-parallel").unwrap();
        let offset = g.offset();
        let mut out = Vec::new();
        for rank in 0..ranks {
            g.set_offset(offset);
            let (start, end) = (rank * n / ranks, (rank + 1) * n / ranks);
            let shard = Tensor::from_vec(whole[start..end].to_vec(), &[end - start]).unwrap();
            let layer = Dropout::new(0.3)
                .unwrap()
                .with_generator(g.clone())
                .with_index_base(start as u64);
            out.extend(bits_of(&layer.forward(&shard).unwrap().0.to_vec().unwrap()));
        }
        out
    };
    assert_eq!(step3(4, &resumed), step3(1, &t));
}

#[test]
fn mistakes_are_errors_that_change_nothing() {
    let t = RngTracker::new(1);
    assert!(
        matches!(t.get("model-parallel"), Err(Error::UnknownRegion(n)) if n == "model-parallel")
    );
    let g = t.add_shared("model-parallel").unwrap();
    g.next_call();
    assert!(matches!(
        t.add_per_rank("model-parallel", 2),
        Err(Error::DuplicateRegion(n)) if n == "model-parallel"
    ));
    // The region is the one registered first, with its offset.
    assert_eq!(t.get("model-parallel").unwrap().state(), g.state());
    assert_eq!(t.state().regions[0].kind, RegionKind::Shared);
    assert_eq!(t.names(), ["model-parallel"]);
    // A resume naming a rank for a region the checkpoint lacks, or for a shared one.
    let state = t.state();
    assert!(matches!(
        RngTracker::from_state(&state, &[("data-parallel", 1)]),
        Err(Error::UnknownRegion(_))
    ));
    assert!(matches!(
        RngTracker::from_state(&state, &[("model-parallel", 1)]),
        Err(Error::UnknownRegion(_))
    ));
    // A checkpoint naming a region twice.
    let mut twice = state.clone();
    twice.regions.push(twice.regions[0].clone());
    assert!(matches!(
        RngTracker::from_state(&twice, &[]),
        Err(Error::DuplicateRegion(_))
    ));
}

#[cfg(feature = "serde")]
#[test]
fn tracker_state_round_trips_through_json() {
    let t = RngTracker::new(5);
    t.add_shared("model-parallel").unwrap().next_call();
    t.add_per_rank("expert-3", 3).unwrap();
    let json = serde_json::to_string(&t.state()).unwrap();
    let back: dropkit::TrackerState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, t.state());
}
