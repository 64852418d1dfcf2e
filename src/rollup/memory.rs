//! How many bytes the aggregator's tables hold, as it counts them against its
//! memory limit. The figures are estimates of what the allocator hands out, good
//! enough to keep a run within its limit with room to spare.

use compact_str::CompactString;

/// Bytes of a hash table of `(K, V)` entries with room for `capacity` of them: one
/// bucket and one control byte per entry, buckets kept at most 7/8 full.
pub(crate) fn table_bytes<K, V>(capacity: usize) -> usize {
    entries_bytes(capacity, std::mem::size_of::<(K, V)>())
}

/// Bytes of a hash table with room for `capacity` entries of `entry_bytes` each.
pub(crate) fn entries_bytes(capacity: usize, entry_bytes: usize) -> usize {
    capacity * (entry_bytes + 1) * 8 / 7
}

/// Bytes a string keeps on the heap: nothing when it is short enough to be stored
/// inline (24 bytes).
pub(crate) fn heap_bytes(text: &CompactString) -> usize {
    if text.is_heap_allocated() {
        text.capacity()
    } else {
        0
    }
}
