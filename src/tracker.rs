//! Named random regions for parallel training: one [`Generator`] per region, every one
//! derived from one seed by its name, so that ranks agree on what must be equal and differ
//! where they must, whatever the parallel degree.
//!
//! - A **shared** region ("model-parallel": tensor, sequence, context parallelism) has the
//!   same generator on every rank. Each rank gives its layers the shard's place in the
//!   whole tensor (`with_shard` with a [`crate::ShardLayout`], any axes split, or
//!   `with_index_base` for one range), and the shards' masks put together are the
//!   unsharded mask: they do not depend on the number of ranks.
//! - A **per-rank** region ("data-parallel", one per expert) derives a generator of its own
//!   for each rank ([`Generator::for_stream`] of the region's seed), so ranks draw
//!   independent masks, reproducibly.
//!
//! Unlike a tracker that seeds each tensor-parallel rank with `seed + rank`, nothing here
//! depends on the parallel degree: a [`TrackerState`] checkpoint taken with 2 ranks resumes
//! with 4 (or on one CPU) and the shared regions give the same masks. No communication is
//! needed either: each rank computes its own shard. What the ranks must agree on is the
//! seed, the region names and kinds, and each shard's place.

use crate::error::{Error, Result};
use crate::generator::{Generator, GeneratorState};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// How a region's generator relates across ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum RegionKind {
    /// The same generator on every rank (shards of one tensor).
    Shared,
    /// A generator of this rank's own (ranks draw independent masks).
    PerRank {
        /// The rank (data-parallel rank, expert index, ...).
        rank: u64,
    },
}

/// One region of a [`TrackerState`]: its name, kind and generator state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RegionState {
    /// The region's name.
    pub name: String,
    /// Shared or per rank.
    pub kind: RegionKind,
    /// Its generator's seed and offset.
    pub generator: GeneratorState,
}

/// Everything an [`RngTracker`] holds, as a plain value to checkpoint with a model.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct TrackerState {
    /// The seed every region is derived from.
    pub seed: u64,
    /// The regions, sorted by name.
    pub regions: Vec<RegionState>,
}

/// Named regions, each a generator derived from one seed by its name (module docs).
/// Thread-safe; the generators it hands out are shared (`Arc`) with the layers that use
/// them.
#[derive(Debug)]
pub struct RngTracker {
    seed: u64,
    regions: Mutex<BTreeMap<String, (RegionKind, Arc<Generator>)>>,
}

impl RngTracker {
    /// A tracker with no region, deriving them from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            regions: Mutex::new(BTreeMap::new()),
        }
    }

    /// The seed the regions are derived from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Registers region `name` of `kind` and returns its generator, at offset 0.
    /// [`Error::DuplicateRegion`] when the name is taken (the existing region unchanged).
    pub fn add(&self, name: &str, kind: RegionKind) -> Result<Arc<Generator>> {
        let mut regions = self.lock();
        if regions.contains_key(name) {
            return Err(Error::DuplicateRegion(name.to_owned()));
        }
        let generator = Arc::new(Generator::new(region_seed(self.seed, name, kind)));
        regions.insert(name.to_owned(), (kind, generator.clone()));
        Ok(generator)
    }

    /// [`Self::add`] with [`RegionKind::Shared`].
    pub fn add_shared(&self, name: &str) -> Result<Arc<Generator>> {
        self.add(name, RegionKind::Shared)
    }

    /// [`Self::add`] with [`RegionKind::PerRank`].
    pub fn add_per_rank(&self, name: &str, rank: u64) -> Result<Arc<Generator>> {
        self.add(name, RegionKind::PerRank { rank })
    }

    /// The generator of region `name`; [`Error::UnknownRegion`] when none is registered.
    pub fn get(&self, name: &str) -> Result<Arc<Generator>> {
        self.lock()
            .get(name)
            .map(|(_, g)| g.clone())
            .ok_or_else(|| Error::UnknownRegion(name.to_owned()))
    }

    /// The names of the registered regions, sorted.
    pub fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// The seed and every region's state, to checkpoint.
    pub fn state(&self) -> TrackerState {
        TrackerState {
            seed: self.seed,
            regions: self
                .lock()
                .iter()
                .map(|(name, (kind, g))| RegionState {
                    name: name.clone(),
                    kind: *kind,
                    generator: g.state(),
                })
                .collect(),
        }
    }

    /// A tracker with the regions of `state`. A region's kind may change between the
    /// checkpoint and the resume only in its rank (a new degree gives ranks new numbers):
    /// pass the ranks of this process in `ranks` (region name -> rank) for the per-rank
    /// regions whose rank differs; shared regions resume as they were, whatever the
    /// degree. [`Error::DuplicateRegion`] if `state` names a region twice,
    /// [`Error::UnknownRegion`] if `ranks` names a region that `state` lacks or that is
    /// not per rank.
    pub fn from_state(state: &TrackerState, ranks: &[(&str, u64)]) -> Result<Self> {
        let tracker = Self::new(state.seed);
        for r in &state.regions {
            let kind = match (r.kind, ranks.iter().find(|(n, _)| *n == r.name)) {
                (RegionKind::PerRank { .. }, Some(&(_, rank))) => RegionKind::PerRank { rank },
                (kind, _) => kind,
            };
            let g = tracker.add(&r.name, kind)?;
            // A rank that moved keeps the region's offset (the training step), with its
            // own seed; anything else resumes exactly.
            g.set_offset(r.generator.offset);
            if kind == r.kind {
                g.set_state(r.generator);
            }
        }
        for (name, _) in ranks {
            match tracker.lock().get(*name) {
                Some((RegionKind::PerRank { .. }, _)) => {}
                _ => return Err(Error::UnknownRegion((*name).to_owned())),
            }
        }
        Ok(tracker)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (RegionKind, Arc<Generator>)>> {
        // A panic while holding the lock cannot leave the map half-changed: every change
        // is one insert.
        self.regions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The seed of region `name` of `kind`: the name's 64-bit FNV-1a hash as a stream of
/// [`Generator::for_stream`] from `seed` (one Philox block), then the rank as a stream of
/// that for a per-rank region. Stable across platforms and versions: checkpoints and
/// other ranks depend on it.
fn region_seed(seed: u64, name: &str, kind: RegionKind) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let shared = Generator::for_stream(seed, hash).seed();
    match kind {
        RegionKind::Shared => shared,
        RegionKind::PerRank { rank } => Generator::for_stream(shared, rank).seed(),
    }
}

#[cfg(test)]
mod tests {
    use super::region_seed;
    use super::RegionKind::{PerRank, Shared};

    #[test]
    fn region_seeds_separate_seeds_names_and_ranks() {
        let a = region_seed(7, "model-parallel", Shared);
        assert_eq!(a, region_seed(7, "model-parallel", Shared));
        assert_ne!(a, region_seed(7, "data-parallel", Shared));
        assert_ne!(a, region_seed(8, "model-parallel", Shared));
        assert_ne!(
            region_seed(7, "data-parallel", PerRank { rank: 0 }),
            region_seed(7, "data-parallel", PerRank { rank: 1 })
        );
        assert_ne!(
            region_seed(7, "data-parallel", PerRank { rank: 0 }),
            region_seed(7, "data-parallel", Shared)
        );
    }
}
