//! What an aggregate does when its tables outgrow its memory limit: it writes them
//! out as records, split by a hash into partitions, and at the end reads one
//! partition at a time, as databases do for large GROUP BYs.
//!
//! Three kinds of record go out: a user seen in a group (`UserRecord`), a metadata
//! key's counts in a group (`KeyRecord`), and a value's count under a key
//! (`ValueRecord`). Every record of one user, one key or one value lands in the same
//! partition, so each partition can be counted on its own and the counts added up:
//! distinct users per group are the sum over partitions, and a value among the top
//! K of its key is among the top K of its own partition. A partition still too big
//! for the limit is split again with another hash.
//!
//! The files come from a [`SpillSpace`]; this module only reads and writes through
//! `std::io`. Where the space puts them (scratch files, unlinked when created) is
//! up to it.

mod codec;
mod partitions;
mod port;

use std::hash::BuildHasher as _;
use std::io;
use std::sync::Arc;

pub(crate) use self::codec::{KeyRecord, UserRecord, ValueRecord};
use self::codec::{Record, hasher};
use self::partitions::{Partitions, threads};
pub use self::port::{MemoryLimit, Scratch, SpillError, SpillSpace};

use super::summary::{KeyStats, SummaryTexts};
use crate::model::{CompactString, FastMap, FastSet};

/// Everything an aggregate has spilled, by kind.
#[derive(Debug)]
pub(crate) struct Spilled {
    pub(crate) users: Partitions<UserRecord>,
    pub(crate) keys: Partitions<KeyRecord>,
    pub(crate) values: Partitions<ValueRecord>,
}

impl Spilled {
    pub(crate) fn new() -> Self {
        Self {
            users: Partitions::new(0x7573_6572),
            keys: Partitions::new(0x6b65_7973),
            values: Partitions::new(0x7661_6c75),
        }
    }

    /// Bytes written to disk so far.
    pub(crate) fn written(&self) -> u64 {
        self.users.written + self.keys.written + self.values.written
    }

    /// Takes in `other`'s files, whose group numbers `groups` maps to this
    /// aggregate's.
    pub(crate) fn absorb(&mut self, other: Spilled, groups: &Arc<Vec<u32>>) {
        self.users.absorb(other.users, groups);
        self.keys.absorb(other.keys, groups);
        self.values.absorb(other.values, groups);
    }

    /// Reads every partition back and gives, for each of `groups` groups, its
    /// distinct users and its metadata summary, keeping `top_k` values per key. No
    /// table built on the way holds more than `budget` bytes (but for partitions that
    /// cannot be split further).
    ///
    /// `day_of` gives each group's day group: its own number for a day's group, and
    /// the day's for an hour's. A user counted in an hour's group counts in its day's
    /// group too, so a spill may leave out the day's record of a user it writes an
    /// hour's record for.
    pub(crate) fn finish(
        self,
        day_of: &[u32],
        top_k: usize,
        budget: usize,
        space: &dyn SpillSpace,
    ) -> io::Result<(Vec<u64>, Vec<SummaryTexts>)> {
        let groups = day_of.len();
        let unique = count_users(self.users, day_of, budget, space)?;
        let keys = rank_keys(self.keys, groups, budget, space)?;
        let metas = summarize(keys, self.values, top_k, budget, space)?;
        Ok((unique, metas))
    }
}

/// Bytes of table that stay in one core's cache while a bucket is counted.
const BUCKET_TABLE_BYTES: usize = 1 << 20;

/// A partition's records, split by a hash of their own into buckets whose tables
/// fit in a core's cache: counted in one table, the records of a large partition
/// would each cost a cache miss. Records that must meet land in the same bucket.
fn cache_sized_buckets<R: Record>(
    records: &mut dyn Iterator<Item = io::Result<R>>,
) -> io::Result<Vec<Vec<R>>> {
    const BUCKET_SEED: u64 = 0x6275_636b;
    let expected = records.size_hint().0;
    let buckets = (expected.saturating_mul(R::ENTRY_BYTES) / BUCKET_TABLE_BYTES).max(1);
    if buckets == 1 {
        return Ok(vec![records.collect::<io::Result<_>>()?]);
    }
    let mut split: Vec<Vec<R>> = (0..buckets)
        .map(|_| Vec::with_capacity(expected / buckets + expected / buckets / 8))
        .collect();
    for record in records {
        let record = record?;
        split[(record.hash(BUCKET_SEED) % buckets as u64) as usize].push(record);
    }
    Ok(split)
}

/// A key's best values in one partition so far: at most twice `top_k`, trimmed to
/// `top_k` when they reach it. Each value comes once (a partition's counts are
/// final), so one that ranks after the worst kept at the last trim can never be
/// among the best: on a key whose every value differs (a trace id) almost every
/// value is turned away by one comparison rather than sorted.
#[derive(Debug, Default)]
struct Candidates {
    values: Vec<(CompactString, u64)>,
    worst_kept: Option<(CompactString, u64)>,
}

impl Candidates {
    fn offer(
        &mut self,
        value: (CompactString, u64),
        top_k: usize,
        order: impl Fn(&(CompactString, u64), &(CompactString, u64)) -> std::cmp::Ordering,
    ) {
        if top_k == 0
            || self
                .worst_kept
                .as_ref()
                .is_some_and(|worst| order(&value, worst).is_ge())
        {
            return;
        }
        self.values.push(value);
        if self.values.len() >= 2 * top_k {
            // The `top_k`th in order, with the better ones before it.
            self.values.select_nth_unstable_by(top_k - 1, &order);
            self.values.truncate(top_k);
            self.worst_kept = self.values.last().cloned();
        }
    }
}

/// Distinct users per group: each partition holds all of its users' records. A
/// record of an hour's group counts the user in its day's group (`day_of`) too.
fn count_users(
    users: Partitions<UserRecord>,
    day_of: &[u32],
    budget: usize,
    space: &dyn SpillSpace,
) -> io::Result<Vec<u64>> {
    let groups = day_of.len();
    let mut unique = vec![0u64; groups];
    let user_hasher = hasher(0x6d65_6d62);
    let count = |records: &mut dyn Iterator<Item = io::Result<UserRecord>>| {
        let mut counts = vec![0u64; groups];
        for bucket in cache_sized_buckets(records)? {
            let mut seen = FastSet::default();
            seen.reserve(bucket.len());
            // As many entries as the records at most, reserved at once: grown step by
            // step, the table's rehashing cost as much as the inserts.
            let mut in_days = FastSet::default();
            in_days.reserve(bucket.len());
            for record in &bucket {
                let user_hash = user_hasher.hash_one(record.user.as_bytes());
                let member = |of| Member {
                    user_hash,
                    of,
                    user: &record.user,
                };
                if !seen.insert(member(record.group)) {
                    continue;
                }
                let group = record.group as usize;
                let day = day_of[group];
                if day != record.group {
                    counts[group] += 1;
                }
                if in_days.insert(member(day)) {
                    counts[day as usize] += 1;
                }
            }
        }
        Ok(counts)
    };
    users.map_partitions(budget, space, threads(), &count, &mut |counts| {
        for (total, count) in unique.iter_mut().zip(counts) {
            *total += count;
        }
    })?;
    Ok(unique)
}

/// A user of a group, or of a day, with the user's text hashed once: the sets of
/// a bucket hash that hash and the number, not the text again.
#[derive(Debug, Clone, Copy)]
struct Member<'a> {
    user_hash: u64,
    of: u32,
    user: &'a str,
}

impl std::hash::Hash for Member<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.user_hash);
        state.write_u32(self.of);
    }
}

impl PartialEq for Member<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.of == other.of && self.user_hash == other.user_hash && self.user == other.user
    }
}

impl Eq for Member<'_> {}

/// A group's kept keys (at most [`MAX_KEYS`](super::summary::MAX_KEYS), in key
/// order) and how many distinct keys it had.
#[derive(Debug, Default)]
struct GroupKeys {
    distinct: u64,
    kept: Vec<(CompactString, KeyStats)>,
}

/// Each group's most frequent keys: each partition holds all the records of its
/// keys, so a partition's counts are final and its best keys compete with the others'.
fn rank_keys(
    keys: Partitions<KeyRecord>,
    groups: usize,
    budget: usize,
    space: &dyn SpillSpace,
) -> io::Result<Vec<GroupKeys>> {
    use crate::model::{MAX_KEYS, key_order};
    let by_order = |a: &(CompactString, KeyStats), b: &(CompactString, KeyStats)| {
        key_order(&(&a.0, a.1.n), &(&b.0, b.1.n))
    };
    let mut ranked: Vec<GroupKeys> = (0..groups).map(|_| GroupKeys::default()).collect();
    let merge = |records: &mut dyn Iterator<Item = io::Result<KeyRecord>>| {
        let mut merged: FastMap<(u32, CompactString), KeyStats> = FastMap::default();
        for record in records {
            let record = record?;
            merged
                .entry((record.group, record.key))
                .or_default()
                .merge_counts(&record.stats);
        }
        Ok(merged)
    };
    keys.map_partitions(budget, space, threads(), &merge, &mut |merged| {
        for ((group, key), stats) in merged {
            let entry = &mut ranked[group as usize];
            entry.distinct += 1;
            entry.kept.push((key, stats));
        }
        for entry in &mut ranked {
            if entry.kept.len() > MAX_KEYS {
                entry.kept.sort_unstable_by(by_order);
                entry.kept.truncate(MAX_KEYS);
            }
        }
    })?;
    // Partitions come back in any order: the kept keys are put in one.
    for entry in &mut ranked {
        entry.kept.sort_unstable_by(by_order);
    }
    Ok(ranked)
}

/// Each group's summary: the kept keys' counts, and their top values, found
/// partition by partition (a value's records all land in one partition, so a value
/// among its key's top `top_k` is among the top `top_k` of its own partition).
fn summarize(
    keys: Vec<GroupKeys>,
    values: Partitions<ValueRecord>,
    top_k: usize,
    budget: usize,
    space: &dyn SpillSpace,
) -> io::Result<Vec<SummaryTexts>> {
    use super::summary::{key_json, summary_json};
    use crate::model::value_order;
    let by_order = |a: &(CompactString, u64), b: &(CompactString, u64)| {
        value_order(&(&a.0, a.1), &(&b.0, b.1))
    };
    let mut index: FastMap<(u32, CompactString), usize> = FastMap::default();
    for (group, entry) in keys.iter().enumerate() {
        for (key, _) in &entry.kept {
            index.insert((group as u32, key.clone()), index.len());
        }
    }
    let mut top: Vec<Vec<(CompactString, u64)>> = vec![Vec::new(); index.len()];
    // Each partition's own best `top_k` of each kept key.
    let best = |records: &mut dyn Iterator<Item = io::Result<ValueRecord>>| {
        let mut best: FastMap<usize, Candidates> = FastMap::default();
        // Each group's last key and where it is kept: a group's records come by key
        // (a spill writes a key's values together; the values passed on are mostly
        // of one key), so most skip the lookup.
        let mut last_key: Vec<Option<(CompactString, Option<usize>)>> = vec![None; keys.len()];
        for bucket in cache_sized_buckets(records)? {
            let mut counts: FastMap<(usize, CompactString), u64> = FastMap::default();
            counts.reserve(bucket.len());
            for record in bucket {
                let kept = match last_key.get_mut(record.group as usize) {
                    Some(Some((key, at))) if *key == record.key => *at,
                    last => {
                        let probe = (record.group, record.key);
                        let at = index.get(&probe).copied();
                        if let Some(last) = last {
                            *last = Some((probe.1, at));
                        }
                        at
                    }
                };
                // Values of keys that were dropped are not needed.
                if let Some(at) = kept {
                    *counts.entry((at, record.value)).or_default() += record.count;
                }
            }
            for ((at, value), count) in counts {
                best.entry(at)
                    .or_default()
                    .offer((value, count), top_k, by_order);
            }
        }
        Ok(best)
    };
    values.map_partitions(budget, space, threads(), &best, &mut |best| {
        for (at, candidates) in best {
            let mine = &mut top[at];
            mine.extend(candidates.values);
            if mine.len() > top_k {
                mine.sort_unstable_by(by_order);
                mine.truncate(top_k);
            }
        }
    })?;
    Ok(keys
        .into_iter()
        .enumerate()
        .map(|(group, entry)| {
            let dropped = entry.distinct - entry.kept.len() as u64;
            let parts = entry.kept.iter().map(|(key, stats)| {
                let at = index[&(group as u32, key.clone())];
                let mut best: Vec<(&str, u64)> = top[at].iter().map(|(v, c)| (&**v, *c)).collect();
                best.sort_unstable_by(value_order);
                best.truncate(top_k);
                (key.to_string(), key_json(stats, &best), stats.sketch_text())
            });
            summary_json(parts, dropped)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::value_order;
    use proptest::prelude::*;

    fn by_order(a: &(CompactString, u64), b: &(CompactString, u64)) -> std::cmp::Ordering {
        value_order(&(&a.0, a.1), &(&b.0, b.1))
    }

    proptest! {
        #[test]
        fn candidates_keep_the_values_a_full_sort_ranks_first(
            counts in prop::collection::btree_map("[a-f]{1,3}", 1u64..4, 0..300),
            top_k in 0usize..8,
            seed in any::<u64>(),
        ) {
            let mut offered: Vec<(CompactString, u64)> =
                counts.into_iter().map(|(v, c)| (v.into(), c)).collect();
            // In an order of the seed's, not the map's.
            offered.sort_by_key(|(v, c)| foldhash::fast::FixedState::with_seed(seed).hash_one((v, c)));
            let mut candidates = Candidates::default();
            for value in offered.clone() {
                candidates.offer(value, top_k, by_order);
            }
            let mut kept = candidates.values;
            kept.sort_unstable_by(by_order);
            kept.truncate(top_k);
            offered.sort_unstable_by(by_order);
            offered.truncate(top_k);
            prop_assert_eq!(kept, offered);
        }
    }
}
