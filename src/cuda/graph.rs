//! CUDA graphs that draw fresh masks on every replay: [`GraphSafeGenerator`], a generator
//! whose (seed, offset) also live in device memory, and [`CapturedGraph`], a captured
//! step whose replays advance its generators.
//!
//! A kernel's parameters are frozen when a graph is captured, so a call that passed (seed,
//! offset) by value would replay one mask forever (PyTorch's `make_graphed_callables` bug,
//! pytorch#84614). Inside [`CapturedGraph::capture`], a layer whose generator takes part
//! hands its kernels the address of the generator's device state and the call's place in
//! the graph (its increment); the kernel adds the two when it runs (kernels/dk_draw.cuh).
//!
//! How the state advances: before each replay, [`CapturedGraph::replay`] writes the
//! generator's host state to its device copy (one 16-byte copy queued on the stream) and
//! advances the host offset by the graph's number of calls. The host stays the one source
//! of truth, so eager calls and replays can alternate on one generator, and
//! [`Generator::state`] is the checkpoint at any time, with no device read. (A kernel
//! captured at the end of the graph could advance the device copy instead, but then every
//! eager call would have to update the device copy too.) Replay k of a graph of c calls
//! taken from offset o draws offsets o + k c .. o + k c + c - 1: the words eager calls at
//! those offsets draw.
//!
//! Capture runs with cudarc's event tracking off (the captured stream must not wait on
//! events recorded outside the capture; CUDA refuses that with
//! CUDA_ERROR_STREAM_CAPTURE_ISOLATION): call the context's (unsafe)
//! `disable_event_tracking()` first, and keep the captured work on dropkit's one stream.

use super::device::{driver_error, CudaDevice};
use crate::error::{Error, Result};
use crate::generator::{Generator, GeneratorState};
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaGraph, CudaSlice, DevicePtr};
use std::sync::{Arc, Mutex};

/// A [`Generator`] with a device copy of its state, for the layers of a captured graph.
/// Give its [`generator`](Self::generator) to the layers (`with_generator`); the same
/// layers then run eagerly as before, and inside [`CapturedGraph::capture`] they record
/// calls that draw fresh masks on each replay. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct GraphSafeGenerator {
    inner: Arc<Bound>,
}

#[derive(Debug)]
struct Bound {
    generator: Arc<Generator>,
    device: CudaDevice,
    /// [seed, offset] as `struct DkRngState` (kernels/dk_draw.cuh) reads them.
    state: Mutex<CudaSlice<u64>>,
    /// Its device address, fixed for the slice's life.
    address: u64,
}

impl GraphSafeGenerator {
    /// Binds `generator` to `device`: allocates the 16-byte device state (on the device's
    /// stream; not while it captures).
    pub fn new(device: &CudaDevice, generator: Arc<Generator>) -> Result<Self> {
        device.refuse_capture("allocating a generator's device state")?;
        let state = device
            .stream()
            .clone_htod(&[0u64; 2])
            .map_err(driver_error("allocating a generator's device state"))?;
        // The slice never moves on the device: its address stays valid while it lives.
        let address = state.device_ptr(device.stream()).0;
        Ok(Self {
            inner: Arc::new(Bound {
                generator,
                device: device.clone(),
                state: Mutex::new(state),
                address,
            }),
        })
    }

    /// The generator to give the layers.
    pub fn generator(&self) -> &Arc<Generator> {
        &self.inner.generator
    }

    /// The checkpoint: the seed and the offset of the next call, eager or replayed.
    pub fn state(&self) -> GeneratorState {
        self.inner.generator.state()
    }

    /// Continues from a checkpoint (the next replay or eager call uses it).
    pub fn set_state(&self, state: GeneratorState) {
        self.inner.generator.set_state(state);
    }

    fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

/// A captured step: a CUDA graph and, for each generator that took part, how many calls
/// it made (what each replay advances it by).
pub struct CapturedGraph {
    graph: CudaGraph,
    device: CudaDevice,
    calls: Vec<(GraphSafeGenerator, u64)>,
}

impl std::fmt::Debug for CapturedGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let calls: Vec<u64> = self.calls.iter().map(|(_, n)| *n).collect();
        write!(
            f,
            "CapturedGraph(calls per generator {calls:?} on {:?})",
            self.device
        )
    }
}

impl CapturedGraph {
    /// Captures `step` on `device`'s stream into a graph, with `generators` handing out
    /// captured positions. The step must queue work only (the `_into` forms of the
    /// layers, with preallocated outputs and states): an allocation, a host copy or a
    /// synchronize is refused ([`Error::StreamCapturing`]), and a layer whose generator is
    /// not among `generators` is refused too (its mask would be frozen). The capture is
    /// ended whatever the step returns; an error of the step is returned as it is.
    pub fn capture<R>(
        device: &CudaDevice,
        generators: &[&GraphSafeGenerator],
        step: impl FnOnce() -> Result<R>,
    ) -> Result<(Self, R)> {
        const OP: &str = "capturing a CUDA graph";
        device.refuse_capture(OP)?;
        for (i, g) in generators.iter().enumerate() {
            if !g.inner.device.same_as(device) {
                return Err(Error::InvalidArgument {
                    op: OP,
                    reason: "a generator is bound to another device than the capture's".into(),
                });
            }
            if generators[..i].iter().any(|h| h.same(g)) {
                return Err(Error::InvalidArgument {
                    op: OP,
                    reason: "a generator is listed twice".into(),
                });
            }
        }
        let ctx = device.stream().context();
        if ctx.is_event_tracking() && ctx.is_in_multi_stream_mode() {
            return Err(Error::InvalidArgument {
                op: OP,
                reason: "cudarc's event tracking is on, so the captured stream would wait on \
                         events recorded outside the capture (CUDA refuses that); call the \
                         context's (unsafe) `disable_event_tracking()` first"
                    .into(),
            });
        }
        let mut begun = Vec::with_capacity(generators.len());
        for g in generators {
            if !g.inner.generator.begin_capture(g.inner.address) {
                for b in &begun {
                    Self::end_generator(b);
                }
                return Err(Error::InvalidArgument {
                    op: OP,
                    reason: "a generator is already in another capture".into(),
                });
            }
            begun.push((*g).clone());
        }
        let stream = device.stream();
        if let Err(e) =
            stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        {
            for b in &begun {
                Self::end_generator(b);
            }
            return Err(driver_error(OP)(e));
        }
        let result = step();
        let ended = stream.end_capture(CUgraphInstantiate_flags(0));
        let calls: Vec<_> = begun
            .into_iter()
            .map(|g| {
                let n = Self::end_generator(&g);
                (g, n)
            })
            .collect();
        let out = result?;
        let graph = ended
            .map_err(driver_error(OP))?
            .ok_or(Error::InvalidArgument {
                op: OP,
                reason: "the step queued no work".into(),
            })?;
        Ok((
            Self {
                graph,
                device: device.clone(),
                calls,
            },
            out,
        ))
    }

    fn end_generator(g: &GraphSafeGenerator) -> u64 {
        g.inner.generator.end_capture()
    }

    /// Runs the graph once: for each generator, writes its state to the device and
    /// advances it by its calls in the graph, then launches the graph, all queued on the
    /// stream in that order (asynchronous, like the eager calls).
    pub fn replay(&self) -> Result<()> {
        const OP: &str = "replaying a CUDA graph";
        self.device.refuse_capture(OP)?;
        let stream = self.device.stream();
        for (g, calls) in &self.calls {
            let st = g.inner.generator.advance_for_replay(*calls);
            let words = [st.seed, st.offset];
            let mut slice = g
                .inner
                .state
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            stream
                .memcpy_htod(&words, &mut *slice)
                .map_err(driver_error("writing a generator's device state"))?;
        }
        self.graph.launch().map_err(driver_error(OP))
    }

    /// The calls `generator` makes in one replay (`None` if it took no part).
    pub fn calls(&self, generator: &GraphSafeGenerator) -> Option<u64> {
        self.calls
            .iter()
            .find(|(g, _)| g.same(generator))
            .map(|(_, n)| *n)
    }
}
