//! The CUDA kernels of kernels/*.cu, run on the CPU through the emulator of the CUDA
//! execution model (tests/emulator, built by scripts/emulate-kernels.sh), against dropkit's
//! CPU reference, compared with `==` on the bits: every kernel, the four dtypes, p in
//! {0, 0.1, 0.5, 1}, aligned and unaligned shards (index_base % 4 != 0, n not a multiple of
//! 32, pointers off 16-byte alignment, an index range that crosses 2^32), and launch shapes
//! from one 32-thread block (many grid-stride passes) to a full grid.
//!
//! DROPKIT_EMULATOR names the emulator binary, or several separated by ':' (one per
//! emulated architecture); without it the test prints that it skipped, and with
//! DROPKIT_REQUIRE_EMULATOR=1 it fails instead. Only dropkit's public API is used.

use dropkit::element::{to_compute_f64, ComputeFloat};
use dropkit::functional::{
    alpha_dropout, bias_dropout_residual, bias_dropout_residual_backward, dropout,
    dropout_backward, grouped_dropout, GroupedConfig, GroupedKind, Grouping, ResidualInputs,
};
use dropkit::mask::{keep_bits_from, Probability};
use dropkit::plan::COLUMN_SUM_BLOCK_ROWS;
use dropkit::{DType, Element, MaskMode, StreamPos, Tensor};
use half::{bf16, f16};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// -lambda * alpha of SELU (SPEC section 6).
const SELU_A: f64 = -1.758_099_340_847_376_6;
const PROBS: [f64; 4] = [0.0, 0.1, 0.5, 1.0];
/// (grid, block): 1-3 blocks make the grid-stride loops take many passes.
const SHAPES: [(u32, u32); 4] = [(1, 32), (2, 64), (3, 256), (40, 256)];
const SEED: u64 = 0x5EED_0FD2_0F00;
const OFFSET: u64 = 7;

/// Where a tensor's elements sit: the decision index of element 0, the length, and the
/// element offsets of the input and output pointers from a 16-byte boundary.
#[derive(Debug, Clone, Copy)]
struct Layout {
    base: u64,
    n: usize,
    x_off: usize,
    y_off: usize,
}

const LAYOUTS: [Layout; 4] = [
    Layout {
        base: 4096,
        n: 2048,
        x_off: 0,
        y_off: 0,
    },
    Layout {
        base: 4097,
        n: 2085,
        x_off: 1,
        y_off: 3,
    },
    Layout {
        base: 1 << 20 | 2,
        n: 1000,
        x_off: 0,
        y_off: 0,
    },
    // Decisions 2^32 - 5 .. : the 64-bit index crosses into the high word.
    Layout {
        base: (1 << 32) - 5,
        n: 777,
        x_off: 2,
        y_off: 2,
    },
];

/// Tensor elements built from raw bits (the test writes and reads raw files).
trait Dt: Element {
    fn from_bits(bits: u64) -> Self;
    fn size() -> usize {
        Self::DTYPE.size()
    }
}

macro_rules! dt_from_bits {
    ($($t:ty => $bits:ty),*) => {$(
        impl Dt for $t {
            fn from_bits(b: u64) -> Self {
                <$t>::from_bits(b as $bits)
            }
        }
    )*};
}
dt_from_bits!(f32 => u32, f64 => u64, f16 => u16, bf16 => u16);

/// SplitMix64: reproducible inputs without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Inputs: mostly values of moderate size (so products round in interesting ways), with
/// random bit patterns, zeros, infinities and subnormals mixed in. No NaN: the GPU and
/// the CPU give different NaN payloads, which the spec leaves open.
fn values<T: Dt>(n: usize, salt: u64) -> Vec<T> {
    let mut rng = Rng(salt);
    (0..n)
        .map(|i| {
            let r = rng.next();
            match i % 16 {
                0 => match T::from_bits(r) {
                    v if v.to_compute().to_f64().is_nan() => T::from_f64(1.5),
                    v => v,
                },
                1 => T::from_bits(if r & 1 == 0 {
                    0
                } else {
                    1 << (8 * T::size() - 1)
                }),
                2 => T::from_f64(if r & 1 == 0 {
                    f64::INFINITY
                } else {
                    f64::NEG_INFINITY
                }),
                3 => T::from_bits(r % 7 + 1), // the smallest subnormals
                _ => T::from_f64(((r >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 8.0),
            }
        })
        .collect()
}

/// Finite values only (the fused kernel adds two inputs: inf + -inf would be a NaN).
fn finite_values<T: Dt>(n: usize, salt: u64) -> Vec<T> {
    values::<T>(n, salt)
        .into_iter()
        .map(|v| {
            let f = v.to_compute().to_f64();
            if f.is_finite() {
                v
            } else {
                T::from_f64(f.signum() * 3.25)
            }
        })
        .collect()
}

fn to_bytes<T: Dt>(v: &[T]) -> Vec<u8> {
    let s = T::size();
    v.iter()
        .flat_map(|e| e.to_bits_u64().to_le_bytes()[..s].to_vec())
        .collect()
}

fn from_bytes<T: Dt>(b: &[u8]) -> Vec<T> {
    b.chunks_exact(T::size())
        .map(|c| {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            T::from_bits(u64::from_le_bytes(w))
        })
        .collect()
}

fn words_to_bytes(w: &[u32]) -> Vec<u8> {
    w.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn bytes_to_words(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// A compute-type (C) scalar argument: f64 bits for f64 tensors, else f32 bits.
fn c_arg<T: Dt>(c: T::Compute) -> String {
    if T::DTYPE == DType::F64 {
        format!("0x{:016x}", c.to_f64().to_bits())
    } else {
        format!("0x{:08x}", (c.to_f64() as f32).to_bits())
    }
}

fn draw_arg(base: u64, prob: &Probability) -> String {
    format!("{SEED},{OFFSET},{base},{}", prob.threshold())
}

/// AlphaDropout's a, b and dropped value a*A + b in C (SPEC section 6).
fn alpha_args<T: Dt>(prob: &Probability) -> [String; 3] {
    let (a, b) = if prob.drops_all() {
        (0.0, 0.0) // everything dropped: outputs +0, never the inf - inf of the formula
    } else {
        let q = prob.keep_probability();
        let a = 1.0 / (q * (1.0 + (1.0 - q) * SELU_A * SELU_A)).sqrt();
        (a, -a * SELU_A * (1.0 - q))
    };
    let (a, b) = (to_compute_f64::<T>(a), to_compute_f64::<T>(b));
    let dropped = to_compute_f64::<T>(SELU_A).mul(a).add(b);
    [c_arg::<T>(a), c_arg::<T>(b), c_arg::<T>(dropped)]
}

fn scale_arg<T: Dt>(prob: &Probability) -> String {
    c_arg::<T>(to_compute_f64::<T>(prob.scale_f64()))
}

/// One emulator run, in its own scratch directory.
struct Run {
    emulator: PathBuf,
    dir: PathBuf,
    what: String,
}

static RUN_ID: AtomicUsize = AtomicUsize::new(0);

impl Run {
    fn new(emulator: &Path, what: String) -> Self {
        let id = RUN_ID.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("dropkit-emu-{}-{id}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Run {
            emulator: emulator.to_path_buf(),
            dir,
            what,
        }
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn write(&self, name: &str, bytes: &[u8]) -> String {
        let path = self.file(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.file(name)).unwrap()
    }

    fn launch(
        &self,
        kernel: &str,
        (grid, block): (u32, u32),
        args: &[String],
    ) -> Result<(), String> {
        let out = Command::new(&self.emulator)
            .arg(kernel)
            .arg(grid.to_string())
            .arg(block.to_string())
            .args(args)
            .output()
            .map_err(|e| format!("{}: cannot run {}: {e}", self.what, self.emulator.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}: {kernel} <<<{grid}, {block}>>> failed ({}): {}",
                self.what,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn same<T: Copy + PartialEq + std::fmt::Debug>(
    what: &str,
    got: &[T],
    want: &[T],
) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: {} values, expected {}",
            got.len(),
            want.len()
        ));
    }
    match got.iter().zip(want).position(|(g, w)| g != w) {
        None => Ok(()),
        Some(i) => Err(format!(
            "{what}: first difference at {i}: got {:?}, expected {:?} ({} differ)",
            got[i],
            want[i],
            got.iter().zip(want).filter(|(g, w)| g != w).count()
        )),
    }
}

fn same_values<T: Dt>(what: &str, got: &[T], want: &[T]) -> Result<(), String> {
    let bits = |v: &[T]| v.iter().map(|e| e.to_bits_u64()).collect::<Vec<_>>();
    same(what, &bits(got), &bits(want))
}

fn tensor<T: Dt>(v: &[T], shape: &[usize]) -> Tensor<T> {
    Tensor::from_vec(v.to_vec(), shape).unwrap()
}

fn ptr_in(path: &str, off: usize) -> String {
    format!("in:{path}@{off}")
}

fn ptr_out(path: &str, n: usize, off: usize) -> String {
    format!("out:{path}:{n}@{off}")
}

/// What every case starts with: its description, a scratch run, the probability and the
/// stream position of the shard.
struct Setup {
    what: String,
    run: Run,
    prob: Probability,
    pos: StreamPos,
}

fn setup<T: Dt>(emu: &Path, case: &str, p: f64, lay: Layout, shape: (u32, u32)) -> Setup {
    let what = format!("{case} {} p={p} {lay:?} {shape:?}", T::DTYPE.name());
    Setup {
        run: Run::new(emu, what.clone()),
        what,
        prob: Probability::new(p).unwrap(),
        pos: StreamPos::new(SEED, OFFSET).with_index_base(lay.base),
    }
}

/// Elementwise dropout: forward with bits, forward without (the regenerate form, also
/// the regenerate backward), in place, and the bit-mask backward.
fn check_dropout<T: Dt>(emu: &Path, p: f64, lay: Layout, shape: (u32, u32)) -> Result<(), String> {
    let Setup {
        what,
        run,
        prob,
        pos,
    } = setup::<T>(emu, "dropout", p, lay, shape);
    let x = values::<T>(lay.n, lay.base ^ 1);
    let (y, state) = dropout(&tensor(&x, &[lay.n]), p, true, pos, MaskMode::Bits).unwrap();
    let (y, bits) = (y.to_vec().unwrap(), state.keep_bits().unwrap().unwrap());
    let xf = run.write("x", &to_bytes(&x));
    let (n, draw, scale) = (
        lay.n.to_string(),
        draw_arg(lay.base, &prob),
        scale_arg::<T>(&prob),
    );
    let kernel = format!("dropout_fwd_{}", T::DTYPE.name());

    let (yf, bf) = (run.file("y"), run.file("bits"));
    let args = [
        ptr_in(&xf, lay.x_off),
        ptr_out(&yf, lay.n, lay.y_off),
        ptr_out(&bf, bits.len(), 0),
    ];
    run.launch(
        &kernel,
        shape,
        &[&args[..], &[n.clone(), draw.clone(), scale.clone()]].concat(),
    )?;
    same_values(&format!("{what}: y"), &from_bytes::<T>(&run.read("y")), &y)?;
    same(
        &format!("{what}: bits"),
        &bytes_to_words(&run.read("bits")),
        &bits,
    )?;

    // No mask (the regenerate form), in place: y over x.
    let io = run.write("io", &to_bytes(&x));
    let args = [
        format!("inout:{io}@{}", lay.x_off),
        "alias:0".into(),
        "null".into(),
    ];
    run.launch(
        &kernel,
        shape,
        &[&args[..], &[n.clone(), draw, scale.clone()]].concat(),
    )?;
    same_values(
        &format!("{what}: y in place, no bits"),
        &from_bytes::<T>(&run.read("io")),
        &y,
    )?;

    // Backward from the bits.
    let dy = values::<T>(lay.n, lay.base ^ 2);
    let dx = dropout_backward(&tensor(&dy, &[lay.n]), &state)
        .unwrap()
        .to_vec()
        .unwrap();
    let (dyf, bitsf) = (
        run.write("dy", &to_bytes(&dy)),
        run.write("b", &words_to_bytes(&bits)),
    );
    let dxf = run.file("dx");
    let args = [
        ptr_in(&dyf, lay.y_off),
        ptr_out(&dxf, lay.n, lay.x_off),
        ptr_in(&bitsf, 0),
        n,
        scale,
    ];
    run.launch(
        &format!("dropout_bwd_bits_{}", T::DTYPE.name()),
        shape,
        &args,
    )?;
    same_values(
        &format!("{what}: dx"),
        &from_bytes::<T>(&run.read("dx")),
        &dx,
    )
}

/// AlphaDropout's forward, with and without bits (its backward is dropout_bwd_bits).
fn check_alpha<T: Dt>(emu: &Path, p: f64, lay: Layout, shape: (u32, u32)) -> Result<(), String> {
    let Setup {
        what,
        run,
        prob,
        pos,
    } = setup::<T>(emu, "alpha", p, lay, shape);
    let x = values::<T>(lay.n, lay.base ^ 3);
    let (y, state) = alpha_dropout(&tensor(&x, &[lay.n]), p, true, pos, MaskMode::Bits).unwrap();
    let (y, bits) = (y.to_vec().unwrap(), state.keep_bits().unwrap().unwrap());
    let xf = run.write("x", &to_bytes(&x));
    let (yf, bf) = (run.file("y"), run.file("bits"));
    let kernel = format!("alpha_dropout_fwd_{}", T::DTYPE.name());
    let tail = [
        &[lay.n.to_string(), draw_arg(lay.base, &prob)][..],
        &alpha_args::<T>(&prob),
    ]
    .concat();
    let args = [
        ptr_in(&xf, lay.x_off),
        ptr_out(&yf, lay.n, lay.y_off),
        ptr_out(&bf, bits.len(), 0),
    ];
    run.launch(&kernel, shape, &[&args[..], &tail].concat())?;
    same_values(&format!("{what}: y"), &from_bytes::<T>(&run.read("y")), &y)?;
    same(
        &format!("{what}: bits"),
        &bytes_to_words(&run.read("bits")),
        &bits,
    )?;
    let args = [
        ptr_in(&xf, lay.x_off),
        ptr_out(&yf, lay.n, lay.y_off),
        "null".into(),
    ];
    run.launch(&kernel, shape, &[&args[..], &tail].concat())?;
    same_values(
        &format!("{what}: y, no bits"),
        &from_bytes::<T>(&run.read("y")),
        &y,
    )
}

/// Grouped dropout: the decision mask (dropout_mask_bits), then grouped_scale and
/// grouped_alpha through it, for a shard that starts inside a group.
fn check_grouped<T: Dt>(
    emu: &Path,
    p: f64,
    lay: Layout,
    shape: (u32, u32),
    group: usize,
) -> Result<(), String> {
    let case = format!("grouped group={group}");
    let Setup {
        what,
        run,
        prob,
        pos,
    } = setup::<T>(emu, &case, p, lay, shape);
    let g = group as u64;
    let (lead, first) = (lay.base % g, lay.base / g);
    let count = (lead as usize + lay.n).div_ceil(group);
    let bits = keep_bits_from(SEED, OFFSET, first, &prob, count).unwrap();
    let bf = run.file("bits");
    let args = [
        ptr_out(&bf, bits.len(), 0),
        count.to_string(),
        draw_arg(first, &prob),
    ];
    run.launch("dropout_mask_bits", shape, &args)?;
    same(
        &format!("{what}: mask bits"),
        &bytes_to_words(&run.read("bits")),
        &bits,
    )?;

    let x = values::<T>(lay.n, lay.base ^ 4);
    let xf = run.write("x", &to_bytes(&x));
    let yf = run.file("y");
    for kind in [GroupedKind::Scale, GroupedKind::Alpha] {
        let (y, state) = grouped_dropout(
            &tensor(&x, &[lay.n]),
            &GroupedConfig {
                p,
                training: true,
                grouping: Grouping { size: group, kind },
            },
            pos,
            MaskMode::Bits,
        )
        .unwrap();
        same(
            &format!("{what}: {kind:?} state bits"),
            &state.keep_bits().unwrap().unwrap(),
            &bits,
        )?;
        let (kernel, op) = match kind {
            GroupedKind::Scale => ("grouped_scale", vec![scale_arg::<T>(&prob)]),
            GroupedKind::Alpha => ("grouped_alpha", alpha_args::<T>(&prob).to_vec()),
        };
        let args = [
            ptr_in(&xf, lay.x_off),
            ptr_out(&yf, lay.n, lay.y_off),
            ptr_in(&bf, 0),
        ];
        let tail = [lay.n.to_string(), group.to_string(), lead.to_string()];
        run.launch(
            &format!("{kernel}_{}", T::DTYPE.name()),
            shape,
            &[&args[..], &tail, &op].concat(),
        )?;
        same_values(
            &format!("{what}: {kind:?} y"),
            &from_bytes::<T>(&run.read("y")),
            &y.to_vec().unwrap(),
        )?;
    }
    Ok(())
}

/// The fused bias + dropout + residual forward (new output and over the residual), and the
/// column sums of its backward's dx (the bias gradient) over more than one row block.
fn check_fused<T: Dt>(
    emu: &Path,
    p: f64,
    lay: Layout,
    shape: (u32, u32),
    column_sums: bool,
) -> Result<(), String> {
    // h = 64 keeps 16-byte bias loads possible; 37 forces the scalar bias path.
    let h = if lay.x_off == 0 { 64 } else { 37 };
    let rows = lay.n / h;
    let n = rows * h;
    let Setup {
        what,
        run,
        prob,
        pos,
    } = setup::<T>(emu, &format!("fused h={h}"), p, lay, shape);
    let (x, bias, res) = (
        finite_values::<T>(n, 5),
        finite_values::<T>(h, 6),
        finite_values::<T>(n, 7),
    );
    let (out, state) = bias_dropout_residual(
        ResidualInputs {
            x: &tensor(&x, &[rows, h]),
            bias: &tensor(&bias, &[h]),
            residual: &tensor(&res, &[rows, h]),
        },
        p,
        true,
        pos,
        MaskMode::Bits,
    )
    .unwrap();
    let (out, bits) = (
        out.to_vec().unwrap(),
        state.dropout_state().keep_bits().unwrap().unwrap(),
    );
    let (xf, bf, rf) = (
        run.write("x", &to_bytes(&x)),
        run.write("bias", &to_bytes(&bias)),
        run.write("r", &to_bytes(&res)),
    );
    let (of, kf) = (run.file("out"), run.file("bits"));
    let kernel = format!("bias_dropout_residual_fwd_{}", T::DTYPE.name());
    let tail = [
        n.to_string(),
        h.to_string(),
        draw_arg(lay.base, &prob),
        scale_arg::<T>(&prob),
    ];
    let args = [
        ptr_in(&xf, lay.x_off),
        ptr_in(&bf, lay.y_off),
        ptr_in(&rf, lay.y_off),
        ptr_out(&of, n, lay.x_off),
        ptr_out(&kf, bits.len(), 0),
    ];
    run.launch(&kernel, shape, &[&args[..], &tail].concat())?;
    same_values(
        &format!("{what}: out"),
        &from_bytes::<T>(&run.read("out")),
        &out,
    )?;
    same(
        &format!("{what}: bits"),
        &bytes_to_words(&run.read("bits")),
        &bits,
    )?;
    // Over the residual, without bits.
    let io = run.write("io", &to_bytes(&res));
    let args = [
        ptr_in(&xf, lay.x_off),
        ptr_in(&bf, lay.y_off),
        format!("inout:{io}@{}", lay.y_off),
        "alias:2".into(),
        "null".into(),
    ];
    run.launch(&kernel, shape, &[&args[..], &tail].concat())?;
    same_values(
        &format!("{what}: out over residual"),
        &from_bytes::<T>(&run.read("io")),
        &out,
    )?;
    if !column_sums {
        return Ok(());
    }

    // Column sums of the backward's dx, with more rows than one block of 256.
    let rows = 2 * COLUMN_SUM_BLOCK_ROWS + 37;
    // Moderate values: an overflow to inf in dx, then inf + -inf in a column, would be a
    // NaN, whose payload the spec leaves open.
    let mut rng = Rng(8);
    let g: Vec<T> = (0..rows * h)
        .map(|_| T::from_f64(((rng.next() >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 1e3))
        .collect();
    let (_, state) = bias_dropout_residual(
        ResidualInputs {
            x: &tensor(&finite_values::<T>(rows * h, 9), &[rows, h]),
            bias: &tensor(&bias, &[h]),
            residual: &tensor(&finite_values::<T>(rows * h, 10), &[rows, h]),
        },
        p,
        true,
        pos,
        MaskMode::Bits,
    )
    .unwrap();
    let grads = bias_dropout_residual_backward(&tensor(&g, &[rows, h]), &state).unwrap();
    let dx = grads.x.to_vec().unwrap();
    let blocks = rows.div_ceil(COLUMN_SUM_BLOCK_ROWS);
    let (gf, pf, sf) = (
        run.write("g", &to_bytes(&dx)),
        run.file("partial"),
        run.file("sum"),
    );
    let args = [
        ptr_in(&gf, lay.x_off),
        ptr_out(&pf, blocks * h, 0),
        rows.to_string(),
        h.to_string(),
        COLUMN_SUM_BLOCK_ROWS.to_string(),
    ];
    run.launch(
        &format!("column_sum_partial_{}", T::DTYPE.name()),
        shape,
        &args,
    )?;
    let args = [
        ptr_in(&pf, 0),
        ptr_out(&sf, h, lay.y_off),
        blocks.to_string(),
        h.to_string(),
    ];
    run.launch(
        &format!("column_sum_finish_{}", T::DTYPE.name()),
        shape,
        &args,
    )?;
    same_values(
        &format!("{what}: column sums"),
        &from_bytes::<T>(&run.read("sum")),
        &grads.bias.to_vec().unwrap(),
    )?;

    // The one-pass backward (dx and the block sums together) from the upstream gradient,
    // with the saved bits and with the decisions redrawn (null bits), then the finish.
    let bias_grad = grads.bias.to_vec().unwrap();
    let keep = state.dropout_state().keep_bits().unwrap().unwrap();
    let (kf, dyf) = (
        run.write("keep", &words_to_bytes(&keep)),
        run.write("dy", &to_bytes(&g)),
    );
    for bits_arg in [ptr_in(&kf, 0), "null".to_owned()] {
        let form = if bits_arg == "null" {
            "redrawn"
        } else {
            "bits"
        };
        let args = [
            ptr_in(&dyf, lay.x_off),
            ptr_out(&run.file("dx"), rows * h, lay.y_off),
            bits_arg,
            ptr_out(&pf, blocks * h, 0),
            rows.to_string(),
            h.to_string(),
            COLUMN_SUM_BLOCK_ROWS.to_string(),
            draw_arg(lay.base, &prob),
            scale_arg::<T>(&prob),
        ];
        let kernel = format!("bias_dropout_residual_bwd_{}", T::DTYPE.name());
        run.launch(&kernel, shape, &args)?;
        same_values(
            &format!("{what}: fused backward ({form}) dx"),
            &from_bytes::<T>(&run.read("dx")),
            &dx,
        )?;
        let args = [
            ptr_in(&pf, 0),
            ptr_out(&sf, h, lay.y_off),
            blocks.to_string(),
            h.to_string(),
        ];
        run.launch(
            &format!("column_sum_finish_{}", T::DTYPE.name()),
            shape,
            &args,
        )?;
        same_values(
            &format!("{what}: fused backward ({form}) bias gradient"),
            &from_bytes::<T>(&run.read("sum")),
            &bias_grad,
        )?;
    }
    Ok(())
}

type Case = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

fn cases_for<T: Dt>(emu: &Path, cases: &mut Vec<Case>) {
    for p in PROBS {
        for (l, lay) in LAYOUTS.into_iter().enumerate() {
            for (s, shape) in SHAPES.into_iter().enumerate() {
                let e = emu.to_path_buf();
                cases.push(Box::new(move || check_dropout::<T>(&e, p, lay, shape)));
                let e = emu.to_path_buf();
                cases.push(Box::new(move || check_alpha::<T>(&e, p, lay, shape)));
                // group 1 (a decision per element: many mask words) and 37 (a shard that
                // starts inside a group), alternating over the shapes.
                let group = if (l + s) % 2 == 0 { 1 } else { 37 };
                let e = emu.to_path_buf();
                cases.push(Box::new(move || {
                    check_grouped::<T>(&e, p, lay, shape, group)
                }));
                let e = emu.to_path_buf();
                // The column sums depend on neither p nor the index base: two layouts
                // (aligned and unaligned pointers) at one p are enough.
                let column_sums = p == 0.5 && l < 2;
                cases.push(Box::new(move || {
                    check_fused::<T>(&e, p, lay, shape, column_sums)
                }));
            }
        }
    }
}

#[test]
fn every_kernel_matches_the_cpu_reference_bit_for_bit() {
    let Some(list) = std::env::var_os("DROPKIT_EMULATOR") else {
        assert!(
            std::env::var_os("DROPKIT_REQUIRE_EMULATOR").is_none_or(|v| v == "0"),
            "DROPKIT_REQUIRE_EMULATOR is set but DROPKIT_EMULATOR names no emulator"
        );
        // Straight to the handle: the harness captures println! of passing tests.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "skipped every_kernel_matches_the_cpu_reference_bit_for_bit: DROPKIT_EMULATOR \
             is not set (scripts/emulate-kernels.sh builds the emulator and sets it)"
        );
        return;
    };
    let emulators: Vec<PathBuf> = std::env::split_paths(&list).collect();
    let mut cases: Vec<Case> = Vec::new();
    for emu in &emulators {
        assert!(emu.is_file(), "DROPKIT_EMULATOR: no file {}", emu.display());
        cases_for::<f32>(emu, &mut cases);
        cases_for::<f64>(emu, &mut cases);
        cases_for::<f16>(emu, &mut cases);
        cases_for::<bf16>(emu, &mut cases);
    }
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(8);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(case) = cases.get(i) else { break };
                if let Err(e) = case() {
                    failures.lock().unwrap().push(e);
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    for f in failures.iter().take(20) {
        eprintln!("{f}");
    }
    assert!(
        failures.is_empty(),
        "{} of {} emulated cases differ from the CPU reference",
        failures.len(),
        cases.len()
    );
    println!(
        "{} emulated cases on {} emulator(s) match the CPU reference bit for bit",
        cases.len(),
        emulators.len()
    );
}
