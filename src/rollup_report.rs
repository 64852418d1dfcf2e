//! Reading the rollups: the telemetry report of a range of days, grouped by day,
//! ISO week or month, for the command line and the endpoint. It reads only
//! `telemetry_daily`, never the raw events.

use futures_util::future::try_join_all;
use tokio_util::task::AbortOnDropHandle;

use crate::model::{DayRange, Grouping, ReportBuilder, TelemetryReport, split_by_periods};
use crate::store::{READS_AT_ONCE, RollupStore, StoreError};

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
/// A long range is read as a few runs of whole periods at once, one per core, so
/// that the database sends and the report merges a year of sketches in parallel.
/// Each run is a query of its own: a day written meanwhile may show in one part and
/// not yet in another, as in reports asked a moment apart, but a period is always
/// read whole by one query.
///
/// # Errors
///
/// [`StoreError`] when the rollups cannot be read.
pub async fn telemetry_report<S>(
    store: &S,
    request: &ReportRequest,
) -> Result<TelemetryReport, StoreError>
where
    S: RollupStore + Clone + Send + Sync + 'static,
{
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
