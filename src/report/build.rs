//! The report built from rollup rows as a store reads them, in date order: a period's
//! rows by event, their counts summed, their sketches united, their summaries merged,
//! in memory that grows with one period's events rather than with the rows.

use jiff::civil::Date;

use super::merge::MetaMerge;
use super::periods::{Grouping, periods};
use super::{EventReport, PeriodReport, TelemetryReport, Total};
use crate::model::hll::{Sketch, has_our_parameters};
use crate::model::{DayRange, FastMap, RollupFold, RollupRef, StoredRollup};

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
pub(super) struct PeriodParts {
    /// In no order: the report ranks them.
    events: FastMap<String, EventParts>,
    rows: usize,
    /// The stored exact count of the period's first row, which is the total's
    /// when it is the only row.
    first_row_users: i64,
    /// Dates of rows without a sketch this version can read.
    missing: Vec<String>,
    /// Dates of rows with numbers but no sketches of them.
    missing_meta: Vec<String>,
    /// Whether a row was of a day read before its end.
    partial: bool,
    /// The newest `updated_at` of the rows.
    newest: String,
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
        TelemetryReport::of(&self.range, self.by, self.done)
    }

    fn close_period(&mut self) {
        let (start, end) = self.cuts[self.done.len()];
        let parts = std::mem::take(&mut self.open);
        let partial = parts.partial;
        let mut period = parts.into_report(start.to_string(), end.to_string(), self.top_k);
        period.mark_partial(partial);
        self.done.push(period);
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
    pub(super) fn add(&mut self, row: RollupRef<'_>) {
        if self.rows == 0 {
            self.first_row_users = row.unique_users;
        }
        self.partial |= row.partial;
        if row.updated_at > self.newest.as_str() {
            row.updated_at.clone_into(&mut self.newest);
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
        if event.meta.add(row.meta, row.meta_sketches) {
            let date = row.date.to_string();
            if !self.missing_meta.contains(&date) {
                self.missing_meta.push(date);
            }
        }
    }

    /// The period's report, labelled `start` and `end`, with `asOf` set to the newest
    /// `updated_at` of its rows (the caller keeps it for partial periods only).
    pub(super) fn into_report(self, start: String, end: String, top_k: usize) -> PeriodReport {
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
        let mut missing_meta = self.missing_meta;
        missing_meta.sort_unstable();
        PeriodReport {
            start,
            end,
            partial: false,
            as_of: (!self.newest.is_empty()).then_some(self.newest),
            total: Total {
                count: reports.iter().map(|e| e.count).sum(),
                unique_users,
                unique_users_exact,
            },
            events: reports,
            missing_sketches: missing,
            missing_meta_sketches: missing_meta,
        }
    }
}

impl TelemetryReport {
    /// The report of `range` from the reports of the parts
    /// [`split_by_periods`] cut it into, in their order.
    pub fn joined(range: &DayRange, by: Grouping, parts: Vec<TelemetryReport>) -> Self {
        let periods = parts.into_iter().flat_map(|part| part.periods).collect();
        TelemetryReport::of(range, by, periods)
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
                meta_sketches: row.meta_sketches.as_deref(),
                users_hll: row.users_hll.as_deref(),
                partial: false,
                updated_at: "",
            });
        }
        builder.finish()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::report::split_by_periods;
    use jiff::civil::date;

    fn range(start: &str, end: &str) -> DayRange {
        DayRange::new(start.parse().unwrap(), end.parse().unwrap()).unwrap()
    }

    /// A stored row of `day` for `event`, its users' sketch made from `users`.
    pub(in crate::report) fn row(
        day: &str,
        event: &str,
        users: &[&str],
        meta: &str,
    ) -> StoredRollup {
        let mut sketch = Sketch::new();
        users.iter().for_each(|u| sketch.add_user(u));
        StoredRollup {
            date: day.parse().unwrap(),
            event: event.into(),
            count: users.len() as i64 * 2,
            unique_users: users.len() as i64,
            meta: meta.into(),
            meta_sketches: Some("{}".into()),
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
