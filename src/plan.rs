//! The vocabulary of one dropout call, shared by every layer and every backend: where its
//! random words start ([`StreamPos`]), how the mask is saved ([`MaskMode`]), how elements
//! map to decisions (`Decisions`), what a kept or dropped element becomes (`Kept`),
//! alpha dropout's coefficients and the column-sum block size of the bias gradient.
//!
//! A leaf: it imports only the element and probability types, never a backend, so the CPU
//! and CUDA backends, the functional layer and the candle ops can all speak it.

use crate::element::{to_compute_f64, ComputeFloat, Element};
use crate::mask::Probability;
use crate::shard::ShardLayout;
use std::sync::Arc;

/// Where a call's random words come from: decision i of this tensor is `index_base + i`.
///
/// A position handed out by a generator while its stream captures a CUDA graph
/// ([`Generator::next_pos`](crate::Generator::next_pos)) is *captured*: its (seed,
/// offset) are read from the generator's device state each time the graph runs, and
/// `offset` holds the call's place among the generator's calls in the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamPos {
    /// The Philox key (SPEC section 1).
    pub seed: u64,
    /// Counter words 2-3: the generator's call count.
    pub offset: u64,
    /// The decision index of the tensor's element 0 (a shard's first global element).
    pub index_base: u64,
    /// The device address of the generator state a captured call reads (0: eager).
    pub(crate) device_state: u64,
}

impl StreamPos {
    /// Decisions of this call start at index 0 of (seed, offset).
    pub fn new(seed: u64, offset: u64) -> Self {
        Self {
            seed,
            offset,
            index_base: 0,
            device_state: 0,
        }
    }

    /// A captured position: `increment`-th call of a graph on the generator whose device
    /// state is at `device_state`.
    pub(crate) fn captured(seed: u64, increment: u64, device_state: u64) -> Self {
        Self {
            device_state,
            ..Self::new(seed, increment)
        }
    }

    /// Whether the (seed, offset) are known only when a CUDA graph runs.
    pub fn is_captured(&self) -> bool {
        self.device_state != 0
    }

    /// The tensor is the slice starting at element `index_base` of a larger one (a shard):
    /// its element i is element `index_base + i` of the whole, so shards reproduce the
    /// whole tensor's mask.
    pub fn with_index_base(mut self, index_base: u64) -> Self {
        self.index_base = index_base;
        self
    }
}

/// How forward hands the decisions to backward (SPEC section 4). Both give identical
/// gradients: `Bits` costs one bit per decision, `Regenerate` re-runs Philox in backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MaskMode {
    /// Save one bit per decision (the default, like PyTorch saving its mask).
    #[default]
    Bits,
    /// Save only (seed, offset, p); backward regenerates the mask.
    Regenerate,
}

/// What a grouped layer does to a kept element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupedKind {
    /// x * s, dropped +0 (channel dropout, DropPath).
    Scale,
    /// a * x + b, dropped a*A + b (FeatureAlphaDropout).
    Alpha,
}

/// How a grouped dropout shares its decisions: one per `size` consecutive elements, and
/// what a kept element becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grouping {
    /// Elements per decision: the spatial size for channel dropout, one sample's size for
    /// DropPath, the spatial size for feature alpha dropout. 0 is an error unless the
    /// tensor is empty.
    pub size: usize,
    /// What a kept or dropped element becomes.
    pub kind: GroupedKind,
}

impl Grouping {
    /// `size` elements per decision, kept ones scaled (channel dropout, DropPath).
    pub fn scale(size: usize) -> Self {
        Grouping {
            size,
            kind: GroupedKind::Scale,
        }
    }

    /// `size` elements per decision, with alpha dropout's affine map (FeatureAlphaDropout).
    pub fn alpha(size: usize) -> Self {
        Grouping {
            size,
            kind: GroupedKind::Alpha,
        }
    }
}

/// Decisions shared by `group` consecutive elements: local element i uses local decision
/// `(lead + i) / group`, which is global decision `first + (lead + i) / group`; `count`
/// decisions in all (channel dropout, DropPath, FeatureAlphaDropout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GroupLayout {
    pub group: u64,
    pub lead: u64,
    pub first: u64,
    pub count: usize,
}

/// How a tensor's elements map to decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decisions {
    /// Element i uses decision `index_base + i` (Dropout, AlphaDropout).
    Elementwise,
    /// One decision per group of elements.
    Grouped(GroupLayout),
}

impl GroupLayout {
    /// The layout of a shard of `n` elements starting at element `index_base` of a tensor
    /// whose decisions cover `group` consecutive elements each (the one place a layout is
    /// built).
    pub(crate) fn new(group: usize, index_base: u64, n: usize) -> Self {
        let group = group.max(1) as u64;
        let lead = index_base % group;
        let count = if n == 0 {
            0
        } else {
            (lead + n as u64).div_ceil(group) as usize
        };
        GroupLayout {
            group,
            lead,
            first: index_base / group,
            count,
        }
    }
}

impl Decisions {
    /// The first global decision and the number of decisions (the bits a saved mask
    /// holds) for `n` elements starting at `index_base`.
    pub(crate) fn span(&self, index_base: u64, n: usize) -> (u64, usize) {
        match self {
            Decisions::Elementwise => (index_base, n),
            Decisions::Grouped(g) => (g.first, g.count),
        }
    }

    /// The packed keep bits of these decisions for `n` elements at `pos`, computed on the
    /// host (a regenerate-form state's mask).
    pub(crate) fn keep_bits(
        &self,
        pos: &StreamPos,
        prob: &Probability,
        n: usize,
    ) -> crate::error::Result<Vec<u32>> {
        let (first, count) = self.span(pos.index_base, n);
        let mut bits = crate::alloc::zeroed_words(crate::mask::mask_words(count))?;
        crate::mask::fill_keep_bits(pos.seed, pos.offset, first, prob, count, &mut bits);
        Ok(bits)
    }
}

/// -lambda * alpha of SELU (SPEC section 6).
pub const SELU_ALPHA_PRIME: f64 = -1.758_099_340_847_376_6;

/// AlphaDropout's a and b for a probability, in f64.
pub(crate) fn alpha_coefficients(prob: &Probability) -> (f64, f64) {
    if prob.drops_all() {
        // Everything is dropped: outputs and gradients are +0 (SPEC section 2), which
        // a = b = 0 gives (0 * A + 0 = +0) where the formula would give inf - inf.
        return (0.0, 0.0);
    }
    let q = prob.keep_probability();
    let a_prime = SELU_ALPHA_PRIME;
    let a = 1.0 / (q * (1.0 + (1.0 - q) * a_prime * a_prime)).sqrt();
    let b = -a * a_prime * (1.0 - q);
    (a, b)
}

/// What a kept and a dropped element become (the per-layer arithmetic of SPEC section 6),
/// in compute type `C`: `Kept<f64>` is the exact plan, [`Kept::for_element`] rounds it once
/// to an element type's compute type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Kept<C> {
    /// x * s, dropped +0: dropout, channel dropout, DropPath and every backward.
    Scale(C),
    /// a * x + b (multiply rounded, then add rounded: no FMA), dropped a*A + b.
    Affine { a: C, b: C, dropped: C },
}

impl Kept<f64> {
    /// Dropout's map for `prob`: x / q.
    pub(crate) fn dropout(prob: &Probability) -> Self {
        Kept::Scale(prob.scale_f64())
    }

    /// AlphaDropout's map for `prob`: a*x + b, dropped a*A + b.
    pub(crate) fn alpha(prob: &Probability) -> Self {
        let (a, b) = alpha_coefficients(prob);
        Kept::Affine {
            a,
            b,
            dropped: SELU_ALPHA_PRIME * a + b,
        }
    }

    /// The map a grouped layer of `kind` applies.
    pub(crate) fn grouped(kind: GroupedKind, prob: &Probability) -> Self {
        match kind {
            GroupedKind::Scale => Self::dropout(prob),
            GroupedKind::Alpha => Self::alpha(prob),
        }
    }

    /// The factor kept gradients are scaled by in backward: s, or alpha dropout's a.
    pub(crate) fn grad_factor(&self) -> f64 {
        match *self {
            Kept::Scale(s) => s,
            Kept::Affine { a, .. } => a,
        }
    }

    /// The map in the compute type of `T`: s, a and b each rounded once, and the dropped
    /// value computed there as A*a + b.
    pub(crate) fn for_element<T: Element>(self) -> Kept<T::Compute> {
        match self {
            Kept::Scale(s) => Kept::Scale(to_compute_f64::<T>(s)),
            Kept::Affine { a, b, .. } => {
                let (a, b) = (to_compute_f64::<T>(a), to_compute_f64::<T>(b));
                let dropped = to_compute_f64::<T>(SELU_ALPHA_PRIME).mul(a).add(b);
                Kept::Affine { a, b, dropped }
            }
        }
    }
}

/// The row normalization of the fused dropout + add + norm (docs/spec.md, section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Norm {
    /// `(s - mean) * rstd * gamma + beta`.
    LayerNorm,
    /// `s * rstd * gamma`, rstd from the mean square (no mean is subtracted, no beta).
    RmsNorm,
}

/// What every row of one call shares.
#[derive(Debug, Clone)]
pub struct NormCall {
    /// LayerNorm or RMSNorm.
    pub norm: Norm,
    /// The row width H (at least 1).
    pub hidden: usize,
    /// eps, rounded once to the compute type when used.
    pub eps: f64,
    /// Where the decisions start; `index_base` is a multiple of H.
    pub pos: StreamPos,
    /// The drop probability (training only).
    pub prob: Probability,
    /// False: nothing is dropped and nothing multiplied (eval mode).
    pub training: bool,
    /// A shard of whole rows that is not one range of the tensor: its decisions come
    /// through its layout (`pos.index_base` is then 0).
    pub shard: Option<Arc<ShardLayout>>,
}

impl NormCall {
    /// The packed decisions of local elements `first .. first + count` (`first` a multiple
    /// of 32) into `bits`: at `pos.index_base + first` on, or through the shard's layout.
    /// `fill_range` draws a range of the whole tensor's decisions (first global index,
    /// count, bits), so that a backend can pass its fastest Philox.
    pub(crate) fn fill_keep_bits(
        &self,
        first: usize,
        count: usize,
        bits: &mut [u32],
        fill_range: impl Fn(u64, usize, &mut [u32]),
    ) {
        let pos = self.pos;
        match &self.shard {
            None => fill_range(pos.index_base.wrapping_add(first as u64), count, bits),
            Some(layout) => {
                layout.fill_keep_bits(pos.seed, pos.offset, &self.prob, first, count, bits)
            }
        }
    }
}

/// Lanes of the row sum of docs/spec.md section 6.3: lane l adds elements l, l + 32, ...,
/// then the lanes meet in a fixed tree (a warp's xor butterfly on CUDA).
pub const ROW_SUM_LANES: usize = 32;

/// Rows per block of the column sum (docs/spec.md, bias-gradient note): a constant, so the
/// bias gradient depends on neither the device nor the thread count. Both backends block
/// the rows by this value.
pub const COLUMN_SUM_BLOCK_ROWS: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouped_layout_of_a_shard() {
        // Elements 5..12 of a tensor with 4 elements per decision: decisions 1 and 2.
        let d = Decisions::Grouped(GroupLayout::new(4, 5, 7));
        let want = GroupLayout {
            group: 4,
            lead: 1,
            first: 1,
            count: 2,
        };
        assert_eq!(d, Decisions::Grouped(want));
        assert_eq!(d.span(5, 7), (1, 2));
        assert_eq!(Decisions::Elementwise.span(5, 7), (5, 7));
        assert_eq!(GroupLayout::new(4, 5, 0).count, 0);
    }

    #[test]
    fn kept_rounds_once_per_element_type() {
        let prob = Probability::new(0.25).unwrap();
        assert_eq!(
            Kept::dropout(&prob).for_element::<f32>(),
            Kept::Scale(4.0 / 3.0)
        );
        let Kept::Affine { a, b, dropped } = Kept::alpha(&prob).for_element::<f32>() else {
            panic!("alpha dropout is affine");
        };
        assert_eq!(dropped, (SELU_ALPHA_PRIME as f32) * a + b);
        assert_eq!(Kept::alpha(&prob).grad_factor() as f32, a);
    }
}
