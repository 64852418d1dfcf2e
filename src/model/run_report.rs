//! The run report: what a run did per day, as JSON and as a readable table.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use serde::{Deserialize, Serialize};

/// What happened to one day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DayStatus {
    /// The day's rows now equal its aggregate.
    Written,
    /// A dry run: the figures say what would have been written.
    DryRun,
    /// The retention guard kept the stored rows: the source holds fewer events.
    Kept,
    /// The day could not be done; see its `error`.
    Failed,
}

impl fmt::Display for DayStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DayStatus::Written => "written",
            DayStatus::DryRun => "dry_run",
            DayStatus::Kept => "kept",
            DayStatus::Failed => "failed",
        })
    }
}

/// The figures of one day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DayReport {
    /// The day, `YYYY-MM-DD`.
    pub date: String,
    /// What happened to it.
    pub status: DayStatus,
    /// Every source event of the day, bad ones included.
    pub events_read: u64,
    /// The sum of `skipped`.
    pub events_skipped: u64,
    /// Events skipped whole or stripped of metadata, by reason (non-zero only).
    pub skipped: BTreeMap<String, u64>,
    /// Rollup rows the day has after the run (or would have, in a dry run).
    pub rows: u64,
    /// Rows inserted (or that would be).
    pub inserted: u64,
    /// Rows updated (or that would be).
    pub updated: u64,
    /// Rows deleted (or that would be).
    pub deleted: u64,
    /// Rows left as they were.
    pub unchanged: u64,
    /// Wall time spent on the day.
    pub duration_ms: u64,
    /// Why the day failed, or why it was kept; `null` otherwise.
    pub error: Option<String>,
    /// Why a kept day was kept, as a name: `purged` when `telemetry-purge` deleted
    /// its events; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Bytes the day's aggregation spilled to disk past the memory limit; absent
    /// when it fitted in memory.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub spilled_bytes: u64,
    /// What happened (or would) to the day's hour rows, counted apart from its rows.
    #[serde(default)]
    pub hours: HourCounts,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Hour rows inserted, updated, deleted and left as they were.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HourCounts {
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    pub unchanged: u64,
}

impl HourCounts {
    fn add(&mut self, other: &HourCounts) {
        self.inserted += other.inserted;
        self.updated += other.updated;
        self.deleted += other.deleted;
        self.unchanged += other.unchanged;
    }
}

/// The sums over all days.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub events_read: u64,
    pub events_skipped: u64,
    pub rows: u64,
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    pub unchanged: u64,
    /// The days' hour rows.
    #[serde(default)]
    pub hours: HourCounts,
}

/// The report of one run of `telemetry-daily`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunReport {
    /// Always `telemetry-daily`.
    pub job: String,
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// False when any day failed.
    pub ok: bool,
    /// The first day of the range.
    pub start_date: String,
    /// The last day of the range.
    pub end_date: String,
    /// The IANA zone the days were cut in.
    pub timezone: String,
    /// One entry per day, in order.
    pub days: Vec<DayReport>,
    /// The sums over all days.
    pub totals: Totals,
    /// Wall time of the whole run.
    pub duration_ms: u64,
    /// What `--changed` found; absent from other runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<ChangedDays>,
}

/// The earlier days a `--changed` run added to its range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangedDays {
    /// The watermark of the last successful `--changed` run: source rows with a
    /// higher id are new. `None` when there was no such run, so nothing earlier
    /// than the range could be known to be new.
    pub since_id: Option<i64>,
    /// The source's highest id when this run started (0 for an empty source).
    pub through_id: i64,
    /// Days before the range that received new rows, `YYYY-MM-DD`, in order.
    pub earlier_days: Vec<String>,
}

impl RunReport {
    /// Recomputes `ok` and `totals` from `days`.
    pub fn summarize(&mut self) {
        self.ok = self.days.iter().all(|d| d.status != DayStatus::Failed);
        let mut t = Totals::default();
        for d in &self.days {
            t.events_read += d.events_read;
            t.events_skipped += d.events_skipped;
            t.rows += d.rows;
            t.inserted += d.inserted;
            t.updated += d.updated;
            t.deleted += d.deleted;
            t.unchanged += d.unchanged;
            t.hours.add(&d.hours);
        }
        self.totals = t;
    }

    /// The report as a readable table for a terminal.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let mode = if self.dry_run {
            "  (dry run: nothing written)"
        } else {
            ""
        };
        let range = if self.start_date == self.end_date {
            self.start_date.clone()
        } else {
            format!("{} .. {}", self.start_date, self.end_date)
        };
        let _ = writeln!(out, "{}  {range}  ({}){mode}", self.job, self.timezone);
        if let Some(changed) = &self.changed {
            let line = match (changed.since_id, changed.earlier_days.is_empty()) {
                (None, _) => format!(
                    "changed: no earlier --changed run to compare with; the next starts after id {}",
                    changed.through_id
                ),
                (Some(since), true) => format!(
                    "changed: no earlier day received events (ids {since}..{})",
                    changed.through_id
                ),
                (Some(since), false) => format!(
                    "changed: earlier days with new events (ids {since}..{}): {}",
                    changed.through_id,
                    changed.earlier_days.join(", ")
                ),
            };
            let _ = writeln!(out, "{line}");
        }
        let _ = writeln!(
            out,
            "{:<10}  {:<7}  {:>10}  {:>7}  {:>6}  {:>6}  {:>6}  {:>6}  {:>9}  {:>7}",
            "date",
            "status",
            "events",
            "skipped",
            "rows",
            "insert",
            "update",
            "delete",
            "unchanged",
            "ms"
        );
        for d in &self.days {
            let _ = writeln!(
                out,
                "{:<10}  {:<7}  {:>10}  {:>7}  {:>6}  {:>6}  {:>6}  {:>6}  {:>9}  {:>7}",
                d.date,
                d.status.to_string(),
                d.events_read,
                d.events_skipped,
                d.rows,
                d.inserted,
                d.updated,
                d.deleted,
                d.unchanged,
                d.duration_ms
            );
        }
        let t = &self.totals;
        let _ = writeln!(
            out,
            "{:<10}  {:<7}  {:>10}  {:>7}  {:>6}  {:>6}  {:>6}  {:>6}  {:>9}  {:>7}",
            "total",
            if self.ok { "ok" } else { "FAILED" },
            t.events_read,
            t.events_skipped,
            t.rows,
            t.inserted,
            t.updated,
            t.deleted,
            t.unchanged,
            self.duration_ms
        );
        let h = &t.hours;
        if h.inserted + h.updated + h.deleted + h.unchanged > 0 {
            let _ = writeln!(
                out,
                "hour rows: {} inserted, {} updated, {} deleted, {} unchanged",
                h.inserted, h.updated, h.deleted, h.unchanged
            );
        }
        for d in &self.days {
            if !d.skipped.is_empty() {
                let reasons: Vec<String> =
                    d.skipped.iter().map(|(r, n)| format!("{r} {n}")).collect();
                let _ = writeln!(out, "{}: skipped {}", d.date, reasons.join(", "));
            }
            if d.spilled_bytes > 0 {
                let _ = writeln!(
                    out,
                    "{}: past the memory limit, spilled {:.1} MiB to disk",
                    d.date,
                    d.spilled_bytes as f64 / (1024.0 * 1024.0)
                );
            }
            if let Some(error) = &d.error {
                let _ = writeln!(out, "{}: {}: {error}", d.date, d.status);
            }
        }
        out
    }
}
