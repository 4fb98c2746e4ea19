//! Dropout inside CUDA graphs: a captured forward + backward step, replayed, gives at each
//! replay, bit for bit, the outputs, masks and gradients of eager calls at the offsets the
//! replay stands for; a checkpoint taken between replays resumes to the same masks; two
//! generators share one graph; a call that a capture cannot hold is refused with an error
//! and leaves the capture usable. Runs on the emulated driver in CI (which records and
//! replays captured launches) and on a GPU.
#![cfg(feature = "cuda")]

mod common;

use common::{bits_of, cuda_or_skip, test_data};
use dropkit::cuda::{CapturedGraph, CudaDevice, GraphSafeGenerator};
use dropkit::functional::{dropout, dropout_backward, dropout_into};
use dropkit::{Device, Dropout, DropoutState, Error, Generator, MaskMode, StreamPos, Tensor};
use std::sync::Arc;

const N: usize = 3000;
const P: f64 = 0.4;

/// The device, with cudarc's event tracking off (a capture must not wait on events
/// recorded outside it).
fn graph_device(test: &str) -> Option<(Device, CudaDevice)> {
    let dev = cuda_or_skip(test)?;
    let Device::Cuda(cuda) = &dev else {
        unreachable!("cuda_or_skip returns a CUDA device")
    };
    // SAFETY: every test here queues its work on its device's one stream, so no
    // cross-stream ordering is left to event tracking.
    unsafe { cuda.stream().context().disable_event_tracking() };
    let cuda = cuda.clone();
    Some((dev, cuda))
}

fn host(t: &Tensor<f32>) -> Vec<u64> {
    bits_of(&t.to_vec().unwrap())
}

/// Buffers of one step: x -> a (bits form) -> b (regenerate form), then the gradients back.
struct Step {
    x: Tensor<f32>,
    dy: Tensor<f32>,
    a: Tensor<f32>,
    b: Tensor<f32>,
    da: Tensor<f32>,
    dx: Tensor<f32>,
    sa: DropoutState,
    sb: DropoutState,
}

impl Step {
    /// Preallocated buffers; the states come from eager calls at another generator (so
    /// the step's own generators take no offset here).
    fn new(dev: &Device, first: &Dropout, second: &Dropout) -> Self {
        let x = Tensor::from_vec(test_data::<f32>(N, 1), &[N])
            .unwrap()
            .to_device(dev)
            .unwrap();
        let dy = Tensor::from_vec(test_data::<f32>(N, 2), &[N])
            .unwrap()
            .to_device(dev)
            .unwrap();
        let scratch = Arc::new(Generator::new(0));
        let (a, sa) = first
            .clone()
            .with_generator(scratch.clone())
            .forward(&x)
            .unwrap();
        let (b, sb) = second.clone().with_generator(scratch).forward(&a).unwrap();
        let (da, dx) = (b.try_clone().unwrap(), a.try_clone().unwrap());
        Self {
            x,
            dy,
            a,
            b,
            da,
            dx,
            sa,
            sb,
        }
    }

    /// The step, as captured: forward_into twice, backward_into twice.
    fn run(&mut self, first: &Dropout, second: &Dropout) -> dropkit::Result<()> {
        first.forward_into(&self.x, &mut self.a, &mut self.sa)?;
        second.forward_into(&self.a, &mut self.b, &mut self.sb)?;
        second.backward_into(&self.dy, &self.sb, &mut self.da)?;
        first.backward_into(&self.da, &self.sa, &mut self.dx)
    }

    /// (a, b, da, dx) and a's mask, downloaded.
    fn results(&self) -> [Vec<u64>; 5] {
        let mask = self.sa.keep_bits().unwrap().unwrap();
        [
            host(&self.a),
            host(&self.b),
            host(&self.da),
            host(&self.dx),
            mask.iter().map(|&w| u64::from(w)).collect(),
        ]
    }
}

/// The same step eagerly, with the first layer at (seed, off_a) and the second at
/// (seed_b, off_b).
fn eager(step: &Step, (seed, off_a): (u64, u64), (seed_b, off_b): (u64, u64)) -> [Vec<u64>; 5] {
    let (a, sa) = dropout(
        &step.x,
        P,
        true,
        StreamPos::new(seed, off_a),
        MaskMode::Bits,
    )
    .unwrap();
    let (b, sb) = dropout(
        &a,
        P,
        true,
        StreamPos::new(seed_b, off_b),
        MaskMode::Regenerate,
    )
    .unwrap();
    let da = dropout_backward(&step.dy, &sb).unwrap();
    let dx = dropout_backward(&da, &sa).unwrap();
    let mask = sa.keep_bits().unwrap().unwrap();
    [
        host(&a),
        host(&b),
        host(&da),
        host(&dx),
        mask.iter().map(|&w| u64::from(w)).collect(),
    ]
}

fn layers(gen_a: &Arc<Generator>, gen_b: &Arc<Generator>) -> (Dropout, Dropout) {
    let first = Dropout::new(P).unwrap().with_generator(gen_a.clone());
    let second = Dropout::new(P)
        .unwrap()
        .with_generator(gen_b.clone())
        .with_mask_mode(MaskMode::Regenerate);
    (first, second)
}

#[test]
fn replays_match_eager_calls_at_the_matching_offsets() {
    let Some((dev, cuda)) = graph_device("replays_match_eager_calls_at_the_matching_offsets")
    else {
        return;
    };
    let gen = GraphSafeGenerator::new(&cuda, Arc::new(Generator::new(41))).unwrap();
    gen.generator().set_offset(10);
    let (first, second) = layers(gen.generator(), gen.generator());
    let mut step = Step::new(&dev, &first, &second);
    let (graph, ()) = CapturedGraph::capture(&cuda, &[&gen], || step.run(&first, &second)).unwrap();
    assert_eq!(
        graph.calls(&gen),
        Some(2),
        "two training forwards were captured"
    );
    assert_eq!(gen.state().offset, 10, "capturing takes no offset");
    let mut previous: Option<[Vec<u64>; 5]> = None;
    for k in 0..5u64 {
        graph.replay().unwrap();
        assert_eq!(
            gen.state().offset,
            12 + 2 * k,
            "replay {k} advanced by its calls"
        );
        let got = step.results();
        let want = eager(&step, (41, 10 + 2 * k), (41, 11 + 2 * k));
        assert_eq!(
            got, want,
            "replay {k} differs from eager calls at its offsets"
        );
        if let Some(prev) = &previous {
            assert_ne!(prev[0], got[0], "replay {k} repeated the previous mask");
        }
        previous = Some(got);
    }
    // Eager calls and replays interleave on one generator: an eager forward takes the
    // next offset, and the next replay starts after it.
    let (eager_y, _) = first.forward(&step.x).unwrap();
    assert_eq!(
        host(&eager_y),
        host(
            &dropout(&step.x, P, true, StreamPos::new(41, 20), MaskMode::Bits)
                .unwrap()
                .0
        )
    );
    graph.replay().unwrap();
    assert_eq!(step.results(), eager(&step, (41, 21), (41, 22)));
}

#[test]
fn a_checkpoint_between_replays_resumes_the_same_masks() {
    let Some((dev, cuda)) = graph_device("a_checkpoint_between_replays_resumes_the_same_masks")
    else {
        return;
    };
    let gen = GraphSafeGenerator::new(&cuda, Arc::new(Generator::new(5))).unwrap();
    let (first, second) = layers(gen.generator(), gen.generator());
    let mut step = Step::new(&dev, &first, &second);
    let (graph, ()) = CapturedGraph::capture(&cuda, &[&gen], || step.run(&first, &second)).unwrap();
    graph.replay().unwrap();
    graph.replay().unwrap();
    let checkpoint = gen.state();
    graph.replay().unwrap();
    let third = step.results();
    graph.replay().unwrap();
    assert_ne!(step.results()[0], third[0]);
    gen.set_state(checkpoint);
    graph.replay().unwrap();
    assert_eq!(
        step.results(),
        third,
        "the restored checkpoint replays other masks"
    );
    // The checkpoint also resumes on a fresh generator, eagerly (here and on any device).
    let resumed = Generator::from_state(checkpoint);
    let pos = resumed.next_pos();
    let (y, _) = dropout(&step.x, P, true, pos, MaskMode::Bits).unwrap();
    assert_eq!(host(&y), third[0]);
}

#[test]
fn two_generators_share_one_graph() {
    let Some((dev, cuda)) = graph_device("two_generators_share_one_graph") else {
        return;
    };
    let gen_a = GraphSafeGenerator::new(&cuda, Arc::new(Generator::new(100))).unwrap();
    let gen_b = GraphSafeGenerator::new(&cuda, Arc::new(Generator::for_stream(100, 3))).unwrap();
    gen_b.generator().set_offset(7);
    let seed_b = gen_b.state().seed;
    let (first, second) = layers(gen_a.generator(), gen_b.generator());
    let mut step = Step::new(&dev, &first, &second);
    let (graph, ()) =
        CapturedGraph::capture(&cuda, &[&gen_a, &gen_b], || step.run(&first, &second)).unwrap();
    assert_eq!(
        (graph.calls(&gen_a), graph.calls(&gen_b)),
        (Some(1), Some(1))
    );
    for k in 0..3u64 {
        graph.replay().unwrap();
        assert_eq!(
            step.results(),
            eager(&step, (100, k), (seed_b, 7 + k)),
            "replay {k}"
        );
    }
    assert_eq!((gen_a.state().offset, gen_b.state().offset), (3, 10));
}

#[test]
fn calls_a_capture_cannot_hold_are_refused_and_the_capture_stays_usable() {
    let Some((dev, cuda)) =
        graph_device("calls_a_capture_cannot_hold_are_refused_and_the_capture_stays_usable")
    else {
        return;
    };
    let gen = GraphSafeGenerator::new(&cuda, Arc::new(Generator::new(9))).unwrap();
    let outsider = Arc::new(Generator::new(9));
    let (first, second) = layers(gen.generator(), gen.generator());
    let stranger = Dropout::new(P).unwrap().with_generator(outsider.clone());
    let mut step = Step::new(&dev, &first, &second);
    let mut out = step.a.try_clone().unwrap();
    // A reusable state: an eager call's.
    let mut state = dropout(&step.x, P, true, StreamPos::new(0, 0), MaskMode::Bits)
        .unwrap()
        .1;
    let mut refusals = Vec::new();
    let (graph, ()) = CapturedGraph::capture(&cuda, &[&gen], || {
        let capturing = |r: dropkit::Result<()>| matches!(r, Err(Error::StreamCapturing { .. }));
        // An allocating forward, a download, a by-value position, an outside generator.
        refusals.push(capturing(first.forward(&step.x).map(drop)));
        refusals.push(capturing(step.x.to_vec().map(drop)));
        let by_value = StreamPos::new(1, 2);
        let st = &mut state;
        refusals.push(capturing(dropout_into(
            &step.x,
            &mut out,
            st,
            P,
            true,
            by_value,
            MaskMode::Bits,
        )));
        refusals.push(capturing(stranger.forward_into(&step.x, &mut out, st)));
        // The capture is intact: the step records as usual.
        step.run(&first, &second)
    })
    .unwrap();
    assert_eq!(
        refusals, [true; 4],
        "each illegal call returned StreamCapturing"
    );
    assert_eq!(
        outsider.offset(),
        0,
        "the refused outside call took no offset"
    );
    assert_eq!(
        graph.calls(&gen),
        Some(2),
        "a refused call took no place in the graph"
    );
    graph.replay().unwrap();
    assert_eq!(step.results(), eager(&step, (9, 0), (9, 1)));
    // A graph of nothing is an error, and so is a capture that is already running.
    let empty = CapturedGraph::capture(&cuda, &[&gen], || Ok(()));
    assert!(
        matches!(empty, Err(Error::InvalidArgument { .. })),
        "{empty:?}"
    );
    let nested = CapturedGraph::capture(&cuda, &[&gen], || {
        CapturedGraph::capture(&cuda, &[&gen], || Ok(())).map(drop)
    });
    assert!(nested.is_err(), "a capture inside a capture");
    assert!(
        !gen.generator().is_capturing(),
        "the failed captures ended the generator's"
    );
}

/// One layer of the family, captured in both saved forms: forward_into then
/// backward_into, replayed three times, each replay equal to the eager forward and
/// backward at its offset (outputs and gradients, and the mask of the bits form).
macro_rules! captured_layer {
    ($test:ident, $layer:expr, $shape:expr) => {
        #[test]
        fn $test() {
            let Some((dev, cuda)) = graph_device(stringify!($test)) else {
                return;
            };
            let shape: &[usize] = &$shape;
            let n: usize = shape.iter().product();
            let x = Tensor::from_vec(test_data::<f32>(n, 3), shape)
                .unwrap()
                .to_device(&dev)
                .unwrap();
            let dy = Tensor::from_vec(test_data::<f32>(n, 4), shape)
                .unwrap()
                .to_device(&dev)
                .unwrap();
            for mode in [MaskMode::Bits, MaskMode::Regenerate] {
                let gen = GraphSafeGenerator::new(&cuda, Arc::new(Generator::new(77))).unwrap();
                gen.generator().set_offset(3);
                let layer = $layer
                    .with_mask_mode(mode)
                    .with_generator(gen.generator().clone());
                // Buffers and a reusable state from an eager call of another generator.
                let scratch = layer.clone().with_generator(Arc::new(Generator::new(1)));
                let (mut y, mut state) = scratch.forward(&x).unwrap();
                let mut dx = y.try_clone().unwrap();
                let (graph, ()) = CapturedGraph::capture(&cuda, &[&gen], || {
                    layer.forward_into(&x, &mut y, &mut state)?;
                    layer.backward_into(&dy, &state, &mut dx)
                })
                .unwrap();
                assert_eq!(graph.calls(&gen), Some(1));
                for k in 0..3u64 {
                    graph.replay().unwrap();
                    let eager_gen = Arc::new(Generator::new(77));
                    eager_gen.set_offset(3 + k);
                    let eager = layer.clone().with_generator(eager_gen);
                    let (ey, es) = eager.forward(&x).unwrap();
                    let edx = eager.backward(&dy, &es).unwrap();
                    let what = format!("{mode:?} replay {k}");
                    assert_eq!(host(&y), host(&ey), "{what}: output");
                    assert_eq!(host(&dx), host(&edx), "{what}: gradient");
                    if mode == MaskMode::Bits {
                        assert_eq!(
                            state.keep_bits().unwrap(),
                            es.keep_bits().unwrap(),
                            "{what}"
                        );
                    }
                }
                assert_eq!(gen.state().offset, 6);
            }
        }
    };
}

captured_layer!(captured_dropout, Dropout::new(0.3).unwrap(), [999]);
captured_layer!(
    captured_alpha_dropout,
    dropkit::AlphaDropout::new(0.2).unwrap(),
    [517]
);
captured_layer!(
    captured_dropout1d,
    dropkit::Dropout1d::new(0.5).unwrap(),
    [4, 33, 7]
);
captured_layer!(
    captured_dropout2d,
    dropkit::Dropout2d::new(0.5).unwrap(),
    [3, 20, 5, 3]
);
captured_layer!(
    captured_dropout3d,
    dropkit::Dropout3d::new(0.5).unwrap(),
    [2, 9, 2, 3, 2]
);
captured_layer!(
    captured_drop_path,
    dropkit::DropPath::new(0.5).unwrap(),
    [37, 6]
);
captured_layer!(
    captured_feature_alpha_dropout,
    dropkit::FeatureAlphaDropout::new(0.5).unwrap(),
    [3, 40, 6]
);

/// The fused bias + dropout + residual captured in both forms: forward_into, then
/// backward_into (whose column sums reuse the state's partial buffer, made by the eager
/// warm-up call), each replay equal to the eager layer at its offset: output, mask and
/// all three gradients.
#[test]
fn captured_bias_dropout_residual() {
    let Some((dev, cuda)) = graph_device("captured_bias_dropout_residual") else {
        return;
    };
    let (rows, h) = (67, 24);
    let n = rows * h;
    let on = |salt, len: usize, shape: &[usize]| {
        Tensor::from_vec(test_data::<f32>(len, salt), shape)
            .unwrap()
            .to_device(&dev)
            .unwrap()
    };
    let (x, bias, residual, dz) = (
        on(5, n, &[rows, h]),
        on(6, h, &[h]),
        on(7, n, &[rows, h]),
        on(8, n, &[rows, h]),
    );
    for mode in [MaskMode::Bits, MaskMode::Regenerate] {
        let gen = GraphSafeGenerator::new(&cuda, Arc::new(Generator::new(31))).unwrap();
        let layer = dropkit::BiasDropoutResidual::new(0.25)
            .unwrap()
            .with_mask_mode(mode)
            .with_generator(gen.generator().clone());
        // Buffers, a state and the partial sums from an eager warm-up on another generator.
        let warm = layer.clone().with_generator(Arc::new(Generator::new(2)));
        let (mut out, mut state) = warm.forward(&x, &bias, &residual).unwrap();
        let mut grads = warm.backward(&dz, &state).unwrap();
        warm.backward_into(&dz, &state, &mut grads).unwrap();
        let (graph, ()) = CapturedGraph::capture(&cuda, &[&gen], || {
            layer.forward_into(&x, &bias, &residual, &mut out, &mut state)?;
            layer.backward_into(&dz, &state, &mut grads)
        })
        .unwrap();
        for k in 0..3u64 {
            graph.replay().unwrap();
            let eager_gen = Arc::new(Generator::new(31));
            eager_gen.set_offset(k);
            let eager = layer.clone().with_generator(eager_gen);
            let (eo, es) = eager.forward(&x, &bias, &residual).unwrap();
            let eg = eager.backward(&dz, &es).unwrap();
            let what = format!("{mode:?} replay {k}");
            assert_eq!(host(&out), host(&eo), "{what}: output");
            assert_eq!(host(&grads.x), host(&eg.x), "{what}: dx");
            assert_eq!(host(&grads.bias), host(&eg.bias), "{what}: dbias");
            assert_eq!(
                host(&grads.residual),
                host(&eg.residual),
                "{what}: dresidual"
            );
            if mode == MaskMode::Bits {
                let (a, b) = (state.dropout_state(), es.dropout_state());
                assert_eq!(a.keep_bits().unwrap(), b.keep_bits().unwrap(), "{what}");
            }
        }
    }
}

/// The fused dropout + add + norm captured in both forms and both norms: forward_into and
/// backward_into after one eager warm-up step of the `_into` forms (which makes the
/// regenerate form's scratch mask and the column sums' partial buffer), each replay equal
/// to the eager layer at its offset: z, s, the statistics and every gradient.
#[test]
fn captured_dropout_add_norm() {
    use dropkit::functional::{AddNormInputs, AddNormSaved};
    use dropkit::{DropoutAddNorm, Norm};
    let Some((dev, cuda)) = graph_device("captured_dropout_add_norm") else {
        return;
    };
    let (rows, h) = (37, 40);
    let n = rows * h;
    let on = |salt, len: usize, shape: &[usize]| {
        Tensor::from_vec(test_data::<f32>(len, salt), shape)
            .unwrap()
            .to_device(&dev)
            .unwrap()
    };
    let (x, bias, residual, dz, ds) = (
        on(40, n, &[rows, h]),
        on(41, h, &[h]),
        on(42, n, &[rows, h]),
        on(43, n, &[rows, h]),
        on(44, n, &[rows, h]),
    );
    let gamma = Tensor::from_vec(vec![1.25f32; h], &[h])
        .unwrap()
        .to_device(&dev)
        .unwrap();
    let beta = on(45, h, &[h]);
    for norm in [Norm::LayerNorm, Norm::RmsNorm] {
        for mode in [MaskMode::Bits, MaskMode::Regenerate] {
            let make = |g: Arc<Generator>| {
                let layer = match norm {
                    Norm::LayerNorm => DropoutAddNorm::layer_norm(0.2, 1e-5),
                    Norm::RmsNorm => DropoutAddNorm::rms_norm(0.2, 1e-5),
                };
                layer.unwrap().with_mask_mode(mode).with_generator(g)
            };
            let inputs = || AddNormInputs {
                x: &x,
                bias: Some(&bias),
                residual: Some(&residual),
                gamma: &gamma,
                beta: (norm == Norm::LayerNorm).then_some(&beta),
            };
            let gen = GraphSafeGenerator::new(&cuda, Arc::new(Generator::new(12))).unwrap();
            let layer = make(gen.generator().clone());
            // Warm-up on another generator: the allocating forms, then the _into ones.
            let warm = make(Arc::new(Generator::new(3)));
            let mut out = warm.forward(inputs()).unwrap();
            let saved = AddNormSaved {
                s: &out.s,
                gamma: &gamma,
            };
            let mut grads = warm.backward(&dz, Some(&ds), saved, &out.state).unwrap();
            warm.forward_into(inputs(), &mut out).unwrap();
            let saved = AddNormSaved {
                s: &out.s,
                gamma: &gamma,
            };
            warm.backward_into(&dz, Some(&ds), saved, &out.state, &mut grads)
                .unwrap();
            let (graph, ()) = CapturedGraph::capture(&cuda, &[&gen], || {
                layer.forward_into(inputs(), &mut out)?;
                let saved = AddNormSaved {
                    s: &out.s,
                    gamma: &gamma,
                };
                layer.backward_into(&dz, Some(&ds), saved, &out.state, &mut grads)
            })
            .unwrap();
            for k in 0..3u64 {
                graph.replay().unwrap();
                let eager_gen = Arc::new(Generator::new(12));
                eager_gen.set_offset(k);
                let eager = make(eager_gen);
                let eo = eager.forward(inputs()).unwrap();
                let saved = AddNormSaved {
                    s: &eo.s,
                    gamma: &gamma,
                };
                let eg = eager.backward(&dz, Some(&ds), saved, &eo.state).unwrap();
                let what = format!("{norm:?} {mode:?} replay {k}");
                assert_eq!(host(&out.z), host(&eo.z), "{what}: z");
                assert_eq!(host(&out.s), host(&eo.s), "{what}: s");
                let stats = |st: &dropkit::functional::AddNormState| -> Vec<(u64, u64)> {
                    let rows = st.row_stats().unwrap();
                    rows.iter()
                        .map(|(m, r)| (m.to_bits(), r.to_bits()))
                        .collect()
                };
                assert_eq!(stats(&out.state), stats(&eo.state), "{what}: statistics");
                assert_eq!(host(&grads.x), host(&eg.x), "{what}: dx");
                let opt = |t: &Option<Tensor<f32>>| t.as_ref().map(host);
                assert_eq!(opt(&grads.residual), opt(&eg.residual), "{what}: dresidual");
                assert_eq!(opt(&grads.bias), opt(&eg.bias), "{what}: dbias");
                assert_eq!(host(&grads.gamma), host(&eg.gamma), "{what}: dgamma");
                assert_eq!(opt(&grads.beta), opt(&eg.beta), "{what}: dbeta");
                if mode == MaskMode::Bits {
                    assert_eq!(
                        out.state.keep_bits().unwrap(),
                        eo.state.keep_bits().unwrap()
                    );
                }
            }
        }
    }
}
