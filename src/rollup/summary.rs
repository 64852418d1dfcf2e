//! The metadata summary of one (day, event) group, as the contract specifies it.
//!
//! [`MetaSummary`] folds events' metadata entries in, key by key (mergeable: two
//! halves merged equal the whole), and writes the summary as canonical JSON. The
//! ranking of keys and values and the JSON of one key are shared with the spilled
//! path (`spill.rs`), which builds the same summary from partitions on disk, so the
//! two give the same bytes.

use serde_json::{Map, Value};

use super::memory::{heap_bytes, table_bytes};
use super::meta_value::MetaValue;
use super::pass_on::PassOn;
use crate::model::ddsketch::DdSketch;
use crate::model::{
    CompactString, DROPPED_KEYS, ExactSum, FastMap, MAX_KEYS, MAX_VALUE_BYTES, json_number,
    key_order, value_order,
};

/// The summary of one metadata key across a group of events.
#[derive(Debug, Clone, Default)]
pub(super) struct KeyStats {
    /// Events where the key has a non-null value.
    pub(super) n: u64,
    /// Occurrences of string, boolean and nested values, all of them: the map below
    /// may have been spilled and emptied since.
    pub(super) value_total: u64,
    /// Occurrences of each string, boolean or nested value.
    pub(super) values: FastMap<CompactString, u64>,
    pub(super) numbers: Option<NumberStats>,
    /// Whether its values are counted here or go straight to the spill files.
    pub(super) pass: PassOn,
}

/// Sum, minimum, maximum and percentiles' sketch of a key's numbers.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct NumberStats {
    pub(super) sum: ExactSum,
    pub(super) min: f64,
    pub(super) max: f64,
    pub(super) sketch: DdSketch,
}

impl NumberStats {
    /// Stats of no number yet, whose extremes start at `x`.
    fn starting_at(x: f64) -> Self {
        Self {
            sum: ExactSum::default(),
            min: x,
            max: x,
            sketch: DdSketch::default(),
        }
    }

    /// Adds `x` seen `times` times; returns the bytes the sketch grew by.
    fn add(&mut self, x: f64, times: u64) -> usize {
        self.sum.add_times(x, times);
        self.min = self.min.min(x);
        self.max = self.max.max(x);
        self.sketch.add(x, times)
    }

    pub(super) fn merge(&mut self, other: &NumberStats) {
        self.sum.merge(&other.sum);
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sketch.merge(&other.sketch);
    }
}

impl KeyStats {
    /// Adds one value, seen `times` times; returns the bytes the key's table grew by.
    /// While the key is passing its values on, `pass` takes the value's text instead.
    fn add(&mut self, value: &MetaValue<'_>, times: u64, pass: impl FnOnce(&str)) -> usize {
        let text: &str = match value {
            MetaValue::Null => return 0,
            MetaValue::Bool(true) => "true",
            MetaValue::Bool(false) => "false",
            MetaValue::Text(s) => s,
            MetaValue::Nested(s) => s,
            MetaValue::Number(x) => {
                self.n += times;
                return self
                    .numbers
                    .get_or_insert_with(|| NumberStats::starting_at(*x))
                    .add(*x, times);
            }
        };
        self.n += times;
        self.value_total += times;
        // Counted in `other`, never kept: summaries, and the memory a run needs, stay
        // small whatever the values hold.
        if text.len() > MAX_VALUE_BYTES {
            return 0;
        }
        if self.pass.take() {
            pass(text);
            return 0;
        }
        count_value(&mut self.values, text, times)
    }

    /// Folds in `other`'s counts of everything but the values map.
    pub(super) fn merge_counts(&mut self, other: &KeyStats) {
        self.n += other.n;
        self.value_total += other.value_total;
        match (&mut self.numbers, &other.numbers) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (mine @ None, theirs) => mine.clone_from(theirs),
            (Some(_), None) => {}
        }
    }

    fn merge(&mut self, other: KeyStats) {
        self.merge_counts(&other);
        for (value, count) in other.values {
            *self.values.entry(value).or_insert(0) += count;
        }
    }

    /// The bytes this key holds beyond its entry in the key table.
    fn bytes(&self) -> usize {
        table_bytes::<CompactString, u64>(self.values.capacity())
            + self.values.keys().map(heap_bytes).sum::<usize>()
            + self.numbers.as_ref().map_or(0, |n| n.sketch.bytes())
    }

    /// The key's part of the summary from its own values map.
    fn to_json(&self, top_k: usize) -> Value {
        let mut ranked: Vec<(&str, u64)> = self.values.iter().map(|(v, c)| (&**v, *c)).collect();
        ranked.sort_unstable_by(value_order);
        ranked.truncate(top_k);
        key_json(self, &ranked)
    }

    /// The base64 of its numbers' sketch, if it had numbers.
    pub(super) fn sketch_text(&self) -> Option<String> {
        self.numbers.as_ref().map(|n| n.sketch.to_base64())
    }
}

/// One key's part of the summary: its counts from `stats`, and `top`, its most
/// frequent values (at most K of them, in [`value_order`]).
pub(super) fn key_json(stats: &KeyStats, top: &[(&str, u64)]) -> Value {
    let mut out = Map::new();
    out.insert("n".into(), Value::from(stats.n));
    if stats.value_total > 0 {
        let kept: u64 = top.iter().map(|(_, c)| c).sum();
        let values: Map<String, Value> = top
            .iter()
            .map(|(v, c)| ((*v).to_owned(), Value::from(*c)))
            .collect();
        out.insert("values".into(), Value::Object(values));
        out.insert("other".into(), Value::from(stats.value_total - kept));
    }
    if let Some(numbers) = &stats.numbers {
        out.insert("sum".into(), json_number(numbers.sum.total()));
        out.insert("min".into(), json_number(numbers.min));
        out.insert("max".into(), json_number(numbers.max));
        for (name, value) in numbers.sketch.percentiles_within(numbers.min, numbers.max) {
            out.insert(name.into(), json_number(value));
        }
    }
    Value::Object(out)
}

/// A row's summary as its two columns hold it: `meta`, and `meta_sketches` (each
/// kept key with numbers to the base64 of their sketch).
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct SummaryTexts {
    pub(super) meta: String,
    pub(super) sketches: String,
}

/// The summary's texts from the kept keys' parts (name, JSON, sketch) and the
/// number of keys dropped.
pub(super) fn summary_json(
    kept: impl IntoIterator<Item = (String, Value, Option<String>)>,
    dropped: u64,
) -> SummaryTexts {
    // `serde_json::Map` keeps keys sorted, so the texts have sorted keys.
    let mut out = Map::new();
    let mut sketches = Map::new();
    for (key, json, sketch) in kept {
        if let Some(sketch) = sketch {
            sketches.insert(key.clone(), Value::String(sketch));
        }
        out.insert(key, json);
    }
    if dropped > 0 {
        out.insert(DROPPED_KEYS.into(), Value::from(dropped));
    }
    SummaryTexts {
        meta: Value::Object(out).to_string(),
        sketches: Value::Object(sketches).to_string(),
    }
}

/// Counts `text` in `values`; returns the bytes the table grew by.
fn count_value(values: &mut FastMap<CompactString, u64>, text: &str, by: u64) -> usize {
    if let Some(count) = values.get_mut(text) {
        *count += by;
        return 0;
    }
    let before = values.capacity();
    let key = CompactString::from(text);
    let heap = heap_bytes(&key);
    values.insert(key, by);
    heap + table_bytes::<CompactString, u64>(values.capacity())
        - table_bytes::<CompactString, u64>(before)
}

/// The metadata summary of one (day, event) group, built event by event.
#[derive(Debug, Clone, Default)]
pub struct MetaSummary {
    keys: FastMap<CompactString, KeyStats>,
}

impl MetaSummary {
    /// Adds the metadata entries of `times` events that all had them; returns the
    /// bytes the summary grew by. The values of keys that pass them on go to `pass`
    /// as (key, value, times).
    pub(super) fn add(
        &mut self,
        entries: &[(std::borrow::Cow<'_, str>, MetaValue<'_>)],
        times: u64,
        pass: &mut dyn FnMut(&str, &str, u64),
    ) -> usize {
        let mut grew = 0;
        for (key, value) in entries {
            if matches!(value, MetaValue::Null) {
                continue;
            }
            match self.keys.get_mut(&**key) {
                Some(stats) => grew += stats.add(value, times, |text| pass(key, text, times)),
                None => {
                    let mut stats = KeyStats::default();
                    // A new key counts its values: none passes them on yet.
                    grew += stats.add(value, times, |_| {});
                    let before = self.keys.capacity();
                    let key = CompactString::from(&**key);
                    grew += heap_bytes(&key);
                    self.keys.insert(key, stats);
                    grew += table_bytes::<CompactString, KeyStats>(self.keys.capacity())
                        - table_bytes::<CompactString, KeyStats>(before);
                }
            }
        }
        grew
    }

    /// Folds `other`, a summary of other events of the same group, into this one.
    pub(super) fn merge(&mut self, other: MetaSummary) {
        for (key, stats) in other.keys {
            match self.keys.get_mut(&key) {
                Some(mine) => mine.merge(stats),
                None => {
                    self.keys.insert(key, stats);
                }
            }
        }
    }

    /// The bytes the summary holds.
    pub(super) fn bytes(&self) -> usize {
        table_bytes::<CompactString, KeyStats>(self.keys.capacity())
            + self
                .keys
                .iter()
                .map(|(key, stats)| heap_bytes(key) + stats.bytes())
                .sum::<usize>()
    }

    /// Takes every key's statistics out, leaving the summary empty (and its memory
    /// freed): for writing them to disk.
    pub(super) fn take_keys(&mut self) -> FastMap<CompactString, KeyStats> {
        std::mem::take(&mut self.keys)
    }

    /// Whether `key` passes its values on.
    #[cfg(test)]
    pub(super) fn passes(&self, key: &str) -> bool {
        self.keys
            .get(key)
            .is_some_and(|stats| stats.pass.is_passing())
    }

    /// Makes `key`, just taken out, pass its next values on as `pass` says.
    pub(super) fn pass_values(&mut self, key: CompactString, pass: PassOn) {
        let stats = KeyStats {
            pass,
            ..KeyStats::default()
        };
        self.keys.insert(key, stats);
    }

    /// The summary as canonical JSON text, keeping `top_k` values per key, and its
    /// sketches.
    pub(super) fn to_json(&self, top_k: usize) -> SummaryTexts {
        let mut ranked: Vec<(&str, &KeyStats)> = self.keys.iter().map(|(k, s)| (&**k, s)).collect();
        ranked.sort_unstable_by(|a, b| key_order(&(a.0, a.1.n), &(b.0, b.1.n)));
        let dropped = ranked.len().saturating_sub(MAX_KEYS) as u64;
        ranked.truncate(MAX_KEYS);
        summary_json(
            ranked
                .into_iter()
                .map(|(key, stats)| (key.to_owned(), stats.to_json(top_k), stats.sketch_text())),
            dropped,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::meta::{ParsedMeta, parse_meta};
    use super::*;

    fn summary_of(metas: &[&str], top_k: usize) -> String {
        let mut summary = MetaSummary::default();
        for meta in metas {
            match parse_meta(Some(meta)) {
                ParsedMeta::Object(entries) => {
                    summary.add(&entries, 1, &mut |_, _, _| {});
                }
                other => panic!("{meta} parsed as {other:?}"),
            }
        }
        summary.to_json(top_k).meta
    }

    #[test]
    fn strings_and_booleans_go_to_values_with_other() {
        let json = summary_of(
            &[
                r#"{"plan":"pro"}"#,
                r#"{"plan":"free"}"#,
                r#"{"plan":"pro","ok":true}"#,
                r#"{"plan":null}"#,
            ],
            1,
        );
        assert_eq!(
            json,
            r#"{"ok":{"n":1,"other":0,"values":{"true":1}},"plan":{"n":3,"other":1,"values":{"pro":2}}}"#
        );
    }

    #[test]
    fn ties_in_top_k_break_by_value_bytes() {
        let json = summary_of(
            &[
                r#"{"k":"b"}"#,
                r#"{"k":"a"}"#,
                r#"{"k":"c"}"#,
                r#"{"k":"B"}"#,
            ],
            2,
        );
        assert_eq!(json, r#"{"k":{"n":4,"other":2,"values":{"B":1,"a":1}}}"#);
    }

    #[test]
    fn numbers_give_sum_min_max() {
        let json = summary_of(
            &[
                r#"{"amount":9}"#,
                r#"{"amount":99.5}"#,
                r#"{"amount":-0.5}"#,
            ],
            20,
        );
        let value: Value = serde_json::from_str(&json).unwrap();
        let amount = value["amount"].as_object().unwrap();
        let exact = |name: &str| amount[name].as_f64().unwrap();
        assert_eq!(
            (exact("n"), exact("sum"), exact("min"), exact("max")),
            (3.0, 108.0, -0.5, 99.5)
        );
        // Sorted -0.5, 9, 99.5: ranks floor(q * 2) are 1, 1 and 1.
        for p in ["p50", "p90", "p99"] {
            assert!((exact(p) - 9.0).abs() <= 0.09, "{p}: {json}");
        }
        assert_eq!(amount.len(), 7, "{json}");
    }

    #[test]
    fn a_single_number_s_percentiles_are_that_number() {
        // The bin's value is kept within the exact minimum and maximum.
        let json = summary_of(&[r#"{"ms":123.456}"#, r#"{"ms":123.456}"#], 20);
        assert_eq!(
            json,
            r#"{"ms":{"max":123.456,"min":123.456,"n":2,"p50":123.456,"p90":123.456,"p99":123.456,"sum":246.912}}"#
        );
    }

    #[test]
    fn a_key_with_several_types_gets_each_part() {
        let json = summary_of(
            &[r#"{"x":1}"#, r#"{"x":"one"}"#, r#"{"x":{"b":1,"a":[2]}}"#],
            20,
        );
        assert_eq!(
            json,
            r#"{"x":{"max":1,"min":1,"n":3,"other":0,"p50":1,"p90":1,"p99":1,"sum":1,"values":{"one":1,"{\"a\":[2],\"b\":1}":1}}}"#
        );
    }

    #[test]
    fn over_100_keys_the_most_frequent_are_kept() {
        let mut metas = Vec::new();
        for i in 0..105 {
            metas.push(format!(r#"{{"k{i:03}":1}}"#));
        }
        metas.push(r#"{"k104":2}"#.to_owned()); // k104 is the most frequent
        let refs: Vec<&str> = metas.iter().map(String::as_str).collect();
        let value: Value = serde_json::from_str(&summary_of(&refs, 20)).unwrap();
        let map = value.as_object().unwrap();
        assert_eq!(map.len(), MAX_KEYS + 1);
        assert_eq!(map[DROPPED_KEYS], 5);
        assert!(map.contains_key("k104"));
        assert!(map.contains_key("k000") && map.contains_key("k098"));
        assert!(
            !map.contains_key("k099"),
            "ties are broken by key: k099..k103 go"
        );
    }

    #[test]
    fn numbers_read_the_same_from_either_database_s_text() {
        // SQLite hands over the text as written; PostgreSQL's jsonb normalises it.
        assert_eq!(
            summary_of(&[r#"{"n":1.2345e29}"#], 20),
            summary_of(&[r#"{"n":123450000000000000000000000000}"#], 20)
        );
        assert_eq!(
            summary_of(&[r#"{"n":1.2345e29}"#], 20),
            r#"{"n":{"max":1.2345e+29,"min":1.2345e+29,"n":1,"p50":1.2345e+29,"p90":1.2345e+29,"p99":1.2345e+29,"sum":1.2345e+29}}"#
        );
        assert_eq!(
            summary_of(&[r#"{"x":[1e1,10.0,10,{"b":2.50}]}"#], 20),
            r#"{"x":{"n":1,"other":0,"values":{"[10,10,10,{\"b\":2.5}]":1}}}"#
        );
    }

    #[test]
    fn metadata_seen_n_times_sums_as_n_single_events() {
        let metas = [
            (r#"{"amount":0.1,"plan":"pro"}"#, 7u64),
            (r#"{"amount":1e16,"ok":true}"#, 3),
            (r#"{"amount":-0.3,"plan":"free"}"#, 1_000_003),
            (r#"{"amount":3.3e-5}"#, 12),
        ];
        let mut weighted = MetaSummary::default();
        let mut single = MetaSummary::default();
        for (meta, times) in metas {
            let ParsedMeta::Object(entries) = parse_meta(Some(meta)) else {
                panic!("{meta} is an object");
            };
            weighted.add(&entries, times, &mut |_, _, _| {});
            for _ in 0..times {
                single.add(&entries, 1, &mut |_, _, _| {});
            }
        }
        assert_eq!(weighted.to_json(5), single.to_json(5));
        assert!(
            weighted.to_json(5).meta.contains(r#""n":1000025"#),
            "{}",
            weighted.to_json(5).meta
        );
    }
}
