//! The telemetry report: rollup rows read back and grouped by day, ISO week or
//! calendar month, with multi-day unique users from the rows' sketches and the rows'
//! metadata summaries merged. It is computed from the rollups alone, never from raw
//! events.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::str::FromStr;

use jiff::civil::Date;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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
    pub meta: Value,
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
    events: BTreeMap<String, EventParts>,
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
    values: BTreeMap<String, u64>,
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
    keys: BTreeMap<String, MergedKey>,
    dropped: u64,
}

impl MetaMerge {
    fn add(&mut self, meta: &str) {
        // Written by this crate; a summary that does not parse adds nothing.
        let Ok(Value::Object(summary)) = serde_json::from_str::<Value>(meta) else {
            return;
        };
        for (key, stats) in summary {
            if key == DROPPED_KEYS {
                self.dropped += stats.as_u64().unwrap_or(0);
                continue;
            }
            let merged = self.keys.entry(key).or_default();
            merged.n += stats["n"].as_u64().unwrap_or(0);
            if let Some(values) = stats["values"].as_object() {
                merged.has_values = true;
                let other = stats["other"].as_u64().unwrap_or(0);
                merged.values_cut |= other > 0;
                merged.value_total += other;
                for (value, count) in values {
                    let count = count.as_u64().unwrap_or(0);
                    *merged.values.entry(value.clone()).or_default() += count;
                    merged.value_total += count;
                }
            }
            match stats.get("sum") {
                Some(Value::Null) => merged.sum_overflowed = true,
                Some(sum) => {
                    if let Some(x) = sum.as_f64() {
                        merged.sum.get_or_insert_with(ExactSum::default).add(x);
                    }
                }
                None => {}
            }
            if let Some(x) = stats.get("min").and_then(Value::as_f64) {
                merged.min = Some(merged.min.map_or(x, |m| m.min(x)));
            }
            if let Some(x) = stats.get("max").and_then(Value::as_f64) {
                merged.max = Some(merged.max.map_or(x, |m| m.max(x)));
            }
        }
    }

    fn to_json(&self, top_k: usize) -> Value {
        let mut ranked: Vec<(&str, u64)> =
            self.keys.iter().map(|(k, m)| (k.as_str(), m.n)).collect();
        ranked.sort_unstable_by(key_order);
        let dropped = self.dropped + ranked.len().saturating_sub(MAX_KEYS) as u64;
        ranked.truncate(MAX_KEYS);
        let mut out = Map::new();
        for (key, _) in ranked {
            out.insert(key.to_owned(), merged_json(&self.keys[key], top_k));
        }
        if dropped > 0 {
            out.insert(DROPPED_KEYS.into(), Value::from(dropped));
        }
        Value::Object(out)
    }
}

fn merged_json(key: &MergedKey, top_k: usize) -> Value {
    let mut out = Map::new();
    out.insert("n".into(), Value::from(key.n));
    if key.has_values {
        let mut values: Vec<(&str, u64)> =
            key.values.iter().map(|(v, c)| (v.as_str(), *c)).collect();
        values.sort_unstable_by(value_order);
        values.truncate(top_k);
        let kept: u64 = values.iter().map(|(_, c)| c).sum();
        out.insert(
            "values".into(),
            Value::Object(
                values
                    .into_iter()
                    .map(|(v, c)| (v.to_owned(), Value::from(c)))
                    .collect(),
            ),
        );
        out.insert("other".into(), Value::from(key.value_total - kept));
        if key.values_cut {
            out.insert("valuesExact".into(), Value::Bool(false));
        }
    }
    if key.sum.is_some() || key.sum_overflowed {
        let sum = match (&key.sum, key.sum_overflowed) {
            (Some(sum), false) => json_number(sum.total()),
            _ => Value::Null,
        };
        out.insert("sum".into(), sum);
        out.insert("min".into(), key.min.map_or(Value::Null, json_number));
        out.insert("max".into(), key.max.map_or(Value::Null, json_number));
    }
    Value::Object(out)
}

impl TelemetryReport {
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
            "telemetry  {} .. {}  by {}\n{:<23}  {:<24}  {:>12}  {:>12}\n",
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
                    "{span:<23}  {:<24}  {:>12}  {:>12}",
                    event.event,
                    event.count,
                    users(event.unique_users, event.unique_users_exact)
                );
            }
            let _ = writeln!(
                out,
                "{span:<23}  {:<24}  {:>12}  {:>12}",
                "(all events)",
                period.total.count,
                users(period.total.unique_users, period.total.unique_users_exact)
            );
            if !period.missing_sketches.is_empty() {
                let _ = writeln!(
                    out,
                    "{span:<23}  rows with no usable sketch on {} (run those days again)",
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

/// A CSV field, quoted when it holds a comma, a quote or a line break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::{Weekday, date};

    fn range(start: &str, end: &str) -> DayRange {
        DayRange::new(start.parse().unwrap(), end.parse().unwrap()).unwrap()
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
            view.meta,
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
