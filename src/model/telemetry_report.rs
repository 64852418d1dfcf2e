//! The telemetry report: rollup rows read back and grouped by day, ISO week or
//! calendar month, with multi-day unique users from the rows' sketches and the rows'
//! metadata summaries merged. It is computed from the rollups alone, never from raw
//! events.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::str::FromStr;

use jiff::civil::Date;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap as _, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::{RawValue, to_raw_value};

use super::FastMap;
use super::days::DayRange;
use super::hll::{Sketch, has_our_parameters};
use super::meta::json_number;
use super::summary::{DROPPED_KEYS, ExactSum, MAX_KEYS, key_order, value_order};

/// How the report's periods are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Grouping {
    /// One period a day.
    #[default]
    Day,
    /// ISO weeks, Monday to Sunday.
    Week,
    /// Calendar months.
    Month,
    /// The whole range as one period.
    Range,
}

impl FromStr for Grouping {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "day" => Ok(Grouping::Day),
            "week" => Ok(Grouping::Week),
            "month" => Ok(Grouping::Month),
            "range" => Ok(Grouping::Range),
            other => Err(format!(
                "'{}' is not a grouping: day, week, month or range",
                other.escape_debug()
            )),
        }
    }
}

impl fmt::Display for Grouping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Grouping::Day => "day",
            Grouping::Week => "week",
            Grouping::Month => "month",
            Grouping::Range => "range",
        })
    }
}

/// One stored rollup row, borrowed from the database's answer as a store reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RollupRef<'a> {
    pub date: Date,
    pub event: &'a str,
    pub count: i64,
    pub unique_users: i64,
    /// The metadata summary as stored (`jsonb`'s text on PostgreSQL).
    pub meta: &'a str,
    pub users_hll: Option<&'a [u8]>,
}

/// What takes rollup rows one at a time as a store reads them, ordered by date.
pub trait RollupFold: Send + 'static {
    fn add(&mut self, row: RollupRef<'_>);
}

/// One stored rollup row, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRollup {
    pub date: Date,
    pub event: String,
    pub count: i64,
    pub unique_users: i64,
    /// The metadata summary as stored (`jsonb`'s text on PostgreSQL).
    pub meta: String,
    pub users_hll: Option<Vec<u8>>,
}

/// The report of a range of days.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TelemetryReport {
    pub start_date: String,
    pub end_date: String,
    pub by: Grouping,
    pub periods: Vec<PeriodReport>,
}

/// One period: its events, biggest first, and their total.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeriodReport {
    /// The first day of the period (cut to the range).
    pub start: String,
    /// The last day of the period (cut to the range).
    pub end: String,
    pub events: Vec<EventReport>,
    pub total: Total,
    /// Days whose rows have no sketch (written before sketches were kept): unique
    /// users that need them are `null` until those days are run again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_sketches: Vec<String>,
}

/// One event in a period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventReport {
    pub event: String,
    pub count: i64,
    /// Exact for one event on one day; else the estimate of the union of the rows'
    /// sketches, rounded; `null` when a row lacks its sketch.
    pub unique_users: Option<u64>,
    pub unique_users_exact: bool,
    /// The rows' metadata summaries merged.
    pub meta: MergedMeta,
}

/// All the period's events together, a user counted once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Total {
    pub count: i64,
    pub unique_users: Option<u64>,
    pub unique_users_exact: bool,
}

/// The periods that `range` is cut into, each as (first day, last day).
pub fn periods(range: &DayRange, by: Grouping) -> Vec<(Date, Date)> {
    let mut out = Vec::new();
    let mut start = range.start();
    loop {
        let natural_end = match by {
            Grouping::Day => start,
            Grouping::Week => {
                let to_sunday = 6 - i64::from(start.weekday().to_monday_zero_offset());
                start
                    .checked_add(jiff::Span::new().days(to_sunday))
                    .unwrap_or(range.end())
            }
            Grouping::Month => start.last_of_month(),
            Grouping::Range => range.end(),
        };
        let end = natural_end.min(range.end());
        out.push((start, end));
        match end.tomorrow() {
            Ok(next) if end < range.end() => start = next,
            _ => return out,
        }
    }
}

/// `range` cut into at most `parts` ranges of whole periods, in order, each about as
/// many periods long, so that each can be read and built on its own and the reports
/// joined with [`TelemetryReport::joined`].
pub fn split_by_periods(range: &DayRange, by: Grouping, parts: usize) -> Vec<DayRange> {
    let cuts = periods(range, by);
    let per_part = cuts.len().div_ceil(parts.max(1));
    cuts.chunks(per_part)
        .filter_map(|chunk| {
            let (first, last) = (chunk.first()?, chunk.last()?);
            // A chunk's days are within `range`, so in order and in bounds.
            DayRange::new(first.0, last.1).ok()
        })
        .collect()
}

/// The report of a range, built from its rows as they are read, in memory that
/// grows with one period's events rather than with the rows: a year of full
/// sketches is hundreds of megabytes.
#[derive(Debug)]
pub struct ReportBuilder {
    range: DayRange,
    by: Grouping,
    top_k: usize,
    cuts: Vec<(Date, Date)>,
    /// The period that rows are going to now.
    at: usize,
    open: PeriodParts,
    done: Vec<PeriodReport>,
}

/// A period's rows so far, by event.
#[derive(Debug, Default)]
struct PeriodParts {
    /// In no order: the report ranks them.
    events: FastMap<String, EventParts>,
    rows: usize,
    /// The stored exact count of the period's first row, which is the total's
    /// when it is the only row.
    first_row_users: i64,
    /// Dates of rows without a sketch this version can read.
    missing: Vec<String>,
}

/// One event's rows so far in a period.
#[derive(Debug)]
struct EventParts {
    count: i64,
    rows: usize,
    first_row_users: i64,
    /// The union of the rows' sketches; `None` once a row had none (or one this
    /// version cannot read).
    sketch: Option<Sketch>,
    meta: MetaMerge,
}

impl ReportBuilder {
    /// A report of `range`, its days grouped `by` day, week or month, keeping
    /// `top_k` values per metadata key.
    pub fn new(range: &DayRange, by: Grouping, top_k: usize) -> Self {
        Self {
            range: *range,
            by,
            top_k,
            cuts: periods(range, by),
            at: 0,
            open: PeriodParts::default(),
            done: Vec::new(),
        }
    }

    /// The report of the rows added.
    pub fn finish(mut self) -> TelemetryReport {
        while self.done.len() < self.cuts.len() {
            self.close_period();
        }
        TelemetryReport {
            start_date: self.range.start().to_string(),
            end_date: self.range.end().to_string(),
            by: self.by,
            periods: self.done,
        }
    }

    fn close_period(&mut self) {
        let (start, end) = self.cuts[self.done.len()];
        let parts = std::mem::take(&mut self.open);
        self.done.push(parts.into_report(start, end, self.top_k));
        self.at = self.done.len();
    }
}

impl RollupFold for ReportBuilder {
    /// Takes the next row; rows must come by date, ascending. A row outside the
    /// range, or dated before the period being built, is left out.
    fn add(&mut self, row: RollupRef<'_>) {
        while self.at < self.cuts.len() && row.date > self.cuts[self.at].1 {
            self.close_period();
        }
        let Some(&(start, _)) = self.cuts.get(self.at) else {
            return;
        };
        if row.date < start {
            return;
        }
        self.open.add(row);
    }
}

impl PeriodParts {
    fn add(&mut self, row: RollupRef<'_>) {
        if self.rows == 0 {
            self.first_row_users = row.unique_users;
        }
        self.rows += 1;
        // A row written before sketches were kept, or with other parameters (by an
        // earlier version), until its day is re-run.
        if !row.users_hll.is_some_and(has_our_parameters) {
            let date = row.date.to_string();
            if !self.missing.contains(&date) {
                self.missing.push(date);
            }
        }
        let event = match self.events.get_mut(row.event) {
            Some(event) => event,
            None => self
                .events
                .entry(row.event.to_owned())
                .or_insert(EventParts {
                    count: 0,
                    rows: 0,
                    first_row_users: row.unique_users,
                    sketch: Some(Sketch::new()),
                    meta: MetaMerge::default(),
                }),
        };
        event.count += row.count;
        event.rows += 1;
        if let Some(sketch) = &mut event.sketch {
            let merged = row.users_hll.map(|bytes| sketch.union_bytes(bytes));
            if !matches!(merged, Some(Ok(()))) {
                event.sketch = None;
            }
        }
        event.meta.add(row.meta);
    }

    fn into_report(self, start: Date, end: Date, top_k: usize) -> PeriodReport {
        let mut total_sketch = Some(Sketch::new());
        let mut reports = Vec::with_capacity(self.events.len());
        for (name, event) in self.events {
            match (&mut total_sketch, &event.sketch) {
                (Some(total), Some(sketch)) => total.union(sketch),
                _ => total_sketch = None,
            }
            let (unique_users, unique_users_exact) = match (event.rows, &event.sketch) {
                (1, _) => (u64::try_from(event.first_row_users).ok(), true),
                (_, Some(sketch)) => (Some(sketch.cardinality().round() as u64), false),
                (_, None) => (None, false),
            };
            reports.push(EventReport {
                event: name,
                count: event.count,
                unique_users,
                unique_users_exact,
                meta: event.meta.to_json(top_k),
            });
        }
        reports.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.event.cmp(&b.event)));
        let (unique_users, unique_users_exact) = match (self.rows, &total_sketch) {
            (0, _) => (Some(0), true),
            (1, _) => (u64::try_from(self.first_row_users).ok(), true),
            (_, Some(sketch)) => (Some(sketch.cardinality().round() as u64), false),
            (_, None) => (None, false),
        };
        let mut missing = self.missing;
        missing.sort_unstable();
        PeriodReport {
            start: start.to_string(),
            end: end.to_string(),
            total: Total {
                count: reports.iter().map(|e| e.count).sum(),
                unique_users,
                unique_users_exact,
            },
            events: reports,
            missing_sketches: missing,
        }
    }
}

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
}

/// Rows' metadata summaries merged: `n`, `sum`, `min`, `max` exact; `values` summed
/// over the days and ranked again (top K, ties by byte order), with
/// `"valuesExact": false` when some day had left values in `other`.
#[derive(Debug, Default)]
struct MetaMerge {
    /// In no order: the summary ranks them, then writes them by name.
    keys: FastMap<String, MergedKey>,
    dropped: u64,
}

impl MetaMerge {
    fn add(&mut self, meta: &str) {
        // Written by this crate; a summary that does not parse adds nothing.
        let Ok(StoredSummary(keys)) = serde_json::from_str::<StoredSummary>(meta) else {
            return;
        };
        for entry in keys {
            let (key, stats) = match entry {
                StoredEntry::Dropped(dropped) => {
                    self.dropped += dropped;
                    continue;
                }
                StoredEntry::Key(key, stats) => (key, stats),
            };
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
        }
    }

    /// The merged summary as JSON text: keys and values in byte order, each key's
    /// fields by name, as a `serde_json` map of it would give them. Written here, on
    /// the thread that read the period, so that the report's output copies the
    /// text: a year's report holds a hundred thousand values.
    fn to_json(&self, top_k: usize) -> MergedMeta {
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
    /// A key's fields by name: `max`, `min`, `n`, `other`, `sum`, `values`,
    /// `valuesExact`, those that apply.
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

/// A stored metadata summary, read with its strings borrowed from the text where
/// they hold no escapes: a year's report reads tens of thousands.
struct StoredSummary<'a>(Vec<StoredEntry<'a>>);

enum StoredEntry<'a> {
    Key(Text<'a>, StoredKey<'a>),
    /// `$dropped_keys`.
    Dropped(u64),
}

/// A string of a stored summary, borrowed unless it holds escapes.
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// One key of a stored summary.
#[derive(Deserialize)]
struct StoredKey<'a> {
    #[serde(default)]
    n: u64,
    #[serde(default, borrow, deserialize_with = "entries")]
    values: Option<Vec<(Text<'a>, u64)>>,
    #[serde(default)]
    other: u64,
    /// Absent, or `null` when the day's sum overflowed.
    #[serde(default, deserialize_with = "present")]
    sum: Option<Option<f64>>,
    min: Option<f64>,
    max: Option<f64>,
}

impl<'de> Deserialize<'de> for StoredSummary<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> Visitor<'de> for Keys {
            type Value = StoredSummary<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a metadata summary")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut keys = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(key) = map.next_key::<Text<'de>>()? {
                    keys.push(if key.0 == DROPPED_KEYS {
                        // An event's own key of that name, stored when nothing was
                        // dropped, counts nothing.
                        let dropped: Value = map.next_value()?;
                        StoredEntry::Dropped(dropped.as_u64().unwrap_or(0))
                    } else {
                        StoredEntry::Key(key, map.next_value()?)
                    });
                }
                Ok(StoredSummary(keys))
            }
        }
        deserializer.deserialize_map(Keys)
    }
}

/// A JSON object's entries in their order, without building a map.
fn entries<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<(Text<'de>, u64)>>, D::Error> {
    struct Entries;
    impl<'de> Visitor<'de> for Entries {
        type Value = Vec<(Text<'de>, u64)>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("values and their counts")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
            while let Some(entry) = map.next_entry()? {
                entries.push(entry);
            }
            Ok(entries)
        }
    }
    deserializer.deserialize_map(Entries).map(Some)
}

/// A field that is present, `null` or not: `Some(None)` for `null`.
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Option<f64>>, D::Error> {
    Option::deserialize(deserializer).map(Some)
}

impl TelemetryReport {
    /// The report of `range` from the reports of the parts
    /// [`split_by_periods`] cut it into, in their order.
    pub fn joined(range: &DayRange, by: Grouping, parts: Vec<TelemetryReport>) -> Self {
        TelemetryReport {
            start_date: range.start().to_string(),
            end_date: range.end().to_string(),
            by,
            periods: parts.into_iter().flat_map(|part| part.periods).collect(),
        }
    }

    /// The report of `range`, its days grouped `by` day, week or month, from its
    /// stored `rows` (in any order), keeping `top_k` values per metadata key.
    pub fn from_rows(range: &DayRange, by: Grouping, rows: &[StoredRollup], top_k: usize) -> Self {
        let mut rows: Vec<&StoredRollup> = rows.iter().collect();
        rows.sort_by_key(|row| row.date);
        let mut builder = ReportBuilder::new(range, by, top_k);
        for row in rows {
            builder.add(RollupRef {
                date: row.date,
                event: &row.event,
                count: row.count,
                unique_users: row.unique_users,
                meta: &row.meta,
                users_hll: row.users_hll.as_deref(),
            });
        }
        builder.finish()
    }

    /// The report as a readable table: a line per event and period, and the period's
    /// total; `~` marks an estimate.
    pub fn to_table(&self) -> String {
        let mut out = format!(
            "telemetry  {} .. {}  by {}\n{:<24}  {:<24}  {:>12}  {:>12}\n",
            self.start_date, self.end_date, self.by, "period", "event", "count", "users"
        );
        for period in &self.periods {
            let span = if period.start == period.end {
                period.start.clone()
            } else {
                format!("{} .. {}", period.start, period.end)
            };
            for event in &period.events {
                let _ = writeln!(
                    out,
                    "{span:<24}  {:<24}  {:>12}  {:>12}",
                    terminal_text(&event.event),
                    event.count,
                    users(event.unique_users, event.unique_users_exact)
                );
            }
            let _ = writeln!(
                out,
                "{span:<24}  {:<24}  {:>12}  {:>12}",
                "(all events)",
                period.total.count,
                users(period.total.unique_users, period.total.unique_users_exact)
            );
            if !period.missing_sketches.is_empty() {
                let _ = writeln!(
                    out,
                    "{span:<24}  rows with no usable sketch on {} (run those days again)",
                    period.missing_sketches.join(", ")
                );
            }
        }
        out
    }

    /// The report as CSV: a line per event and period, then one per period for all
    /// events (event empty); `unique_users` empty when unknown.
    pub fn to_csv(&self) -> String {
        let mut out =
            String::from("period_start,period_end,event,count,unique_users,unique_users_exact\n");
        for period in &self.periods {
            let line =
                |out: &mut String, event: &str, count: i64, users: Option<u64>, exact: bool| {
                    let _ = writeln!(
                        out,
                        "{},{},{},{count},{},{exact}",
                        period.start,
                        period.end,
                        csv_field(event),
                        users.map_or_else(String::new, |u| u.to_string())
                    );
                };
            for event in &period.events {
                line(
                    &mut out,
                    &event.event,
                    event.count,
                    event.unique_users,
                    event.unique_users_exact,
                );
            }
            line(
                &mut out,
                "",
                period.total.count,
                period.total.unique_users,
                period.total.unique_users_exact,
            );
        }
        out
    }
}

fn users(count: Option<u64>, exact: bool) -> String {
    match (count, exact) {
        (None, _) => "n/a".to_owned(),
        (Some(n), true) => n.to_string(),
        (Some(n), false) => format!("~{n}"),
    }
}

/// A CSV field, quoted when it holds a comma, a quote or a line break. Text that a
/// spreadsheet would run as a formula (it starts with `=`, `+`, `-`, `@`, a tab or a
/// carriage return) is prefixed with `'`, the usual way to keep it text.
fn csv_field(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        Cow::Owned(format!("'{text}"))
    } else {
        Cow::Borrowed(text)
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.into_owned()
    }
}

/// Text for a terminal: control characters (C0, DEL and C1, which can move the
/// cursor, retitle the window or forge lines) written as escapes such as `\x1b`.
pub fn terminal_text(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::{Weekday, date};

    fn range(start: &str, end: &str) -> DayRange {
        DayRange::new(start.parse().unwrap(), end.parse().unwrap()).unwrap()
    }

    #[test]
    fn text_from_events_cannot_drive_a_terminal_or_a_spreadsheet() {
        assert_eq!(terminal_text("page_view"), "page_view");
        assert_eq!(
            terminal_text("a\x1b]0;owned\x07b\r\nc\u{9b}"),
            "a\\x1b]0;owned\\x07b\\x0d\\x0ac\\x9b"
        );
        assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        for formula in ["+1", "-1", "@SUM(A1)", "\tx"] {
            assert_eq!(csv_field(formula), format!("'{formula}"));
        }
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("page_view"), "page_view");
    }

    #[test]
    fn periods_are_days_iso_weeks_and_months_cut_to_the_range() {
        let r = range("2024-01-03", "2024-02-05");
        assert_eq!(periods(&r, Grouping::Day).len(), 34);
        let weeks = periods(&r, Grouping::Week);
        assert_eq!(
            weeks[0],
            (date(2024, 1, 3), date(2024, 1, 7)),
            "Wednesday to Sunday"
        );
        assert_eq!(weeks[1], (date(2024, 1, 8), date(2024, 1, 14)));
        assert_eq!(weeks.last(), Some(&(date(2024, 2, 5), date(2024, 2, 5))));
        assert!(
            weeks
                .iter()
                .skip(1)
                .all(|(s, _)| s.weekday() == Weekday::Monday)
        );
        assert_eq!(
            periods(&r, Grouping::Month),
            vec![
                (date(2024, 1, 3), date(2024, 1, 31)),
                (date(2024, 2, 1), date(2024, 2, 5))
            ]
        );
        assert_eq!(
            periods(&r, Grouping::Range),
            vec![(date(2024, 1, 3), date(2024, 2, 5))]
        );
    }

    fn row(day: &str, event: &str, users: &[&str], meta: &str) -> StoredRollup {
        let mut sketch = Sketch::new();
        users.iter().for_each(|u| sketch.add_user(u));
        StoredRollup {
            date: day.parse().unwrap(),
            event: event.into(),
            count: users.len() as i64 * 2,
            unique_users: users.len() as i64,
            meta: meta.into(),
            users_hll: Some(sketch.to_bytes()),
        }
    }

    #[test]
    fn a_week_unions_users_and_merges_metadata() {
        let rows = [
            row(
                "2024-01-01",
                "view",
                &["a", "b"],
                r#"{"plan":{"n":2,"values":{"pro":2},"other":0},"amount":{"n":2,"sum":0.1,"min":1,"max":2}}"#,
            ),
            row(
                "2024-01-02",
                "view",
                &["b", "c"],
                r#"{"plan":{"n":2,"values":{"free":1,"pro":1},"other":3},"amount":{"n":1,"sum":0.2,"min":0.5,"max":0.5}}"#,
            ),
            row("2024-01-02", "click", &["a"], "{}"),
        ];
        let report = TelemetryReport::from_rows(
            &range("2024-01-01", "2024-01-07"),
            Grouping::Week,
            &rows,
            1,
        );
        let week = &report.periods[0];
        assert_eq!(
            (week.start.as_str(), week.end.as_str()),
            ("2024-01-01", "2024-01-07")
        );
        let view = &week.events[0];
        assert_eq!((view.event.as_str(), view.count), ("view", 8));
        assert_eq!(
            (view.unique_users, view.unique_users_exact),
            (Some(3), false)
        );
        assert_eq!(
            view.meta.to_value().unwrap(),
            serde_json::json!({
                "amount": {"n": 3, "sum": 0.30000000000000004, "min": 0.5, "max": 2},
                "plan": {"n": 4, "values": {"pro": 3}, "other": 4, "valuesExact": false}
            })
        );
        assert_eq!((week.total.count, week.total.unique_users), (10, Some(3)));
        let day =
            TelemetryReport::from_rows(&range("2024-01-02", "2024-01-02"), Grouping::Day, &rows, 1);
        let click = day.periods[0]
            .events
            .iter()
            .find(|e| e.event == "click")
            .unwrap();
        assert_eq!(
            (click.unique_users, click.unique_users_exact),
            (Some(1), true)
        );
    }

    #[test]
    fn summaries_merge_dropped_keys_overflowed_sums_and_escaped_values() {
        let rows = [
            row(
                "2024-01-01",
                "view",
                &["a"],
                r#"{"$dropped_keys":2,"path":{"n":2,"values":{"/a\"b":1,"/c":1},"other":0},"amount":{"n":1,"sum":null,"min":1,"max":1}}"#,
            ),
            row(
                "2024-01-02",
                "view",
                &["b"],
                r#"{"$dropped_keys":1,"path":{"n":1,"values":{"/a\"b":1},"other":0},"amount":{"n":1,"sum":5,"min":-3,"max":4}}"#,
            ),
            // An event's own `$dropped_keys` key counts nothing and hides nothing.
            row(
                "2024-01-04",
                "view",
                &["d"],
                r#"{"$dropped_keys":{"n":1,"values":{"x":1},"other":0},"path":{"n":1,"values":{"/c":1},"other":0}}"#,
            ),
            // Not a summary: adds nothing, not even its first keys.
            row(
                "2024-01-03",
                "view",
                &["c"],
                r#"{"path":{"n":5},"amount":[1]}"#,
            ),
        ];
        let report = TelemetryReport::from_rows(
            &range("2024-01-01", "2024-01-07"),
            Grouping::Week,
            &rows,
            1,
        );
        assert_eq!(
            report.periods[0].events[0].meta.to_value().unwrap(),
            serde_json::json!({
                "$dropped_keys": 3,
                "amount": {"n": 2, "sum": null, "min": -3, "max": 4},
                "path": {"n": 4, "values": {"/a\"b": 2}, "other": 2}
            })
        );
    }

    #[test]
    fn a_merged_summary_is_written_with_keys_values_and_fields_in_byte_order() {
        let rows = [
            row(
                "2024-01-01",
                "view",
                &["a"],
                r#"{"$dropped_keys":1,"zone":{"n":3,"values":{"b":2,"a":1},"other":1},"!first":{"n":1,"sum":2.5,"min":2.5,"max":2.5}}"#,
            ),
            row(
                "2024-01-02",
                "view",
                &["b"],
                r#"{"zone":{"n":1,"values":{"c":1},"other":0},"!first":{"n":1,"sum":1,"min":1,"max":1}}"#,
            ),
        ];
        let report = TelemetryReport::from_rows(
            &range("2024-01-01", "2024-01-07"),
            Grouping::Week,
            &rows,
            2,
        );
        // As a `serde_json` map would order them; `!` comes before `$`.
        assert_eq!(
            report.periods[0].events[0].meta.get(),
            r#"{"!first":{"max":2.5,"min":1,"n":2,"sum":3.5},"$dropped_keys":1,"zone":{"n":4,"other":2,"values":{"a":1,"b":2},"valuesExact":false}}"#
        );
    }

    #[test]
    fn the_table_puts_each_column_under_its_heading_for_days_and_weeks() {
        let rows = [row("2024-01-02", "view", &["a", "b"], "{}")];
        for (start, end, by) in [
            ("2024-01-01", "2024-01-07", Grouping::Week),
            ("2024-01-02", "2024-01-02", Grouping::Day),
        ] {
            let table = TelemetryReport::from_rows(&range(start, end), by, &rows, 5).to_table();
            let lines: Vec<&str> = table.lines().skip(1).collect();
            let heading = lines[0];
            for line in &lines[1..] {
                assert_eq!(line.len(), heading.len(), "{by}:\n{table}");
                assert_eq!(
                    line.find(['v', '(']),
                    heading.find("event"),
                    "{by}:\n{table}"
                );
            }
        }
    }

    #[test]
    fn a_range_read_in_parts_of_whole_periods_gives_the_same_report() {
        let rows: Vec<StoredRollup> = (0..75)
            .map(|day| {
                let date = date(2024, 1, 3)
                    .checked_add(jiff::Span::new().days(day))
                    .unwrap();
                let users: Vec<String> = (day..day + 40).map(|u| format!("u{}", u % 60)).collect();
                let users: Vec<&str> = users.iter().map(String::as_str).collect();
                let meta = format!(
                    r#"{{"plan":{{"n":1,"values":{{"p{}":1}},"other":0}}}}"#,
                    day % 7
                );
                row(&date.to_string(), "view", &users, &meta)
            })
            .collect();
        let whole = range("2024-01-03", "2024-03-17");
        for by in [
            Grouping::Day,
            Grouping::Week,
            Grouping::Month,
            Grouping::Range,
        ] {
            let expected = TelemetryReport::from_rows(&whole, by, &rows, 3);
            for parts in [1, 2, 3, 4, 100] {
                let cut = split_by_periods(&whole, by, parts);
                assert!(cut.len() <= parts, "{by} in {parts}");
                assert_eq!(cut.first().unwrap().start(), whole.start());
                assert_eq!(cut.last().unwrap().end(), whole.end());
                for pair in cut.windows(2) {
                    assert_eq!(pair[0].end().tomorrow().unwrap(), pair[1].start());
                }
                let reports = cut
                    .iter()
                    .map(|part| TelemetryReport::from_rows(part, by, &rows, 3))
                    .collect();
                let joined = TelemetryReport::joined(&whole, by, reports);
                assert_eq!(
                    serde_json::to_value(&joined).unwrap(),
                    serde_json::to_value(&expected).unwrap(),
                    "{by} in {parts}"
                );
            }
        }
    }

    #[test]
    fn a_day_without_sketches_makes_unions_null_and_says_which() {
        let mut old = row("2024-01-01", "view", &["a"], "{}");
        old.users_hll = None;
        let rows = [old, row("2024-01-02", "view", &["b"], "{}")];
        let report = TelemetryReport::from_rows(
            &range("2024-01-01", "2024-01-07"),
            Grouping::Week,
            &rows,
            5,
        );
        let week = &report.periods[0];
        assert_eq!(week.events[0].unique_users, None);
        assert_eq!(week.total.unique_users, None);
        assert_eq!(week.missing_sketches, ["2024-01-01"]);
        let days =
            TelemetryReport::from_rows(&range("2024-01-01", "2024-01-02"), Grouping::Day, &rows, 5);
        assert_eq!(
            days.periods[0].events[0].unique_users,
            Some(1),
            "one row: exact"
        );
    }

    #[test]
    fn sketches_of_other_parameters_count_as_missing_until_re_run() {
        let mut rows = [
            row("2024-01-01", "view", &["a"], "{}"),
            row("2024-01-02", "view", &["b"], "{}"),
            row("2024-01-03", "view", &["c"], "{}"),
        ];
        // The first two as an earlier version wrote them: log2m 14, regwidth 5 in
        // the parameter byte.
        for row in &mut rows[..2] {
            row.users_hll.as_mut().unwrap()[1] = (4 << 5) | 14;
        }
        let week = TelemetryReport::from_rows(
            &range("2024-01-01", "2024-01-07"),
            Grouping::Week,
            &rows,
            5,
        );
        let week = &week.periods[0];
        assert_eq!(week.events[0].unique_users, None);
        assert_eq!(week.missing_sketches, ["2024-01-01", "2024-01-02"]);
    }
}
