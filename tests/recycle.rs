//! Outputs built in recycled buffers (`dropkit::cpu::recycle`) are the same bits as in
//! fresh ones: a forward or backward overwrites every element and mask word it reuses.

use dropkit::cpu::recycle;
use dropkit::functional::{dropout, dropout_backward};
use dropkit::{MaskMode, StreamPos, Tensor};

#[test]
fn recycled_outputs_are_fully_overwritten() {
    // 2 MiB of f32 and a 64 KiB mask: the tensor is above the cache's minimum size.
    let n = 1 << 19;
    let x = Tensor::from_vec((0..n).map(|i| (i % 1000) as f32 - 500.0).collect(), &[n]).unwrap();
    let g = Tensor::from_vec(vec![1.5f32; n], &[n]).unwrap();
    let pos = StreamPos::new(11, 3);
    let run = || {
        let (y, state) = dropout(&x, 0.25, true, pos, MaskMode::Bits).unwrap();
        let dx = dropout_backward(&g, &state).unwrap();
        (
            y.to_vec().unwrap(),
            state.keep_bits().unwrap().unwrap(),
            dx.to_vec().unwrap(),
        )
    };
    recycle::set_limit(0);
    let fresh = run();
    recycle::set_limit(recycle::DEFAULT_LIMIT_BYTES);
    // Leave buffers of the same sizes full of other values, then reuse them.
    for seed in 0..3 {
        let (y, state) = dropout(&x, 0.9, true, StreamPos::new(seed, 0), MaskMode::Bits).unwrap();
        drop(dropout_backward(&y, &state).unwrap());
    }
    assert!(recycle::cached_bytes() >= 4 * n, "nothing was cached");
    let reused = run();
    assert!(fresh == reused, "a recycled buffer changed the result");
    recycle::clear();
    assert_eq!(recycle::cached_bytes(), 0);
}
