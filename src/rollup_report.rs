//! Reading the rollups: the telemetry report of a range of days, grouped by day,
//! ISO week or month, for the command line and the endpoint. It reads only
//! `telemetry_daily`, never the raw events.

use futures_util::future::try_join_all;

use crate::model::{DayRange, Grouping, ReportBuilder, TelemetryReport, split_by_periods};
use crate::store::{RollupStore, StoreError};

/// Days a report covers when not told: the 30 ending yesterday.
pub const DEFAULT_REPORT_DAYS: u32 = 30;

/// Queries a report runs at once at most, so that one report does not take all of
/// a database's connections.
const MAX_PARTS: usize = 4;

/// What a report covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRequest {
    pub range: DayRange,
    pub by: Grouping,
    /// The events to report; all of them when empty.
    pub events: Vec<String>,
    /// Values kept per metadata key.
    pub top_k: usize,
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
pub async fn telemetry_report<S: RollupStore>(
    store: &S,
    request: &ReportRequest,
) -> Result<TelemetryReport, StoreError> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let parts = split_by_periods(&request.range, request.by, cores.min(MAX_PARTS));
    let reports = try_join_all(parts.iter().map(|part| async move {
        let builder = ReportBuilder::new(part, request.by, request.top_k);
        let builder = store.fold_rollups(part, &request.events, builder).await?;
        Ok::<_, StoreError>(builder.finish())
    }))
    .await?;
    Ok(TelemetryReport::joined(&request.range, request.by, reports))
}
