//! The read path whole: the telemetry report of a range of days, grouped by day,
//! ISO week or month, for the command line and the endpoint. It reads only
//! `telemetry_daily`, never the raw events: the request and the reading are here,
//! the periods in `periods.rs`, the building from rows in `build.rs`, the merging of
//! summaries in `merge.rs` (the stored ones read in `stored_summary.rs`, their
//! sketches in `stored_sketches.rs`, both by the scan of `compact_json.rs`), the
//! table and CSV in `render.rs`.

mod build;
mod compact_json;
mod hours;
mod merge;
mod periods;
mod render;
mod stored_sketches;
mod stored_summary;

use futures_util::future::try_join_all;
use serde::{Deserialize, Serialize};
use tokio_util::task::AbortOnDropHandle;

pub use self::build::ReportBuilder;
pub use self::hours::HourReportBuilder;
pub use self::merge::MergedMeta;
pub use self::periods::{Grouping, MAX_HOUR_REPORT_DAYS, periods, split_by_periods};
pub use self::render::terminal_text;
use crate::model::DayRange;
use crate::store::{READS_AT_ONCE, Store, StoreError};

/// Days a report covers when not told: the 30 ending today.
pub const DEFAULT_REPORT_DAYS: u32 = 30;

/// What a report covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRequest {
    pub range: DayRange,
    pub by: Grouping,
    /// The events to report; all of them when empty.
    pub events: Vec<String>,
    /// Values kept per metadata key.
    pub top_k: usize,
    /// The zone hours are cut in (a report by hour).
    pub timezone: jiff::tz::TimeZone,
}

/// The report `request` asks for, from `store`'s rollups.
///
/// A long range is read as a few runs of whole periods at once, one per core, so
/// that the database sends and the report merges a year of sketches in parallel.
/// Each run is a query of its own: a day written meanwhile may show in one part and
/// not yet in another, as in reports asked a moment apart, but a period is always
/// read whole by one query.
///
/// # Errors
///
/// [`StoreError`] when the rollups cannot be read.
pub async fn telemetry_report(
    store: &Store,
    request: &ReportRequest,
) -> Result<TelemetryReport, StoreError> {
    if request.by == Grouping::Hour {
        let builder = HourReportBuilder::new(&request.range, &request.timezone).map_err(|e| {
            StoreError::Source {
                action: "cutting the report's range into hours".to_owned(),
                message: e.to_string(),
            }
        })?;
        let span = builder.span();
        return Ok(store
            .fold_hours(span, &request.events, builder)
            .await?
            .finish());
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let parts = split_by_periods(&request.range, request.by, cores.min(READS_AT_ONCE));
    // Each part on a task of its own, so that the parts are merged on as many
    // threads as they are read; the tasks end with the report (a client that hangs
    // up stops them).
    let reading = parts.into_iter().map(|part| {
        let (store, events) = (store.clone(), request.events.clone());
        let builder = ReportBuilder::new(&part, request.by, request.top_k);
        AbortOnDropHandle::new(tokio::spawn(async move {
            let builder = store.fold_rollups(&part, &events, builder).await?;
            Ok::<_, StoreError>(builder.finish())
        }))
    });
    let reports = try_join_all(reading).await.map_err(|error| {
        if error.is_panic() {
            std::panic::resume_unwind(error.into_panic());
        }
        StoreError::Aborted("the report was cancelled".to_owned())
    })?;
    let reports = reports.into_iter().collect::<Result<_, _>>()?;
    Ok(TelemetryReport::joined(&request.range, request.by, reports))
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
    /// Days whose rows hold numbers but no sketches of them (written before they
    /// were kept): their keys' `p50`, `p90`, `p99` are left out until those days
    /// are run again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_meta_sketches: Vec<String>,
    /// Whether the period holds a day read before its end (today so far); by hour,
    /// an hour not over when its day was last read.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
    /// When a partial period's rows were last written (the newest `updated_at`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_of: Option<String>,
}

impl TelemetryReport {
    /// The report of `range` by `by`, of these periods.
    fn of(range: &DayRange, by: Grouping, periods: Vec<PeriodReport>) -> Self {
        Self {
            start_date: range.start().to_string(),
            end_date: range.end().to_string(),
            by,
            periods,
        }
    }
}

impl PeriodReport {
    /// Marks the period partial, keeping its `asOf`; or whole, without one.
    fn mark_partial(&mut self, partial: bool) {
        self.partial = partial;
        if !partial {
            self.as_of = None;
        }
    }
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
