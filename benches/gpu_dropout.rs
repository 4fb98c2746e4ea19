//! GPU throughput of elementwise dropout on CUDA device 0, against a device-to-device copy
//! of the same bytes measured in the same run.
//!
//! Cases, for f32, bf16, f16, f64 at 2^20, 2^24, 2^28 elements: `copy` (`memcpy_dtod`),
//! `fwd_bits` and `fwd_regen` (`dropkit::functional::dropout` saving bits / nothing),
//! `bwd_bits` and `bwd_regen` (`dropout_backward` from those states). The dropout ops go
//! through the public API, so each call allocates its output (stream-ordered, from the
//! driver's memory pool) as a user's call does.
//!
//! The fused bias + dropout + residual family, with x and residual of shape (n / H, H) and
//! bias of shape (H) (H = `DROPKIT_GPU_BENCH_HIDDEN`, default 4096; a size that is not a
//! multiple of H is skipped): `fused_fwd_bits` and `fused_fwd_regen`
//! (`bias_dropout_residual`, one kernel), `fused_bwd` (`bias_dropout_residual_backward`
//! from the bits state: dx, the dresidual copy and the bias column sums), and dropkit's own
//! three separate passes `threepass_fwd_bits` / `threepass_fwd_regen`: (1) y = x + bias,
//! (2) z = dropout(y), (3) out = residual + z. dropkit has no standalone add kernel, so
//! passes 1 and 3 are the fused kernel in eval mode (nothing dropped, scale 1, same
//! roundings): pass 3 as z + zero bias + residual (exactly the bytes of a residual add),
//! pass 1 as x + bias + a shared zero residual, which reads one n-element tensor more than a
//! plain bias add. So this reference is somewhat slower than an ideal dropkit three-pass;
//! the 1.5x target is measured against PyTorch's eager three passes
//! (`benches/torch_baseline.py`, op `torch_bias_dropout_residual_3pass`).
//!
//! The rest of the family, on the same flat tensors as the elementwise cases (so each has
//! the copy of the same bytes beside it): `alpha_fwd_bits` / `alpha_fwd_regen`
//! (`alpha_dropout`), `channel_fwd_bits` / `channel_fwd_regen` / `channel_bwd_bits`
//! (`grouped_dropout`, Scale, one decision per `DROPKIT_GPU_BENCH_CHANNEL_GROUP` elements,
//! default 1024: a 32 x 32 feature map), `feature_alpha_fwd_bits` (grouped, Alpha, same
//! group), `droppath_fwd_bits` / `droppath_fwd_regen` / `droppath_bwd_bits` (grouped,
//! Scale, one decision per sample of n / `DROPKIT_GPU_BENCH_SAMPLES` elements, default 64
//! samples). Bytes: read x + write y, plus 4 * ceil(decisions / 32) mask bytes for a bits
//! form. And `colsum`, with the fused cases: `bias_dropout_residual_backward` from an
//! eval-mode state, where dx and dresidual are the upstream gradient itself, so what is
//! left is the bias column sums; its bytes are one read of the gradient plus H written
//! (what a column sum must move). Any copies that backward makes for dx and dresidual are
//! in its time, so `colsum` bounds the column-sum kernels from above; the table's footer
//! also prints it minus two copies of the same bytes, and ncu times the kernels alone.
//!
//! Timing: CUDA events around batches of calls, median over batches, divided by the batch
//! length. Calls rotate over several input buffer sets, enough to touch
//! `DROPKIT_GPU_BENCH_WS_MIB` (default 512, several times an H100's 50 MB L2) so that every
//! call reads cold data. Before each batch the stream is given a few large scratch copies
//! (untimed, sized from the measured host cost per call) so that the host enqueues the
//! batch while the GPU is busy: the events then time the GPU's work, not the host's launch
//! rate. The host enqueue cost per call is reported separately.
//!
//! Bytes that must move (GB = 1e9 B): read x + write y, plus 4 * ceil(n / 32) mask bytes
//! written (`fwd_bits`) or read (`bwd_bits`); `copy` reads and writes n elements. Fused
//! forward: read x and residual, write out (3n elements) + H bias elements read, + the mask
//! written for the bits form; fused backward: read the gradient, write dx and dresidual (3n
//! elements) + the mask read + H bias-gradient elements written. The three-pass reference
//! counts the bytes of the fused op of the same form (what the result must move, not what
//! its passes move), so its GB/s compare directly with the fused op's.
//!
//! The fused dropout + add + norm (docs/spec.md 6.3), on the same (n / H, H) tensors with
//! bias, residual, gamma (and beta): `norm_layer_fwd_bits`, `norm_layer_fwd_regen`,
//! `norm_layer_bwd` and the `norm_rms_*` three (`dropout_add_norm` and its backward with
//! ds). Bytes: forward reads x and residual and writes z and s (4n elements), + the mask
//! written for the bits form; backward reads dz, ds and s and writes dx and dresidual (5n
//! elements) + the mask read. benches/torch_add_norm.py times PyTorch eager and
//! torch.compile on the same cases.
//!
//! Output: one `RESULT impl=dropkit op=<op> device=cuda dtype=<dt> n=<n> median_s=<s>
//! gbps=<g>` line per case (for scripts/compare.py) and tables at the end. Without a usable
//! GPU (or kernels that load on it) it prints that it skipped and exits 0 (1 under
//! `DROPKIT_REQUIRE_CUDA=1`). With the `nvtx` feature each case is an NVTX range named
//! `gpu_dropout/<op>/<dtype>/<n>`.
//!
//! Environment: `DROPKIT_GPU_BENCH_SIZES` (exponents, default `20,24,28`),
//! `DROPKIT_BENCH_DTYPES` (default `f32,bf16,f16,f64`), `DROPKIT_GPU_BENCH_OPS` (default all),
//! `DROPKIT_GPU_BENCH_ITERS` (timed batches, default 20), `DROPKIT_GPU_BENCH_WS_MIB`,
//! `DROPKIT_GPU_BENCH_HIDDEN` (default 4096), `DROPKIT_BENCH_P` (default 0.1),
//! `DROPKIT_GPU_BENCH_CHANNEL_GROUP` (default 1024), `DROPKIT_GPU_BENCH_SAMPLES` (default 64).
//! `DROPKIT_GPU_BENCH_PROFILE=1` runs every case once with no timing, for a profiler (`ncu -k
//! regex:^dropout_ ...` then sees each kernel once per case; a backward case also launches
//! the forward that makes its state).

mod common;

use cudarc::driver::{sys, CudaContext, CudaEvent, CudaSlice, CudaStream, DevicePtrMut};
use dropkit::functional::{
    alpha_dropout, bias_dropout_residual, bias_dropout_residual_backward, dropout,
    dropout_backward, grouped_dropout, GroupedConfig, Grouping, ResidualInputs,
};
use dropkit::functional::{
    dropout_add_norm, dropout_add_norm_backward, AddNormConfig, AddNormInputs, AddNormSaved,
};
use dropkit::{DropoutState, Element, MaskMode, Norm, StreamPos, Tensor};
use half::{bf16, f16};
use std::error::Error;
use std::sync::Arc;
use std::time::Instant;

type Res<T> = Result<T, Box<dyn Error>>;

/// The elementwise dropout cases (on flat tensors of n elements).
const ELEMENTWISE_OPS: [&str; 5] = ["copy", "fwd_bits", "fwd_regen", "bwd_bits", "bwd_regen"];
/// The rest of the family on the same flat tensors: (op, layer, saved form, backward).
const FAMILY_OPS: [(&str, Family, MaskMode, bool); 9] = [
    ("alpha_fwd_bits", Family::Alpha, MaskMode::Bits, false),
    (
        "alpha_fwd_regen",
        Family::Alpha,
        MaskMode::Regenerate,
        false,
    ),
    ("channel_fwd_bits", Family::Channel, MaskMode::Bits, false),
    (
        "channel_fwd_regen",
        Family::Channel,
        MaskMode::Regenerate,
        false,
    ),
    ("channel_bwd_bits", Family::Channel, MaskMode::Bits, true),
    (
        "feature_alpha_fwd_bits",
        Family::FeatureAlpha,
        MaskMode::Bits,
        false,
    ),
    ("droppath_fwd_bits", Family::DropPath, MaskMode::Bits, false),
    (
        "droppath_fwd_regen",
        Family::DropPath,
        MaskMode::Regenerate,
        false,
    ),
    ("droppath_bwd_bits", Family::DropPath, MaskMode::Bits, true),
];
/// The fused bias + dropout + residual cases (on (n / H, H) tensors).
const FUSED_OPS: [&str; 6] = [
    "fused_fwd_bits",
    "fused_fwd_regen",
    "fused_bwd",
    "threepass_fwd_bits",
    "threepass_fwd_regen",
    "colsum",
];

/// The fused dropout + add + norm cases (on (n / H, H) tensors).
/// CUDA graphs: the eager `_into` forward (no allocation: against `fwd_bits`, what the
/// graph-safe draw costs an eager call), and a training step of GRAPH_LAYERS dropout
/// layers (forward_into down, backward_into up) eagerly and as one captured graph.
const GRAPH_OPS: [&str; 3] = ["fwd_bits_into", "step_eager", "step_graph"];
/// Shards of any layout: a tensor-parallel shard (rows, H) of (rows, 4 H) at column H, n
/// elements of its own, strided in the whole tensor (its mask drawn through the layout by
/// `dropout_mask_bits_shard`, then applied): dropout and the fused bias + dropout +
/// residual, against `fwd_bits` and `fused_fwd_bits` on contiguous tensors.
const SHARD_OPS: [&str; 2] = ["shard_fwd_bits", "shard_fused_fwd_bits"];
const GRAPH_LAYERS: usize = 4;

const NORM_OPS: [&str; 6] = [
    "norm_layer_fwd_bits",
    "norm_layer_fwd_regen",
    "norm_layer_bwd",
    "norm_rms_fwd_bits",
    "norm_rms_fwd_regen",
    "norm_rms_bwd",
];

/// The layers of [`FAMILY_OPS`].
#[derive(Clone, Copy)]
enum Family {
    Alpha,
    Channel,
    FeatureAlpha,
    DropPath,
}

impl Family {
    /// Elements per decision for n elements.
    fn group(self, cfg: &Config, n: usize) -> usize {
        match self {
            Family::Alpha => 1,
            Family::Channel | Family::FeatureAlpha => cfg.channel_group.min(n).max(1),
            Family::DropPath => n.div_ceil(cfg.samples).max(1),
        }
    }

    fn forward<T: Element>(
        self,
        cfg: &Config,
        x: &Tensor<T>,
        pos: StreamPos,
        mode: MaskMode,
    ) -> dropkit::Result<(Tensor<T>, DropoutState)> {
        let group = self.group(cfg, x.len());
        match self {
            Family::Alpha => alpha_dropout(x, cfg.p, true, pos, mode),
            Family::Channel | Family::DropPath => grouped_dropout(
                x,
                &GroupedConfig {
                    p: cfg.p,
                    training: true,
                    grouping: Grouping::scale(group),
                },
                pos,
                mode,
            ),
            Family::FeatureAlpha => grouped_dropout(
                x,
                &GroupedConfig {
                    p: cfg.p,
                    training: true,
                    grouping: Grouping::alpha(group),
                },
                pos,
                mode,
            ),
        }
    }
}
const SEED: u64 = 0x5EED;
const OFFSET: u64 = 7;
/// Bytes of each of the two scratch buffers used to keep the stream busy before a batch.
const SCRATCH_BYTES: usize = 128 << 20;

struct Config {
    sizes: Vec<usize>,
    dtypes: Vec<String>,
    ops: Vec<String>,
    iters: usize,
    ws_bytes: usize,
    max_sets: usize,
    p: f64,
    profile: bool,
    /// H, the last dimension of the fused cases.
    hidden: usize,
    /// Elements per decision of the channel cases.
    channel_group: usize,
    /// Samples (decisions) of the DropPath cases.
    samples: usize,
}

fn env_num<T: std::str::FromStr>(var: &str, default: T) -> T {
    match std::env::var(var) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{var}={v:?} is not a number")),
        Err(_) => default,
    }
}

impl Config {
    fn from_env() -> Self {
        let sizes = common::list("DROPKIT_GPU_BENCH_SIZES", "20,24,28")
            .iter()
            .map(|e| {
                let e: u32 = e.parse().unwrap_or_else(|_| {
                    panic!("DROPKIT_GPU_BENCH_SIZES: {e:?} is not an exponent")
                });
                assert!(e < 40, "DROPKIT_GPU_BENCH_SIZES: 2^{e} is too large");
                1usize << e
            })
            .collect();
        let all: Vec<&str> = ELEMENTWISE_OPS
            .iter()
            .chain(FAMILY_OPS.iter().map(|f| &f.0))
            .chain(&FUSED_OPS)
            .chain(&NORM_OPS)
            .chain(&GRAPH_OPS)
            .chain(&SHARD_OPS)
            .copied()
            .collect();
        let ops = common::list("DROPKIT_GPU_BENCH_OPS", &all.join(","));
        for op in &ops {
            assert!(
                all.contains(&op.as_str()),
                "unknown op {op:?}; choose from {all:?}"
            );
        }
        let hidden = env_num("DROPKIT_GPU_BENCH_HIDDEN", 4096usize);
        assert!(hidden > 0, "DROPKIT_GPU_BENCH_HIDDEN must be at least 1");
        Config {
            sizes,
            dtypes: common::list("DROPKIT_BENCH_DTYPES", "f32,bf16,f16,f64"),
            ops,
            iters: env_num("DROPKIT_GPU_BENCH_ITERS", 20usize).max(1),
            ws_bytes: env_num("DROPKIT_GPU_BENCH_WS_MIB", 512usize) << 20,
            max_sets: 128,
            p: env_num("DROPKIT_BENCH_P", 0.1f64),
            profile: std::env::var("DROPKIT_GPU_BENCH_PROFILE").is_ok_and(|v| v == "1"),
            hidden,
            channel_group: env_num("DROPKIT_GPU_BENCH_CHANNEL_GROUP", 1024usize).max(1),
            samples: env_num("DROPKIT_GPU_BENCH_SAMPLES", 64usize).max(1),
        }
    }

    fn wants(&self, op: &str) -> bool {
        self.ops.iter().any(|o| o == op)
    }

    fn wants_any(&self, ops: &[&str]) -> bool {
        ops.iter().any(|op| self.wants(op))
    }
}

/// One measured case.
struct Row {
    dtype: &'static str,
    n: usize,
    op: &'static str,
    sets: usize,
    batch: usize,
    median_s: f64,
    bytes: u64,
    host_us: f64,
}

impl Row {
    fn gbps(&self) -> f64 {
        self.bytes as f64 / self.median_s / 1e9
    }
}

/// What the GPU bench holds for the whole run: the stream, its context and the scratch
/// buffers that keep the stream busy while a batch is enqueued.
struct Gpu {
    stream: Arc<CudaStream>,
    ctx: Arc<CudaContext>,
    scratch: (CudaSlice<u8>, CudaSlice<u8>),
    /// Seconds one scratch copy takes.
    scratch_copy_s: f64,
}

impl Gpu {
    fn event(&self) -> Res<CudaEvent> {
        Ok(self
            .ctx
            .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))?)
    }

    /// Queues about `seconds` of untimed copies on the stream.
    fn keep_busy(&mut self, seconds: f64) -> Res<()> {
        let copies = (seconds / self.scratch_copy_s).ceil().clamp(1.0, 256.0) as usize;
        for _ in 0..copies {
            self.stream
                .memcpy_dtod(&self.scratch.0, &mut self.scratch.1)?;
        }
        Ok(())
    }

    /// Median GPU seconds per call of `call(k)` (k counts calls), and the host's enqueue
    /// cost per call in microseconds.
    fn measure(
        &mut self,
        cfg: &Config,
        batch: usize,
        mut call: impl FnMut(usize) -> Res<()>,
    ) -> Res<(f64, f64)> {
        // Warm-up (the first call may load the module), then the host cost per call.
        call(0)?;
        self.stream.synchronize()?;
        if cfg.profile {
            return Ok((f64::NAN, f64::NAN));
        }
        let iters = cfg.iters;
        let warm = batch.max(4);
        let t0 = Instant::now();
        for k in 1..=warm {
            call(k)?;
        }
        let host_s = t0.elapsed().as_secs_f64() / warm as f64;
        self.stream.synchronize()?;
        // The busy time must cover the enqueueing of a whole batch.
        let busy_s = (2.0 * host_s * batch as f64).clamp(1e-4, 0.05);
        let mut k = warm + 1;
        let mut events = Vec::with_capacity(iters);
        for _ in 0..iters {
            self.keep_busy(busy_s)?;
            let start = self.event()?;
            start.record(&self.stream)?;
            for _ in 0..batch {
                call(k)?;
                k += 1;
            }
            let end = self.event()?;
            end.record(&self.stream)?;
            events.push((start, end));
        }
        self.stream.synchronize()?;
        let mut per_call = events
            .iter()
            .map(|(s, e)| Ok(f64::from(s.elapsed_ms(e)?) / 1e3 / batch as f64))
            .collect::<Res<Vec<f64>>>()?;
        per_call.sort_by(f64::total_cmp);
        let mid = per_call.len() / 2;
        let median = if per_call.len() % 2 == 1 {
            per_call[mid]
        } else {
            (per_call[mid - 1] + per_call[mid]) / 2.0
        };
        Ok((median, host_s * 1e6))
    }
}

#[cfg(feature = "nvtx")]
fn nvtx_range(name: &str) -> Option<cudarc::nvtx::safe::Range> {
    // SAFETY: only probes whether the NVTX library can be opened.
    let present = unsafe { cudarc::nvtx::sys::is_culib_present() };
    present.then(|| cudarc::nvtx::safe::scoped_range(name))
}

/// Without the `nvtx` feature: nothing to open or close.
#[cfg(not(feature = "nvtx"))]
struct NoRange;

#[cfg(not(feature = "nvtx"))]
fn nvtx_range(_name: &str) -> NoRange {
    NoRange
}

/// `n` elements on the device with a fixed finite pattern (every byte 0x3C: a normal
/// number in each dtype), written by the device.
fn pattern<T: Element>(stream: &Arc<CudaStream>, n: usize) -> Res<CudaSlice<T>> {
    let mut s = stream.alloc_zeros::<T>(n)?;
    let bytes = n * std::mem::size_of::<T>();
    {
        let (ptr, _guard) = s.device_ptr_mut(stream);
        // SAFETY: `ptr` covers `bytes` bytes of this live allocation, on its own stream;
        // 0x3C bytes are a valid (finite) value of every dtype.
        unsafe { cudarc::driver::result::memset_d8_async(ptr, 0x3C, bytes, stream.cu_stream())? };
    }
    Ok(s)
}

/// The source and a distinct destination among `bufs` (or `spare` with a single set).
fn copy_pair<'a, T>(
    bufs: &'a mut [CudaSlice<T>],
    spare: &'a mut Option<CudaSlice<T>>,
    k: usize,
) -> (&'a CudaSlice<T>, &'a mut CudaSlice<T>) {
    let s = bufs.len();
    let (i, j) = (k % s, (k + 1) % s);
    if s == 1 {
        return (
            &bufs[0],
            spare.as_mut().expect("a spare buffer with one set"),
        );
    }
    if i < j {
        let (a, b) = bufs.split_at_mut(j);
        (&a[i], &mut b[0])
    } else {
        let (a, b) = bufs.split_at_mut(i);
        (&b[0], &mut a[j])
    }
}

fn run_dtype<T: Element>(gpu: &mut Gpu, cfg: &Config, rows: &mut Vec<Row>) {
    let dtype = T::DTYPE.name();
    for &n in &cfg.sizes {
        let family: Vec<&str> = FAMILY_OPS.iter().map(|f| f.0).collect();
        if cfg.wants_any(&ELEMENTWISE_OPS) || cfg.wants_any(&family) {
            if let Err(e) = run_case::<T>(gpu, cfg, n, rows) {
                println!("# error: dtype={dtype} n={n}: {e}");
                let _ = gpu.stream.synchronize();
            }
        }
        if cfg.wants_any(&FUSED_OPS) {
            if let Err(e) = run_fused_case::<T>(gpu, cfg, n, rows) {
                println!("# error: fused dtype={dtype} n={n}: {e}");
                let _ = gpu.stream.synchronize();
            }
        }
        if cfg.wants_any(&NORM_OPS) {
            if let Err(e) = run_norm_case::<T>(gpu, cfg, n, rows) {
                println!("# error: norm dtype={dtype} n={n}: {e}");
                let _ = gpu.stream.synchronize();
            }
        }
        if cfg.wants_any(&GRAPH_OPS) {
            if let Err(e) = run_graph_case::<T>(gpu, cfg, n, rows) {
                println!("# error: graph dtype={dtype} n={n}: {e}");
                let _ = gpu.stream.synchronize();
            }
        }
        if cfg.wants_any(&SHARD_OPS) {
            if let Err(e) = run_shard_case::<T>(gpu, cfg, n, rows) {
                println!("# error: shard dtype={dtype} n={n}: {e}");
                let _ = gpu.stream.synchronize();
            }
        }
    }
}

/// Prints a case's RESULT line and keeps its row (in profile mode: only says it ran).
fn record(cfg: &Config, rows: &mut Vec<Row>, row: Row) {
    if cfg.profile {
        println!(
            "# profiled once: op={} dtype={} n={}",
            row.op, row.dtype, row.n
        );
        return;
    }
    println!(
        "RESULT impl=dropkit op={} device=cuda dtype={} n={} median_s={:.6e} gbps={:.3}",
        row.op,
        row.dtype,
        row.n,
        row.median_s,
        row.gbps()
    );
    rows.push(row);
}

/// Buffer sets of `per_set` bytes each that make a round touch the working set, halved
/// until `need(sets)` fits in 80% of free memory; `None` (after saying so) if even one
/// set does not fit.
fn fit_sets(
    gpu: &Gpu,
    cfg: &Config,
    what: &str,
    per_set: usize,
    need: impl Fn(usize) -> usize,
) -> Res<Option<usize>> {
    let mut sets = cfg.ws_bytes.div_ceil(per_set).clamp(1, cfg.max_sets);
    if cfg.profile {
        sets = 1;
    }
    gpu.stream.synchronize()?;
    let (free, _) = gpu.ctx.mem_get_info()?;
    let budget = free / 10 * 8;
    while sets > 1 && need(sets) > budget {
        sets /= 2;
    }
    if need(sets) > budget {
        println!(
            "# skipped {what}: needs {:.1} GiB, {:.1} GiB free (80% usable)",
            need(1) as f64 / (1u64 << 30) as f64,
            free as f64 / (1u64 << 30) as f64
        );
        return Ok(None);
    }
    Ok(Some(sets))
}

fn run_case<T: Element>(gpu: &mut Gpu, cfg: &Config, n: usize, rows: &mut Vec<Row>) -> Res<()> {
    let dtype = T::DTYPE.name();
    let elem = std::mem::size_of::<T>();
    let tensor_bytes = n * elem;
    let mask_bytes = 4 * n.div_ceil(32);
    // Sets of inputs (+ a saved mask each) to cover the working set; the outputs of calls
    // in flight and a spare copy destination on top.
    let need = |sets: usize| sets * (tensor_bytes + mask_bytes) + 3 * (tensor_bytes + mask_bytes);
    let what = format!("dtype={dtype} n={n}");
    let Some(sets) = fit_sets(gpu, cfg, &what, 2 * tensor_bytes, need)? else {
        return Ok(());
    };
    let batch = sets.max(8);
    let stream = gpu.stream.clone();
    let mut bufs = (0..sets)
        .map(|_| pattern::<T>(&stream, n))
        .collect::<Res<Vec<_>>>()?;
    let mut spare = if sets == 1 {
        Some(pattern::<T>(&stream, n))
    } else {
        None
    }
    .transpose()?;
    stream.synchronize()?;

    let record = |rows: &mut Vec<Row>, op: &'static str, median_s: f64, host_us: f64, bytes| {
        let row = Row {
            dtype,
            n,
            op,
            sets,
            batch,
            median_s,
            bytes,
            host_us,
        };
        record(cfg, rows, row);
    };
    let plain = (2 * tensor_bytes) as u64;
    let with_mask = plain + mask_bytes as u64;

    if cfg.wants("copy") {
        let _r = nvtx_range(&format!("gpu_dropout/copy/{dtype}/{n}"));
        let (t, h) = gpu.measure(cfg, batch, |k| {
            let (src, dst) = copy_pair(&mut bufs, &mut spare, k);
            stream.memcpy_dtod(src, dst)?;
            Ok(())
        })?;
        record(rows, "copy", t, h, plain);
    }
    drop(spare);

    let xs = bufs
        .into_iter()
        .map(|b| Tensor::from_cuda_slice(b, &[n]))
        .collect::<Result<Vec<_>, _>>()?;
    let (p, pos) = (cfg.p, StreamPos::new(SEED, OFFSET));
    for (op, mode) in [
        ("fwd_bits", MaskMode::Bits),
        ("fwd_regen", MaskMode::Regenerate),
    ] {
        if !cfg.wants(op) {
            continue;
        }
        let _r = nvtx_range(&format!("gpu_dropout/{op}/{dtype}/{n}"));
        let (t, h) = gpu.measure(cfg, batch, |k| {
            let (y, state) = dropout(&xs[k % sets], p, true, pos, mode)?;
            drop((y, state));
            Ok(())
        })?;
        let bytes = if mode == MaskMode::Bits {
            with_mask
        } else {
            plain
        };
        record(rows, op, t, h, bytes);
    }
    for (op, mode) in [
        ("bwd_bits", MaskMode::Bits),
        ("bwd_regen", MaskMode::Regenerate),
    ] {
        if !cfg.wants(op) {
            continue;
        }
        // The saved state of each set's forward; the gradient is the set's own tensor.
        let states = xs
            .iter()
            .map(|x| Ok(dropout(x, p, true, pos, mode)?.1))
            .collect::<Res<Vec<DropoutState>>>()?;
        let _r = nvtx_range(&format!("gpu_dropout/{op}/{dtype}/{n}"));
        let (t, h) = gpu.measure(cfg, batch, |k| {
            let dx = dropout_backward(&xs[k % sets], &states[k % sets])?;
            drop(dx);
            Ok(())
        })?;
        let bytes = if mode == MaskMode::Bits {
            with_mask
        } else {
            plain
        };
        record(rows, op, t, h, bytes);
    }
    for (op, family, mode, backward) in FAMILY_OPS {
        if !cfg.wants(op) {
            continue;
        }
        let decisions = n.div_ceil(family.group(cfg, n));
        let bytes = if mode == MaskMode::Bits {
            plain + 4 * decisions.div_ceil(32) as u64
        } else {
            plain
        };
        let _r = nvtx_range(&format!("gpu_dropout/{op}/{dtype}/{n}"));
        let (t, h) = if backward {
            let states = xs
                .iter()
                .map(|x| Ok(family.forward(cfg, x, pos, mode)?.1))
                .collect::<Res<Vec<DropoutState>>>()?;
            gpu.measure(cfg, batch, |k| {
                drop(dropout_backward(&xs[k % sets], &states[k % sets])?);
                Ok(())
            })?
        } else {
            gpu.measure(cfg, batch, |k| {
                drop(family.forward(cfg, &xs[k % sets], pos, mode)?);
                Ok(())
            })?
        };
        record(rows, op, t, h, bytes);
    }
    drop(xs);
    stream.synchronize()?;
    Ok(())
}

/// The CUDA graph cases at n elements (one buffer set: the step is launch-bound at the
/// sizes where graphs matter, and a graph replays fixed buffers).
/// The [`SHARD_OPS`] cases at n elements per shard (H = DROPKIT_GPU_BENCH_HIDDEN).
fn run_shard_case<T: Element>(
    gpu: &mut Gpu,
    cfg: &Config,
    n: usize,
    rows: &mut Vec<Row>,
) -> Res<()> {
    use dropkit::functional::{bias_dropout_residual_shard, dropout_shard};
    use dropkit::ShardLayout;
    let dtype = T::DTYPE.name();
    let h = cfg.hidden.min(n).max(1);
    let shard_rows = n / h;
    if shard_rows == 0 {
        return Ok(());
    }
    let n = shard_rows * h;
    let (tensor_bytes, mask_bytes) = (n * std::mem::size_of::<T>(), 4 * n.div_ceil(32));
    let need = |_: usize| 5 * (tensor_bytes + mask_bytes);
    let what = format!("shard dtype={dtype} n={n}");
    let Some(_) = fit_sets(gpu, cfg, &what, tensor_bytes, need)? else {
        return Ok(());
    };
    let batch = 8;
    let stream = gpu.stream.clone();
    let shape = [shard_rows, h];
    let tensor =
        || -> Res<Tensor<T>> { Ok(Tensor::from_cuda_slice(pattern::<T>(&stream, n)?, &shape)?) };
    let layout = ShardLayout::new(&[shard_rows, 4 * h], &[0, h], &shape)?;
    let (x, residual) = (tensor()?, tensor()?);
    let bias = Tensor::from_cuda_slice(pattern::<T>(&stream, h)?, &[h])?;
    let mut record_op = |op: &'static str, (median_s, host_us): (f64, f64), bytes: usize| {
        let row = Row {
            dtype,
            n,
            op,
            sets: 1,
            batch,
            median_s,
            bytes: bytes as u64,
            host_us,
        };
        record(cfg, rows, row);
    };
    if cfg.wants("shard_fwd_bits") {
        let _r = nvtx_range(&format!("gpu_dropout/shard_fwd_bits/{dtype}/{n}"));
        let timed = gpu.measure(cfg, batch, |k| {
            let pos = StreamPos::new(SEED, k as u64);
            dropout_shard(&x, cfg.p, true, pos, &layout, MaskMode::Bits)?;
            Ok(())
        })?;
        record_op("shard_fwd_bits", timed, 2 * tensor_bytes + mask_bytes);
    }
    if cfg.wants("shard_fused_fwd_bits") {
        let _r = nvtx_range(&format!("gpu_dropout/shard_fused_fwd_bits/{dtype}/{n}"));
        let timed = gpu.measure(cfg, batch, |k| {
            let pos = StreamPos::new(SEED, k as u64);
            let p = cfg.p;
            bias_dropout_residual_shard(
                ResidualInputs {
                    x: &x,
                    bias: &bias,
                    residual: &residual,
                },
                p,
                true,
                pos,
                &layout,
                MaskMode::Bits,
            )?;
            Ok(())
        })?;
        record_op("shard_fused_fwd_bits", timed, 3 * tensor_bytes + mask_bytes);
    }
    Ok(())
}

fn run_graph_case<T: Element>(
    gpu: &mut Gpu,
    cfg: &Config,
    n: usize,
    rows: &mut Vec<Row>,
) -> Res<()> {
    use dropkit::cuda::{CapturedGraph, GraphSafeGenerator};
    use dropkit::functional::dropout_into;
    use dropkit::{Dropout, Generator};
    let dtype = T::DTYPE.name();
    let (tensor_bytes, mask_bytes) = (n * std::mem::size_of::<T>(), 4 * n.div_ceil(32));
    let need = |_: usize| (2 * GRAPH_LAYERS + 2) * (tensor_bytes + mask_bytes);
    let what = format!("graph dtype={dtype} n={n}");
    let Some(_) = fit_sets(gpu, cfg, &what, tensor_bytes, need)? else {
        return Ok(());
    };
    let batch = 8;
    let stream = gpu.stream.clone();
    let tensor =
        || -> Res<Tensor<T>> { Ok(Tensor::from_cuda_slice(pattern::<T>(&stream, n)?, &[n])?) };
    let record = |rows: &mut Vec<Row>, op: &'static str, median_s: f64, host_us: f64, bytes| {
        let row = Row {
            dtype,
            n,
            op,
            sets: 1,
            batch,
            median_s,
            bytes,
            host_us,
        };
        record(cfg, rows, row);
    };
    let x = tensor()?;
    if cfg.wants("fwd_bits_into") {
        let mut y = tensor()?;
        let mut state = dropout(
            &x,
            cfg.p,
            true,
            StreamPos::new(SEED, OFFSET),
            MaskMode::Bits,
        )?
        .1;
        let _r = nvtx_range(&format!("gpu_dropout/fwd_bits_into/{dtype}/{n}"));
        let (t, h) = gpu.measure(cfg, batch, |k| {
            let pos = StreamPos::new(SEED, k as u64);
            Ok(dropout_into(
                &x,
                &mut y,
                &mut state,
                cfg.p,
                true,
                pos,
                MaskMode::Bits,
            )?)
        })?;
        record(
            rows,
            "fwd_bits_into",
            t,
            h,
            (2 * tensor_bytes + mask_bytes) as u64,
        );
    }
    if !cfg.wants_any(&["step_eager", "step_graph"]) {
        return Ok(());
    }
    let step_bytes = (GRAPH_LAYERS * (4 * tensor_bytes + 2 * mask_bytes)) as u64;
    // A capture must not wait on events recorded outside it: event tracking off (all the
    // bench's work is on one stream), back on at the end.
    // SAFETY: every buffer of the case lives on `stream`, which orders all their uses.
    unsafe { gpu.ctx.disable_event_tracking() };
    let result = (|| -> Res<()> {
        let dev = dropkit::cuda::CudaDevice::from_stream(stream.clone())?;
        let gen = GraphSafeGenerator::new(&dev, Arc::new(Generator::new(SEED)))?;
        let layer = Dropout::new(cfg.p)?.with_generator(gen.generator().clone());
        // acts[0] = x, acts[i + 1] = layer i's output; grads[GRAPH_LAYERS] = the upstream
        // gradient, grads[i] = layer i's input gradient.
        let mut acts = vec![x.try_clone()?];
        let mut states = Vec::new();
        for i in 0..GRAPH_LAYERS {
            let (y, s) = layer.forward(&acts[i])?;
            acts.push(y);
            states.push(s);
        }
        let mut grads = (0..=GRAPH_LAYERS)
            .map(|_| tensor())
            .collect::<Res<Vec<_>>>()?;
        let mut step = || -> dropkit::Result<()> {
            for i in 0..GRAPH_LAYERS {
                let (lo, hi) = acts.split_at_mut(i + 1);
                layer.forward_into(&lo[i], &mut hi[0], &mut states[i])?;
            }
            for i in (0..GRAPH_LAYERS).rev() {
                let (lo, hi) = grads.split_at_mut(i + 1);
                layer.backward_into(&hi[0], &states[i], &mut lo[i])?;
            }
            Ok(())
        };
        if cfg.wants("step_eager") {
            let _r = nvtx_range(&format!("gpu_dropout/step_eager/{dtype}/{n}"));
            let (t, h) = gpu.measure(cfg, batch, |_| Ok(step()?))?;
            record(rows, "step_eager", t, h, step_bytes);
        }
        if cfg.wants("step_graph") {
            let (graph, ()) = CapturedGraph::capture(&dev, &[&gen], &mut step)?;
            let _r = nvtx_range(&format!("gpu_dropout/step_graph/{dtype}/{n}"));
            let (t, h) = gpu.measure(cfg, batch, |_| Ok(graph.replay()?))?;
            record(rows, "step_graph", t, h, step_bytes);
        }
        Ok(())
    })();
    stream.synchronize()?;
    // SAFETY: the case's work is done (synchronized); tracking resumes for later cases.
    unsafe { gpu.ctx.enable_event_tracking() };
    result
}

/// The fused dropout + add + norm cases at n = rows * H elements.
fn run_norm_case<T: Element>(
    gpu: &mut Gpu,
    cfg: &Config,
    n: usize,
    rows: &mut Vec<Row>,
) -> Res<()> {
    let dtype = T::DTYPE.name();
    let h = cfg.hidden;
    if !n.is_multiple_of(h) {
        println!("# skipped norm dtype={dtype} n={n}: n is not a multiple of H={h}");
        return Ok(());
    }
    let shape = [n / h, h];
    let tensor_bytes = n * std::mem::size_of::<T>();
    let mask_bytes = 4 * n.div_ceil(32);
    // Per set: x and residual (the backward's dz and ds are the set's x and residual). On
    // top: the outputs of calls in flight (z, s, mask; dx, dresidual) and the states' s.
    let need = |sets: usize| sets * (4 * tensor_bytes + mask_bytes) + 6 * tensor_bytes;
    let what = format!("norm dtype={dtype} n={n} (x, residual, z, s: 4 x {tensor_bytes} B)");
    let Some(sets) = fit_sets(gpu, cfg, &what, 4 * tensor_bytes, need)? else {
        return Ok(());
    };
    let batch = sets.max(8);
    let stream = gpu.stream.clone();
    let tensors = |count: usize, len: usize, shape: &[usize]| {
        (0..count)
            .map(|_| Ok(Tensor::from_cuda_slice(pattern::<T>(&stream, len)?, shape)?))
            .collect::<Res<Vec<Tensor<T>>>>()
    };
    let (xs, residuals) = (tensors(sets, n, &shape)?, tensors(sets, n, &shape)?);
    let params = tensors(3, h, &[h])?;
    stream.synchronize()?;
    let pos = StreamPos::new(SEED, OFFSET);
    let row = |op: &'static str, median_s: f64, host_us: f64, bytes: u64| Row {
        dtype,
        n,
        op,
        sets,
        batch,
        median_s,
        bytes,
        host_us,
    };
    for (norm, name) in [(Norm::LayerNorm, "layer"), (Norm::RmsNorm, "rms")] {
        let config = AddNormConfig {
            norm,
            p: cfg.p,
            eps: 1e-5,
            training: true,
        };
        let inputs = |i: usize| AddNormInputs {
            x: &xs[i],
            bias: Some(&params[0]),
            residual: Some(&residuals[i]),
            gamma: &params[1],
            beta: (norm == Norm::LayerNorm).then_some(&params[2]),
        };
        for (form, mode) in [
            ("fwd_bits", MaskMode::Bits),
            ("fwd_regen", MaskMode::Regenerate),
        ] {
            let op = NORM_OPS
                .iter()
                .find(|o| **o == format!("norm_{name}_{form}"))
                .copied()
                .unwrap_or("norm");
            if !cfg.wants(op) {
                continue;
            }
            let _r = nvtx_range(&format!("gpu_dropout/{op}/{dtype}/{n}"));
            let (t, host) = gpu.measure(cfg, batch, |k| {
                drop(dropout_add_norm(inputs(k % sets), &config, pos, mode)?);
                Ok(())
            })?;
            let bits = if mode == MaskMode::Bits {
                mask_bytes
            } else {
                0
            };
            record(
                cfg,
                rows,
                row(op, t, host, (4 * tensor_bytes + bits) as u64),
            );
        }
        let op = if norm == Norm::LayerNorm {
            "norm_layer_bwd"
        } else {
            "norm_rms_bwd"
        };
        if cfg.wants(op) {
            let outs = (0..sets)
                .map(|i| Ok(dropout_add_norm(inputs(i), &config, pos, MaskMode::Bits)?))
                .collect::<Res<Vec<_>>>()?;
            let _r = nvtx_range(&format!("gpu_dropout/{op}/{dtype}/{n}"));
            let (t, host) = gpu.measure(cfg, batch, |k| {
                let i = k % sets;
                let saved = AddNormSaved {
                    s: &outs[i].s,
                    gamma: &params[1],
                };
                let g =
                    dropout_add_norm_backward(&xs[i], Some(&residuals[i]), saved, &outs[i].state)?;
                drop(g);
                Ok(())
            })?;
            record(
                cfg,
                rows,
                row(op, t, host, (5 * tensor_bytes + mask_bytes) as u64),
            );
        }
    }
    drop((xs, residuals, params));
    stream.synchronize()?;
    Ok(())
}

/// The fused bias + dropout + residual cases at n = rows * H elements.
fn run_fused_case<T: Element>(
    gpu: &mut Gpu,
    cfg: &Config,
    n: usize,
    rows: &mut Vec<Row>,
) -> Res<()> {
    let dtype = T::DTYPE.name();
    let h = cfg.hidden;
    if !n.is_multiple_of(h) {
        println!("# skipped fused dtype={dtype} n={n}: n is not a multiple of H={h}");
        return Ok(());
    }
    let shape = [n / h, h];
    let elem = std::mem::size_of::<T>();
    let tensor_bytes = n * elem;
    let mask_bytes = 4 * n.div_ceil(32);
    let bias_bytes = h * elem;
    let threepass = cfg.wants_any(&["threepass_fwd_bits", "threepass_fwd_regen"]);
    // Per set: x and residual (the gradient of the backward is the set's x). On top: the
    // outputs of calls in flight (out + mask; dx + dresidual), a shared zero tensor and the
    // two intermediates of the three-pass reference, and the masks of the backward states.
    let need = |sets: usize| {
        sets * (2 * tensor_bytes + mask_bytes)
            + 4 * (tensor_bytes + mask_bytes)
            + if threepass { 3 * tensor_bytes } else { 0 }
            + 2 * bias_bytes
    };
    // A call reads x and residual and writes out (or reads grad, writes dx and dresidual).
    let what = format!("fused dtype={dtype} n={n} (x, residual, out: 3 x {tensor_bytes} B)");
    let Some(sets) = fit_sets(gpu, cfg, &what, 3 * tensor_bytes, need)? else {
        return Ok(());
    };
    let batch = sets.max(8);
    let stream = gpu.stream.clone();
    let tensors = |count: usize| {
        (0..count)
            .map(|_| Ok(Tensor::from_cuda_slice(pattern::<T>(&stream, n)?, &shape)?))
            .collect::<Res<Vec<Tensor<T>>>>()
    };
    let (xs, residuals) = (tensors(sets)?, tensors(sets)?);
    let bias = Tensor::from_cuda_slice(pattern::<T>(&stream, h)?, &[h])?;
    stream.synchronize()?;

    let (p, pos) = (cfg.p, StreamPos::new(SEED, OFFSET));
    let fwd_bytes = (3 * tensor_bytes + bias_bytes) as u64;
    let bytes_for = |mode: MaskMode| {
        if mode == MaskMode::Bits {
            fwd_bytes + mask_bytes as u64
        } else {
            fwd_bytes
        }
    };
    let row = |op: &'static str, median_s: f64, host_us: f64, bytes: u64| Row {
        dtype,
        n,
        op,
        sets,
        batch,
        median_s,
        bytes,
        host_us,
    };

    for (op, mode) in [
        ("fused_fwd_bits", MaskMode::Bits),
        ("fused_fwd_regen", MaskMode::Regenerate),
    ] {
        if !cfg.wants(op) {
            continue;
        }
        let _r = nvtx_range(&format!("gpu_dropout/{op}/{dtype}/{n}"));
        let (t, host) = gpu.measure(cfg, batch, |k| {
            let i = k % sets;
            let (out, state) = bias_dropout_residual(
                ResidualInputs {
                    x: &xs[i],
                    bias: &bias,
                    residual: &residuals[i],
                },
                p,
                true,
                pos,
                mode,
            )?;
            drop((out, state));
            Ok(())
        })?;
        record(cfg, rows, row(op, t, host, bytes_for(mode)));
    }

    if threepass {
        // Passes 1 and 3 through the fused kernel in eval mode (nothing dropped, s = 1):
        // y = x + bias + 0, and out = z + 0 + residual.
        let zero_residual = Tensor::from_cuda_slice(stream.alloc_zeros::<T>(n)?, &shape)?;
        let zero_bias = Tensor::from_cuda_slice(stream.alloc_zeros::<T>(h)?, &[h])?;
        for (op, mode) in [
            ("threepass_fwd_bits", MaskMode::Bits),
            ("threepass_fwd_regen", MaskMode::Regenerate),
        ] {
            if !cfg.wants(op) {
                continue;
            }
            let _r = nvtx_range(&format!("gpu_dropout/{op}/{dtype}/{n}"));
            let eval = MaskMode::Regenerate;
            let (t, host) = gpu.measure(cfg, batch, |k| {
                let i = k % sets;
                let (y, _) = bias_dropout_residual(
                    ResidualInputs {
                        x: &xs[i],
                        bias: &bias,
                        residual: &zero_residual,
                    },
                    p,
                    false,
                    pos,
                    eval,
                )?;
                let (z, state) = dropout(&y, p, true, pos, mode)?;
                drop(y);
                let (out, _) = bias_dropout_residual(
                    ResidualInputs {
                        x: &z,
                        bias: &zero_bias,
                        residual: &residuals[i],
                    },
                    p,
                    false,
                    pos,
                    eval,
                )?;
                drop((z, state, out));
                Ok(())
            })?;
            record(cfg, rows, row(op, t, host, bytes_for(mode)));
        }
    }

    if cfg.wants("fused_bwd") {
        // Each set's bits state; the upstream gradient is the set's x.
        let states = xs
            .iter()
            .zip(&residuals)
            .map(|(x, r)| {
                Ok(bias_dropout_residual(
                    ResidualInputs {
                        x,
                        bias: &bias,
                        residual: r,
                    },
                    p,
                    true,
                    pos,
                    MaskMode::Bits,
                )?
                .1)
            })
            .collect::<Res<Vec<_>>>()?;
        let _r = nvtx_range(&format!("gpu_dropout/fused_bwd/{dtype}/{n}"));
        let (t, host) = gpu.measure(cfg, batch, |k| {
            let grads = bias_dropout_residual_backward(&xs[k % sets], &states[k % sets])?;
            drop(grads);
            Ok(())
        })?;
        let bytes = (3 * tensor_bytes + mask_bytes + bias_bytes) as u64;
        record(cfg, rows, row("fused_bwd", t, host, bytes));
    }

    if cfg.wants("colsum") {
        // Eval-mode states: dx and dresidual are the gradient, the bias sums remain.
        let states = xs
            .iter()
            .zip(&residuals)
            .map(|(x, r)| {
                Ok(bias_dropout_residual(
                    ResidualInputs {
                        x,
                        bias: &bias,
                        residual: r,
                    },
                    p,
                    false,
                    pos,
                    MaskMode::Bits,
                )?
                .1)
            })
            .collect::<Res<Vec<_>>>()?;
        let _r = nvtx_range(&format!("gpu_dropout/colsum/{dtype}/{n}"));
        let (t, host) = gpu.measure(cfg, batch, |k| {
            drop(bias_dropout_residual_backward(
                &xs[k % sets],
                &states[k % sets],
            )?);
            Ok(())
        })?;
        record(
            cfg,
            rows,
            row("colsum", t, host, (tensor_bytes + bias_bytes) as u64),
        );
    }
    drop((xs, residuals, bias));
    stream.synchronize()?;
    Ok(())
}

/// Fused forward against dropkit's own three passes, same dtype, size and mask form.
fn print_fused_table(rows: &[Row]) {
    let find = |op: &str, dtype: &str, n: usize| {
        rows.iter()
            .find(|r| r.op == op && r.dtype == dtype && r.n == n)
    };
    let mut lines = Vec::new();
    for r in rows.iter().filter(|r| r.op.starts_with("fused_fwd_")) {
        let form = &r.op["fused_fwd_".len()..];
        if let Some(three) = find(&format!("threepass_fwd_{form}"), r.dtype, r.n) {
            lines.push(format!(
                "| {} | 2^{} | {} | {:.3} ms | {:.3} ms | {:.2} |",
                r.dtype,
                r.n.trailing_zeros(),
                form,
                r.median_s * 1e3,
                three.median_s * 1e3,
                three.median_s / r.median_s
            ));
        }
    }
    if lines.is_empty() {
        return;
    }
    println!();
    println!(
        "Fused bias + dropout + residual against dropkit's three passes (pass 1 reads one \
         zero tensor more than a bias add; the 1.5x target is against torch's eager three \
         passes, see scripts/compare.py):\n"
    );
    println!(
        "| dtype | n | mask | fused | three passes | three/fused |\n\
         |---|---:|---|---:|---:|---:|"
    );
    for l in lines {
        println!("{l}");
    }
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "| dtype | n | op | sets | batch | time/call | GB/s | % copy | host us/call |\n\
         |---|---:|---|---:|---:|---:|---:|---:|---:|"
    );
    for r in rows {
        let copy = rows
            .iter()
            .find(|c| c.op == "copy" && c.dtype == r.dtype && c.n == r.n)
            .map(|c| c.gbps());
        let pct = copy.map_or("-".to_owned(), |c| format!("{:.1}", 100.0 * r.gbps() / c));
        let time = if r.median_s >= 1e-3 {
            format!("{:.3} ms", r.median_s * 1e3)
        } else {
            format!("{:.2} us", r.median_s * 1e6)
        };
        println!(
            "| {} | 2^{} | {} | {} | {} | {} | {:.1} | {} | {:.1} |",
            r.dtype,
            r.n.trailing_zeros(),
            r.op,
            r.sets,
            r.batch,
            time,
            r.gbps(),
            pct,
            r.host_us
        );
    }
    // colsum includes whatever copies the eval backward makes for dx and dresidual.
    for r in rows.iter().filter(|r| r.op == "colsum") {
        if let Some(c) = rows
            .iter()
            .find(|c| c.op == "copy" && c.dtype == r.dtype && c.n == r.n)
        {
            println!(
                "# colsum {} 2^{}: {:.3} ms, minus two copies of the gradient: {:.3} ms",
                r.dtype,
                r.n.trailing_zeros(),
                r.median_s * 1e3,
                (r.median_s - 2.0 * c.median_s) * 1e3
            );
        }
    }
}

/// CUDA device 0 with its kernels loaded (embedded PTX, or NVRTC), or why not.
fn open() -> Result<dropkit::cuda::CudaDevice, String> {
    let dev = dropkit::cuda::CudaDevice::new(0).map_err(|e| e.to_string())?;
    dev.kernels_ready().map_err(|e| e.to_string())?;
    Ok(dev)
}

fn setup(dev: &dropkit::cuda::CudaDevice) -> Res<Gpu> {
    let stream = dev.stream().clone();
    let ctx = stream.context().clone();
    let scratch = (
        stream.alloc_zeros::<u8>(SCRATCH_BYTES)?,
        stream.alloc_zeros::<u8>(SCRATCH_BYTES)?,
    );
    let mut gpu = Gpu {
        stream,
        ctx,
        scratch,
        scratch_copy_s: 1.0,
    };
    // Calibrate one scratch copy.
    for _ in 0..2 {
        gpu.stream.memcpy_dtod(&gpu.scratch.0, &mut gpu.scratch.1)?;
    }
    let (start, end) = (gpu.event()?, gpu.event()?);
    start.record(&gpu.stream)?;
    for _ in 0..8 {
        gpu.stream.memcpy_dtod(&gpu.scratch.0, &mut gpu.scratch.1)?;
    }
    end.record(&gpu.stream)?;
    gpu.scratch_copy_s = (f64::from(start.elapsed_ms(&end)?) / 1e3 / 8.0).max(1e-6);
    Ok(gpu)
}

fn main() {
    let cfg = Config::from_env();
    let dev = match open() {
        Ok(d) => d,
        Err(why) => {
            println!("gpu_dropout: skipped: {why}");
            if std::env::var("DROPKIT_REQUIRE_CUDA").is_ok_and(|v| v == "1") {
                eprintln!("gpu_dropout: DROPKIT_REQUIRE_CUDA=1 but no usable GPU");
                std::process::exit(1);
            }
            return;
        }
    };
    let mut gpu = match setup(&dev) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("gpu_dropout: setup failed: {e}");
            std::process::exit(1);
        }
    };
    let (free, total) = gpu.ctx.mem_get_info().unwrap_or((0, 0));
    println!(
        "# device: {} (cc {:?}), {:.1} GiB free of {:.1} GiB",
        dev.name(),
        gpu.ctx.compute_capability().unwrap_or((0, 0)),
        free as f64 / (1u64 << 30) as f64,
        total as f64 / (1u64 << 30) as f64
    );
    println!(
        "# p={} iters={} working_set_mib={} timing: CUDA events, median per batch, \
         scratch copy {:.1} us",
        cfg.p,
        cfg.iters,
        cfg.ws_bytes >> 20,
        gpu.scratch_copy_s * 1e6
    );
    let mut rows = Vec::new();
    for dtype in &cfg.dtypes {
        match dtype.as_str() {
            "f32" => run_dtype::<f32>(&mut gpu, &cfg, &mut rows),
            "bf16" => run_dtype::<bf16>(&mut gpu, &cfg, &mut rows),
            "f16" => run_dtype::<f16>(&mut gpu, &cfg, &mut rows),
            "f64" => run_dtype::<f64>(&mut gpu, &cfg, &mut rows),
            other => println!("# unknown dtype {other:?} (f32,bf16,f16,f64)"),
        }
    }
    print_table(&rows);
    print_fused_table(&rows);
}
