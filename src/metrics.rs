//! Counters of the runs a process has made, in Prometheus text format.
//!
//! [`Metrics`] is fed each run's outcome ([`Metrics::observe`]) and renders the
//! exposition text `GET /metrics` answers ([`Metrics::render`]). It knows nothing of
//! HTTP or databases.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use crate::model::{PURGE_JOB_NAME, PurgeReport, RunReport, Trigger};

/// Upper bounds of the run-duration histogram, in seconds.
const DURATION_BUCKETS: [f64; 9] = [0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0];

/// Writes a metric family's HELP and TYPE lines; returns its name.
fn family(out: &mut String, name: &str, kind: &str, help: &str) -> String {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    name.to_owned()
}

/// The process's run counters.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    /// Runs by job, trigger and outcome.
    runs: BTreeMap<(&'static str, &'static str, &'static str), u64>,
    /// Days of purges, by status.
    purge_days: BTreeMap<String, u64>,
    events_deleted: u64,
    days: BTreeMap<String, u64>,
    events_read: u64,
    events_skipped: BTreeMap<String, u64>,
    rows: BTreeMap<&'static str, u64>,
    duration_buckets: [u64; DURATION_BUCKETS.len()],
    duration_count: u64,
    duration_sum: f64,
    last_success_unix: Option<f64>,
    ticks_skipped: u64,
}

impl Metrics {
    /// Empty counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one run: its report, or `None` when it could not start.
    pub fn observe(&self, trigger: Trigger, report: Option<&RunReport>) {
        // A poisoned lock only means another thread panicked mid-update; the counts
        // are still the best there are.
        let mut c = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let outcome = match report {
            None => "not_started",
            Some(r) if r.ok => "ok",
            Some(_) => "failed",
        };
        *c.runs
            .entry((crate::model::JOB_NAME, trigger.as_str(), outcome))
            .or_default() += 1;
        let Some(report) = report else { return };
        for day in &report.days {
            *c.days.entry(day.status.to_string()).or_default() += 1;
            if !report.dry_run {
                for (reason, n) in &day.skipped {
                    *c.events_skipped.entry(reason.clone()).or_default() += n;
                }
            }
        }
        // Events and rows count what runs that write did; a dry run only previews.
        if !report.dry_run {
            c.events_read += report.totals.events_read;
            *c.rows.entry("inserted").or_default() += report.totals.inserted;
            *c.rows.entry("updated").or_default() += report.totals.updated;
            *c.rows.entry("deleted").or_default() += report.totals.deleted;
        }
        let seconds = report.duration_ms as f64 / 1000.0;
        for (bucket, bound) in c.duration_buckets.iter_mut().zip(DURATION_BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        c.duration_count += 1;
        c.duration_sum += seconds;
        if report.ok && !report.dry_run {
            c.last_success_unix = Some(jiff::Timestamp::now().as_millisecond() as f64 / 1000.0);
        }
    }

    /// Counts one purge: its report, or `None` when it could not start.
    pub fn observe_purge(&self, trigger: Trigger, report: Option<&PurgeReport>) {
        let mut c = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let outcome = match report {
            None => "not_started",
            Some(r) if r.ok => "ok",
            Some(_) => "failed",
        };
        *c.runs
            .entry((PURGE_JOB_NAME, trigger.as_str(), outcome))
            .or_default() += 1;
        let Some(report) = report else { return };
        for day in &report.days {
            *c.purge_days.entry(day.status.to_string()).or_default() += 1;
        }
        if !report.dry_run {
            c.events_deleted += report.totals.events_deleted;
        }
    }

    /// Counts a tick of the schedule skipped because the previous run was still going.
    pub fn tick_skipped(&self) {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .ticks_skipped += 1;
    }

    /// The counters in Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let c = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut out = String::new();
        let runs = family(
            &mut out,
            "veris_runs_total",
            "counter",
            "Runs by job, trigger and outcome.",
        );
        for ((job, trigger, outcome), n) in &c.runs {
            let _ = writeln!(
                out,
                "{runs}{{job=\"{job}\",trigger=\"{trigger}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        let purge_days = family(
            &mut out,
            "veris_purge_day_outcomes_total",
            "counter",
            "Old days telemetry-purge judged, by status (purged, would_purge, kept, failed).",
        );
        for (status, n) in &c.purge_days {
            let _ = writeln!(out, "{purge_days}{{status=\"{status}\"}} {n}");
        }
        let deleted = family(
            &mut out,
            "veris_events_deleted_total",
            "counter",
            "Source events telemetry-purge deleted.",
        );
        let _ = writeln!(out, "{deleted} {}", c.events_deleted);
        let days = family(
            &mut out,
            "veris_day_outcomes_total",
            "counter",
            "Days telemetry-daily processed, by status.",
        );
        for (status, n) in &c.days {
            let _ = writeln!(out, "{days}{{status=\"{status}\"}} {n}");
        }
        let read = family(
            &mut out,
            "veris_events_read_total",
            "counter",
            "Source events read by runs that write.",
        );
        let _ = writeln!(out, "{read} {}", c.events_read);
        let skipped = family(
            &mut out,
            "veris_events_skipped_total",
            "counter",
            "Events skipped or stripped of metadata by runs that write, by reason.",
        );
        for (reason, n) in &c.events_skipped {
            let _ = writeln!(out, "{skipped}{{reason=\"{reason}\"}} {n}");
        }
        let rows = family(
            &mut out,
            "veris_rows_written_total",
            "counter",
            "Rollup rows written, by kind.",
        );
        for (kind, n) in &c.rows {
            let _ = writeln!(out, "{rows}{{kind=\"{kind}\"}} {n}");
        }
        let duration = family(
            &mut out,
            "veris_run_duration_seconds",
            "histogram",
            "Wall time of runs.",
        );
        for (n, bound) in c.duration_buckets.iter().zip(DURATION_BUCKETS) {
            let _ = writeln!(out, "{duration}_bucket{{le=\"{bound}\"}} {n}");
        }
        let _ = writeln!(out, "{duration}_bucket{{le=\"+Inf\"}} {}", c.duration_count);
        let _ = writeln!(out, "{duration}_sum {}", c.duration_sum);
        let _ = writeln!(out, "{duration}_count {}", c.duration_count);
        let last = family(
            &mut out,
            "veris_last_success_timestamp_seconds",
            "gauge",
            "Unix time of the last run that wrote every day (0: none yet).",
        );
        let _ = writeln!(out, "{last} {}", c.last_success_unix.unwrap_or(0.0));
        let skipped_ticks = family(
            &mut out,
            "veris_schedule_ticks_skipped_total",
            "counter",
            "Ticks of the built-in schedule skipped because the previous scheduled run was still going.",
        );
        let _ = writeln!(out, "{skipped_ticks} {}", c.ticks_skipped);
        out
    }
}
