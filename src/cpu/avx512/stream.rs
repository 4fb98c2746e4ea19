//! Streaming (non-temporal) stores for f32 outputs too large to stay in cache.
//!
//! An ordinary store to a line that is not cached first reads the line (read for
//! ownership), so a forward into a separate output moves three tensors' worth of bytes
//! through memory for two of them useful; a streaming store writes whole lines without
//! reading them. It needs its address aligned to the vector, and the output of a chunk
//! need not start at such an address, so the elements are taken sixteen at a time from
//! the first aligned one, each group's keep bits cut from the chunk's mask words, with
//! ordinary masked stores for the few elements before and after.

use super::{live, map_ps, KeepSource, Lanes16};
use crate::cpu::CHUNK;
use crate::element::Element;
use crate::plan::Kept;
use std::arch::x86_64::*;

/// Outputs from this many bytes stream: beyond what two cores' caches hold, so the lines
/// would leave the cache before anyone reads them anyway. Below it, ordinary stores keep
/// the output in cache for the next op.
pub(super) const STREAM_MIN_BYTES: usize = 16 << 20;

/// True when a call writing `y` (a buffer other than its input) should stream.
pub(super) fn worth_it<T: Element>(y: &[T]) -> bool {
    std::mem::size_of_val(y) >= STREAM_MIN_BYTES
}

/// The 16 keep bits of elements `e .. e + 16` from the chunk's mask words (`mask` holds
/// a word past the last element's; its bits matter only for elements that exist).
#[inline(always)]
fn keep16(mask: &[u32], e: usize) -> u16 {
    let (w, b) = (e / 32, e % 32);
    let pair = u64::from(mask[w]) | u64::from(mask[w + 1]) << 32;
    (pair >> b) as u16
}

/// One chunk of `n` elements from `x` to `y` through `op`, keep bits from `keep` (words
/// `first_word ..`), streaming every group of sixteen whose address is aligned; the keep
/// words go to `bits` when given.
///
/// The mask is made four words at a time into a small buffer, and after each group of
/// words the elements whose bits are all known are written: Philox for the next words
/// overlaps the stores of the last ones.
///
/// # Safety
/// `x` and `y` valid for `n` (1..=CHUNK) elements and not overlapping; `bits`, when given,
/// holds `n.div_ceil(32)` words; the CPU must support AVX-512 F, BW, VL, DQ, F16C and
/// BMI2 (and AVX-512 BF16 when `HW_BF16`).
#[inline(always)]
pub(super) unsafe fn chunk<T: Lanes16, K: KeepSource, const HW_BF16: bool>(
    first_word: usize,
    x: *const T,
    y: *mut T,
    n: usize,
    bits: Option<&mut [u32]>,
    keep: &K,
    op: &Kept<f32>,
) {
    let size = std::mem::size_of::<T>();
    let misaligned = (y as usize) % (16 * size);
    let head = if misaligned == 0 {
        0
    } else {
        ((16 * size - misaligned) / size).min(n)
    };
    let words = n.div_ceil(32);
    // Slack past the chunk's words: the last group writes up to three more, and `keep16`
    // reads one past the last element's.
    let mut mask = [0u32; CHUNK / 32 + 8];
    let mut e = 0;
    // SAFETY: every access below is within the first n elements of x and y.
    unsafe {
        for g in 0..words.div_ceil(4) {
            mask[4 * g..4 * g + 4].copy_from_slice(&keep.words4(first_word + 4 * g));
            if g == 0 && head > 0 {
                partial::<T, HW_BF16>(x, y, 0, head, &mask, op);
                e = head;
            }
            // The elements before this group's end have all their bits.
            let known = (128 * (g + 1)).min(n);
            while e + 16 <= known {
                let r = map_ps(T::load16(x.add(e), u16::MAX), keep16(&mask, e), op);
                T::stream16::<HW_BF16>(y.add(e), r);
                e += 16;
            }
        }
        if e < n {
            partial::<T, HW_BF16>(x, y, e, n - e, &mask, op);
        }
        // Streaming stores are weakly ordered: make them visible before the chunk is
        // reported done.
        _mm_sfence();
    }
    if let Some(bits) = bits {
        mask[words - 1] &= live(n - 32 * (words - 1));
        bits.copy_from_slice(&mask[..words]);
    }
}

/// Elements `e .. e + len` (`len` < 16) with ordinary masked stores.
///
/// # Safety
/// As [`chunk`], for those elements, whose mask words are in `mask`.
#[inline(always)]
unsafe fn partial<T: Lanes16, const HW_BF16: bool>(
    x: *const T,
    y: *mut T,
    e: usize,
    len: usize,
    mask: &[u32],
    op: &Kept<f32>,
) {
    let lanes = ((1u32 << len) - 1) as u16;
    // SAFETY: elements e .. e + len of x and y are valid, by the contract.
    unsafe {
        let r = map_ps(T::load16(x.add(e), lanes), keep16(mask, e) & lanes, op);
        T::store16::<HW_BF16>(y.add(e), lanes, r);
    }
}
