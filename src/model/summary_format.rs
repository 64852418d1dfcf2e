//! The metadata summary's format, shared by the engine that writes summaries and the
//! report that merges them: how many keys, how long a value, in which order.

use std::cmp::Ordering;

/// Most keys one rollup row's summary keeps; the rest are counted in `$dropped_keys`.
pub const MAX_KEYS: usize = 100;

/// The key that records how many keys were dropped beyond [`MAX_KEYS`].
pub const DROPPED_KEYS: &str = "$dropped_keys";

/// The longest value kept in a summary's `values`, in bytes of its text.
pub const MAX_VALUE_BYTES: usize = 1024;

/// Values most frequent first; ties by value in ascending byte order.
pub fn value_order(a: &(&str, u64), b: &(&str, u64)) -> Ordering {
    b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0))
}

/// Keys most frequent (by `n`) first; ties by key.
pub fn key_order(a: &(&str, u64), b: &(&str, u64)) -> Ordering {
    value_order(a, b)
}
