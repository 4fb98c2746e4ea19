//! Where a shard sits in the whole tensor: [`ShardLayout`], the global shape and, per axis,
//! the shard's start and length (a hyper-rectangle; any axes split, uneven sizes allowed).
//!
//! With a layout, each element's decision index is its row-major index in the unsharded
//! tensor, so the shards' masks put together are the unsharded mask whatever the
//! sharding: tensor parallel (the hidden or head axis), sequence and context parallel (the
//! sequence axis), or several at once. A shard that is one contiguous range of the tensor
//! (a split of the first axis, or any axis with every axis after it whole) is the
//! `with_index_base` case and takes the same fast path.

use crate::error::{Error, Result};
use crate::mask::{keep_word, mask_words, Probability};

/// Axes a layout may have (the CUDA kernels take them in a fixed-size struct).
pub const MAX_SHARD_RANK: usize = 8;

/// A shard's place in the global tensor (module docs).
///
/// ```
/// use dropkit::ShardLayout;
///
/// // Rank 1 of 4 in tensor parallelism over the hidden axis of a (2, 3, 8) activation.
/// let layout = ShardLayout::new(&[2, 3, 8], &[0, 0, 2], &[2, 3, 2])?;
/// assert_eq!(layout.shape(), &[2, 3, 2]);
/// assert_eq!(layout.global_index(&[1, 2, 1]), Some((1 * 3 + 2) * 8 + 3));
/// assert_eq!(layout.contiguous_start(), None);
/// // A split of the first axis is one contiguous range.
/// assert_eq!(ShardLayout::new(&[4, 8], &[2, 0], &[2, 8])?.contiguous_start(), Some(16));
/// # Ok::<(), dropkit::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ShardLayout {
    global: Vec<usize>,
    start: Vec<usize>,
    shape: Vec<usize>,
}

const OP: &str = "shard layout";

impl ShardLayout {
    /// The shard of `global` that starts at `start` and spans `shape` (one entry per axis
    /// each). An error when the ranks differ, the rank is 0 or above [`MAX_SHARD_RANK`],
    /// the shard runs past the global shape, or the global tensor has 2^64 elements or more.
    pub fn new(global: &[usize], start: &[usize], shape: &[usize]) -> Result<Self> {
        if global.is_empty() || global.len() > MAX_SHARD_RANK {
            return Err(Error::InvalidShape {
                op: OP,
                shape: global.to_vec(),
                reason: format!("a layout has 1 to {MAX_SHARD_RANK} axes"),
            });
        }
        for (what, v) in [("start", start), ("shard shape", shape)] {
            if v.len() != global.len() {
                return Err(Error::InvalidShape {
                    op: OP,
                    shape: v.to_vec(),
                    reason: format!(
                        "the {what} has {} axes but the global shape {global:?} has {}",
                        v.len(),
                        global.len()
                    ),
                });
            }
        }
        for (axis, ((&g, &s), &n)) in global.iter().zip(start).zip(shape).enumerate() {
            if s.checked_add(n).is_none_or(|end| end > g) {
                return Err(Error::InvalidShape {
                    op: OP,
                    shape: shape.to_vec(),
                    reason: format!(
                        "axis {axis}: the shard spans [{s}, {s} + {n}) past the global length {g}"
                    ),
                });
            }
        }
        global
            .iter()
            .try_fold(1u64, |acc, &g| acc.checked_mul(g as u64))
            .ok_or_else(|| {
                Error::OutOfRange(format!(
                    "the global shape {global:?} has 2^64 elements or more"
                ))
            })?;
        Ok(Self {
            global: global.to_vec(),
            start: start.to_vec(),
            shape: shape.to_vec(),
        })
    }

    /// The whole tensor as its own shard.
    pub fn whole(global: &[usize]) -> Result<Self> {
        Self::new(global, &vec![0; global.len()], global)
    }

    /// The unsharded tensor's shape.
    pub fn global_shape(&self) -> &[usize] {
        &self.global
    }

    /// Where the shard starts on each axis.
    pub fn start(&self) -> &[usize] {
        &self.start
    }

    /// The shard's own shape (the shape of the tensor a rank holds).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The row-major index in the unsharded tensor of the shard's element at `local`
    /// coordinates; `None` when `local` has the wrong rank or lies outside the shard.
    pub fn global_index(&self, local: &[usize]) -> Option<u64> {
        if local.len() != self.shape.len() || local.iter().zip(&self.shape).any(|(&c, &n)| c >= n) {
            return None;
        }
        let mut index = 0u64;
        for ((&c, &s), &g) in local.iter().zip(&self.start).zip(&self.global) {
            index = index * g as u64 + (s + c) as u64;
        }
        Some(index)
    }

    /// The global index of the shard's first element when the shard is one contiguous
    /// range of the unsharded tensor (every axis after the innermost split one is whole,
    /// and those before it hold one slice), else `None`. An empty shard is
    /// contiguous (from its would-be first element).
    pub fn contiguous_start(&self) -> Option<u64> {
        // The innermost split axis may be split; every axis before it must hold one slice.
        let contiguous = match (0..self.shape.len())
            .rev()
            .find(|&a| self.shape[a] != self.global[a])
        {
            None => true,
            Some(inner) => self.shape[..inner].iter().all(|&n| n == 1),
        };
        let empty = self.shape.contains(&0);
        (contiguous || empty).then(|| self.first_index())
    }

    /// The layout of the first `axes` axes alone: where a grouped layer's decisions (one
    /// per (sample, channel), or per sample) sit among the whole tensor's.
    pub(crate) fn leading(&self, axes: usize) -> Result<Self> {
        let k = axes.min(self.shape.len());
        Self::new(&self.global[..k], &self.start[..k], &self.shape[..k])
    }

    /// The global index of local element 0 (start coordinates), row-major.
    pub(crate) fn first_index(&self) -> u64 {
        let mut index = 0u64;
        for (&s, &g) in self.start.iter().zip(&self.global) {
            index = index * g as u64 + s as u64;
        }
        index
    }

    /// The shard's runs: maximal pieces that are contiguous in the global index, in local
    /// order, as (local start, global start, length). Every run has the same length: the
    /// length of the innermost split axis times the product of the whole axes after it.
    pub(crate) fn runs(&self) -> impl Iterator<Item = (usize, u64, usize)> + '_ {
        let rank = self.shape.len();
        // Axes from `inner` on are read as one run (inner itself may be split).
        let inner = (0..rank)
            .rev()
            .find(|&a| self.shape[a] != self.global[a])
            .unwrap_or(0);
        let run: usize = self.shape[inner..].iter().product();
        let count: usize = if run == 0 {
            0
        } else {
            self.shape[..inner].iter().product()
        };
        let strides = self.global_strides();
        let first = self.first_index();
        (0..count).map(move |r| {
            // The outer coordinates of run r, row-major over shape[..inner].
            let (mut rest, mut global) = (r, first);
            for a in (0..inner).rev() {
                global += (rest % self.shape[a]) as u64 * strides[a];
                rest /= self.shape[a];
            }
            (r * run, global, run)
        })
    }

    /// Row-major strides of the global shape, in elements.
    pub(crate) fn global_strides(&self) -> Vec<u64> {
        let mut strides = vec![1u64; self.global.len()];
        for a in (0..self.global.len().saturating_sub(1)).rev() {
            strides[a] = strides[a + 1] * self.global[a + 1] as u64;
        }
        strides
    }

    /// The packed keep bits of the shard's elements in local order (docs/spec.md section 4's
    /// format: bit i of word i / 32), each decided by its index in the whole tensor.
    pub(crate) fn keep_bits(&self, seed: u64, offset: u64, prob: &Probability) -> Result<Vec<u32>> {
        let n: usize = self.shape.iter().product();
        let mut bits = crate::alloc::zeroed_words(mask_words(n))?;
        self.fill_keep_bits(seed, offset, prob, 0, n, &mut bits);
        Ok(bits)
    }

    /// The keep bits of local elements `first .. first + count` into `bits` (local
    /// element `first + i` at bit i; `bits` starts zeroed or is cleared here: every word
    /// it covers is written). Runs of the whole tensor's mask are drawn 32 decisions at a
    /// time and shifted into place.
    pub(crate) fn fill_keep_bits(
        &self,
        seed: u64,
        offset: u64,
        prob: &Probability,
        first: usize,
        count: usize,
        bits: &mut [u32],
    ) {
        let words = mask_words(count).min(bits.len());
        bits[..words].fill(0);
        let end = first + count;
        for (local, global, len) in self.runs() {
            // The part of this run inside [first, end), as local offsets into the run.
            let (from, to) = (first.max(local), end.min(local + len));
            if from >= to {
                continue;
            }
            let global = global + (from - local) as u64;
            let len = to - from;
            for j in (0..len).step_by(32) {
                let take = (len - j).min(32);
                let mut word = keep_word(seed, offset, global + j as u64, prob);
                if take < 32 {
                    word &= (1u32 << take) - 1;
                }
                let at = from - first + j;
                let (w, sh) = (at / 32, at % 32);
                bits[w] |= word << sh;
                if sh != 0 && take > 32 - sh {
                    bits[w + 1] |= word >> (32 - sh);
                }
            }
        }
    }

    /// An error unless a tensor of `shape` is this shard.
    pub(crate) fn expect_shape(&self, shape: &[usize], op: &'static str) -> Result<()> {
        if shape != self.shape.as_slice() {
            return Err(Error::ShapeMismatch {
                op,
                expected: self.shape.clone(),
                got: shape.to_vec(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every element's global index, in local row-major order, the slow way.
    fn indices(l: &ShardLayout) -> Vec<u64> {
        let n: usize = l.shape().iter().product();
        (0..n)
            .map(|mut i| {
                let mut c = vec![0; l.shape().len()];
                for a in (0..c.len()).rev() {
                    c[a] = i % l.shape()[a];
                    i /= l.shape()[a];
                }
                l.global_index(&c).unwrap()
            })
            .collect()
    }

    #[test]
    fn runs_cover_the_shard_in_local_order() {
        let cases: &[(&[usize], &[usize], &[usize])] = &[
            (&[2, 3, 8], &[0, 0, 2], &[2, 3, 2]),
            (&[2, 3, 8], &[1, 1, 0], &[1, 2, 8]),
            (&[4, 5], &[1, 0], &[2, 5]),
            (&[4, 5, 6, 7], &[1, 2, 0, 3], &[3, 2, 6, 4]),
            (&[6], &[2], &[3]),
            (&[3, 4], &[0, 0], &[3, 4]),
            (&[3, 4], &[1, 2], &[0, 2]),
        ];
        for &(g, s, n) in cases {
            let l = ShardLayout::new(g, s, n).unwrap();
            let mut from_runs = Vec::new();
            for (local, global, len) in l.runs() {
                assert_eq!(local, from_runs.len());
                from_runs.extend((0..len as u64).map(|k| global + k));
            }
            assert_eq!(from_runs, indices(&l), "{g:?} {s:?} {n:?}");
            let contiguous = from_runs.windows(2).all(|w| w[1] == w[0] + 1);
            let want = contiguous.then(|| from_runs.first().copied().unwrap_or(l.first_index()));
            assert_eq!(l.contiguous_start(), want, "{g:?} {s:?} {n:?}");
        }
    }

    /// A range of the shard's keep bits (from a multiple of 32, as the row drivers ask)
    /// is that range of the whole shard's bits.
    #[test]
    fn a_range_of_keep_bits_is_that_part_of_the_shard_bits() {
        let prob = Probability::new(0.4).unwrap();
        let l = ShardLayout::new(&[3, 7, 40], &[1, 2, 0], &[2, 4, 40]).unwrap();
        let n: usize = l.shape().iter().product();
        let all = l.keep_bits(5, 6, &prob).unwrap();
        let bit = |w: &[u32], i: usize| w[i / 32] >> (i % 32) & 1;
        for (first, count) in [(0, n), (32, 100), (64, n - 64), (96, 7), (288, 0)] {
            let mut part = vec![u32::MAX; mask_words(count)];
            l.fill_keep_bits(5, 6, &prob, first, count, &mut part);
            for i in 0..part.len() * 32 {
                let want = if i < count { bit(&all, first + i) } else { 0 };
                assert_eq!(bit(&part, i), want, "first {first} count {count} bit {i}");
            }
        }
    }

    #[test]
    fn layouts_that_do_not_fit_are_errors() {
        assert!(ShardLayout::new(&[], &[], &[]).is_err());
        assert!(ShardLayout::new(&[4, 4], &[0], &[4, 4]).is_err());
        assert!(ShardLayout::new(&[4, 4], &[0, 0], &[4]).is_err());
        assert!(ShardLayout::new(&[4, 4], &[3, 0], &[2, 4]).is_err());
        assert!(ShardLayout::new(&[4, 4], &[usize::MAX, 0], &[2, 4]).is_err());
        assert!(ShardLayout::new(&[1; 9], &[0; 9], &[1; 9]).is_err());
        assert!(ShardLayout::new(&[1 << 33, 1 << 33], &[0, 0], &[1, 1]).is_err());
        let l = ShardLayout::new(&[4, 4], &[1, 0], &[2, 4]).unwrap();
        assert!(l.expect_shape(&[2, 4], "t").is_ok());
        assert!(l.expect_shape(&[4, 2], "t").is_err());
        assert_eq!(l.global_index(&[2, 0]), None);
        assert_eq!(l.global_index(&[1]), None);
    }
}
