//! The (seed, offset) generator of SPEC section 5 and the process-wide default one.
//!
//! A generator hands each training-mode call the current offset and advances it by one,
//! so a run can be replayed from (seed, offset). It is cheap to share (`Arc`) and
//! thread-safe: concurrent calls get distinct offsets. [`GeneratorState`] is that
//! (seed, offset) pair as a plain value, so a training run can checkpoint it with its
//! model and resume with the same masks (with the `serde` feature it serialises).
//!
//! While a CUDA graph is captured with it (`dropkit::cuda::CapturedGraph`, feature
//! `cuda`), a generator hands out *captured* positions instead ([`Generator::next_pos`]):
//! the call's place in the graph, read against the generator's device state when the
//! graph runs, so that each replay draws fresh masks.

use crate::plan::StreamPos;
use std::sync::{Arc, Mutex, OnceLock};

/// Seed and offset behind a mutex: reading and advancing is one atomic step.
#[derive(Debug)]
pub struct Generator {
    state: Mutex<Inner>,
}

/// The state, and the capture in progress, if any.
#[derive(Debug)]
struct Inner {
    state: GeneratorState,
    capture: Option<Capture>,
}

/// A capture in progress: where the graph reads the state, and the calls taken so far.
#[derive(Debug, Clone, Copy)]
struct Capture {
    device_state: u64,
    calls: u64,
}

/// Everything a [`Generator`] holds: the seed and the offset of the next training call.
/// Restoring it ([`Generator::from_state`], [`Generator::set_state`]) replays the same
/// masks from that call on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct GeneratorState {
    /// The Philox key of every call.
    pub seed: u64,
    /// The offset the next training call will use.
    pub offset: u64,
}

impl Generator {
    /// A generator at offset 0 of `seed`.
    pub fn new(seed: u64) -> Self {
        Self::from_state(GeneratorState { seed, offset: 0 })
    }

    /// A generator that continues from a saved [`GeneratorState`].
    pub fn from_state(state: GeneratorState) -> Self {
        Self {
            state: Mutex::new(Inner {
                state,
                capture: None,
            }),
        }
    }

    /// A generator seeded from operating-system entropy.
    pub fn from_entropy() -> Self {
        Self::new(rand::random())
    }

    fn lock_inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The state is plain integers, always valid: a panic elsewhere cannot corrupt it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock(&self) -> impl std::ops::DerefMut<Target = GeneratorState> + '_ {
        struct State<'a>(std::sync::MutexGuard<'a, Inner>);
        impl std::ops::Deref for State<'_> {
            type Target = GeneratorState;
            fn deref(&self) -> &GeneratorState {
                &self.0.state
            }
        }
        impl std::ops::DerefMut for State<'_> {
            fn deref_mut(&mut self) -> &mut GeneratorState {
                &mut self.0.state
            }
        }
        State(self.lock_inner())
    }

    /// A generator for stream `stream` (a rank, a pipeline stage, a data-loader worker)
    /// derived from one base seed: each stream gets its own seed, so streams draw
    /// independent masks, and the same (seed, stream) always gives the same generator.
    ///
    /// Where ranks must agree instead (tensor-parallel shards of one tensor), give every
    /// rank `Generator::new(seed)` and each layer its shard's `with_index_base`.
    ///
    /// The derived seed is one Philox4x32-10 block keyed by the base seed, with the stream
    /// in the counter's high words (a region no dropout call uses as its offset).
    pub fn for_stream(seed: u64, stream: u64) -> Self {
        let block = crate::philox::philox4x32_10(
            [
                0x6472_6f70,
                0x6b69_7421,
                stream as u32,
                (stream >> 32) as u32,
            ],
            crate::philox::key(seed),
        );
        Self::new(u64::from(block[0]) | (u64::from(block[1]) << 32))
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.lock().seed
    }

    /// The offset the next training call will use.
    pub fn offset(&self) -> u64 {
        self.lock().offset
    }

    /// The seed and the offset of the next training call, read together (a concurrent
    /// call cannot slip between them), to checkpoint with a model.
    pub fn state(&self) -> GeneratorState {
        *self.lock()
    }

    /// Continues from a saved state: the next training call uses `state.offset` of
    /// `state.seed`.
    pub fn set_state(&self, state: GeneratorState) {
        *self.lock() = state;
    }

    /// Sets the offset of the next training call (to replay a run).
    pub fn set_offset(&self, offset: u64) {
        self.lock().offset = offset;
    }

    /// Restarts at offset 0 of `seed` (what `torch.manual_seed` does).
    pub fn reseed(&self, seed: u64) {
        *self.lock() = GeneratorState { seed, offset: 0 };
    }

    /// Returns (seed, offset) for one training call and advances the offset by one.
    ///
    /// These are values: a kernel that takes them while its stream captures a CUDA graph
    /// is refused (it would replay one mask forever). Use [`Generator::next_pos`], which
    /// knows about captures.
    pub fn next_call(&self) -> (u64, u64) {
        let mut state = self.lock();
        let taken = (state.seed, state.offset);
        state.offset = state.offset.wrapping_add(1);
        taken
    }

    /// The stream position of one training call (index base 0). Outside a capture this is
    /// [`Generator::next_call`]'s (seed, offset). While a CUDA graph is captured with this
    /// generator it is a captured position: the call's place among the generator's calls
    /// in the graph, which each replay turns into the offset that an eager call at that
    /// place would use; the host offset then advances at each replay, not here.
    pub fn next_pos(&self) -> StreamPos {
        let mut inner = self.lock_inner();
        let seed = inner.state.seed;
        if let Some(capture) = inner.capture.as_mut() {
            let increment = capture.calls;
            capture.calls += 1;
            return StreamPos::captured(seed, increment, capture.device_state);
        }
        let offset = inner.state.offset;
        inner.state.offset = offset.wrapping_add(1);
        StreamPos::new(seed, offset)
    }

    /// Whether a CUDA graph is being captured with this generator.
    pub fn is_capturing(&self) -> bool {
        self.lock_inner().capture.is_some()
    }

    /// Starts handing out captured positions against the device state at `device_state`;
    /// `false` (and nothing changed) if a capture is already in progress.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))] // used by cuda::graph
    pub(crate) fn begin_capture(&self, device_state: u64) -> bool {
        let mut inner = self.lock_inner();
        if inner.capture.is_some() {
            return false;
        }
        inner.capture = Some(Capture {
            device_state,
            calls: 0,
        });
        true
    }

    /// Ends the capture; returns how many calls it took (what each replay advances by).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))] // used by cuda::graph
    pub(crate) fn end_capture(&self) -> u64 {
        self.lock_inner().capture.take().map_or(0, |c| c.calls)
    }

    /// For one replay of a graph that took `calls` calls: the state the graph must read,
    /// and the offset advanced past them, in one step.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))] // used by cuda::graph
    pub(crate) fn advance_for_replay(&self, calls: u64) -> GeneratorState {
        let mut state = self.lock();
        let taken = *state;
        state.offset = state.offset.wrapping_add(calls);
        taken
    }
}

impl Default for Generator {
    /// Seeded from operating-system entropy, like an unseeded framework.
    fn default() -> Self {
        Self::from_entropy()
    }
}

/// The process-wide generator used by layers that were not given their own.
pub fn default_generator() -> &'static Arc<Generator> {
    static DEFAULT: OnceLock<Arc<Generator>> = OnceLock::new();
    DEFAULT.get_or_init(|| Arc::new(Generator::from_entropy()))
}

/// Reseeds the default generator at offset 0, like `torch.manual_seed(seed)`.
pub fn manual_seed(seed: u64) {
    default_generator().reseed(seed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_advance_by_one_per_call() {
        let g = Generator::new(5);
        assert_eq!(g.next_call(), (5, 0));
        assert_eq!(g.next_call(), (5, 1));
        g.set_offset(10);
        assert_eq!(g.next_call(), (5, 10));
        assert_eq!(g.offset(), 11);
        g.reseed(6);
        assert_eq!((g.seed(), g.offset()), (6, 0));
    }

    #[test]
    fn captured_positions_count_calls_and_replays_advance_by_them() {
        let g = Generator::new(3);
        assert_eq!(g.next_pos(), StreamPos::new(3, 0));
        assert!(g.begin_capture(0x1000));
        assert!(!g.begin_capture(0x2000), "a second capture at once");
        let (a, b) = (g.next_pos(), g.next_pos());
        assert!(a.is_captured() && b.is_captured());
        assert_eq!((a.offset, b.offset, a.device_state), (0, 1, 0x1000));
        assert_eq!(g.offset(), 1, "captured calls take no host offset");
        assert_eq!(g.end_capture(), 2);
        assert!(!g.is_capturing());
        assert_eq!(
            g.advance_for_replay(2),
            GeneratorState { seed: 3, offset: 1 }
        );
        assert_eq!(
            g.advance_for_replay(2),
            GeneratorState { seed: 3, offset: 3 }
        );
        assert_eq!(g.next_pos(), StreamPos::new(3, 5));
    }

    #[test]
    fn saved_state_resumes_the_same_calls() {
        let g = Generator::new(42);
        g.next_call();
        g.next_call();
        let saved = g.state();
        assert_eq!(
            saved,
            GeneratorState {
                seed: 42,
                offset: 2
            }
        );
        let after: Vec<_> = (0..3).map(|_| g.next_call()).collect();
        assert_eq!(after, [(42, 2), (42, 3), (42, 4)]);

        let resumed = Generator::from_state(saved);
        assert_eq!(
            (0..3).map(|_| resumed.next_call()).collect::<Vec<_>>(),
            after
        );

        let other = Generator::new(1);
        other.set_state(saved);
        assert_eq!(other.next_call(), (42, 2));
        assert_eq!(
            other.state(),
            GeneratorState {
                seed: 42,
                offset: 3
            }
        );
    }

    #[cfg(feature = "serde")]
    #[test]
    fn state_round_trips_through_serde() {
        let state = GeneratorState {
            seed: u64::MAX,
            offset: 7,
        };
        let json = serde_json::to_string(&state).unwrap();
        assert_eq!(json, r#"{"seed":18446744073709551615,"offset":7}"#);
        let parsed: GeneratorState = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed, state);
        assert_eq!(Generator::from_state(parsed).next_call(), (u64::MAX, 7));
    }

    #[test]
    fn derived_streams_are_distinct_and_reproducible() {
        let seeds: Vec<u64> = (0..64)
            .map(|r| Generator::for_stream(7, r).seed())
            .collect();
        let mut unique = seeds.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), seeds.len(), "every stream gets its own seed");
        assert_eq!(Generator::for_stream(7, 3).seed(), seeds[3]);
        assert_ne!(Generator::for_stream(8, 3).seed(), seeds[3]);
        assert_eq!(Generator::for_stream(7, 3).offset(), 0);
    }

    #[test]
    fn concurrent_calls_get_distinct_offsets() {
        let g = Arc::new(Generator::new(1));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let g = Arc::clone(&g);
                std::thread::spawn(move || (0..250).map(|_| g.next_call().1).collect::<Vec<_>>())
            })
            .collect();
        let mut all: Vec<u64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
    }
}
