//! Reading the rollups: the telemetry report of a range of days, grouped by day,
//! ISO week or month, for the command line and the endpoint. It reads only
//! `telemetry_daily`, never the raw events.

use crate::model::{DayRange, Grouping, ReportBuilder, TelemetryReport};
use crate::store::{RollupStore, StoreError};

/// Days a report covers when not told: the 30 ending yesterday.
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
}

/// The report `request` asks for, from `store`'s rollups.
///
/// # Errors
///
/// [`StoreError`] when the rollups cannot be read.
pub async fn telemetry_report<S: RollupStore>(
    store: &S,
    request: &ReportRequest,
) -> Result<TelemetryReport, StoreError> {
    let builder = ReportBuilder::new(&request.range, request.by, request.top_k);
    let builder = store
        .fold_rollups(&request.range, &request.events, builder)
        .await?;
    Ok(builder.finish())
}
