//! The metadata summary of one (day, event) group, as the contract specifies it.
//!
//! This module parses an event's `meta` JSON into its top-level entries, folds them
//! into a [`MetaSummary`] (mergeable: two halves merged equal the whole), and writes
//! the summary as canonical JSON: keys sorted, numbers in one fixed form, so that the
//! same events always give the same bytes.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::flat_json::parse_flat_object;
use super::{CompactString, FastMap};

/// Most keys one rollup row's summary keeps; the rest are counted in `$dropped_keys`.
pub const MAX_KEYS: usize = 100;

/// The key that records how many keys were dropped beyond [`MAX_KEYS`].
pub const DROPPED_KEYS: &str = "$dropped_keys";

/// One top-level value of an event's `meta` object.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue<'a> {
    /// JSON `null`: ignored by the summary.
    Null,
    /// `true` or `false`: counted in `values` as `"true"` or `"false"`.
    Bool(bool),
    /// Any number: summed, and its minimum and maximum kept.
    Number(f64),
    /// A string: counted in `values`.
    Text(Cow<'a, str>),
    /// An array or object: counted in `values` as compact JSON with sorted keys.
    Nested(String),
}

/// What an event's `meta` text turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum ParsedMeta<'a> {
    /// SQL NULL or JSON `null`: no metadata.
    Absent,
    /// A JSON object: its entries, duplicate keys resolved to the last one.
    Object(Vec<(Cow<'a, str>, MetaValue<'a>)>),
    /// Valid JSON, but not an object.
    NonObject,
    /// Not valid JSON.
    Invalid,
}

/// Parses an event's `meta` text.
pub fn parse_meta(text: Option<&str>) -> ParsedMeta<'_> {
    let Some(text) = text else {
        return ParsedMeta::Absent;
    };
    let top = match parse_flat_object(text) {
        Some(entries) => Ok(TopLevel::Object(entries)),
        None => deserialize(text),
    };
    match top {
        Ok(TopLevel::Null) => ParsedMeta::Absent,
        Ok(TopLevel::NonObject) => ParsedMeta::NonObject,
        Ok(TopLevel::Object(mut entries)) => {
            if has_duplicate_keys(&entries) {
                // Like PostgreSQL's jsonb, the last of duplicate keys wins.
                entries.reverse();
                entries.sort_by(|a, b| a.0.cmp(&b.0)); // stable: last-in-text comes first
                entries.dedup_by(|later, first| later.0 == first.0);
            }
            ParsedMeta::Object(entries)
        }
        Err(_) => ParsedMeta::Invalid,
    }
}

/// Deepest nesting of arrays and objects accepted in `meta`, the outermost counting
/// as 1; anything deeper is `invalid_meta`, whatever the outermost value is.
pub const MAX_DEPTH: usize = 128;

/// `text` parsed by serde_json alone: the definition the fast path is held to.
/// Numbers are read correctly rounded (serde_json's `float_roundtrip`), as
/// `str::parse::<f64>` reads them, so that `1.2345e29` and PostgreSQL's normalised
/// `123450000000000000000000000000` give the same double.
fn deserialize(text: &str) -> Result<TopLevel<'_>, Unreadable> {
    if nesting_depth(text) > MAX_DEPTH {
        return Err(Unreadable);
    }
    let mut de = serde_json::Deserializer::from_str(text);
    // The depth was checked above, so the recursion is bounded by it; serde_json's own
    // limit (128 recursions, i.e. 127 levels) would refuse the 128th.
    de.disable_recursion_limit();
    TopLevel::deserialize(&mut de)
        .and_then(|top| de.end().map(|()| top))
        .map_err(|_| Unreadable)
}

/// Why `meta` was not read: not JSON, or nested too deep (both are `invalid_meta`).
#[derive(Debug)]
struct Unreadable;

/// The deepest nesting of `[` and `{` in `text`, outside strings. Malformed text
/// gets some number; serde_json then refuses it anyway.
fn nesting_depth(text: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &byte in text.as_bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// An object's entries in text order as serde_json alone reads them, `None` if
/// `text` is not an object.
#[cfg(test)]
pub(super) fn parse_with_serde(text: &str) -> Option<Vec<(Cow<'_, str>, MetaValue<'_>)>> {
    match deserialize(text) {
        Ok(TopLevel::Object(entries)) => Some(entries),
        _ => None,
    }
}

/// Whether two entries share a key. Objects are small, so pairwise comparison beats
/// sorting in the usual case; large ones are checked by sorting their keys.
fn has_duplicate_keys(entries: &[(Cow<'_, str>, MetaValue<'_>)]) -> bool {
    if entries.len() <= 16 {
        return entries
            .iter()
            .enumerate()
            .any(|(i, (key, _))| entries[i + 1..].iter().any(|(other, _)| other == key));
    }
    let mut keys: Vec<&str> = entries.iter().map(|(k, _)| &**k).collect();
    keys.sort_unstable();
    keys.windows(2).any(|pair| pair[0] == pair[1])
}

enum TopLevel<'a> {
    Null,
    NonObject,
    Object(Vec<(Cow<'a, str>, MetaValue<'a>)>),
}

impl<'de> Deserialize<'de> for TopLevel<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TopLevelVisitor)
    }
}

struct TopLevelVisitor;

impl<'de> Visitor<'de> for TopLevelVisitor {
    type Value = TopLevel<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(TopLevel::Null)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(TopLevel::NonObject)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(TopLevel::NonObject)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(TopLevel::NonObject)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(TopLevel::NonObject)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(TopLevel::NonObject)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(TopLevel::NonObject)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(4).min(64));
        while let Some(key) = map.next_key_seed(BorrowedText)? {
            let value = map.next_value::<MetaValue<'de>>()?;
            entries.push((key, value));
        }
        Ok(TopLevel::Object(entries))
    }
}

/// Deserializes a string, borrowing it from the input when it has no escapes.
struct BorrowedText;

impl<'de> DeserializeSeed<'de> for BorrowedText {
    type Value = Cow<'de, str>;
    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for BorrowedText {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

impl<'de> Deserialize<'de> for MetaValue<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(MetaValueVisitor)
    }
}

struct MetaValueVisitor;

impl<'de> Visitor<'de> for MetaValueVisitor {
    type Value = MetaValue<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(MetaValue::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(MetaValue::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(MetaValue::Number(v as f64))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(MetaValue::Number(v as f64))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(MetaValue::Number(v))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(MetaValue::Text(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(MetaValue::Text(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(MetaValue::Text(Cow::Owned(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        let value = Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
        Ok(MetaValue::Nested(canonical_value(value).to_string()))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        // `serde_json::Map` keeps keys sorted, so this text has sorted keys.
        let value = Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(MetaValue::Nested(canonical_value(value).to_string()))
    }
}

/// The summary of one metadata key across a group of events.
#[derive(Debug, Clone, Default)]
struct KeyStats {
    /// Events where the key has a non-null value.
    n: u64,
    /// Occurrences of each string, boolean or nested value.
    values: FastMap<CompactString, u64>,
    numbers: Option<NumberStats>,
}

#[derive(Debug, Clone)]
struct NumberStats {
    sum: ExactSum,
    min: f64,
    max: f64,
}

impl NumberStats {
    fn of(x: f64) -> Self {
        let mut sum = ExactSum::default();
        sum.add(x);
        Self {
            sum,
            min: x,
            max: x,
        }
    }

    fn add(&mut self, x: f64) {
        self.sum.add(x);
        self.min = self.min.min(x);
        self.max = self.max.max(x);
    }

    fn merge(&mut self, other: &NumberStats) {
        self.sum.merge(&other.sum);
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }
}

impl KeyStats {
    fn add(&mut self, value: &MetaValue<'_>) {
        let text: &str = match value {
            MetaValue::Null => return,
            MetaValue::Bool(true) => "true",
            MetaValue::Bool(false) => "false",
            MetaValue::Text(s) => s,
            MetaValue::Nested(s) => s,
            MetaValue::Number(x) => {
                self.n += 1;
                match &mut self.numbers {
                    Some(stats) => stats.add(*x),
                    None => self.numbers = Some(NumberStats::of(*x)),
                }
                return;
            }
        };
        self.n += 1;
        count_value(&mut self.values, text, 1);
    }

    fn merge(&mut self, other: KeyStats) {
        self.n += other.n;
        for (value, count) in other.values {
            *self.values.entry(value).or_insert(0) += count;
        }
        match (&mut self.numbers, other.numbers) {
            (Some(mine), Some(theirs)) => mine.merge(&theirs),
            (mine @ None, theirs) => *mine = theirs,
            (Some(_), None) => {}
        }
    }

    fn to_json(&self, top_k: usize) -> Value {
        let mut out = Map::new();
        out.insert("n".into(), Value::from(self.n));
        if !self.values.is_empty() {
            let mut ranked: Vec<(&str, u64)> =
                self.values.iter().map(|(v, c)| (&**v, *c)).collect();
            // Most frequent first; ties by value in ascending byte order.
            ranked.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
            let other: u64 = ranked.iter().skip(top_k).map(|(_, c)| c).sum();
            let values: Map<String, Value> = ranked
                .into_iter()
                .take(top_k)
                .map(|(v, c)| (v.to_owned(), Value::from(c)))
                .collect();
            out.insert("values".into(), Value::Object(values));
            out.insert("other".into(), Value::from(other));
        }
        if let Some(numbers) = &self.numbers {
            out.insert("sum".into(), json_number(numbers.sum.total()));
            out.insert("min".into(), json_number(numbers.min));
            out.insert("max".into(), json_number(numbers.max));
        }
        Value::Object(out)
    }
}

fn count_value(values: &mut FastMap<CompactString, u64>, text: &str, by: u64) {
    match values.get_mut(text) {
        Some(count) => *count += by,
        None => {
            values.insert(text.into(), by);
        }
    }
}

/// The metadata summary of one (day, event) group, built event by event.
#[derive(Debug, Clone, Default)]
pub struct MetaSummary {
    keys: FastMap<CompactString, KeyStats>,
}

impl MetaSummary {
    /// Adds one event's metadata entries.
    pub fn add(&mut self, entries: &[(Cow<'_, str>, MetaValue<'_>)]) {
        for (key, value) in entries {
            if matches!(value, MetaValue::Null) {
                continue;
            }
            match self.keys.get_mut(&**key) {
                Some(stats) => stats.add(value),
                None => {
                    let mut stats = KeyStats::default();
                    stats.add(value);
                    self.keys.insert((&**key).into(), stats);
                }
            }
        }
    }

    /// Folds `other`, a summary of other events of the same group, into this one.
    pub fn merge(&mut self, other: MetaSummary) {
        for (key, stats) in other.keys {
            match self.keys.get_mut(&key) {
                Some(mine) => mine.merge(stats),
                None => {
                    self.keys.insert(key, stats);
                }
            }
        }
    }

    /// The summary as canonical JSON text, keeping `top_k` values per key.
    pub fn to_json(&self, top_k: usize) -> String {
        let mut ranked: Vec<(&str, &KeyStats)> = self.keys.iter().map(|(k, s)| (&**k, s)).collect();
        // The most frequent keys are kept, ties broken by key.
        ranked.sort_unstable_by(|a, b| b.1.n.cmp(&a.1.n).then_with(|| a.0.cmp(b.0)));
        let dropped = ranked.len().saturating_sub(MAX_KEYS);
        let mut out: Map<String, Value> = ranked
            .into_iter()
            .take(MAX_KEYS)
            .map(|(key, stats)| (key.to_owned(), stats.to_json(top_k)))
            .collect();
        if dropped > 0 {
            out.insert(DROPPED_KEYS.into(), Value::from(dropped));
        }
        Value::Object(out).to_string()
    }
}

/// A number as the summary writes it, wherever it appears (sums, minimums, maximums,
/// numbers inside nested values): integral values within 2^53 as integers, others in
/// the shortest form that reads back as the same `f64` (`0.1`, `1.2345e+29`); `null` if
/// not finite. Every number is read as the nearest double first, so `1e1`, `10.0`
/// and `10` are all written `10`, whichever database's text they came from.
pub fn json_number(x: f64) -> Value {
    const EXACT_INT: f64 = 9_007_199_254_740_992.0; // 2^53
    if x.fract() == 0.0 && x.abs() <= EXACT_INT {
        Value::from(x as i64)
    } else {
        serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
    }
}

/// Rewrites a stored summary in canonical form, so that summaries stored by either
/// database compare equal to freshly computed ones exactly when they mean the same.
/// Text that is not JSON is returned as it is (and so compares unequal).
pub fn canonical_json(text: &str) -> String {
    match serde_json::from_str::<Value>(text) {
        Ok(value) => canonical_value(value).to_string(),
        Err(_) => text.to_owned(),
    }
}

/// `value` with every number in the form [`json_number`] writes (keys are already
/// sorted: `serde_json::Map` keeps them so).
fn canonical_value(value: Value) -> Value {
    match value {
        Value::Number(n) => n.as_f64().map_or(Value::Number(n), json_number),
        Value::Array(items) => Value::Array(items.into_iter().map(canonical_value).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, canonical_value(v)))
                .collect(),
        ),
        other => other,
    }
}

/// An exact sum of `f64`s (Shewchuk's algorithm, as in Python's `math.fsum`).
///
/// The partials hold the sum without any rounding, so [`ExactSum::total`] is the
/// correctly rounded exact sum whatever order the numbers came in; merging two sums
/// is exact too. If an intermediate overflows, the total is infinite and the summary
/// writes `null`.
#[derive(Debug, Clone, Default)]
pub struct ExactSum {
    partials: Vec<f64>,
    overflowed: bool,
}

impl ExactSum {
    /// Adds `x` exactly.
    pub fn add(&mut self, mut x: f64) {
        if self.overflowed {
            return;
        }
        let mut kept = 0;
        for j in 0..self.partials.len() {
            let mut y = self.partials[j];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            let hi = x + y;
            if !hi.is_finite() {
                self.overflowed = true;
                return;
            }
            let lo = y - (hi - x);
            if lo != 0.0 {
                self.partials[kept] = lo;
                kept += 1;
            }
            x = hi;
        }
        self.partials.truncate(kept);
        self.partials.push(x);
    }

    /// Adds every number of `other` exactly.
    pub fn merge(&mut self, other: &ExactSum) {
        self.overflowed |= other.overflowed;
        for &p in &other.partials {
            self.add(p);
        }
    }

    /// The sum, correctly rounded; infinite if an intermediate overflowed.
    pub fn total(&self) -> f64 {
        if self.overflowed {
            return f64::INFINITY;
        }
        let p = &self.partials;
        let Some(mut n) = p.len().checked_sub(1) else {
            return 0.0;
        };
        let mut hi = p[n];
        let mut lo = 0.0;
        while n > 0 {
            let x = hi;
            let y = p[n - 1];
            n -= 1;
            hi = x + y;
            lo = y - (hi - x);
            if lo != 0.0 {
                break;
            }
        }
        // Round half to even across the partial below, as fsum does.
        if n > 0 && ((lo < 0.0 && p[n - 1] < 0.0) || (lo > 0.0 && p[n - 1] > 0.0)) {
            let y = lo * 2.0;
            let x = hi + y;
            if y == x - hi {
                hi = x;
            }
        }
        hi
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary_of(metas: &[&str], top_k: usize) -> String {
        let mut summary = MetaSummary::default();
        for meta in metas {
            match parse_meta(Some(meta)) {
                ParsedMeta::Object(entries) => summary.add(&entries),
                other => panic!("{meta} parsed as {other:?}"),
            }
        }
        summary.to_json(top_k)
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
        assert_eq!(
            json,
            r#"{"amount":{"max":99.5,"min":-0.5,"n":3,"sum":108}}"#
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
            r#"{"x":{"max":1,"min":1,"n":3,"other":0,"sum":1,"values":{"one":1,"{\"a\":[2],\"b\":1}":1}}}"#
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
    fn parse_classifies_meta() {
        assert_eq!(parse_meta(None), ParsedMeta::Absent);
        assert_eq!(parse_meta(Some("null")), ParsedMeta::Absent);
        assert_eq!(parse_meta(Some("[1,2]")), ParsedMeta::NonObject);
        assert_eq!(parse_meta(Some("\"x\"")), ParsedMeta::NonObject);
        assert_eq!(parse_meta(Some("{\"a\":")), ParsedMeta::Invalid);
        assert_eq!(parse_meta(Some("{} x")), ParsedMeta::Invalid);
        assert_eq!(parse_meta(Some("NaN")), ParsedMeta::Invalid);
    }

    #[test]
    fn nesting_up_to_128_levels_is_read_and_deeper_is_invalid() {
        let nested = |levels: usize, open: &str, close: &str| {
            format!("{}{}", open.repeat(levels), close.repeat(levels))
        };
        // 128 levels: the outer object and 127 nested ones.
        let ok = format!("{}{{}}{}", "{\"a\":".repeat(127), "}".repeat(127));
        assert!(
            matches!(parse_meta(Some(&ok)), ParsedMeta::Object(_)),
            "128 levels"
        );
        let deep = format!("{}{{}}{}", "{\"a\":".repeat(128), "}".repeat(128));
        assert_eq!(parse_meta(Some(&deep)), ParsedMeta::Invalid, "129 levels");
        assert_eq!(
            parse_meta(Some(&nested(128, "[", "]"))),
            ParsedMeta::NonObject
        );
        assert_eq!(
            parse_meta(Some(&nested(10_000, "[", "]"))),
            ParsedMeta::Invalid
        );
        // Brackets inside strings are text, not nesting.
        let quoted = format!("{{\"a\":\"{}\"}}", "[".repeat(500));
        assert!(matches!(parse_meta(Some(&quoted)), ParsedMeta::Object(_)));
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
            r#"{"n":{"max":1.2345e+29,"min":1.2345e+29,"n":1,"sum":1.2345e+29}}"#
        );
        assert_eq!(
            summary_of(&[r#"{"x":[1e1,10.0,10,{"b":2.50}]}"#], 20),
            r#"{"x":{"n":1,"other":0,"values":{"[10,10,10,{\"b\":2.5}]":1}}}"#
        );
    }

    proptest::proptest! {
        #[test]
        fn numbers_are_read_as_rust_reads_them(
            text in "-?(0|[1-9][0-9]{0,24})(\\.[0-9]{1,25})?([eE][+-]?[0-9]{1,3})?"
        ) {
            let expected: f64 = text.parse().expect("a JSON number is a Rust float");
            let meta = format!("{{\"n\":{text}}}");
            let parsed = parse_meta(Some(&meta));
            if expected.is_finite() {
                let ParsedMeta::Object(entries) = parsed else {
                    return Err(proptest::test_runner::TestCaseError::fail(format!("{text}: {parsed:?}")));
                };
                let MetaValue::Number(x) = entries[0].1 else {
                    return Err(proptest::test_runner::TestCaseError::fail(format!("{text}: {entries:?}")));
                };
                // -0 and 0 are equal, and both written 0.
                proptest::prop_assert!(x == expected, "{}: {} != {}", text, x, expected);
            } else {
                proptest::prop_assert_eq!(parsed, ParsedMeta::Invalid, "{}", text);
            }
        }
    }

    #[test]
    fn duplicate_keys_keep_the_last_value() {
        let ParsedMeta::Object(entries) = parse_meta(Some(r#"{"a":1,"b":2,"a":"x"}"#)) else {
            panic!("not an object");
        };
        assert_eq!(
            entries,
            vec![
                ("a".into(), MetaValue::Text("x".into())),
                ("b".into(), MetaValue::Number(2.0))
            ]
        );
    }

    #[test]
    fn exact_sum_does_not_depend_on_order() {
        let xs = [1e16, 1.0, -1e16, 0.1, 0.2, 3.3e-5, -0.3];
        let forward = xs.iter().fold(ExactSum::default(), |mut s, &x| {
            s.add(x);
            s
        });
        let backward = xs.iter().rev().fold(ExactSum::default(), |mut s, &x| {
            s.add(x);
            s
        });
        assert_eq!(forward.total().to_bits(), backward.total().to_bits());
        assert_eq!(forward.total(), 1.000033);
    }

    #[test]
    fn canonical_json_normalizes_stored_numbers_and_key_order() {
        assert_eq!(
            canonical_json(r#"{"b": 1.0, "a": 10000000000000000000}"#),
            r#"{"a":1e+19,"b":1}"#
        );
        assert_eq!(canonical_json("not json"), "not json");
    }
}
