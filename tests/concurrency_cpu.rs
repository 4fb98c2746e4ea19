//! Concurrency on the CPU (issue 13): eight threads sharing one generator get disjoint
//! offsets, and every call replays bit for bit from its offset through the functional API,
//! in any order and from any thread. (The CUDA half, several threads launching on one device,
//! lives in the GPU test bundle.)

use dropkit::functional::{alpha_dropout, dropout, grouped_dropout, GroupedConfig, Grouping};
use dropkit::{
    AlphaDropout, Dropout, Dropout2d, DropoutState, Generator, MaskMode, StreamPos, Tensor,
};
use std::collections::HashMap;
use std::sync::{Arc, Barrier};

const THREADS: usize = 8;
const CALLS_PER_THREAD: usize = 24;
const SEED: u64 = 0x5EED_0C0C;
const START: u64 = 1 << 33;
const P: f64 = 0.5;
/// (N, C, H, W): 32 channel decisions per Dropout2d call, 1024 elementwise ones.
const SHAPE: [usize; 4] = [4, 8, 4, 8];

fn input() -> Tensor<f32> {
    let n: usize = SHAPE.iter().product();
    Tensor::from_vec((0..n).map(|i| 1.0 + i as f32 / 64.0).collect(), &SHAPE).unwrap()
}

fn bits(t: &Tensor<f32>) -> Vec<u32> {
    t.to_vec().unwrap().iter().map(|v| v.to_bits()).collect()
}

/// The three layer kinds the threads use, by thread index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Dropout,
    Dropout2d,
    Alpha,
}

fn kind_of_thread(t: usize) -> Kind {
    [Kind::Dropout, Kind::Dropout2d, Kind::Alpha][t % 3]
}

/// The functional call equivalent to one layer call at `offset`.
fn replay(kind: Kind, x: &Tensor<f32>, offset: u64, mode: MaskMode) -> Vec<u32> {
    let pos = StreamPos::new(SEED, offset);
    let y = match kind {
        Kind::Dropout => dropout(x, P, true, pos, mode).unwrap().0,
        Kind::Dropout2d => {
            let group = SHAPE[2] * SHAPE[3];
            grouped_dropout(
                x,
                &GroupedConfig {
                    p: P,
                    training: true,
                    grouping: Grouping::scale(group),
                },
                pos,
                mode,
            )
            .unwrap()
            .0
        }
        Kind::Alpha => alpha_dropout(x, P, true, pos, mode).unwrap().0,
    };
    bits(&y)
}

fn layer_call(kind: Kind, gen: &Arc<Generator>, x: &Tensor<f32>) -> (Tensor<f32>, DropoutState) {
    match kind {
        Kind::Dropout => Dropout::new(P)
            .unwrap()
            .with_generator(gen.clone())
            .forward(x),
        Kind::Dropout2d => Dropout2d::new(P)
            .unwrap()
            .with_generator(gen.clone())
            .forward(x),
        Kind::Alpha => AlphaDropout::new(P)
            .unwrap()
            .with_generator(gen.clone())
            .forward(x),
    }
    .unwrap()
}

#[test]
fn eight_threads_get_disjoint_offsets_that_replay() {
    let gen = Arc::new(Generator::new(SEED));
    gen.set_offset(START);
    let x = Arc::new(input());
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (gen, x, barrier) = (gen.clone(), x.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                (0..CALLS_PER_THREAD)
                    .map(|_| bits(&layer_call(kind_of_thread(t), &gen, &x).0))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let outputs: Vec<Vec<Vec<u32>>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let total = (THREADS * CALLS_PER_THREAD) as u64;
    assert_eq!(
        gen.offset(),
        START + total,
        "one offset per call, none lost"
    );

    // Which offset each output came from: replay every kind at every offset of the run.
    let mut by_bits: HashMap<(Kind, Vec<u32>), u64> = HashMap::new();
    for offset in START..START + total {
        for kind in [Kind::Dropout, Kind::Dropout2d, Kind::Alpha] {
            by_bits.insert((kind, replay(kind, &x, offset, MaskMode::Bits)), offset);
        }
    }
    let mut used = Vec::new();
    for (t, outs) in outputs.iter().enumerate() {
        let kind = kind_of_thread(t);
        let mut last = None;
        for y in outs {
            let offset = *by_bits
                .get(&(kind, y.clone()))
                .unwrap_or_else(|| panic!("thread {t}: an output matches no offset of the run"));
            // A thread's own calls are ordered: its offsets increase.
            assert!(
                last.is_none_or(|l| l < offset),
                "thread {t}: offsets out of order"
            );
            last = Some(offset);
            used.push((offset, kind, y.clone()));
        }
    }
    let mut offsets: Vec<u64> = used.iter().map(|u| u.0).collect();
    offsets.sort_unstable();
    assert_eq!(
        offsets,
        (START..START + total).collect::<Vec<_>>(),
        "offsets are disjoint and cover the run"
    );

    // Replay in reverse order, in the regenerate form, and from eight threads at once in an
    // interleaved order: the same bits every time.
    for (offset, kind, y) in used.iter().rev() {
        assert_eq!(&replay(*kind, &x, *offset, MaskMode::Regenerate), y);
    }
    let used = Arc::new(used);
    let replayers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (used, x) = (used.clone(), x.clone());
            std::thread::spawn(move || {
                for (offset, kind, y) in used.iter().skip(t).step_by(THREADS).rev() {
                    assert_eq!(&replay(*kind, &x, *offset, MaskMode::Bits), y);
                }
            })
        })
        .collect();
    for r in replayers {
        r.join().unwrap();
    }
}
