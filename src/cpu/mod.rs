//! The CPU backend: the reference implementation of the spec, written to be fast.
//!
//! Every layer is expressed as a function of one 32-element mask word (see [`map_words`]):
//! the driver here splits the tensor into chunks of whole words, runs the chunks on all
//! cores with rayon, widens inputs to the compute type and narrows outputs once. Because
//! each word depends only on its index, the bits do not depend on the thread count.

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512;
pub mod dropout;
pub mod grouped;
pub mod norm;
mod norm_backward;
pub mod recycle;
pub mod residual;
mod rows;
/// Which instruction set the CPU backend uses (the leaf module `host::simd`, re-exported).
pub use crate::host::simd;

use crate::backend::Backend;
use crate::element::{ComputeFloat, Element};

/// An output of `n` elements for a forward or backward to overwrite, or
/// [`crate::error::Error::OutOfMemory`] when the allocator refuses it. Every element is +0.0
/// or a stale value of a recycled buffer, so callers must write them all.
///
/// Large outputs come from [`recycle`] when a dropped tensor left one of this size there.
/// Otherwise zeroed allocation (calloc) leaves fresh pages unwritten, so the kernel
/// touches them first; on small VMs those page faults can cost more than the dropout
/// itself, and asking Linux for transparent huge pages on the buffer (a hint, ignored where
/// unsupported) cuts their number 512-fold.
pub fn alloc_output<T: Element>(n: usize) -> crate::error::Result<Vec<T>> {
    if let Some(v) = recycle::take(n) {
        return Ok(v);
    }
    let v = crate::alloc::zeroed::<T>(n)?;
    #[cfg(target_os = "linux")]
    advise_huge_pages(&v);
    Ok(v)
}

/// The packed mask of `n` decisions (one word per 32), for a forward to overwrite: zeros,
/// or a recycled mask's stale words; [`crate::error::Error::OutOfMemory`] when the
/// allocator refuses it.
pub fn alloc_mask(n: usize) -> crate::error::Result<Vec<u32>> {
    let words = crate::mask::mask_words(n);
    match recycle::take(words) {
        Some(v) => Ok(v),
        None => crate::alloc::zeroed_words(words),
    }
}

/// The CPU backend as a type: what implements the backend interface (`crate::backend`:
/// its types here, each operation family in its file).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cpu;

impl Backend for Cpu {
    type Buffer<T: Element> = Vec<T>;
    type Mask = Vec<u32>;
    type Operand<'a, T: Element> = CpuOperand<'a, T>;

    fn download_mask(mask: &Vec<u32>) -> crate::error::Result<Vec<u32>> {
        crate::alloc::copied(mask)
    }

    fn input<T: Element>(b: &Vec<T>) -> CpuOperand<'_, T> {
        CpuOperand::Input(b)
    }
}

/// The operand of a CPU forward: a separate input, or the output itself (in place).
pub(crate) enum CpuOperand<'a, T> {
    Input(&'a [T]),
    InPlace(&'a mut [T]),
    /// A separate input written into a preallocated output of its length.
    Into(&'a [T], &'a mut [T]),
}

impl<T: Element> CpuOperand<'_, T> {
    /// Runs `f` on the operand as a source and the output it writes (a new one for an
    /// input, the operand itself in place); returns the new output, `None` in place.
    pub(crate) fn write_with(
        self,
        f: impl FnOnce(Source<'_, T>, &mut [T]) -> crate::error::Result<()>,
    ) -> crate::error::Result<Option<Vec<T>>> {
        match self {
            CpuOperand::Input(x) => {
                let mut y = alloc_output::<T>(x.len())?;
                f(Source::Slice(x), &mut y)?;
                Ok(Some(y))
            }
            CpuOperand::InPlace(y) => {
                f(Source::Output, y)?;
                Ok(None)
            }
            CpuOperand::Into(x, out) => {
                f(Source::Slice(x), out)?;
                Ok(None)
            }
        }
    }

    /// Its number of elements.
    pub(crate) fn len(&self) -> usize {
        match self {
            CpuOperand::Input(x) => x.len(),
            CpuOperand::InPlace(y) => y.len(),
            CpuOperand::Into(x, _) => x.len(),
        }
    }
}

/// A new mask of `n` decisions for [`MaskMode::Bits`](crate::plan::MaskMode::Bits),
/// `None` for the regenerate form.
pub(crate) fn mask_for(
    n: usize,
    mode: crate::plan::MaskMode,
) -> crate::error::Result<Option<Vec<u32>>> {
    match mode {
        crate::plan::MaskMode::Bits => alloc_mask(n).map(Some),
        crate::plan::MaskMode::Regenerate => Ok(None),
    }
}

#[cfg(target_os = "linux")]
fn advise_huge_pages<T>(v: &[T]) {
    const HUGE: usize = 2 << 20;
    let start = v.as_ptr() as usize;
    let end = start + std::mem::size_of_val(v);
    let (first, last) = (start.next_multiple_of(HUGE), end / HUGE * HUGE);
    if last > first {
        // SAFETY: [first, last) lies inside `v`'s allocation and is page-aligned; the
        // advice changes no contents, only how the kernel backs the pages.
        unsafe {
            libc::madvise(
                first as *mut libc::c_void,
                last - first,
                libc::MADV_HUGEPAGE,
            );
        }
    }
}

/// Elements per parallel task: whole mask words, large enough to amortise scheduling.
const CHUNK: usize = 32 * 1024;

/// A block of 32 compute values: one mask word's worth of elements.
pub type Block<C> = [C; 32];

/// Binds `$kept` and `$dropped` to what a kept element becomes (a closure) and the dropped
/// value, for each arm of a [`crate::plan::Kept`], then runs `$body`: each arm compiles to
/// its own word loop, so the per-element select vectorises with no match inside it.
macro_rules! with_kept {
    ($op:expr, |$kept:ident, $dropped:ident| $body:expr) => {
        match $op {
            $crate::plan::Kept::Scale(s) => {
                let $kept = $crate::cpu::kept_fn(
                    #[inline(always)]
                    move |x| $crate::element::ComputeFloat::mul(x, s),
                );
                let $dropped = $crate::element::ComputeFloat::ZERO;
                $body
            }
            $crate::plan::Kept::Affine { a, b, dropped } => {
                let $kept = $crate::cpu::kept_fn(
                    #[inline(always)]
                    move |x| {
                        $crate::element::ComputeFloat::add(
                            $crate::element::ComputeFloat::mul(x, a),
                            b,
                        )
                    },
                );
                let $dropped = dropped;
                $body
            }
        }
    };
}
pub(crate) use with_kept;

/// Types a kept map as a function of the compute type (closures as arguments may carry
/// `#[inline(always)]`, which the word loops rely on).
#[inline(always)]
pub(crate) fn kept_fn<C: ComputeFloat>(
    f: impl Fn(C) -> C + Copy + Sync,
) -> impl Fn(C) -> C + Copy + Sync {
    f
}

/// Where an operand comes from: a separate slice, or the output itself (in-place).
#[derive(Clone, Copy)]
pub enum Source<'a, T> {
    /// A slice of its own, as long as the output.
    Slice(&'a [T]),
    /// The output buffer itself, read before it is written.
    Output,
}

/// Runs `word_fn` on every 32-element word of `out` and writes the results.
///
/// `word_fn(w, inputs, out_block)` gets the global word index `w` (element 32w is the first),
/// the K inputs widened to the compute type (zeros past the end), fills `out_block`, and
/// returns the 32 keep bits of the word. Bits past the end are cleared before they are
/// stored in `bits_out` (one word per 32 elements).
pub fn map_words<T, const K: usize, F>(
    inputs: [Source<'_, T>; K],
    out: &mut [T],
    bits_out: Option<&mut [u32]>,
    word_fn: F,
) where
    T: Element,
    F: Fn(usize, &[Block<T::Compute>; K], &mut Block<T::Compute>) -> u32 + Sync,
{
    let n = out.len();
    for input in &inputs {
        if let Source::Slice(s) = input {
            debug_assert_eq!(s.len(), n, "backend called with mismatched lengths");
        }
    }
    for_each_chunk(out, bits_out, |start, out, bits| {
        let chunk_inputs = inputs.map(|s| match s {
            Source::Slice(s) => Source::Slice(&s[start..start + out.len()]),
            Source::Output => Source::Output,
        });
        run_chunk_dispatch(start / 32, &chunk_inputs, out, bits, &word_fn);
    });
}

/// Up to this many elements a call runs on the calling thread: below it, waking the
/// thread pool costs more than the other cores save.
pub const SERIAL_MAX: usize = 1 << 16;

/// Splits `out` (and its mask words, one per 32 elements) into chunks of whole words and
/// runs `run(first_element, out_chunk, bits_chunk)` on each, on all cores for calls above
/// [`SERIAL_MAX`] elements.
pub(crate) fn for_each_chunk<T: Send>(
    out: &mut [T],
    bits_out: Option<&mut [u32]>,
    run: impl Fn(usize, &mut [T], Option<&mut [u32]>) + Sync,
) {
    if out.len() <= SERIAL_MAX {
        run(0, out, bits_out);
        return;
    }
    use rayon::prelude::*;
    match bits_out {
        Some(bits) => out
            .par_chunks_mut(CHUNK)
            .zip(bits.par_chunks_mut(CHUNK / 32))
            .enumerate()
            .for_each(|(c, (o, b))| run(c * CHUNK, o, Some(b))),
        None => out
            .par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(c, o)| run(c * CHUNK, o, None)),
    }
}

/// [`for_each_chunk`] for a mask alone: `bits` holds the words of `n` decisions, cut at the
/// same decisions as the elementwise chunks; `run` gets each piece's first word.
pub(crate) fn for_each_mask_chunk(
    bits: &mut [u32],
    n: usize,
    run: impl Fn(usize, &mut [u32]) + Sync,
) {
    if n <= SERIAL_MAX {
        run(0, bits);
        return;
    }
    use rayon::prelude::*;
    bits.par_chunks_mut(CHUNK / 32)
        .enumerate()
        .for_each(|(c, b)| run(c * (CHUNK / 32), b));
}

/// Picks the widest instruction set in use ([`simd::level`](crate::host::simd::level)); the arithmetic (and so the
/// bits) is the same either way, only the vector width changes.
fn run_chunk_dispatch<T, const K: usize, F>(
    first_word: usize,
    inputs: &[Source<'_, T>; K],
    out: &mut [T],
    bits: Option<&mut [u32]>,
    word_fn: &F,
) where
    T: Element,
    F: Fn(usize, &[Block<T::Compute>; K], &mut Block<T::Compute>) -> u32 + Sync,
{
    #[cfg(target_arch = "x86_64")]
    {
        if crate::host::simd::avx2() {
            // SAFETY: the CPU supports AVX2 and F16C, checked just above.
            unsafe { run_chunk_avx2(first_word, inputs, out, bits, word_fn) };
            return;
        }
    }
    run_chunk(first_word, inputs, out, bits, word_fn);
}

/// [`run_chunk`] compiled for AVX2 and F16C: the word function and the `#[inline(always)]`
/// intrinsics helpers it reaches (Philox, f16 conversions) inline into one vector loop.
///
/// # Safety
/// The CPU must support AVX2 and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn run_chunk_avx2<T, const K: usize, F>(
    first_word: usize,
    inputs: &[Source<'_, T>; K],
    out: &mut [T],
    bits: Option<&mut [u32]>,
    word_fn: &F,
) where
    T: Element,
    F: Fn(usize, &[Block<T::Compute>; K], &mut Block<T::Compute>) -> u32 + Sync,
{
    run_chunk(first_word, inputs, out, bits, word_fn)
}

#[inline(always)]
fn run_chunk<T, const K: usize, F>(
    first_word: usize,
    inputs: &[Source<'_, T>; K],
    out: &mut [T],
    mut bits: Option<&mut [u32]>,
    word_fn: &F,
) where
    T: Element,
    F: Fn(usize, &[Block<T::Compute>; K], &mut Block<T::Compute>) -> u32 + Sync,
{
    let zero = <T::Compute as ComputeFloat>::ZERO;
    let mut inb = [[zero; 32]; K];
    let mut outb = [zero; 32];
    // Whole words first, with lengths the compiler knows (32), so that the conversions
    // and the word function unroll and vectorise; then the partial last word, if any.
    let full = out.len() / 32;
    let (head, tail) = out.split_at_mut(32 * full);
    for (w, out_word) in head.chunks_exact_mut(32).enumerate() {
        let base = 32 * w;
        for (k, input) in inputs.iter().enumerate() {
            match input {
                Source::Slice(s) => T::to_compute_block(&s[base..base + 32], &mut inb[k]),
                Source::Output => T::to_compute_block(out_word, &mut inb[k]),
            }
        }
        let keep = word_fn(first_word + w, &inb, &mut outb);
        T::from_compute_block(&outb, out_word);
        if let Some(bits) = bits.as_deref_mut() {
            bits[w] = keep;
        }
    }
    let len = tail.len();
    if len == 0 {
        return;
    }
    let base = 32 * full;
    for (k, input) in inputs.iter().enumerate() {
        let src = match input {
            Source::Slice(s) => &s[base..base + len],
            Source::Output => &*tail,
        };
        T::to_compute_block(src, &mut inb[k][..len]);
        inb[k][len..].fill(zero);
    }
    let keep = word_fn(first_word + full, &inb, &mut outb) & ((1u32 << len) - 1);
    T::from_compute_block(&outb[..len], tail);
    if let Some(bits) = bits {
        bits[full] = keep;
    }
}
