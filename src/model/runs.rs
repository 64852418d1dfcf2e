//! The run history's records: a run about to start, its state, and a stored run.

use serde::{Deserialize, Serialize};

use super::days::DayRange;

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
    /// The run report, once the run has finished.
    pub report: Option<serde_json::Value>,
    /// The source's highest id when a `--changed` run started.
    pub source_watermark: Option<i64>,
}
