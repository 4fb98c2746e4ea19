//! A bounded cache of recently freed CPU buffers, so that a forward or backward that
//! allocates its output gets the pages a dropped tensor of the same size just used
//! instead of fresh ones.
//!
//! Why: a large fresh allocation is a new `mmap`, and every one of its pages faults on
//! first touch; on small virtual machines that costs more than the dropout itself. A
//! training step allocates the same shapes every step, so the buffer of the last step's
//! tensor fits the next one exactly.
//!
//! What it keeps: the CPU buffers of dropped [`crate::Tensor`]s and saved masks of at
//! least [`MIN_BYTES`] (smaller ones the allocator already reuses cheaply), newest first,
//! at most [`limit`] bytes in all (256 MiB unless `DROPKIT_CPU_CACHE_MB` or [`set_limit`]
//! says otherwise); the oldest go back to the allocator first. A buffer is handed out again
//! only for the same element type and length. `DROPKIT_CPU_CACHE_MB=0` or `set_limit(0)`
//! turns the cache off; [`clear`] empties it.
//!
//! Never blocks a drop: when another thread holds the cache, a dropped buffer is simply
//! freed.

use std::any::{Any, TypeId};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

/// The environment variable that sets the limit, in MiB (read once, at first use).
pub const ENV_VAR: &str = "DROPKIT_CPU_CACHE_MB";

/// The limit when neither `DROPKIT_CPU_CACHE_MB` nor [`set_limit`] sets one: 256 MiB.
pub const DEFAULT_LIMIT_BYTES: usize = 256 << 20;

/// Buffers smaller than this (1 MiB) are left to the allocator.
pub const MIN_BYTES: usize = 1 << 20;

/// The limit before it is first read.
const UNSET: usize = usize::MAX;

static LIMIT: AtomicUsize = AtomicUsize::new(UNSET);
static CACHE: Mutex<Cache> = Mutex::new(Cache {
    entries: Vec::new(),
    bytes: 0,
});

/// Free buffers, oldest first.
struct Cache {
    entries: Vec<Entry>,
    bytes: usize,
}

struct Entry {
    /// `TypeId` of the `Vec<T>` in `buf`.
    kind: TypeId,
    len: usize,
    bytes: usize,
    buf: Box<dyn Any + Send>,
}

/// The most bytes the cache keeps.
pub fn limit() -> usize {
    match LIMIT.load(Ordering::Relaxed) {
        UNSET => {
            let limit = std::env::var(ENV_VAR)
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .map_or(DEFAULT_LIMIT_BYTES, |mb| {
                    mb.saturating_mul(1 << 20).min(UNSET - 1)
                });
            // A racing `set_limit` wins over the environment.
            let _ = LIMIT.compare_exchange(UNSET, limit, Ordering::Relaxed, Ordering::Relaxed);
            LIMIT.load(Ordering::Relaxed)
        }
        limit => limit,
    }
}

/// Sets the most bytes the cache keeps (0 turns it off), freeing the oldest buffers
/// beyond it now.
pub fn set_limit(bytes: usize) {
    LIMIT.store(bytes.min(UNSET - 1), Ordering::Relaxed);
    let evicted = {
        let mut cache = CACHE.lock().unwrap_or_else(PoisonError::into_inner);
        cache.evict_to(bytes)
    };
    drop(evicted);
}

/// Frees every cached buffer.
pub fn clear() {
    let evicted = {
        let mut cache = CACHE.lock().unwrap_or_else(PoisonError::into_inner);
        cache.evict_to(0)
    };
    drop(evicted);
}

/// Bytes held by the cache now.
pub fn cached_bytes() -> usize {
    CACHE.lock().unwrap_or_else(PoisonError::into_inner).bytes
}

impl Cache {
    /// Removes the oldest entries until at most `limit` bytes remain; the caller frees
    /// them after releasing the lock.
    fn evict_to(&mut self, limit: usize) -> Vec<Entry> {
        let mut n = 0;
        let mut bytes = self.bytes;
        while bytes > limit && n < self.entries.len() {
            bytes -= self.entries[n].bytes;
            n += 1;
        }
        self.bytes = bytes;
        self.entries.drain(..n).collect()
    }
}

/// A cached buffer of exactly `len` elements of `T` (old contents), if there is one.
pub(crate) fn take<T: Copy + Send + 'static>(len: usize) -> Option<Vec<T>> {
    if len.saturating_mul(std::mem::size_of::<T>()) < MIN_BYTES || limit() == 0 {
        return None;
    }
    let kind = TypeId::of::<Vec<T>>();
    let entry = {
        let mut cache = CACHE.lock().unwrap_or_else(PoisonError::into_inner);
        let i = cache
            .entries
            .iter()
            .rposition(|e| e.kind == kind && e.len == len)?;
        let entry = cache.entries.remove(i);
        cache.bytes -= entry.bytes;
        entry
    };
    entry.buf.downcast::<Vec<T>>().ok().map(|v| *v)
}

/// Keeps `v` for a later [`take`], or frees it (too small, larger than the limit, or the
/// cache busy).
pub(crate) fn give<T: Copy + Send + 'static>(v: Vec<T>) {
    let bytes = v.capacity().saturating_mul(std::mem::size_of::<T>());
    let limit = limit();
    if bytes < MIN_BYTES || bytes > limit {
        return;
    }
    let entry = Entry {
        kind: TypeId::of::<Vec<T>>(),
        len: v.len(),
        bytes,
        buf: Box::new(v),
    };
    let evicted = {
        // Poisoned or held by another thread: free the buffer instead of waiting.
        let Ok(mut cache) = CACHE.try_lock() else {
            return;
        };
        cache.entries.push(entry);
        cache.bytes += bytes;
        cache.evict_to(limit)
    };
    drop(evicted);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test, since the cache is process-wide (other tests only add and take).
    #[test]
    fn keeps_reuses_and_bounds() {
        let n = MIN_BYTES / 4;
        let v = vec![7u32; n];
        let ptr = v.as_ptr();
        give(v);
        // Same type and length: the same allocation, contents untouched.
        let w = take::<u32>(n).unwrap();
        assert_eq!((w.as_ptr(), w[n - 1]), (ptr, 7));
        // Another length or type, or too small: nothing.
        give(w);
        assert!(take::<u32>(n + 1).is_none());
        assert!(take::<f32>(n).is_none());
        give(vec![1u8; 16]);
        assert!(take::<u8>(16).is_none());
        // The limit bounds what is kept; 0 turns it off.
        set_limit(MIN_BYTES);
        give(vec![0u64; n]);
        assert!(cached_bytes() <= MIN_BYTES);
        set_limit(0);
        assert_eq!(cached_bytes(), 0);
        give(vec![0u32; n]);
        assert!(take::<u32>(n).is_none());
        set_limit(DEFAULT_LIMIT_BYTES);
        clear();
        assert_eq!(cached_bytes(), 0);
    }
}
