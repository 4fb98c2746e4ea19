//! The (seed, offset) generator of SPEC section 5 and the process-wide default one.
//!
//! A generator hands each training-mode call the current offset and advances it by one,
//! so a run can be replayed from (seed, offset). It is cheap to share (`Arc`) and
//! thread-safe: concurrent calls get distinct offsets. [`GeneratorState`] is that
//! (seed, offset) pair as a plain value, so a training run can checkpoint it with its
//! model and resume with the same masks (with the `serde` feature it serialises).

use std::sync::{Arc, Mutex, OnceLock};

/// Seed and offset behind a mutex: reading and advancing is one atomic step.
#[derive(Debug)]
pub struct Generator {
    state: Mutex<GeneratorState>,
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
        Self {
            state: Mutex::new(GeneratorState { seed, offset: 0 }),
        }
    }

    /// A generator that continues from a saved [`GeneratorState`].
    pub fn from_state(state: GeneratorState) -> Self {
        Self {
            state: Mutex::new(state),
        }
    }

    /// A generator seeded from operating-system entropy.
    pub fn from_entropy() -> Self {
        Self::new(rand::random())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GeneratorState> {
        // The state is two integers, always valid: a panic elsewhere cannot corrupt it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
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
    pub fn next_call(&self) -> (u64, u64) {
        let mut state = self.lock();
        let taken = (state.seed, state.offset);
        state.offset = state.offset.wrapping_add(1);
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
