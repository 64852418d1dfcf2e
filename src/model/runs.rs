//! The run history's records: a run about to start, its state, and a stored run.

use serde::{Deserialize, Serialize};

use super::days::DayRange;
use super::purge_report::{PurgeReport, PurgeStatus, PurgeTotals};
use super::run_report::{DayStatus, RunReport, Totals};

/// The job's name, as reports, logs and `job_runs.job` give it.
pub const JOB_NAME: &str = "telemetry-daily";

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Trigger {
    /// The command line (and library calls).
    #[default]
    Cli,
    /// The HTTP endpoint.
    Http,
    /// The built-in schedule.
    Schedule,
}

impl Trigger {
    /// The name `job_runs.trigger` holds.
    pub fn as_str(&self) -> &'static str {
        match self {
            Trigger::Cli => "cli",
            Trigger::Http => "http",
            Trigger::Schedule => "schedule",
        }
    }
}

/// A run about to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRun {
    pub job: String,
    pub trigger: Trigger,
    pub range: DayRange,
    pub timezone: String,
    /// The range's days plus any earlier days a `--changed` run adds.
    pub days_total: u32,
    /// The source's highest id when a `--changed` run started; `None` for other runs.
    pub source_watermark: Option<i64>,
}

/// The state of a recorded run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Ok,
    Failed,
    Abandoned,
}

impl RunStatus {
    /// The name stored in `job_runs.status`.
    pub fn as_str(&self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Ok => "ok",
            RunStatus::Failed => "failed",
            RunStatus::Abandoned => "abandoned",
        }
    }
}

/// One row of `job_runs`, as `runs` and `GET /api/jobs/runs` show it.
///
/// A listing carries each run's [`RunSummary`], never its report, so that its size
/// does not depend on how long the runs were; one run asked for by id carries its
/// full report too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    pub id: i64,
    pub job: String,
    pub trigger: String,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub finished_at: Option<String>,
    pub start_date: String,
    pub end_date: String,
    pub timezone: String,
    pub status: String,
    pub days_done: i64,
    pub days_total: i64,
    /// The source's highest id when a `--changed` run started.
    pub source_watermark: Option<i64>,
    /// What the run came to, once it has finished (`null` for runs recorded by a
    /// version that kept no summaries).
    pub summary: Option<RunSummary>,
    /// The whole run report: only when one run is asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<serde_json::Value>,
}

/// Runs one listing shows at most.
pub const MAX_RUNS_LISTED: u32 = 100;

/// Failed days a [`RunSummary`] names at most.
pub const SUMMARY_FAILED_DAYS: usize = 10;

/// Characters of a failed day's error a [`RunSummary`] keeps at most.
pub const SUMMARY_ERROR_CHARS: usize = 300;

/// A finished run in brief: a few hundred bytes whatever its range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    /// False when any day failed.
    pub ok: bool,
    /// Whether the run wrote nothing (only in reports; dry runs are not recorded).
    pub dry_run: bool,
    /// The report's sums over all days.
    pub totals: JobTotals,
    /// Wall time of the whole run.
    pub duration_ms: u64,
    /// How many days failed.
    pub failed_days_total: u64,
    /// The first failed days, with their errors (cut short).
    pub failed_days: Vec<FailedDay>,
}

/// A day that failed, as a [`RunSummary`] names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailedDay {
    pub date: String,
    pub error: String,
}

impl RunSummary {
    /// The summary of `report`.
    pub fn of(report: &RunReport) -> Self {
        let failed: Vec<_> = report
            .days
            .iter()
            .filter(|day| day.status == DayStatus::Failed)
            .collect();
        Self {
            ok: report.ok,
            dry_run: report.dry_run,
            totals: JobTotals::Daily(report.totals.clone()),
            duration_ms: report.duration_ms,
            failed_days_total: failed.len() as u64,
            failed_days: failed_days(failed.iter().map(|day| (&day.date, &day.error))),
        }
    }

    /// The summary of a purge's `report`.
    pub fn of_purge(report: &PurgeReport) -> Self {
        let failed: Vec<_> = report
            .days
            .iter()
            .filter(|day| day.status == PurgeStatus::Failed)
            .collect();
        Self {
            ok: report.ok,
            dry_run: report.dry_run,
            totals: JobTotals::Purge(report.totals.clone()),
            duration_ms: report.duration_ms,
            failed_days_total: failed.len() as u64,
            failed_days: failed_days(failed.iter().map(|day| (&day.date, &day.error))),
        }
    }
}

/// The first failed days, with their errors cut short.
fn failed_days<'a>(
    failed: impl Iterator<Item = (&'a String, &'a Option<String>)>,
) -> Vec<FailedDay> {
    failed
        .take(SUMMARY_FAILED_DAYS)
        .map(|(date, error)| FailedDay {
            date: date.clone(),
            error: error
                .as_deref()
                .unwrap_or("")
                .chars()
                .take(SUMMARY_ERROR_CHARS)
                .collect(),
        })
        .collect()
}

/// A run's sums, as its job counts them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum JobTotals {
    /// A purge's: days purged, kept and failed, events deleted. First, since it
    /// takes no field it does not know, and a daily run's sums have none of its.
    Purge(PurgeTotals),
    /// `telemetry-daily`'s.
    Daily(Totals),
}

/// A job's report, as the run history records it.
pub trait JobReport: Serialize {
    /// False when any day failed.
    fn ok(&self) -> bool;
    /// The report in brief.
    fn summary(&self) -> RunSummary;
}

impl JobReport for RunReport {
    fn ok(&self) -> bool {
        self.ok
    }

    fn summary(&self) -> RunSummary {
        RunSummary::of(self)
    }
}

impl JobReport for PurgeReport {
    fn ok(&self) -> bool {
        self.ok
    }

    fn summary(&self) -> RunSummary {
        RunSummary::of_purge(self)
    }
}
