//! Fallible host allocation. Every buffer whose size comes from user input is allocated
//! here, so that a size past the address space is an [`Error::OutOfRange`] and a request
//! the allocator refuses is an [`Error::OutOfMemory`] naming the bytes asked for, never a
//! "capacity overflow" panic or an allocation-failure abort.

use crate::element::Element;
use crate::error::{Error, Result};
use std::alloc::Layout;

/// The layout of `n` values of `T`, or an error when it exceeds what one allocation can
/// hold (`isize::MAX` bytes).
fn array_layout<T>(n: usize) -> Result<Layout> {
    Layout::array::<T>(n).map_err(|_| {
        Error::OutOfRange(format!(
            "{n} elements of {} bytes do not fit in one allocation (at most isize::MAX bytes)",
            std::mem::size_of::<T>()
        ))
    })
}

fn out_of_memory(bytes: usize) -> Error {
    Error::OutOfMemory {
        bytes,
        device: "cpu".into(),
    }
}

/// `n` values whose bits are all zero, from zeroed allocation (calloc: fresh pages are not
/// written, the kernel that fills the buffer touches them first).
///
/// # Safety
/// The all-zero bit pattern must be a valid `T`.
unsafe fn zeroed_raw<T>(n: usize) -> Result<Vec<T>> {
    let layout = array_layout::<T>(n)?;
    if layout.size() == 0 {
        return Ok(Vec::new());
    }
    // SAFETY: the layout has a non-zero size (checked above).
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) } as *mut T;
    if ptr.is_null() {
        return Err(out_of_memory(layout.size()));
    }
    // SAFETY: `ptr` comes from the global allocator with the layout of `[T; n]`, which is
    // the layout `Vec<T>` with capacity `n` uses; all `n` values are initialised, as zero
    // bits, which the caller guarantees are a valid `T`.
    Ok(unsafe { Vec::from_raw_parts(ptr, n, n) })
}

/// `n` elements of +0.0 (all zero bits in f32, f64, f16 and bf16).
pub(crate) fn zeroed<T: Element>(n: usize) -> Result<Vec<T>> {
    // SAFETY: `Element` is sealed to f32, f64, f16 and bf16, for which all zero bits is
    // the value +0.0.
    unsafe { zeroed_raw::<T>(n) }
}

/// `n` zero mask words.
pub(crate) fn zeroed_words(n: usize) -> Result<Vec<u32>> {
    // SAFETY: every bit pattern is a valid u32.
    unsafe { zeroed_raw::<u32>(n) }
}

/// `n` copies of `value`.
pub(crate) fn filled<T: Clone>(value: T, n: usize) -> Result<Vec<T>> {
    let mut v = with_capacity::<T>(n)?;
    v.resize(n, value);
    Ok(v)
}

/// A copy of `src`.
pub(crate) fn copied<T: Copy>(src: &[T]) -> Result<Vec<T>> {
    let mut v = with_capacity::<T>(src.len())?;
    v.extend_from_slice(src);
    Ok(v)
}

/// An empty vector with room for exactly `n` values.
fn with_capacity<T>(n: usize) -> Result<Vec<T>> {
    let layout = array_layout::<T>(n)?;
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| out_of_memory(layout.size()))?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_past_the_address_space_are_out_of_range() {
        assert!(matches!(zeroed::<f32>(1 << 62), Err(Error::OutOfRange(_))));
        assert!(matches!(
            zeroed_words(usize::MAX),
            Err(Error::OutOfRange(_))
        ));
        assert!(matches!(filled(1.0f64, 1 << 61), Err(Error::OutOfRange(_))));
    }

    #[test]
    fn refused_requests_name_the_bytes() {
        // 2^62 bytes fit isize::MAX but no address space.
        assert_eq!(
            zeroed::<f32>(1 << 60),
            Err(Error::OutOfMemory {
                bytes: 1 << 62,
                device: "cpu".into()
            })
        );
        assert!(matches!(
            filled(half::f16::ONE, 1 << 61),
            Err(Error::OutOfMemory { bytes, .. }) if bytes == 1 << 62
        ));
    }

    #[test]
    fn contents() {
        assert_eq!(zeroed::<half::bf16>(3).unwrap(), vec![half::bf16::ZERO; 3]);
        assert!(zeroed::<f64>(0).unwrap().is_empty());
        assert_eq!(zeroed_words(2).unwrap(), vec![0, 0]);
        assert_eq!(filled(2.5f32, 2).unwrap(), vec![2.5, 2.5]);
        assert_eq!(copied(&[1u32, 2, 3]).unwrap(), vec![1, 2, 3]);
    }
}
