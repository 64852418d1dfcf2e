//! The report of a `telemetry-purge` run: what it did to each old day with events,
//! as JSON and as a readable table.

use std::fmt::{self, Write as _};

use serde::{Deserialize, Serialize};

/// The purge job's name, as reports, logs and `job_runs.job` give it.
pub const PURGE_JOB_NAME: &str = "telemetry-purge";

/// What happened to one old day's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PurgeStatus {
    /// Its events are deleted.
    Purged,
    /// A dry run: they would have been.
    WouldPurge,
    /// Its events stay; `reason` says why.
    Kept,
    /// The day could not be done; see its `error`.
    Failed,
}

impl fmt::Display for PurgeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PurgeStatus::Purged => "purged",
            PurgeStatus::WouldPurge => "would_purge",
            PurgeStatus::Kept => "kept",
            PurgeStatus::Failed => "failed",
        })
    }
}

/// Why an old day's events stay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeptReason {
    /// The day has no rollup rows.
    NotRolledUp,
    /// Its rollup was written before the day ended.
    Partial,
    /// Aggregating its events now does not give exactly the stored rows.
    RollupOutOfDate,
}

impl KeptReason {
    /// The reason's name in reports.
    pub fn as_str(&self) -> &'static str {
        match self {
            KeptReason::NotRolledUp => "not_rolled_up",
            KeptReason::Partial => "partial",
            KeptReason::RollupOutOfDate => "rollup_out_of_date",
        }
    }
}

impl fmt::Display for KeptReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One old day of a purge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PurgeDay {
    /// The day, `YYYY-MM-DD`.
    pub date: String,
    pub status: PurgeStatus,
    /// Why a kept day's events stay; `null` otherwise.
    pub reason: Option<KeptReason>,
    /// Events deleted (or, in a dry run, that would be).
    pub events_deleted: u64,
    pub duration_ms: u64,
    /// Why the day failed; `null` otherwise.
    pub error: Option<String>,
}

/// The sums over a purge's days.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PurgeTotals {
    /// Days purged (or, in a dry run, that would be).
    pub purged: u64,
    pub kept: u64,
    pub failed: u64,
    pub events_deleted: u64,
}

/// The report of one run of `telemetry-purge`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PurgeReport {
    /// Always [`PURGE_JOB_NAME`].
    pub job: String,
    pub dry_run: bool,
    /// False when any day failed.
    pub ok: bool,
    pub keep_days: u32,
    /// The first day kept whatever its rollup: days before it are old enough.
    pub before: String,
    pub timezone: String,
    /// The old days that had events, oldest first.
    pub days: Vec<PurgeDay>,
    pub totals: PurgeTotals,
    pub duration_ms: u64,
}

impl PurgeReport {
    /// Sums the days into `totals` and sets `ok`.
    pub fn summarize(&mut self) {
        let mut totals = PurgeTotals::default();
        for day in &self.days {
            match day.status {
                PurgeStatus::Purged | PurgeStatus::WouldPurge => totals.purged += 1,
                PurgeStatus::Kept => totals.kept += 1,
                PurgeStatus::Failed => totals.failed += 1,
            }
            totals.events_deleted += day.events_deleted;
        }
        self.ok = totals.failed == 0;
        self.totals = totals;
    }

    /// The report as a table, a line per day.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let mode = if self.dry_run {
            "  (dry run: nothing deleted)"
        } else {
            ""
        };
        let kept = match self.keep_days {
            1 => "yesterday kept".to_owned(),
            n => format!("the last {n} days kept"),
        };
        let _ = writeln!(
            out,
            "{}  days before {} ({kept}, {}){mode}",
            self.job, self.before, self.timezone
        );
        let _ = writeln!(
            out,
            "{:<10}  {:<11}  {:<18}  {:>12}  {:>9}",
            "date", "status", "reason", "deleted", "ms"
        );
        for day in &self.days {
            let reason = day.reason.map_or("", |r| r.as_str());
            let _ = writeln!(
                out,
                "{:<10}  {:<11}  {:<18}  {:>12}  {:>9}",
                day.date,
                day.status.to_string(),
                reason,
                day.events_deleted,
                day.duration_ms
            );
            if let Some(error) = &day.error {
                let _ = writeln!(out, "            error: {error}");
            }
        }
        if self.days.is_empty() {
            let _ = writeln!(out, "(no events before {})", self.before);
        }
        let verb = if self.dry_run {
            "would purge"
        } else {
            "purged"
        };
        let _ = writeln!(
            out,
            "{verb} {} day(s) ({} events), kept {}, failed {}, in {} ms",
            self.totals.purged,
            self.totals.events_deleted,
            self.totals.kept,
            self.totals.failed,
            self.duration_ms
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(status: PurgeStatus, deleted: u64) -> PurgeDay {
        PurgeDay {
            date: "2024-01-01".into(),
            status,
            reason: (status == PurgeStatus::Kept).then_some(KeptReason::Partial),
            events_deleted: deleted,
            duration_ms: 1,
            error: (status == PurgeStatus::Failed).then(|| "gone".to_owned()),
        }
    }

    #[test]
    fn the_report_reads_as_the_contract_writes_it() {
        let mut report = PurgeReport {
            job: PURGE_JOB_NAME.into(),
            dry_run: false,
            ok: true,
            keep_days: 90,
            before: "2024-01-01".into(),
            timezone: "UTC".into(),
            days: vec![
                day(PurgeStatus::Purged, 81_234),
                day(PurgeStatus::Kept, 0),
                day(PurgeStatus::Failed, 10),
            ],
            totals: PurgeTotals::default(),
            duration_ms: 1200,
        };
        report.summarize();
        assert!(!report.ok);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json["totals"],
            serde_json::json!({"purged": 1, "kept": 1, "failed": 1, "eventsDeleted": 81_244})
        );
        assert_eq!(json["days"][0]["status"], "purged");
        assert_eq!(json["days"][0]["reason"], serde_json::Value::Null);
        assert_eq!(json["days"][1]["reason"], "partial");
        assert_eq!(json["keepDays"], 90);
        let table = report.to_table();
        assert!(table.contains("purged 1 day(s) (81244 events)"), "{table}");
        assert!(table.contains("(the last 90 days kept, UTC)"), "{table}");
    }
}
