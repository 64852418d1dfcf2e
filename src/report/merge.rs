//! Rows' metadata summaries merged over a period: `n`, `sum`, `min`, `max` exact;
//! `values` summed over the days and ranked again (top K, ties by byte order), with
//! `"valuesExact": false` when some day had left values in `other`; `p50`, `p90`,
//! `p99` from the rows' number sketches merged. The stored
//! summaries are read with their strings borrowed, and the merged one is written as
//! JSON text on the thread that read its period.

use serde::ser::{SerializeMap as _, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::{RawValue, to_raw_value};

use super::stored_sketches::sketch_entries;
use super::stored_summary::{StoredEntry, StoredSummary, read_summary};
use crate::model::ddsketch::DdSketch;
use crate::model::{
    DROPPED_KEYS, ExactSum, FastMap, MAX_KEYS, json_number, key_order, value_order,
};

/// One key's summaries merged over days.
#[derive(Debug, Default)]
struct MergedKey {
    n: u64,
    values: FastMap<String, u64>,
    /// Occurrences of all values, kept or not.
    value_total: u64,
    /// Whether some day left values in `other`, so that the merged ranking may miss
    /// values that are frequent over the period.
    values_cut: bool,
    has_values: bool,
    sum: Option<ExactSum>,
    /// A day's sum was `null` (it overflowed).
    sum_overflowed: bool,
    min: Option<f64>,
    max: Option<f64>,
    /// The rows' sketches of the key's numbers merged.
    sketch: Option<DdSketch>,
    /// A row with numbers under the key had no sketch of them (written before they
    /// were kept): the merged percentiles would miss its numbers.
    sketch_missing: bool,
}

/// Rows' metadata summaries merged: `n`, `sum`, `min`, `max` exact; `values` summed
/// over the days and ranked again (top K, ties by byte order), with
/// `"valuesExact": false` when some day had left values in `other`.
#[derive(Debug, Default)]
pub(super) struct MetaMerge {
    /// In no order: the summary ranks them, then writes them by name.
    keys: FastMap<String, MergedKey>,
    dropped: u64,
}

impl MetaMerge {
    /// Adds a row's summary and its number sketches; returns whether a key with
    /// numbers lacked its sketch (a row written before sketches were kept).
    pub(super) fn add(&mut self, meta: &str, sketches: Option<&str>) -> bool {
        // Written by this crate; a summary that does not parse adds nothing.
        let Some(StoredSummary(keys)) = read_summary(meta) else {
            return false;
        };
        let sketches = sketches.and_then(sketch_entries).unwrap_or_default();
        let mut missing = false;
        for entry in keys {
            let (key, stats) = match entry {
                StoredEntry::Dropped(dropped) => {
                    self.dropped += dropped;
                    continue;
                }
                StoredEntry::Key(key, stats) => (key, stats),
            };
            // A key with numbers has its sketch in the row's sketches.
            // The last of duplicate keys, as in a map.
            let sketch = stats.sum.is_some().then(|| {
                sketches
                    .iter()
                    .rev()
                    .find(|(name, _)| *name == key.0)
                    .map(|(_, text)| text)
            });
            let merged = match self.keys.get_mut(&*key.0) {
                Some(merged) => merged,
                None => self.keys.entry(key.0.into_owned()).or_default(),
            };
            merged.n += stats.n;
            if let Some(values) = stats.values {
                merged.has_values = true;
                merged.values_cut |= stats.other > 0;
                merged.value_total += stats.other;
                for (value, count) in values {
                    match merged.values.get_mut(&*value.0) {
                        Some(total) => *total += count,
                        None => {
                            merged.values.insert(value.0.into_owned(), count);
                        }
                    }
                    merged.value_total += count;
                }
            }
            match stats.sum {
                Some(None) => merged.sum_overflowed = true,
                Some(Some(x)) => merged.sum.get_or_insert_with(ExactSum::default).add(x),
                None => {}
            }
            if let Some(x) = stats.min {
                merged.min = Some(merged.min.map_or(x, |m| m.min(x)));
            }
            if let Some(x) = stats.max {
                merged.max = Some(merged.max.map_or(x, |m| m.max(x)));
            }
            if let Some(sketch) = sketch {
                let merged_one = match sketch {
                    None => false,
                    // A day already lacked one, so the period's percentiles are left
                    // out: this one need not be decoded.
                    Some(_) if merged.sketch_missing => true,
                    Some(text) => merged
                        .sketch
                        .get_or_insert_default()
                        .merge_base64(text)
                        .is_ok(),
                };
                if !merged_one {
                    merged.sketch_missing = true;
                    missing = true;
                }
            }
        }
        missing
    }

    /// The merged summary as JSON text: keys and values in byte order, each key's
    /// fields by name, as a `serde_json` map of it would give them. Written here, on
    /// the thread that read the period, so that the report's output copies the
    /// text: a year's report holds a hundred thousand values.
    pub(super) fn to_json(&self, top_k: usize) -> MergedMeta {
        let mut ranked: Vec<(&str, u64)> =
            self.keys.iter().map(|(k, m)| (k.as_str(), m.n)).collect();
        ranked.sort_unstable_by(key_order);
        let dropped = self.dropped + ranked.len().saturating_sub(MAX_KEYS) as u64;
        ranked.truncate(MAX_KEYS);
        let mut entries: Vec<(&str, MetaEntry<'_>)> = ranked
            .into_iter()
            .map(|(key, _)| (key, MetaEntry::Key(&self.keys[key], top_k)))
            .collect();
        if dropped > 0 {
            entries.push((DROPPED_KEYS, MetaEntry::Dropped(dropped)));
        }
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        // Strings, integers and finite numbers (`json_number` makes others null),
        // which always serialize.
        MergedMeta(to_raw_value(&JsonMap(&entries)).expect("a merged summary serializes"))
    }
}

/// An event's metadata summaries merged over a period, as JSON text (an object of
/// keys, see the contract's report).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MergedMeta(Box<RawValue>);

impl MergedMeta {
    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// The summary as a JSON value, to look into.
    ///
    /// # Errors
    ///
    /// A summary read from elsewhere may hold a number that a [`Value`] cannot
    /// (such as `1e400`).
    pub fn to_value(&self) -> serde_json::Result<Value> {
        serde_json::from_str(self.get())
    }
}

/// Equal when their text is.
impl PartialEq for MergedMeta {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

/// A key of a merged summary, or the count of keys dropped.
enum MetaEntry<'a> {
    Key(&'a MergedKey, usize),
    Dropped(u64),
}

/// Entries serialized as a JSON object, in their order.
struct JsonMap<'a, K, V>(&'a [(K, V)]);

impl<K: Serialize, V: Serialize> Serialize for JsonMap<'_, K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

impl Serialize for MetaEntry<'_> {
    /// A key's fields by name: `max`, `min`, `n`, `other`, `p50`, `p90`, `p99`,
    /// `sum`, `values`, `valuesExact`, those that apply.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (key, top_k) = match *self {
            MetaEntry::Dropped(dropped) => return serializer.serialize_u64(dropped),
            MetaEntry::Key(key, top_k) => (key, top_k),
        };
        let has_sum = key.sum.is_some() || key.sum_overflowed;
        let mut map = serializer.serialize_map(None)?;
        if has_sum {
            map.serialize_entry("max", &key.max.map_or(Value::Null, json_number))?;
            map.serialize_entry("min", &key.min.map_or(Value::Null, json_number))?;
        }
        map.serialize_entry("n", &key.n)?;
        let kept = key.has_values.then(|| {
            let mut values: Vec<(&str, u64)> =
                key.values.iter().map(|(v, c)| (v.as_str(), *c)).collect();
            values.sort_unstable_by(value_order);
            values.truncate(top_k);
            values
        });
        if let Some(values) = &kept {
            let kept_total: u64 = values.iter().map(|(_, c)| c).sum();
            map.serialize_entry("other", &(key.value_total - kept_total))?;
        }
        if let (Some(sketch), Some(min), Some(max), false) =
            (&key.sketch, key.min, key.max, key.sketch_missing)
        {
            for (name, value) in sketch.percentiles_within(min, max) {
                map.serialize_entry(name, &json_number(value))?;
            }
        }
        if has_sum {
            let sum = match (&key.sum, key.sum_overflowed) {
                (Some(sum), false) => json_number(sum.total()),
                _ => Value::Null,
            };
            map.serialize_entry("sum", &sum)?;
        }
        if let Some(mut values) = kept {
            values.sort_unstable_by(|a, b| a.0.cmp(b.0));
            map.serialize_entry("values", &JsonMap(&values))?;
            if key.values_cut {
                map.serialize_entry("valuesExact", &false)?;
            }
        }
        map.end()
    }
}
