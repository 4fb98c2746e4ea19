//! The fused dropout + residual add + LayerNorm / RMSNorm (docs/spec.md section 6.3):
//! known answers from the independent Python model, bit for bit, on every device; the
//! gradients against finite differences in f64; statistics; edge rows; errors that leave
//! the generator unchanged; CUDA against the CPU for every dtype and form.

mod common;

use common::{bits_of, cuda_or_skip, test_device};
use dropkit::element::ComputeFloat;
use dropkit::functional::{
    dropout_add_norm, dropout_add_norm_backward, dropout_add_norm_backward_into,
    dropout_add_norm_into, AddNormConfig, AddNormGrads, AddNormInputs, AddNormOutput, AddNormSaved,
};
use dropkit::{
    DType, Device, DropoutAddNorm, Element, Error, Generator, MaskMode, Norm, StreamPos, Tensor,
};
use half::{bf16, f16};
use std::sync::Arc;

/// Host data of one call, moved to a device for each run.
#[derive(Clone)]
struct Case<T, R> {
    rows: usize,
    h: usize,
    x: Vec<T>,
    bias: Option<Vec<T>>,
    residual: Option<Vec<R>>,
    gamma: Vec<T>,
    beta: Option<Vec<T>>,
    dz: Vec<T>,
    ds: Option<Vec<R>>,
    config: AddNormConfig,
    pos: StreamPos,
}

/// Every result of one forward + backward, as host vectors.
#[derive(Debug, PartialEq)]
struct Results {
    z: Vec<u64>,
    s: Vec<u64>,
    stats: Vec<(u64, u64)>,
    keep: Option<Vec<u32>>,
    dx: Vec<u64>,
    dresidual: Option<Vec<u64>>,
    dbias: Option<Vec<u64>>,
    dgamma: Vec<u64>,
    dbeta: Option<Vec<u64>>,
}

fn on<T: Element>(dev: &Device, v: &[T], shape: &[usize]) -> Tensor<T> {
    Tensor::from_vec(v.to_vec(), shape)
        .unwrap()
        .to_device(dev)
        .unwrap()
}

fn stat_bits(v: f64) -> u64 {
    if v.is_nan() {
        u64::MAX
    } else {
        v.to_bits()
    }
}

impl<T: Element, R: Element<Compute = T::Compute>> Case<T, R> {
    fn tensors(&self, dev: &Device) -> Tensors<T, R> {
        let shape = [self.rows, self.h];
        let row = [self.h];
        Tensors {
            x: on(dev, &self.x, &shape),
            bias: self.bias.as_ref().map(|b| on(dev, b, &row)),
            residual: self.residual.as_ref().map(|r| on(dev, r, &shape)),
            gamma: on(dev, &self.gamma, &row),
            beta: self.beta.as_ref().map(|b| on(dev, b, &row)),
            dz: on(dev, &self.dz, &shape),
            ds: self.ds.as_ref().map(|d| on(dev, d, &shape)),
        }
    }

    fn run(&self, dev: &Device, mode: MaskMode) -> Results {
        let t = self.tensors(dev);
        let out = dropout_add_norm(t.inputs(), &self.config, self.pos, mode).unwrap();
        let saved = AddNormSaved {
            s: &out.s,
            gamma: &t.gamma,
        };
        let g = dropout_add_norm_backward(&t.dz, t.ds.as_ref(), saved, &out.state).unwrap();
        results(&out, &g)
    }
}

struct Tensors<T: Element, R: Element> {
    x: Tensor<T>,
    bias: Option<Tensor<T>>,
    residual: Option<Tensor<R>>,
    gamma: Tensor<T>,
    beta: Option<Tensor<T>>,
    dz: Tensor<T>,
    ds: Option<Tensor<R>>,
}

impl<T: Element, R: Element> Tensors<T, R> {
    fn inputs(&self) -> AddNormInputs<'_, T, R> {
        AddNormInputs {
            x: &self.x,
            bias: self.bias.as_ref(),
            residual: self.residual.as_ref(),
            gamma: &self.gamma,
            beta: self.beta.as_ref(),
        }
    }
}

fn host_bits<T: Element>(t: &Tensor<T>) -> Vec<u64> {
    bits_of(&t.to_vec().unwrap())
}

fn results<T: Element, R: Element>(out: &AddNormOutput<T, R>, g: &AddNormGrads<T, R>) -> Results {
    Results {
        z: host_bits(&out.z),
        s: host_bits(&out.s),
        stats: out
            .state
            .row_stats()
            .unwrap()
            .into_iter()
            .map(|(m, r)| (stat_bits(m), stat_bits(r)))
            .collect(),
        keep: out.state.keep_bits().unwrap(),
        dx: host_bits(&g.x),
        dresidual: g.residual.as_ref().map(host_bits),
        dbias: g.bias.as_ref().map(host_bits),
        dgamma: host_bits(&g.gamma),
        dbeta: g.beta.as_ref().map(host_bits),
    }
}

// ---------------------------------------------------------------------------------------
// Known answers: tests/data/add_norm_vectors.txt, written by scripts/spec_vectors.py.
// ---------------------------------------------------------------------------------------

/// The value of `E` with raw bits `b` (every value of E is an f64, so through f64 exactly).
fn from_bits<E: Element>(b: u64) -> E {
    let v = match E::DTYPE {
        DType::F32 => f64::from(f32::from_bits(b as u32)),
        DType::F64 => f64::from_bits(b),
        DType::F16 => f16::from_bits(b as u16).to_f64(),
        DType::BF16 => bf16::from_bits(b as u16).to_f64(),
    };
    E::from_f64(v)
}

/// One case of the vector file: header fields and hex lines by name.
struct Vector {
    name: String,
    fields: std::collections::HashMap<String, String>,
    lines: std::collections::HashMap<String, Vec<String>>,
}

fn vectors() -> Vec<Vector> {
    let text = include_str!("data/add_norm_vectors.txt");
    let mut out = Vec::new();
    let mut cur: Option<Vector> = None;
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let mut words = line.split_whitespace();
        let key = words.next().unwrap();
        match key {
            "case" => {
                let name = words.next().unwrap().to_string();
                let fields = words
                    .map(|w| {
                        let (k, v) = w.split_once('=').unwrap();
                        (k.to_string(), v.to_string())
                    })
                    .collect();
                cur = Some(Vector {
                    name,
                    fields,
                    lines: Default::default(),
                });
            }
            "end" => out.push(cur.take().unwrap()),
            _ => {
                let v = cur.as_mut().unwrap();
                v.lines
                    .insert(key.to_string(), words.map(str::to_string).collect());
            }
        }
    }
    assert!(out.len() >= 40, "only {} vector cases", out.len());
    out
}

impl Vector {
    fn field(&self, k: &str) -> &str {
        &self.fields[k]
    }

    fn num<N: std::str::FromStr>(&self, k: &str) -> N
    where
        N::Err: std::fmt::Debug,
    {
        self.field(k).parse().unwrap()
    }

    fn vals<E: Element>(&self, k: &str) -> Option<Vec<E>> {
        self.lines.get(k).map(|ws| {
            ws.iter()
                .map(|w| from_bits::<E>(u64::from_str_radix(w, 16).unwrap()))
                .collect()
        })
    }

    fn bits<E: Element>(&self, k: &str) -> Option<Vec<u64>> {
        self.vals::<E>(k).map(|v| bits_of(&v))
    }

    fn case<T: Element, R: Element>(&self) -> Case<T, R> {
        let norm = match self.field("norm") {
            "layer" => Norm::LayerNorm,
            "rms" => Norm::RmsNorm,
            other => panic!("norm {other}"),
        };
        Case {
            rows: self.num("N"),
            h: self.num("H"),
            x: self.vals("x").unwrap(),
            bias: self.vals("bias"),
            residual: self.vals("residual"),
            gamma: self.vals("gamma").unwrap(),
            beta: self.vals("beta"),
            dz: self.vals("dz").unwrap(),
            ds: self.vals("ds"),
            config: AddNormConfig {
                norm,
                p: self.num("p"),
                eps: self.num("eps"),
                training: self.field("training") == "1",
            },
            pos: StreamPos::new(self.num("seed"), self.num("offset"))
                .with_index_base(self.num("index_base")),
        }
    }

    fn expected<T: Element, R: Element, C: Element>(&self) -> Results {
        let stat = |k: &str| {
            self.vals::<C>(k)
                .unwrap()
                .iter()
                .map(|v| stat_bits(v.to_compute().to_f64()))
                .collect::<Vec<_>>()
        };
        let keep = self.lines["keep"][0].as_bytes();
        let mut words = vec![0u32; keep.len().div_ceil(32)];
        for (i, &c) in keep.iter().enumerate() {
            if c == b'1' {
                words[i / 32] |= 1 << (i % 32);
            }
        }
        Results {
            z: self.bits::<T>("z").unwrap(),
            s: self.bits::<R>("s").unwrap(),
            stats: stat("mean").into_iter().zip(stat("rstd")).collect(),
            keep: (self.field("training") == "1").then_some(words),
            dx: self.bits::<T>("dx").unwrap(),
            dresidual: self.bits::<R>("dresidual"),
            dbias: self.bits::<T>("dbias"),
            dgamma: self.bits::<T>("dgamma").unwrap(),
            dbeta: self.bits::<T>("dbeta"),
        }
    }
}

/// Runs one vector on `dev` in both saved forms and compares every output bit for bit.
fn check_vector<T: Element, R: Element<Compute = T::Compute>, C: Element>(
    v: &Vector,
    dev: &Device,
) {
    let case = v.case::<T, R>();
    let expected = v.expected::<T, R, C>();
    for mode in [MaskMode::Bits, MaskMode::Regenerate] {
        let got = case.run(dev, mode);
        let what = format!("vector {} on {dev} {mode:?}", v.name);
        assert_eq!(got.keep, expected.keep, "{what}: keep bits");
        assert_eq!(got.s, expected.s, "{what}: s");
        assert_eq!(got.stats, expected.stats, "{what}: mean, rstd");
        assert_eq!(got.z, expected.z, "{what}: z");
        assert_eq!(got.dx, expected.dx, "{what}: dx");
        assert_eq!(got.dresidual, expected.dresidual, "{what}: dresidual");
        assert_eq!(got.dbias, expected.dbias, "{what}: dbias");
        assert_eq!(got.dgamma, expected.dgamma, "{what}: dgamma");
        assert_eq!(got.dbeta, expected.dbeta, "{what}: dbeta");
    }
}

fn known_answers(dev: &Device) {
    let mut count = 0;
    for v in vectors() {
        match (v.field("T"), v.field("R")) {
            ("f32", "f32") => check_vector::<f32, f32, f32>(&v, dev),
            ("f64", "f64") => check_vector::<f64, f64, f64>(&v, dev),
            ("f16", "f16") => check_vector::<f16, f16, f32>(&v, dev),
            ("bf16", "bf16") => check_vector::<bf16, bf16, f32>(&v, dev),
            ("f16", "f32") => check_vector::<f16, f32, f32>(&v, dev),
            ("bf16", "f32") => check_vector::<bf16, f32, f32>(&v, dev),
            (t, r) => panic!("vector {}: T={t} R={r}", v.name),
        }
        count += 1;
    }
    assert!(count >= 40);
}

test_device!(known_answers, known_answers_cpu, known_answers_cuda);

// ---------------------------------------------------------------------------------------
// Generated cases: CUDA against the CPU for every dtype, norm and optional input.
// ---------------------------------------------------------------------------------------

/// A small LCG: deterministic data without a dependency.
fn data(n: usize, salt: u64, scale: f64) -> Vec<f64> {
    let mut s = salt
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn cast<E: Element>(v: &[f64]) -> Vec<E> {
    v.iter().map(|&x| E::from_f64(x)).collect()
}

fn generated<T: Element, R: Element>(
    rows: usize,
    h: usize,
    norm: Norm,
    p: f64,
    with: [bool; 3],
    training: bool,
    salt: u64,
) -> Case<T, R> {
    let n = rows * h;
    let [bias, residual, ds] = with;
    Case {
        rows,
        h,
        x: cast(&data(n, salt, 3.0)),
        bias: bias.then(|| cast(&data(h, salt + 1, 0.5))),
        residual: residual.then(|| cast(&data(n, salt + 2, 2.0))),
        gamma: cast(
            &data(h, salt + 3, 0.5)
                .iter()
                .map(|g| 1.0 + g)
                .collect::<Vec<_>>(),
        ),
        beta: (norm == Norm::LayerNorm).then(|| cast(&data(h, salt + 4, 0.3))),
        dz: cast(&data(n, salt + 5, 1.0)),
        ds: ds.then(|| cast(&data(n, salt + 6, 1.0))),
        config: AddNormConfig {
            norm,
            p,
            eps: 1e-5,
            training,
        },
        pos: StreamPos::new(salt, 3 + salt),
    }
}

fn cuda_matches_cpu<T: Element, R: Element<Compute = T::Compute>>(dev: &Device) {
    // H: 1, below a warp, odd, a warp, not a multiple of 8, FlashAttention's limit + 1,
    // and past 2^16; rows cross a 256-row column-sum block.
    let shapes = [
        (7, 1),
        (5, 3),
        (3, 31),
        (4, 32),
        (300, 33),
        (2, 8193),
        (1, 65537),
    ];
    for (k, &(rows, h)) in shapes.iter().enumerate() {
        for norm in [Norm::LayerNorm, Norm::RmsNorm] {
            for (w, with) in [
                [true, true, true],
                [false, false, false],
                [true, false, true],
            ]
            .into_iter()
            .enumerate()
            {
                let training = w != 2 || k % 2 == 0;
                let case =
                    generated::<T, R>(rows, h, norm, 0.3, with, training, 17 * k as u64 + w as u64);
                for mode in [MaskMode::Bits, MaskMode::Regenerate] {
                    let cpu = case.run(&Device::Cpu, mode);
                    let gpu = case.run(dev, mode);
                    assert_eq!(
                        gpu,
                        cpu,
                        "{} / {} rows={rows} h={h} {norm:?} {with:?} training={training} {mode:?}",
                        T::DTYPE,
                        R::DTYPE
                    );
                }
            }
        }
    }
}

#[test]
fn cuda_matches_cpu_every_dtype() {
    let Some(dev) = cuda_or_skip("cuda_matches_cpu_every_dtype") else {
        return;
    };
    cuda_matches_cpu::<f32, f32>(&dev);
    cuda_matches_cpu::<f64, f64>(&dev);
    cuda_matches_cpu::<f16, f16>(&dev);
    cuda_matches_cpu::<bf16, bf16>(&dev);
    cuda_matches_cpu::<f16, f32>(&dev);
    cuda_matches_cpu::<bf16, f32>(&dev);
}

// ---------------------------------------------------------------------------------------
// Gradients against finite differences (f64), on the CPU.
// ---------------------------------------------------------------------------------------

/// L = sum(z * wz) + sum(s * ws) as a function of one input vector.
fn loss(case: &Case<f64, f64>) -> f64 {
    let t = case.tensors(&Device::Cpu);
    let out = dropout_add_norm(t.inputs(), &case.config, case.pos, MaskMode::Bits).unwrap();
    let z = out.z.to_vec().unwrap();
    let s = out.s.to_vec().unwrap();
    let ws = case.ds.clone().unwrap_or_else(|| vec![0.0; s.len()]);
    z.iter().zip(&case.dz).map(|(a, b)| a * b).sum::<f64>()
        + s.iter().zip(&ws).map(|(a, b)| a * b).sum::<f64>()
}

fn finite_difference(case: &Case<f64, f64>, which: &str, k: usize) -> f64 {
    let e = 1e-6;
    let mut plus = case.clone();
    let mut minus = case.clone();
    let pick = |c: &mut Case<f64, f64>| -> *mut f64 {
        match which {
            "x" => &mut c.x[k],
            "residual" => &mut c.residual.as_mut().unwrap()[k],
            "bias" => &mut c.bias.as_mut().unwrap()[k],
            "gamma" => &mut c.gamma[k],
            "beta" => &mut c.beta.as_mut().unwrap()[k],
            _ => unreachable!(),
        }
    };
    // SAFETY: each pointer is to an element of its own case, alive for this block.
    unsafe {
        *pick(&mut plus) += e;
        *pick(&mut minus) -= e;
    }
    (loss(&plus) - loss(&minus)) / (2.0 * e)
}

#[test]
fn gradients_match_finite_differences_in_f64() {
    for norm in [Norm::LayerNorm, Norm::RmsNorm] {
        for h in [1, 7, 40] {
            let case =
                generated::<f64, f64>(3, h, norm, 0.25, [true, true, true], true, 5 + h as u64);
            let t = case.tensors(&Device::Cpu);
            let out = dropout_add_norm(t.inputs(), &case.config, case.pos, MaskMode::Bits).unwrap();
            let saved = AddNormSaved {
                s: &out.s,
                gamma: &t.gamma,
            };
            let g = dropout_add_norm_backward(&t.dz, t.ds.as_ref(), saved, &out.state).unwrap();
            let mut grads = vec![
                ("x", g.x.to_vec().unwrap()),
                ("residual", g.residual.unwrap().to_vec().unwrap()),
                ("bias", g.bias.unwrap().to_vec().unwrap()),
                ("gamma", g.gamma.to_vec().unwrap()),
            ];
            if let Some(b) = g.beta {
                grads.push(("beta", b.to_vec().unwrap()));
            }
            let mut nonzero = 0;
            for (which, analytic) in grads {
                for (k, &a) in analytic.iter().enumerate() {
                    let fd = finite_difference(&case, which, k);
                    let tol = 1e-6 * (1.0 + a.abs());
                    assert!(
                        (a - fd).abs() <= tol,
                        "{norm:?} h={h} d{which}[{k}]: analytic {a} vs finite difference {fd}"
                    );
                    nonzero += usize::from(a != 0.0);
                }
            }
            assert!(
                nonzero > 3 * h,
                "{norm:?} h={h}: gradients mostly zero ({nonzero})"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Statistics, edge rows, the layer, errors.
// ---------------------------------------------------------------------------------------

#[test]
fn statistics_of_a_large_call() {
    let (rows, h, p) = (1024, 1000, 0.2);
    let case = generated::<f32, f32>(rows, h, Norm::LayerNorm, p, [true, true, false], true, 99);
    let mut case = case;
    case.gamma = vec![1.0; h];
    case.beta = Some(vec![0.0; h]);
    let t = case.tensors(&Device::Cpu);
    let out = dropout_add_norm(t.inputs(), &case.config, case.pos, MaskMode::Bits).unwrap();
    let bits = out.state.keep_bits().unwrap().unwrap();
    let kept: u32 = bits.iter().map(|w| w.count_ones()).sum();
    let n = (rows * h) as f64;
    let dropped = 1.0 - f64::from(kept) / n;
    let sd = (p * (1.0 - p) / n).sqrt();
    assert!((dropped - p).abs() < 5.0 * sd, "dropped fraction {dropped}");
    let z = out.z.to_vec().unwrap();
    for row in z.chunks(h) {
        let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / h as f64;
        let var = row
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / h as f64;
        assert!(mean.abs() < 1e-5, "row mean {mean}");
        assert!((var - 1.0).abs() < 1e-3, "row variance {var}");
    }
}

fn edge_rows(dev: &Device) {
    let h = 8;
    let mut x = vec![0.5f32; 5 * h];
    x[h + 3] = f32::NAN;
    x[4 * h..]
        .iter_mut()
        .enumerate()
        .for_each(|(j, v)| *v = 1e-30 * (j as f32 + 1.0));
    x[3 * h..4 * h]
        .iter_mut()
        .enumerate()
        .for_each(|(j, v)| *v = 1e30 * (j as f32 - 3.5));
    let mut residual = vec![0.25f32; 5 * h];
    residual[2 * h + 1] = f32::INFINITY;
    let gamma = vec![2.0f32; h];
    let beta = vec![0.75f32; h];
    for (norm, beta) in [(Norm::LayerNorm, Some(&beta)), (Norm::RmsNorm, None)] {
        let (xt, rt) = (on(dev, &x, &[5, h]), on(dev, &residual, &[5, h]));
        let (gt, bt) = (on(dev, &gamma, &[h]), beta.map(|b| on(dev, b, &[h])));
        let inputs = AddNormInputs {
            x: &xt,
            bias: None,
            residual: Some(&rt),
            gamma: &gt,
            beta: bt.as_ref(),
        };
        // Eval: nothing dropped, so the NaN and inf reach their rows.
        let config = AddNormConfig {
            norm,
            p: 0.5,
            eps: 1e-5,
            training: false,
        };
        let out = dropout_add_norm(inputs, &config, StreamPos::new(1, 2), MaskMode::Bits).unwrap();
        let z = out.z.to_vec().unwrap();
        let rows: Vec<&[f32]> = z.chunks(h).collect();
        match norm {
            // A constant row: d = 0, so z = 0 * gamma + beta = beta.
            Norm::LayerNorm => assert!(rows[0].iter().all(|&v| v == 0.75), "{:?}", rows[0]),
            // RMSNorm of a constant row c: c / sqrt(c^2 + eps) * gamma, just under 2.
            Norm::RmsNorm => assert!(rows[0].iter().all(|&v| v > 1.99 && v < 2.0)),
        }
        assert!(rows[1].iter().all(|v| v.is_nan()), "NaN row {:?}", rows[1]);
        match norm {
            Norm::LayerNorm => assert!(rows[2].iter().all(|v| v.is_nan()), "{:?}", rows[2]),
            // ms = inf, rstd = +0: NaN at the infinity, zeros elsewhere.
            Norm::RmsNorm => {
                assert!(rows[2][1].is_nan(), "{:?}", rows[2]);
                let others = rows[2].iter().enumerate().filter(|&(j, _)| j != 1);
                assert!(others.into_iter().all(|(_, &v)| v == 0.0), "{:?}", rows[2]);
            }
        }
        // d*d overflows f32: var = inf, rstd = 0, so z = beta (or 0 for RMSNorm).
        let want = if norm == Norm::LayerNorm { 0.75 } else { 0.0 };
        assert!(
            rows[3].iter().all(|&v| v == want),
            "{norm:?} huge row {:?}",
            rows[3]
        );
        // Tiny values are normalized like any others: finite and not all equal.
        assert!(rows[4].iter().all(|v| v.is_finite()));
        assert_eq!(out.state.mask_mode(), None);
    }
}

test_device!(edge_rows, edge_rows_cpu, edge_rows_cuda);

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let case = generated::<bf16, f32>(700, 300, Norm::LayerNorm, 0.1, [true, true, true], true, 4);
    let all = case.run(&Device::Cpu, MaskMode::Bits);
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(|| case.run(&Device::Cpu, MaskMode::Regenerate));
    assert_eq!(all, one);
}

#[test]
fn the_layer_takes_one_offset_per_training_call_and_none_in_eval() {
    let gen = Arc::new(Generator::new(21));
    let mut layer = DropoutAddNorm::rms_norm(0.3, 1e-6)
        .unwrap()
        .with_generator(gen.clone());
    let mut case = generated::<f32, f32>(4, 16, Norm::RmsNorm, 0.3, [false, true, false], true, 8);
    case.config.eps = 1e-6;
    let t = case.tensors(&Device::Cpu);
    let first = layer.forward(t.inputs()).unwrap();
    assert_eq!(gen.state().offset, 1);
    // The functional call at offset 0 gives the same bits.
    let f = dropout_add_norm(
        t.inputs(),
        &case.config,
        StreamPos::new(21, 0),
        MaskMode::Bits,
    )
    .unwrap();
    assert_eq!(host_bits(&first.z), host_bits(&f.z));
    layer.eval();
    let eval = layer.forward(t.inputs()).unwrap();
    assert_eq!(gen.state().offset, 1);
    assert_eq!(eval.state.keep_bits().unwrap(), None);
    // Bits and regenerate forms save what they say.
    assert_eq!(first.state.saved_bytes(), 4 * 2);
    let regen = layer.clone().with_mask_mode(MaskMode::Regenerate);
    let mut regen = regen;
    regen.train();
    let r = regen.forward(t.inputs()).unwrap();
    assert_eq!(r.state.saved_bytes(), 0);
    assert_eq!(r.state.row_stats().unwrap().len(), 4);
}

fn errors(dev: &Device) {
    let gen = Arc::new(Generator::new(5));
    let layer = DropoutAddNorm::layer_norm(0.1, 1e-5)
        .unwrap()
        .with_generator(gen.clone());
    let x = on(dev, &[1.0f32; 12], &[3, 4]);
    let g4 = on(dev, &[1.0f32; 4], &[4]);
    let g3 = on(dev, &[1.0f32; 3], &[3]);
    let r_bad = on(dev, &[1.0f32; 12], &[4, 3]);
    let ok = AddNormInputs {
        x: &x,
        bias: None,
        residual: None,
        gamma: &g4,
        beta: Some(&g4),
    };
    let bad = [
        AddNormInputs { gamma: &g3, ..ok },
        AddNormInputs {
            bias: Some(&g3),
            ..ok
        },
        AddNormInputs {
            beta: Some(&g3),
            ..ok
        },
        AddNormInputs { beta: None, ..ok },
        AddNormInputs {
            residual: Some(&r_bad),
            ..ok
        },
    ];
    for inputs in bad {
        let e = layer.forward(inputs).unwrap_err();
        assert!(
            matches!(
                e,
                Error::ShapeMismatch { .. } | Error::InvalidArgument { .. }
            ),
            "{e}"
        );
    }
    // A residual stream in f16 for f32 inputs is not a form the spec has.
    let r16 = on(dev, &[f16::ONE; 12], &[3, 4]);
    let e = layer
        .forward(AddNormInputs {
            x: &x,
            bias: None,
            residual: Some(&r16),
            gamma: &g4,
            beta: Some(&g4),
        })
        .unwrap_err();
    assert!(matches!(e, Error::DTypeMismatch { .. }), "{e}");
    // H = 0, a shard that starts inside a row.
    let empty_h = on(dev, &[] as &[f32], &[3, 0]);
    let g0 = on(dev, &[] as &[f32], &[0]);
    let e = layer
        .forward(AddNormInputs {
            x: &empty_h,
            bias: None,
            residual: None::<&Tensor<f32>>,
            gamma: &g0,
            beta: Some(&g0),
        })
        .unwrap_err();
    assert!(matches!(e, Error::InvalidShape { .. }), "{e}");
    let shard = layer.clone().with_index_base(2);
    assert!(matches!(
        shard.forward(ok).unwrap_err(),
        Error::InvalidArgument { .. }
    ));
    // Nothing above took an offset.
    assert_eq!(gen.state().offset, 0);
    // Bad eps and p.
    assert!(DropoutAddNorm::layer_norm(0.1, -1.0).is_err());
    assert!(DropoutAddNorm::rms_norm(0.1, f64::NAN).is_err());
    assert!(matches!(
        DropoutAddNorm::rms_norm(1.5, 0.0),
        Err(Error::InvalidProbability(_))
    ));
    // Backward with the wrong shapes.
    let out = layer.forward(ok).unwrap();
    let saved = AddNormSaved {
        s: &out.s,
        gamma: &g4,
    };
    let dz_bad = on(dev, &[1.0f32; 12], &[4, 3]);
    assert!(layer.backward(&dz_bad, None, saved, &out.state).is_err());
    let saved_bad = AddNormSaved {
        s: &out.s,
        gamma: &g3,
    };
    let dz = on(dev, &[1.0f32; 12], &[3, 4]);
    assert!(layer.backward(&dz, None, saved_bad, &out.state).is_err());
    assert!(layer.backward(&dz, None, saved, &out.state).is_ok());
}

test_device!(errors, errors_not_panics_cpu, errors_not_panics_cuda);

// ---------------------------------------------------------------------------------------
// Accuracy against an f64 reference (docs/spec.md 6.3 links here).
// ---------------------------------------------------------------------------------------

/// The f32 results against the same call in f64 (f32 inputs, exact in f64): the largest
/// error of each output relative to the largest magnitude of that output, which is what
/// docs/spec.md quotes.
#[test]
fn f32_results_against_an_f64_reference() {
    let (rows, h) = (1000, 512);
    for norm in [Norm::LayerNorm, Norm::RmsNorm] {
        let c32 = generated::<f32, f32>(rows, h, norm, 0.2, [true, true, true], true, 31);
        let widen = |v: &Vec<f32>| v.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>();
        let c64 = Case::<f64, f64> {
            rows,
            h,
            x: widen(&c32.x),
            bias: c32.bias.as_ref().map(widen),
            residual: c32.residual.as_ref().map(widen),
            gamma: widen(&c32.gamma),
            beta: c32.beta.as_ref().map(widen),
            dz: widen(&c32.dz),
            ds: c32.ds.as_ref().map(widen),
            config: c32.config,
            pos: c32.pos,
        };
        let outputs = |r32: &Tensors<f32, f32>, r64: &Tensors<f64, f64>| {
            let o32 = dropout_add_norm(r32.inputs(), &c32.config, c32.pos, MaskMode::Bits).unwrap();
            let o64 = dropout_add_norm(r64.inputs(), &c64.config, c64.pos, MaskMode::Bits).unwrap();
            let g32 = dropout_add_norm_backward(
                &r32.dz,
                r32.ds.as_ref(),
                AddNormSaved {
                    s: &o32.s,
                    gamma: &r32.gamma,
                },
                &o32.state,
            )
            .unwrap();
            let g64 = dropout_add_norm_backward(
                &r64.dz,
                r64.ds.as_ref(),
                AddNormSaved {
                    s: &o64.s,
                    gamma: &r64.gamma,
                },
                &o64.state,
            )
            .unwrap();
            let v32 = |t: &Tensor<f32>| widen(&t.to_vec().unwrap());
            let v64 = |t: &Tensor<f64>| t.to_vec().unwrap();
            let mut pairs = vec![
                ("z", v32(&o32.z), v64(&o64.z)),
                ("dx", v32(&g32.x), v64(&g64.x)),
                ("dgamma", v32(&g32.gamma), v64(&g64.gamma)),
                (
                    "dbias",
                    v32(g32.bias.as_ref().unwrap()),
                    v64(g64.bias.as_ref().unwrap()),
                ),
            ];
            if let (Some(a), Some(b)) = (&g32.beta, &g64.beta) {
                pairs.push(("dbeta", v32(a), v64(b)));
            }
            pairs
        };
        let (t32, t64) = (c32.tensors(&Device::Cpu), c64.tensors(&Device::Cpu));
        // The same decisions: the masks of the two calls are equal.
        for (what, a, b) in outputs(&t32, &t64) {
            let scale = b.iter().fold(0f64, |m, v| m.max(v.abs()));
            let err = a
                .iter()
                .zip(&b)
                .fold(0f64, |m, (x, y)| m.max((x - y).abs()))
                / scale;
            println!("{norm:?} {what}: max |f32 - f64| / max |f64| = {err:.2e}");
            assert!(err < 1e-6, "{norm:?} {what}: relative error {err:e}");
        }
    }
}

/// The `_into` forms give the bits of the allocating forms (outputs, statistics, mask and
/// every gradient), writing into an earlier call's output and preallocated gradients, two
/// calls in a row, both saved forms, both norms, with and without the optional inputs, in
/// training and eval, f32 and bf16 with an f32 residual stream; a gradient the forward does
/// not call for (or one missing) is an error.
fn into_forms<T: Element, R: Element<Compute = T::Compute>>(dev: &Device) {
    for (k, (rows, h)) in [(9, 5), (300, 33), (2, 64)].into_iter().enumerate() {
        for norm in [Norm::LayerNorm, Norm::RmsNorm] {
            for (w, with) in [[true, true, true], [false, false, false]]
                .into_iter()
                .enumerate()
            {
                for training in [true, false] {
                    let salt = 31 * k as u64 + w as u64;
                    let case = generated::<T, R>(rows, h, norm, 0.3, with, training, salt);
                    for mode in [MaskMode::Bits, MaskMode::Regenerate] {
                        let want = case.run(dev, mode);
                        let t = case.tensors(dev);
                        // An earlier call's output and gradients, of the other form.
                        let other = match mode {
                            MaskMode::Bits => MaskMode::Regenerate,
                            MaskMode::Regenerate => MaskMode::Bits,
                        };
                        let warm = StreamPos::new(99, 1);
                        let mut out =
                            dropout_add_norm(t.inputs(), &case.config, warm, other).unwrap();
                        let saved = AddNormSaved {
                            s: &out.s,
                            gamma: &t.gamma,
                        };
                        let mut grads =
                            dropout_add_norm_backward(&t.dz, t.ds.as_ref(), saved, &out.state)
                                .unwrap();
                        for call in 0..2 {
                            dropout_add_norm_into(
                                t.inputs(),
                                &case.config,
                                case.pos,
                                mode,
                                &mut out,
                            )
                            .unwrap();
                            let saved = AddNormSaved {
                                s: &out.s,
                                gamma: &t.gamma,
                            };
                            dropout_add_norm_backward_into(
                                &t.dz,
                                t.ds.as_ref(),
                                saved,
                                &out.state,
                                &mut grads,
                            )
                            .unwrap();
                            assert_eq!(
                                results(&out, &grads),
                                want,
                                "{} rows={rows} h={h} {norm:?} {with:?} training={training} \
                                 {mode:?} call {call}",
                                T::DTYPE
                            );
                        }
                        // The gradients must be what the forward's inputs call for.
                        let beta = grads.beta.take();
                        let saved = AddNormSaved {
                            s: &out.s,
                            gamma: &t.gamma,
                        };
                        let e = dropout_add_norm_backward_into(
                            &t.dz,
                            t.ds.as_ref(),
                            saved,
                            &out.state,
                            &mut grads,
                        );
                        assert_eq!(e.is_err(), norm == Norm::LayerNorm, "{e:?}");
                        grads.beta = beta;
                    }
                }
            }
        }
    }
}

fn into_forms_equal_the_allocating_forms(dev: &Device) {
    into_forms::<f32, f32>(dev);
    into_forms::<bf16, f32>(dev);
}

test_device!(
    into_forms_equal_the_allocating_forms,
    into_forms_equal_the_allocating_forms_cpu,
    into_forms_equal_the_allocating_forms_cuda
);
